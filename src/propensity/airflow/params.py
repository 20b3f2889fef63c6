"""Trigger-form Params of the DAGs, built from the configured tasks and the contracts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from propensity.contracts import TABLES


def date_param(title: str, description: str) -> Any:
    """An optional date (empty: the run's partition key)."""
    from airflow.sdk import Param

    return Param(None, type=["null", "string"], format="date", title=title, description=description)


def choice_list_param(choices: Sequence[str], title: str, description: str) -> Any:
    """An optional subset of ``choices`` (empty: what ``description`` says)."""
    from airflow.sdk import Param

    return Param(
        None,
        type=["null", "array"],
        items={"type": "string", "enum": list(choices)},
        uniqueItems=True,
        examples=list(choices),
        title=title,
        description=description,
    )


def partition_date_param(what: str) -> Any:
    return date_param(
        "Date",
        f"The {what} this run processes (YYYY-MM-DD), for a run triggered without a partition key; "
        "the partition key wins when both are given.",
    )


def collect_params() -> dict[str, Any]:
    return {
        "date": partition_date_param("UTC day"),
        "tables": choice_list_param(TABLES, "Tables", "Tables to collect; empty means all of them."),
        "start": date_param(
            "Backfill from",
            "Also (re)collect every day from this date up to the run's day, as history for it; the run's "
            "partition stays its own day (downstream runs are for that day only).",
        ),
    }


def validate_params() -> dict[str, Any]:
    return {
        "date": partition_date_param("UTC day"),
        "start": date_param(
            "Backfill from",
            "Also validate every day from this date up to the run's day (default: the days the triggering "
            "raw events collected).",
        ),
    }


def features_params(tasks: Sequence[str]) -> dict[str, Any]:
    return {
        "date": partition_date_param("UTC day whose data completes the snapshot (the snapshot is the day after)"),
        "tasks": choice_list_param(tasks, "Tasks", "Tasks to build labels for; empty builds all configured tasks."),
    }


def scoring_params(tasks: Sequence[str], audiences: Sequence[str]) -> dict[str, Any]:
    from airflow.sdk import Param

    return {
        "date": partition_date_param("snapshot date to score and build audiences for"),
        "audiences": choice_list_param(
            audiences, "Audiences", "Audiences to build (declared in the audiences YAML); empty builds all."
        ),
        "dry_run": Param(
            False,
            type="boolean",
            title="Dry run",
            description="Select and report the audiences but publish none (no lake partition, export, manifest "
            "or CRM rows). Scores are still published: audiences are built from them.",
        ),
    }


def training_params(tasks: Sequence[str]) -> dict[str, Any]:
    from airflow.sdk import Param

    return {
        "date": partition_date_param("snapshot date the models are trained as of (caps the test snapshot)"),
        "tasks": Param(
            list(tasks),
            type="array",
            items={"type": "string", "enum": list(tasks)},
            uniqueItems=True,
            minItems=1,
            title="Tasks",
            description="Tasks to train (one mapped task each). A run triggered by drift trains only the "
            "breached ones; one triggered by a new snapshot trains on the retraining weekday, or tasks "
            "without a champion.",
        ),
        "tuning_trials": Param(
            None,
            type=["null", "integer"],
            minimum=0,
            title="Tuning trials",
            description="Optuna trials per task (0: no tuning); empty: the configured models.tuning_trials.",
        ),
        "promote": Param(
            True,
            type="boolean",
            title="Promote",
            description="Let a version that passes the gate become champion. Off: versions are registered, "
            "gated and tagged with the verdict, but the champion stays.",
        ),
    }


def monitor_params(tasks: Sequence[str]) -> dict[str, Any]:
    return {
        "date": partition_date_param("snapshot date to compare with the champions' references"),
        "tasks": choice_list_param(tasks, "Tasks", "Tasks to monitor; empty monitors all configured tasks."),
    }
