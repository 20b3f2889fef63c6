"""Import cost is paid only where it is used: the stages' entry points import no heavy library.

Every Airflow task and command is a fresh process; mlflow, lightgbm (with sklearn),
great-expectations, boto3 and Airflow cost seconds each to import, so they are imported
inside the functions that use them (training, model loading, the raw->clean gate, an
``s3://`` lake, the DAG files).
"""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("mlflow", "lightgbm", "sklearn", "great_expectations", "boto3", "airflow", "optuna")
ENTRY_POINTS = (
    "propensity",
    "propensity.config",
    "propensity.cli",
    "propensity.pipeline",
    "propensity.airflow.steps",
    "propensity.collect",
    "propensity.validation.gate",
    "propensity.features.snapshot",
    "propensity.scoring",
    "propensity.audiences",
    "propensity.monitoring.monitor",
    "propensity.history",
)


def test_entry_points_import_no_heavy_library() -> None:
    code = (
        "import sys\n"
        f"for m in {ENTRY_POINTS!r}: __import__(m)\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_pyfunc_still_unpickles_from_its_former_module() -> None:
    """Models logged before the pyfunc moved name ``propensity.models.model.PropensityPyfunc``."""
    from propensity.models import model, pyfunc

    assert model.PropensityPyfunc is pyfunc.PropensityPyfunc
