"""Audience rules that always hold (property-based), and the score -> audiences -> measure chain.

The properties run :func:`propensity.audiences.select.select_all` on random candidate
frames; the chain runs on a small simulated shop with champions trained into a local
MLflow store, then checks exports, manifests, reruns and the CRM table.
"""

from __future__ import annotations

import shutil
from datetime import date, timedelta

import mlflow.pyfunc
import numpy as np
import polars as pl
import pytest
from conftest import SMALL_SHOP
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from propensity import pipeline
from propensity.audiences import build, read_members
from propensity.audiences.measure import measure, uplift
from propensity.audiences.publish import EXPORT_COLUMNS, product_columns
from propensity.audiences.select import SUPPRESSION_REASONS, control_draw, select_all
from propensity.audiences.sets import read_export, read_export_set
from propensity.audiences.spec import CONSENT_COLUMN, AudienceSpec, Offer
from propensity.config import Settings
from propensity.features.snapshot import SnapshotBuilder
from propensity.lake import Lake
from propensity.models.personas_train import champion_personas
from propensity.models.recommend import History
from propensity.scoring import SignatureMismatch, load_champion, read_scores, score, score_inputs_frame
from propensity.storage import open_store

D = date(2025, 5, 1)
CAP = 2


def spec(name: str, priority: int, task: str = "churn", **kw) -> AudienceSpec:
    base = {
        "name": name,
        "priority": priority,
        "task": task,
        "rule": f"{task}_decile >= 5",
        "max_size": 10_000,
        "channels": ["email", "sms"],
        "offer": Offer(code=name.upper(), cost=1.0),
    }
    return AudienceSpec(**{**base, **kw})


def random_candidates(n: int, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    df = {
        "customer_id": pl.Series([f"C{i:07d}" for i in range(n)], dtype=pl.String),
        "global_opt_out": rng.random(n) < 0.1,
        "recency_days": np.where(rng.random(n) < 0.3, None, rng.integers(0, 60, n)).tolist(),
        "contacts_recent": rng.integers(0, 4, n),
        "revenue_365d": rng.gamma(2.0, 50.0, n),
    }
    for ch in ("email", "sms", "push"):
        df[CONSENT_COLUMN[ch]] = (rng.random(n) < 0.6).astype(np.int8)  # features store flags as 0/1
    for task in ("churn", "repurchase"):
        p = rng.random(n)
        df[f"{task}_score"] = np.where(rng.random(n) < 0.1, None, p).tolist()
        df[f"{task}_decile"] = np.where(
            np.isnan(np.array(df[f"{task}_score"], dtype=float)), None, (p * 10).astype(int) + 1
        ).tolist()
    floats = {"recency_days": pl.Float64, "churn_score": pl.Float64, "repurchase_score": pl.Float64}
    return pl.DataFrame(df).cast(floats)


SPECS = [
    spec("win-back", 1, rank="expected_value", value="revenue_365d", max_size=400, budget=300.0),
    spec("cross-sell", 2, task="repurchase", channels=["push", "email"], exclude_purchased_days=7, exploration=0.25),
    spec("nudge", 3, channels=["sms"], control_fraction=0.2),
]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(0, 3000), seed=st.integers(0, 2**32 - 1))
def test_rules_always_hold(n, seed):
    cands = random_candidates(n, seed)
    sels = select_all(cands, SPECS, D, CAP, 0.1)
    seen: set[str] = set()
    for s in sels:
        m = s.members.join(cands, on="customer_id", how="left")
        ids = set(m["customer_id"].to_list())
        assert not ids & seen, "a customer is in two audiences on one date"
        seen |= ids
        # suppression: opt-out, consent, frequency cap, recent purchase
        assert not m["global_opt_out"].any()
        assert (m["contacts_recent"] < CAP).all()
        if s.spec.exclude_purchased_days:
            assert m.filter(pl.col("recency_days") < s.spec.exclude_purchased_days).height == 0
        # channel: the first consented in the audience's order
        for row in m.iter_rows(named=True):
            first = next(ch for ch in s.spec.channels if row[CONSENT_COLUMN[ch]])
            assert row["channel"] == first
        # size, budget, ranking
        assert m.height <= s.spec.max_size
        if s.spec.treatment_cap() is not None:
            assert s.treatment <= s.spec.treatment_cap()
        key = "expected_value" if s.spec.rank == "expected_value" else "score"
        vals = m.filter(pl.col("selection") == "ranked").sort("rank")[key].to_numpy()
        assert np.all(vals[:-1] >= vals[1:])
        # counts add up: matched = dedup + suppressed + capped + members
        assert s.matched == s.deduplicated + sum(s.suppressed.values()) + s.capped + m.height
    # reruns draw the same audiences and control groups
    again = select_all(cands, SPECS, D, CAP, 0.1)
    for a, b in zip(sels, again, strict=True):
        assert a.members.equals(b.members)


def test_control_fraction_within_tolerance_and_independent_per_audience():
    ids = pl.Series([f"C{i:07d}" for i in range(40_000)])
    a, b = control_draw(ids, "win-back", D), control_draw(ids, "cross-sell", D)
    for frac in (0.1, 0.2):
        assert abs((a < frac).mean() - frac) < 0.01
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.02  # audiences draw independent holdouts
    assert np.array_equal(a, control_draw(ids, "win-back", D))  # stable across reruns
    sels = select_all(random_candidates(40_000, 1), [spec("big", 1, max_size=50_000)], D, CAP, 0.1)
    share = sels[0].control / sels[0].members.height
    assert abs(share - 0.1) < 0.015


def test_an_exploration_slice_is_a_random_half_treated_sample_of_the_eligible_base():
    """Uplift models need members chosen at random: the slice's scores look like the eligible
    base's, not like the top of the ranking, and half of it is treated; the ranked members
    are still the top of what the slice left, and the budget counts both."""
    cands = random_candidates(60_000, 3).with_columns(  # all contactable: the eligible base is the scored one
        pl.lit(False).alias("global_opt_out"), pl.lit(1, pl.Int8).alias(CONSENT_COLUMN["email"])
    )
    aud = spec("explore", 1, max_size=8_000, exploration=0.4, rule="churn_score IS NOT NULL")
    s = select_all(cands, [aud], D, 10, 0.1)[0]
    m = s.members
    explored, ranked = m.filter(pl.col("selection") == "exploration"), m.filter(pl.col("selection") == "ranked")
    assert explored.height == round(0.4 * 8_000) and m.height == 8_000
    assert (explored["p_treatment"] == 0.5).all() and (ranked["p_treatment"] == 0.9).all()
    assert abs((explored["group"] == "treatment").mean() - 0.5) < 0.03
    eligible = cands.filter(pl.col("churn_score").is_not_null())
    assert abs(explored["score"].mean() - eligible["churn_score"].mean()) < 0.02  # not the top
    # balance: treatment and control of the slice look alike before treatment (standardised differences)
    arms = explored.join(cands, on="customer_id")
    for col in ("revenue_365d", "recency_days", "contacts_recent", "churn_score", "repurchase_score"):
        t = arms.filter(pl.col("group") == "treatment")[col].drop_nulls().to_numpy().astype(float)
        c = arms.filter(pl.col("group") == "control")[col].drop_nulls().to_numpy().astype(float)
        smd = abs(t.mean() - c.mean()) / np.sqrt((t.var() + c.var()) / 2)
        assert smd < 0.1, (col, smd)
    left = eligible.filter(~pl.col("customer_id").is_in(explored["customer_id"].implode()))
    assert ranked["score"].min() >= left["churn_score"].sort(descending=True)[ranked.height - 1]
    again = select_all(cands, [aud], D, 10, 0.1)[0].members
    assert again.equals(m)
    budgeted = select_all(cands, [aud.model_copy(update={"budget": 2_000.0})], D, 10, 0.1)[0]
    assert budgeted.treatment <= 2_000
    assert (budgeted.members["selection"] == "exploration").sum() == explored.height  # the slice fits the budget


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(0, 3000), seed=st.integers(0, 2**32 - 1), threshold=st.floats(-0.05, 0.05))
def test_sleeping_dogs_are_never_members_of_an_uplift_ranked_audience(n, seed, threshold):
    """Whatever the ranking (uplift or incremental profit) and the threshold, nobody predicted
    below ``min_uplift`` is selected, in treatment or control, and each is counted once."""
    rng = np.random.default_rng(seed)
    cands = random_candidates(n, seed).with_columns(
        pl.Series("uplift_save10", rng.normal(0.01, 0.03, n)), pl.Series("aov_365d", rng.gamma(2.0, 30.0, n))
    )
    offer = Offer(code="SAVE10", cost=1.0, discount=0.1)
    for rank in ("uplift", "incremental_profit"):
        aud = spec("dogs", 1, rank=rank, value="aov_365d", min_uplift=threshold, offer=offer, exploration=0.2)
        s = select_all(cands, [aud], D, CAP, 0.1)[0]
        m = s.members.join(cands.select("customer_id", "uplift_save10"), on="customer_id")
        assert (m["uplift_save10"] >= threshold).all()
        eligible = cands.filter(pl.col("churn_score").is_not_null() & (pl.col("churn_decile") >= 5))
        assert s.suppressed["negative_uplift"] <= (eligible["uplift_save10"] < threshold).sum()
        assert s.matched == s.deduplicated + sum(s.suppressed.values()) + s.capped + m.height
        ranked = m.filter(pl.col("selection") == "ranked").sort("rank")
        key = ranked["uplift"] if rank == "uplift" else ranked["expected_value"]
        assert (np.diff(key.to_numpy()) <= 0).all()


def test_incremental_profit_prefers_the_persuadable_to_the_sure_thing():
    cands = random_candidates(4, 0).with_columns(
        pl.Series("churn_score", [0.9, 0.1, 0.5, 0.05]),
        pl.Series("churn_decile", [10, 2, 6, 1]),
        pl.Series("uplift_save10", [0.01, 0.15, 0.05, -0.02]),
        pl.Series("aov_365d", [80.0, 80.0, 80.0, 80.0]),
        pl.lit(False).alias("global_opt_out"),
        pl.lit(1, pl.Int8).alias(CONSENT_COLUMN["email"]),
        pl.lit(0).alias("contacts_recent"),
    )
    offer = Offer(code="SAVE10", cost=1.0, discount=0.1)
    aud = spec("profit", 1, rank="incremental_profit", value="aov_365d", rule="TRUE", offer=offer, control_fraction=0)
    # u*v*(0.3-0.1) - 0.1*p*v - 1*(p+u): only the persuadable pays (+1.35); the likely buyers
    # would cost more in discount than they add (-8.0 and -3.95), and the sleeping dog would be harmed
    s = select_all(cands, [aud], D, CAP, 0.0)[0]
    assert s.members["customer_id"].to_list() == ["C0000001"]
    assert s.members["expected_value"][0] == pytest.approx(0.15 * 80 * 0.2 - 0.1 * 0.1 * 80 - 0.25)
    assert s.suppressed["negative_uplift"] == 1 and s.suppressed["unprofitable"] == 2
    # a customer without an order value is worth the median of the matched candidates', not 0:
    # the persuadable with no purchase history yet is still priced like a customer
    newcomer = cands.with_columns(pl.Series("aov_365d", [80.0, None, 40.0, 80.0]))
    s = select_all(newcomer, [aud], D, CAP, 0.0)[0]
    assert s.members["customer_id"].to_list() == ["C0000001"]
    assert s.members["expected_value"][0] == pytest.approx(0.15 * 80 * 0.2 - 0.1 * 0.1 * 80 - 0.25)


def test_bad_rule_is_named():
    with pytest.raises(ValueError, match="win-back"):
        spec("win-back", 1, rule="churn_decile >=").expr()
    with pytest.raises(ValueError, match=r"no_such_column|cannot be evaluated"):
        select_all(random_candidates(10, 0), [spec("x", 1, rule="no_such_column > 1")], D, CAP, 0.1)


def test_uplift_statistics_cover_the_true_effect():
    """Over many simulated A/B tests the 95% intervals cover the true uplift about 95% of the time."""
    rng = np.random.default_rng(3)
    n, covered, rel_covered = 4000, 0, 0
    for _ in range(300):
        group = np.where(rng.random(n) < 0.5, "treatment", "control")
        conv = rng.random(n) < np.where(group == "treatment", 0.12, 0.10)
        rows = pl.DataFrame({"group": group, "converted": conv, "revenue": conv * 50.0, "offer_cost": 2.0})
        u = uplift("a", D, 14, rows)
        covered += u.uplift_abs_ci[0] < 0.02 < u.uplift_abs_ci[1]
        rel_covered += u.uplift_rel_ci[0] < 0.2 < u.uplift_rel_ci[1]
    assert 0.92 <= covered / 300 <= 0.98
    assert 0.92 <= rel_covered / 300 <= 0.98
    assert u.incremental_revenue == pytest.approx(u.uplift_abs * u.n_treatment * 50.0)
    treated_buyers = rows.filter((pl.col("group") == "treatment") & pl.col("converted")).height
    assert u.cost == pytest.approx(2.0 * treated_buyers)
    # per 1,000 contacts: the conversion difference, and margin x revenue difference less the cost per contact
    assert u.conversions_per_1000 == pytest.approx(1000 * u.uplift_abs)
    assert u.conversions_per_1000_ci == pytest.approx((1000 * u.uplift_abs_ci[0], 1000 * u.uplift_abs_ci[1]))
    profit = 1000 * (u.incremental_revenue * 1.0 - u.cost) / u.n_treatment
    assert u.profit_per_1000 == pytest.approx(profit)
    assert u.profit_per_1000_ci[0] < u.profit_per_1000 < u.profit_per_1000_ci[1]
    assert "per 1,000 contacts" in u.summary()


# --- the chain on a small simulated shop ------------------------------------------------


@pytest.fixture(scope="module")
def scored_shop(clean_zone, tmp_path_factory) -> Settings:
    """A copy of the shared clean zone with champions trained into a local MLflow store, scored at D."""
    from propensity.models.train import Trainer

    home = tmp_path_factory.mktemp("audience_shop")
    shutil.copytree(clean_zone.home_dir / "lake" / "clean", home / "lake" / "clean")
    s = Settings(
        home=home,
        validation={"docs": False},
        tasks={"churn": {"horizon_days": 30}, "clv": {"horizon_days": 30}},
        features={"training_span_days": 42, "min_history_days": 30},
        models={"max_rounds": 150, "early_stopping_rounds": 20, "num_leaves": 15},
        audiences={"salt": "test-salt", "control_fraction": 0.2},
    )
    report = Trainer(s).train()
    assert all(r["promoted"] for r in report["tasks"].values()), report
    assert pipeline.train_toolkit(s, "recommendations", as_of=D).promoted  # cross-sell's recommended offer
    assert pipeline.train_toolkit(s, "personas", as_of=D).promoted  # the persona tag
    score(s, D)
    return s


@pytest.mark.slow  # the validated small shop, trained and scored
def test_scores_are_validated_probabilities_from_the_pyfunc(scored_shop):
    s = scored_shop
    lake = Lake.open(s.lake_uri)
    feats = pl.from_arrow(lake.read_partition("features", "", {"snapshot": D.isoformat()}))
    for task, cfg in s.tasks.items():
        sc = read_scores(s, task, D)
        pop = pl.from_arrow(lake.read_partition("labels", "", {"task": task, "snapshot": D.isoformat()}))
        assert sc.height == pop.height > 0
        upper = None if cfg.is_value else 1  # clv: an expected revenue in the base currency
        assert sc["score"].is_between(0, upper or float("inf")).all() and sc["score"].null_count() == 0
        assert set(sc["decile"].unique()) <= set(range(1, 11))
        champ = load_champion(s, task)
        assert sc["model_version"][0] == champ.version
        # the served pyfunc returns the same calibrated probabilities
        pyfunc = mlflow.pyfunc.load_model(f"models:/propensity-{task}@champion")
        rows = feats.join(sc.select("customer_id").head(200), on="customer_id", how="semi").sort("customer_id")
        p = np.asarray(pyfunc.predict(score_inputs_frame(champ, rows)))
        assert np.all((p >= 0) & (p <= (upper or np.inf))) and len(np.unique(p)) > 2  # not labels
        assert cfg.is_value == (p.max() > 1)  # a value task serves revenue, the others probabilities
        np.testing.assert_allclose(p, sc.head(200)["score"].to_numpy(), rtol=1e-9)


@pytest.mark.slow  # the validated small shop, trained and scored
def test_signature_mismatch_stops_and_writes_nothing(scored_shop, tmp_path):
    s = scored_shop
    lake = Lake.open(s.lake_uri)
    day = (D + timedelta(days=1)).isoformat()
    from propensity.features.snapshot import SnapshotBuilder

    snap = SnapshotBuilder(s).build(D + timedelta(days=1))
    snap.features = snap.features.with_columns(pl.col("recency_days").cast(pl.String))
    # written straight to the lake: a published snapshot would be stopped by the catalogue checks first
    from propensity.features.store import SnapshotStore

    SnapshotStore(lake).write(snap)
    with pytest.raises(SignatureMismatch, match=r"scores\.\w+\.\S+: column 'recency_days': rule model_signature"):
        score(s, D + timedelta(days=1))
    assert not [p for p in lake.partitions("scores", "") if p["dt"] == day]


@pytest.mark.slow  # the validated small shop, trained and scored
def test_audiences_publish_rerun_identical_and_measure(scored_shop):
    s = scored_shop
    first = build(s, D)
    assert {x.spec.name for x in first.selections} == {"win-back", "cross-sell", "conversion-nudge"}
    assert sum(x.treatment for x in first.selections) > 0
    store = open_store(s.export_uri)
    lake = Lake.open(s.lake_uri)

    def snapshot_bytes() -> dict[str, bytes]:
        keys = [k for k in store.list("") if not k.startswith(".")]
        keys += lake.store.list("audiences/")  # manifests included: they carry no timestamps
        return {k: (store if k in store.list("") else lake.store).get_bytes(k) for k in keys}

    before = snapshot_bytes()
    feats = pl.from_arrow(lake.read_partition("features", "", {"snapshot": D.isoformat()}))
    exported = read_export_set(store, D.isoformat())
    assert sorted(exported["exports"]) == sorted(x.spec.name for x in first.selections)
    for x in first.selections:
        doc = exported["exports"][x.spec.name]
        assert doc["counts"]["treatment"] == x.treatment and doc["counts"]["control"] == x.control
        assert set(doc["counts"]["suppressed"]) == set(SUPPRESSION_REASONS)  # every reason, counted or 0
        assert doc["models"][x.spec.task]["model_version"] and doc["rule_hash"]
        csv = pl.read_csv(read_export(store, D.isoformat(), x.spec.name), infer_schema=False)
        products = product_columns(s.recommendations.products) if x.spec.offer.recommended else []
        assert csv.columns == EXPORT_COLUMNS + products and csv.height == x.treatment
        members = read_members(s, x.spec.name, D)
        assert set(csv["pseudo_id"]) == set(members.filter(pl.col("group") == "treatment")["pseudo_id"])
        assert not set(csv["pseudo_id"]) & set(members.filter(pl.col("group") == "control")["pseudo_id"])
        assert not any(cid in csv["pseudo_id"].to_list() for cid in members["customer_id"].to_list())
        # no opted-out or unconsented customer in any export
        m = members.filter(pl.col("group") == "treatment").join(feats, on="customer_id")
        assert m.filter(pl.col("global_opt_out") == 1).height == 0
        consent = pl.any_horizontal([pl.col(CONSENT_COLUMN[c]) == 1 for c in x.spec.channels])
        assert m.filter(~consent).height == 0
        if x.treatment:
            assert m["reason_1"].null_count() < m.height  # reason codes for members
    sc = read_scores(s, "churn", D)
    assert 0 < sc["reason_1"].drop_nulls().len() < sc.height  # filled for members only
    # the recommended offer: three catalogue products per exported row, none bought before D
    cross = read_members(s, "cross-sell", D).filter(pl.col("group") == "treatment")
    assert cross.height > 0
    data = SnapshotBuilder(s).data
    catalogue = set(data.products["product_id"].to_list())
    rows = cross.select("customer_id", product=pl.concat_list(product_columns(3))).explode("product")
    assert rows["product"].null_count() == 0 and set(rows["product"]) <= catalogue
    assert cross.select(pl.concat_list(product_columns(3)).list.n_unique().min()).item() == 3
    bought = History.before(data, D, s.recommendations.view_days).bought
    assert rows.join(bought, left_on=["customer_id", "product"], right_on=["customer_id", "product_id"]).is_empty()
    exported = pl.read_csv(read_export(store, D.isoformat(), "cross-sell"), infer_schema=False)
    assert exported.select(product_columns(3)).null_count().sum_horizontal().item() == 0
    # the composition report shows each audience by persona
    report = lake.store.get_text(f"reports/audiences/dt={D.isoformat()}/composition.md")
    shown = {line.split(" | ")[1] for line in report.splitlines() if line.startswith("| persona |")}
    assert shown and shown <= set(champion_personas(s).names)
    assert "persona=" not in report  # shown, never warned about: audiences differ by behaviour on purpose
    # a rerun is byte-identical
    build(s, D)
    assert snapshot_bytes() == before
    # measurement over the 14 days after the send
    u = measure(s, "cross-sell", D, 14)
    assert u.n_treatment + u.n_control == read_members(s, "cross-sell", D).height
    assert u.uplift_abs_ci[0] <= u.uplift_abs <= u.uplift_abs_ci[1]


@pytest.mark.slow  # the validated small shop, trained and scored
def test_dry_run_publishes_nothing(scored_shop):
    s = scored_shop
    store = open_store(s.export_uri)
    before = sorted(store.list(""))
    d2 = D + timedelta(days=7)
    score(s, d2)
    run = build(s, d2, dry_run=True)
    assert run.selections and sorted(store.list("")) == before
    assert not [p for p in Lake.open(s.lake_uri).partitions("audiences", "") if p["dt"] == d2.isoformat()]


@pytest.mark.slow  # the validated small shop, trained and scored
def test_crm_table_in_postgresql(scored_shop, postgres):
    import sqlalchemy as sa

    url = postgres.create_database("crm_audiences")
    s = scored_shop.model_copy(update={"audiences": scored_shop.audiences.model_copy(update={"crm_db": url})})
    run = build(s, D)
    eng = sa.create_engine(url)
    with eng.connect() as c:
        n = c.execute(sa.text("select count(*) from audience_members where dt = :d"), {"d": D}).scalar()
    eng.dispose()
    assert n == sum(x.treatment for x in run.selections)
    build(s, D)  # rerun replaces, never duplicates
    eng = sa.create_engine(url)
    with eng.connect() as c:
        assert c.execute(sa.text("select count(*) from audience_members")).scalar() == n
    eng.dispose()


def test_small_shop_constants():
    assert SMALL_SHOP["start"] + timedelta(days=SMALL_SHOP["days"]) > D + timedelta(days=14)
