"""Every environment variable the system reads, and what a deployment must set.

Two sources:

* the settings object: each field of :class:`propensity.config.Settings` is read from
  ``PROPENSITY_<FIELD>``, nested models with ``__`` (``PROPENSITY_AUDIENCES__SALT``).
  :func:`settings_env_vars` derives these names from the model, so they never drift;
* :data:`ENV_VARS`: variables read outside the settings object (``os.environ`` in the
  library, the plugin, the local stack) and third-party ones the deployment must provide
  (boto3's ``AWS_*``, MLflow's ``MLFLOW_S3_ENDPOINT_URL``).

Each variable has a :class:`Deploy` need. ``tests/test_compose.py`` checks
``docker-compose.yml`` against it (every Airflow service sets every ``REQUIRED`` and
``SECRET`` variable, secrets only from ``.env``) and that the code reads no variable that
is declared nowhere: a new ``os.environ`` read goes into :data:`ENV_VARS`, a new settings
field needs nothing unless its default is wrong for a deployment.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic_settings import BaseSettings

__all__ = ["ENV_VARS", "Deploy", "EnvVar", "env_vars", "is_secret_name", "settings_env_vars"]


class Deploy(StrEnum):
    """What a deployment (the Airflow services of ``docker-compose.yml``) does with a variable."""

    REQUIRED = "required"
    """must be set: the default (under ``PROPENSITY_HOME``, on the local machine) is wrong there"""
    SECRET = "secret"
    """must be set, from the secret store (``.env``), never written into a file of the repository"""
    OPTIONAL = "optional"
    """the default is right; set it only to tune"""
    LOCAL = "local"
    """only for the Docker-free local stack or tests (``propensity.stack``, ``propensity.services``)"""


@dataclass(frozen=True)
class EnvVar:
    name: str
    deploy: Deploy
    purpose: str
    nested: bool = False
    """a field of a nested settings model (``PROPENSITY_<MODEL>__<FIELD>``)"""


_SECRET_MARKERS = ("PASSWORD", "SECRET", "SALT", "TOKEN", "FERNET", "JWT", "PRIVATE_KEY", "ACCESS_KEY")


def is_secret_name(name: str) -> bool:
    """Whether a variable's name says it holds a credential (password, key, salt, token)."""
    upper = name.upper()
    return any(marker in upper for marker in _SECRET_MARKERS)


ENV_VARS: tuple[EnvVar, ...] = (
    # settings fields whose default is right everywhere (the others follow the rules of settings_env_vars)
    EnvVar("PROPENSITY_BASE_CURRENCY", Deploy.OPTIONAL, "reporting currency of the shop"),
    # read by the library outside the settings object
    EnvVar("PROPENSITY_CONFIG", Deploy.OPTIONAL, "YAML settings file (the stack configures by environment)"),
    EnvVar("PROPENSITY_MLFLOW_UI_URL", Deploy.REQUIRED, "browser-facing MLflow UI for the task links (plugin)"),
    EnvVar("AWS_DEFAULT_REGION", Deploy.REQUIRED, "S3 region for boto3 and pyarrow (MinIO: us-east-1)"),
    EnvVar("AWS_REGION", Deploy.OPTIONAL, "fallback of AWS_DEFAULT_REGION"),
    EnvVar("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", Deploy.OPTIONAL, "set to false by propensity.models.tracking"),
    EnvVar("GX_ANALYTICS_ENABLED", Deploy.OPTIONAL, "set to False by propensity.validation"),
    EnvVar("PROPENSITY_PROGRESS", Deploy.OPTIONAL, "0/off: no progress bar even on a terminal (propensity.progress)"),
    EnvVar("AIRFLOW_CTX_DAG_ID", Deploy.OPTIONAL, "set by Airflow in tasks: progress is logged, never drawn"),
    EnvVar(
        "PROPENSITY_S3_OUTAGE_SECONDS", Deploy.OPTIONAL, "how long S3 calls keep retrying an unreachable store (60)"
    ),
    # read by third-party clients on our behalf
    EnvVar("AWS_ACCESS_KEY_ID", Deploy.SECRET, "S3 credentials of the application (boto3, pyarrow, MLflow)"),
    EnvVar("AWS_SECRET_ACCESS_KEY", Deploy.SECRET, "S3 credentials of the application (boto3, pyarrow, MLflow)"),
    EnvVar("AWS_ENDPOINT_URL", Deploy.REQUIRED, "S3 endpoint for every boto3 client (MinIO)"),
    EnvVar("MLFLOW_S3_ENDPOINT_URL", Deploy.REQUIRED, "S3 endpoint for MLflow's artifact clients (MinIO)"),
    # the Docker-free local stack (python -m propensity.stack)
    EnvVar("PROPENSITY_STACK_ID", Deploy.LOCAL, "marker of the processes the local stack started"),
    EnvVar("PROPENSITY_STACK_AIRFLOW_PORT", Deploy.LOCAL, "local stack: Airflow API server port"),
    EnvVar("PROPENSITY_STACK_MLFLOW_PORT", Deploy.LOCAL, "local stack: MLflow server port"),
    EnvVar("PROPENSITY_STACK_PASSWORD", Deploy.LOCAL, "local stack: Airflow admin password"),
)
"""Variables that are not settings fields, and settings fields whose need differs from the rule."""


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model an annotation holds (``Model``, ``Model | None``), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        models = [m for m in map(_model_in, typing.get_args(annotation)) if m is not None]
        return models[0] if len(models) == 1 else None
    return None


def _holds_secret(annotation: Any) -> bool:
    if annotation is SecretStr:
        return True
    return any(_holds_secret(arg) for arg in typing.get_args(annotation))


def settings_env_vars(settings_cls: type[BaseSettings] | None = None) -> dict[str, EnvVar]:
    """``{name: EnvVar}`` for every leaf field of the settings model, named as pydantic-settings reads it.

    The need of each: a credential (by type ``SecretStr`` or by name, see :func:`is_secret_name`)
    is ``SECRET``; a top-level field (locations, URIs) is ``REQUIRED``; a field of a nested model
    is ``OPTIONAL`` (tuning with defaults, usually set in the YAML file). An entry of
    :data:`ENV_VARS` with the same name overrides the rule. Dict-valued fields (``tasks``) have
    no fixed names and are left out.
    """
    if settings_cls is None:
        from propensity.config import Settings

        settings_cls = Settings
    config = settings_cls.model_config
    prefix = str(config.get("env_prefix") or "")
    delimiter = config.get("env_nested_delimiter")
    overrides = {var.name: var for var in ENV_VARS}
    found: dict[str, EnvVar] = {}

    def walk(model: type[BaseModel], path: tuple[str, ...]) -> None:
        for field_name, field in model.model_fields.items():
            key = field.alias or field_name
            nested_model = _model_in(field.annotation)
            if nested_model is not None and delimiter:
                walk(nested_model, (*path, key))
                continue
            if typing.get_origin(field.annotation) is dict:
                continue
            name = (prefix + str(delimiter or "__").join((*path, key))).upper()
            if not path and field.alias:
                name = field.alias.upper()  # pydantic-settings does not prefix an alias
            if name in overrides:
                found[name] = EnvVar(name, overrides[name].deploy, overrides[name].purpose, nested=bool(path))
                continue
            if _holds_secret(field.annotation) or is_secret_name(field_name):
                deploy = Deploy.SECRET
            else:
                deploy = Deploy.OPTIONAL if path else Deploy.REQUIRED
            found[name] = EnvVar(name, deploy, field.description or "", nested=bool(path))

    walk(settings_cls, ())
    return found


def env_vars() -> dict[str, EnvVar]:
    """Every known variable: the settings fields, then :data:`ENV_VARS`."""
    return {**settings_env_vars(), **{var.name: var for var in ENV_VARS}}
