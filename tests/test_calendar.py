"""The promotion calendar: parsing, clear errors, look-ahead features, and the simulator running on it."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import polars as pl
import pytest

from propensity.calendar import WINDOWS, CalendarError, PromotionCalendar
from propensity.config import Settings
from propensity.features.build import compute_features
from propensity.features.catalogue import group_features
from propensity.features.snapshot import at_midnight
from propensity.simulate import dynamics as dyn


@pytest.fixture(scope="module")
def shop_data_small(clean_bulk):
    """The small simulated shop's clean rows (shared, built once per session)."""
    from propensity.features.inputs import ShopData
    from propensity.lake import Lake

    return ShopData.load(Lake.open(clean_bulk.lake_uri))


def _cal(*entries: dict) -> PromotionCalendar:
    return PromotionCalendar.parse({"promotions": list(entries)}, "test.yaml")


def test_shipped_calendar_is_the_simulated_shops_sales() -> None:
    cal = PromotionCalendar.load(Settings().promotions_file)
    on = {
        date(2025, 11, 24): 0.25,
        date(2025, 12, 1): 0.25,
        date(2026, 1, 2): 0.15,
        date(2026, 1, 9): 0.15,
        date(2025, 7, 1): 0.15,
        date(2025, 7, 7): 0.15,
    }
    for d, depth in on.items():
        assert cal.depth(d) == depth, d
    for d in (date(2025, 11, 23), date(2025, 12, 2), date(2026, 1, 1), date(2026, 1, 10), date(2025, 7, 8)):
        assert cal.depth(d) == 0.0, d
    # the simulator's calendar reads the same promotions by day index
    sim = dyn.Calendar(date(2025, 1, 1), 365, cal)
    assert sim.promo_depth((date(2025, 11, 24) - date(2025, 1, 1)).days) == 0.25
    assert sim.promo_depth(0) == 0.0


def test_recurring_periods_wrap_new_year_one_offs_and_overlaps_take_the_deepest() -> None:
    cal = _cal(
        {"name": "winter", "from": "12-28", "to": "01-03", "discount": 0.1},
        {"name": "flash", "from": "2026-01-02", "to": "2026-01-02", "discount": 0.3},
    )
    assert cal.depth(date(2025, 12, 31)) == 0.1
    assert cal.depth(date(2027, 1, 3)) == 0.1
    assert cal.depth(date(2026, 1, 2)) == 0.3  # deepest of the two running
    assert cal.depth(date(2027, 1, 2)) == 0.1  # the one-off does not repeat
    assert cal.depth(date(2026, 1, 4)) == 0.0
    assert PromotionCalendar.parse(yaml_roundtrip(cal)) == cal


def yaml_roundtrip(cal: PromotionCalendar) -> dict:
    import yaml

    return yaml.safe_load(cal.dump())


def test_features_count_sale_days_and_mean_discount_ahead_of_t() -> None:
    cal = _cal({"name": "bf", "from": "11-24", "to": "12-01", "discount": 0.25})
    f = cal.features(date(2025, 11, 20))
    assert f["promo_days_next_14d"] == 8.0
    assert f["promo_discount_next_14d"] == pytest.approx(8 * 0.25 / 14)
    assert f["promo_days_next_90d"] == 8.0
    assert set(f) == set(group_features("calendar"))
    after = cal.features(date(2025, 12, 2))
    assert after["promo_days_next_90d"] == 0.0  # Black Friday is over; the next one is a year away
    assert PromotionCalendar().features(date(2025, 11, 20))["promo_days_next_30d"] == 0.0


X = r"promotions\[0\] \(x\): "  # the entry: its index and name


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"name": "x", "from": "13-01", "to": "13-02", "discount": 0.1}, X + r"field 'from'.*MM-DD"),
        ({"name": "x", "from": "11-24", "discount": 0.1}, r"promotions\[0\]: missing field\(s\) \['to'\]"),
        (
            {"name": "x", "from": "11-24", "to": "11-30", "discount": 1.5},
            X + r"field 'discount': 1.5 must be in",
        ),
        (
            {"name": "x", "from": "11-24", "to": "2025-11-30", "discount": 0.1},
            X + r"'from' and 'to' must both be MM-DD or both be YYYY",
        ),
        (
            {"name": "x", "from": "2025-11-30", "to": "2025-11-24", "discount": 0.1},
            X + r"field 'to'.*before 'from'",
        ),
        (
            {"name": "x", "from": "11-24", "to": "11-30", "discount": 0.1, "dicount": 1},
            r"promotions\[0\]: unknown field\(s\) \['dicount'\]",
        ),
    ],
)
def test_bad_entries_name_the_file_entry_and_field(entry: dict, message: str) -> None:
    with pytest.raises(CalendarError, match=r"^test\.yaml: " + message):
        _cal(entry)


def test_unreadable_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "promotions.yaml"
    bad.write_text("promotions: [name: {")
    with pytest.raises(CalendarError, match=r"promotions\.yaml: cannot read the promotion calendar"):
        PromotionCalendar.load(bad)
    assert PromotionCalendar.load(None) == PromotionCalendar()


def test_snapshot_features_carry_the_calendar_and_stay_null_without_one(shop_data_small) -> None:
    t = at_midnight(date(2025, 1, 1) + timedelta(days=100))
    cal = _cal({"name": "spring", "from": "04-15", "to": "04-20", "discount": 0.2})
    with_cal = compute_features(shop_data_small.as_of(t), t, "EUR", cal)
    without = compute_features(shop_data_small.as_of(t), t, "EUR")
    names = group_features("calendar")
    assert len(names) == 2 * len(WINDOWS)
    expected = cal.features(t.date())
    for n in names:
        assert with_cal[n].n_unique() == 1 and with_cal[n][0] == pytest.approx(expected[n]), n
        assert without[n].null_count() == without.height, n
    other = [c for c in with_cal.columns if c not in names]
    assert with_cal.select(other).equals(without.select(other))  # nothing else depends on the calendar


def test_features_are_polars_floats(shop_data_small) -> None:
    t = at_midnight(date(2025, 3, 1))
    feats = compute_features(shop_data_small.as_of(t), t, "EUR", PromotionCalendar())
    assert all(feats.schema[n] == pl.Float64 for n in group_features("calendar"))
