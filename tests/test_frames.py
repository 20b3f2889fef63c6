"""Derived-frame checks in Polars agree with great-expectations on the same declarations."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from propensity.validation import checks as ck
from propensity.validation.frames import FrameValidationError, check_frame, evaluate
from propensity.validation.runner import GXRunner


def frame(seed: int, n: int = 300) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return pl.DataFrame(
        {
            "id": [f"c{i % (n * 3 // 4)}" if rng.random() > 0.05 else None for i in range(n)],
            "x": np.where(rng.random(n) < 0.1, np.nan, rng.normal(0, 1, n)),
            "label": rng.integers(0, 3, n),
            "a": rng.integers(0, 10, n),
            "b": rng.integers(0, 10, n),
            "s": rng.choice(["p", "q", "r"], n),
        }
    )


CHECKS = [
    ck.not_null("id"),
    ck.not_null("x"),
    ck.unique(["id"]),
    ck.unique(["a", "b"]),
    ck.in_set("label", [0, 1]),
    ck.in_set("s", ["p", "q"]),
    ck.between("x", -1, 1),
    ck.between("x", 0, None, strict_min=True),
    ck.row_count(min_value=1),
    ck.row_count(max_value=10),
    ck.null_rate("x", 0.05),
    ck.null_rate("x", 0.5),
    ck.columns_match(["id", "x", "label", "a", "b", "s"]),
    ck.columns_match(["id"]),
    ck.before("a", "b", "a_before_b", "a must be before b"),
]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_polars_checks_agree_with_great_expectations(seed):
    df = frame(seed)
    gx = GXRunner().run(f"frame{seed}", df.to_pandas(), CHECKS)
    nan_as_null = df.with_columns(pl.col(pl.Float64).fill_nan(None))
    for c in CHECKS:
        want = next(r for r in gx.results if r.check is c)
        got = evaluate(nan_as_null, c)
        assert (got.success, got.unexpected_count) == (want.success, want.unexpected_count), c.id


def test_a_failing_frame_names_table_rule_column_and_rows():
    df = pl.DataFrame({"customer_id": ["a", "a", None], "score": [0.5, 1.5, float("nan")]})
    checks = [ck.not_null("customer_id"), ck.unique(["customer_id"]), ck.between("score", 0, 1), ck.not_null("score")]
    with pytest.raises(FrameValidationError) as err:
        check_frame("scores.churn.2025-05-01", df, checks)
    lines = str(err.value).splitlines()
    assert lines == [
        "scores.churn.2025-05-01: not_null on column customer_id: 1 row(s) must not be null (e.g. None)",
        "scores.churn.2025-05-01: unique_key on column customer_id: 2 row(s) duplicate key (first copy kept)"
        " (e.g. a, a)",
        "scores.churn.2025-05-01: range on column score: 1 row(s) must be >= 0 and <= 1 (e.g. 1.5)",
        "scores.churn.2025-05-01: not_null on column score: 1 row(s) must not be null (e.g. None)",
    ]


def test_deriving_a_frame_does_not_import_great_expectations():
    import subprocess
    import sys

    code = (
        "import sys, polars as pl\n"
        "from propensity.validation.frames import check_frame\n"
        "from propensity.features.catalogue import feature_checks\n"
        "import propensity.features.snapshot, propensity.pipeline, propensity.cli\n"
        "check_frame('t', pl.DataFrame({'customer_id': ['a']}), feature_checks()[:2])\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('great_expectations', 'mlflow')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
