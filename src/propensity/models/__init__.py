"""Propensity models: LightGBM per task, calibrated, tracked and registered in MLflow with a gated champion."""
