"""The static world of the simulated shop: markets, catalogue, and each customer's hidden traits.

The shop ships from Germany to eight markets with their own currency and language.
Traits are drawn once per customer and never shown to the pipeline: they live only in
the truth store, where the oracle and evaluation code read them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CATEGORIES = (
    ("fashion", 40.0),
    ("shoes", 70.0),
    ("beauty", 25.0),
    ("electronics", 150.0),
    ("home", 45.0),
    ("kitchen", 35.0),
    ("garden", 50.0),
    ("sports", 55.0),
    ("toys", 30.0),
    ("books", 15.0),
    ("grocery", 12.0),
    ("jewelry", 120.0),
)


@dataclass(frozen=True)
class Market:
    country: str
    currency: str
    language: str
    weight: float
    rate: float  # units of base currency (EUR) per unit of local currency at start
    promised_days: int
    late_p: float


MARKETS = (
    Market("DE", "EUR", "de", 0.22, 1.0, 2, 0.05),
    Market("GB", "GBP", "en", 0.20, 1.17, 5, 0.16),
    Market("FR", "EUR", "fr", 0.14, 1.0, 4, 0.10),
    Market("ES", "EUR", "es", 0.10, 1.0, 4, 0.12),
    Market("US", "USD", "en", 0.12, 0.92, 7, 0.22),
    Market("PL", "PLN", "pl", 0.09, 0.23, 4, 0.12),
    Market("SE", "SEK", "sv", 0.07, 0.087, 4, 0.10),
    Market("JP", "JPY", "ja", 0.06, 0.0062, 9, 0.25),
)
CURRENCIES = tuple(sorted({m.currency for m in MARKETS}))
BASE_CURRENCY = "EUR"
CARRIERS = ("DHL", "UPS", "DPD", "GLS", "Hermes")
CARRIER_LATE = np.array([0.8, 0.9, 1.1, 1.0, 1.4])
ACQ = ("organic", "paid_search", "social", "affiliate", "referral", "direct")
ACQ_W = np.array([0.3, 0.22, 0.18, 0.08, 0.07, 0.15])
DEVICES = ("desktop", "mobile", "tablet", "app")
DEVICE_W = np.array([0.35, 0.45, 0.08, 0.12])
PAYMENTS = ("card", "paypal", "bank_transfer", "cash_on_delivery", "wallet")
GENDERS = ("female", "male", "other", "unknown")
GENDER_W = np.array([0.5, 0.43, 0.02, 0.05])
AGE_BANDS = ("18-24", "25-34", "35-44", "45-54", "55-64", "65+", "unknown")
AGE_W = np.array([0.14, 0.27, 0.22, 0.16, 0.1, 0.06, 0.05])
TRAFFIC_ORGANIC = ("direct", "organic", "paid_search", "social", "referral", "affiliate")
TRAFFIC_W = np.array([0.3, 0.28, 0.18, 0.14, 0.06, 0.04])


@dataclass
class Catalogue:
    product_id: np.ndarray  # str
    category: np.ndarray  # int index into CATEGORIES
    brand: np.ndarray  # str
    price_eur: np.ndarray
    cat_lo: np.ndarray  # first product index of each category (products sorted by category, price)
    cat_n: np.ndarray

    @classmethod
    def draw(cls, rng: np.random.Generator, n: int) -> Catalogue:
        k = len(CATEGORIES)
        cat = np.sort(rng.integers(0, k, n))
        cat[:k] = np.arange(k)  # every category has at least one product
        cat = np.sort(cat)
        level = np.array([c[1] for c in CATEGORIES])[cat]
        price = np.round(level * rng.lognormal(0.0, 0.55, n), 2).clip(0.5)
        order = np.lexsort((price, cat))
        cat, price = cat[order], price[order]
        brand = np.array([f"brand-{b:02d}" for b in rng.integers(0, 60, n)])
        ids = np.array([f"P{i:05d}" for i in range(n)])
        counts = np.bincount(cat, minlength=k)
        lo = np.concatenate([[0], np.cumsum(counts)[:-1]])
        return cls(ids, cat, brand, price, lo, counts)


def draw_traits(rng: np.random.Generator, n: int, days: int) -> dict[str, np.ndarray]:
    """Hidden per-customer traits plus the initial latent state at day 0.

    About 40% of the customers exist before the simulated window (signed up within the
    two years before), the rest sign up at a steady pace during it.
    """
    k = len(CATEGORIES)
    existing = rng.random(n) < 0.4
    signup = np.where(existing, -rng.integers(1, 730, n), rng.integers(0, max(days, 1), n))
    market = rng.choice(len(MARKETS), n, p=np.array([m.weight for m in MARKETS]))
    cycle = np.clip(rng.lognormal(np.log(55.0), 0.55, n), 7.0, 240.0)
    bought0 = existing & (rng.random(n) < 0.6)
    last0 = np.where(bought0, -np.floor(rng.random(n) * 1.5 * cycle) - 1, np.nan)
    email_c = rng.random(n) < 0.65
    tr = {
        "signup_day": signup.astype(np.int64),
        "market": market.astype(np.int64),
        "engagement": np.clip(rng.lognormal(np.log(0.05), 0.75, n), 0.001, 0.6),
        "cycle": cycle,
        "tau": np.clip(rng.lognormal(np.log(50.0), 0.3, n), 5.0, 400.0),
        "conv": np.clip(rng.lognormal(np.log(0.075), 0.5, n), 0.005, 0.8),
        "price_sens": rng.beta(2.0, 3.0, n),
        "hazard": np.clip(rng.lognormal(np.log(0.0012), 0.5, n), 1e-5, 0.05),
        "open_email": rng.beta(2.0, 6.0, n),
        "open_sms": rng.beta(3.0, 5.0, n),
        "open_push": rng.beta(1.5, 8.0, n),
        "email_consent": email_c.astype(float),
        "sms_consent": (rng.random(n) < 0.3).astype(float),
        "push_consent": (rng.random(n) < 0.4).astype(float),
        "opted_out": (rng.random(n) < 0.04).astype(float),
        "device": rng.choice(len(DEVICES), n, p=DEVICE_W).astype(np.int64),
        "acq": rng.choice(len(ACQ), n, p=ACQ_W).astype(np.int64),
        "gender": rng.choice(len(GENDERS), n, p=GENDER_W).astype(np.int64),
        "age": rng.choice(len(AGE_BANDS), n, p=AGE_W).astype(np.int64),
        "bought0": bought0,
        "last0": last0,
        "n0": np.where(bought0, rng.poisson(1.5, n) + 1, 0).astype(np.int64),
    }
    aff = rng.dirichlet(np.full(k, 0.35), n)
    tr["aff_cum"] = np.cumsum(aff, axis=1)
    tr["aff_cum"][:, -1] = 1.0
    return tr
