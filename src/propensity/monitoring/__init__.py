"""Model monitoring: drift of the champions' inputs and scores against what they were trained on.

:mod:`.drift` holds the pure parts (reference profiles, PSI, the report); :mod:`.monitor`
reads the champions' references from MLflow and today's snapshot and scores from the lake,
and writes the report back to the lake.
"""

from propensity.monitoring.drift import DriftReport, TaskDrift, build_reference, psi

__all__ = ["DriftReport", "TaskDrift", "build_reference", "psi"]
