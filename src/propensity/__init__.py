"""propensity: e-commerce propensity modelling and audience building, orchestrated by Airflow."""

__version__ = "0.1.0"
