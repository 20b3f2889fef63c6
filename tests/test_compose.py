"""docker-compose.yml is the production-like stack; these tests prove it without a Docker engine.

``tests/data/compose-spec.json`` is the Compose Specification's JSON schema, vendored from
github.com/compose-spec/compose-spec, ``schema/compose-spec.json`` at commit b2835e8a (Apache-2.0).

Static checks, each a function that returns the problems it finds
(``test_the_checks_catch_a_broken_compose_file`` runs them on deliberately broken copies, so
a check that silently passes everything fails the suite):

* the file is valid against the Compose schema, before and after ``${VAR}`` interpolation;
* every service of the stack exists; every long-running service has a healthcheck; every
  dependency waits for ``service_healthy`` (or ``service_completed_successfully`` for the
  one-shot init jobs); data lives in named volumes; published ports bind to loopback;
* secrets come only from ``.env`` (``${VAR}`` references, no literal in the file), every
  referenced variable is in ``.env.example`` and every one there is used;
* every environment variable the code reads (the settings fields and the ``os.environ``
  reads, declared in :mod:`propensity.envvars`) that a deployment must set is set in every
  Airflow service; the settings the Airflow services get point at MinIO, PostgreSQL and the
  MLflow server; every ``AIRFLOW__*`` variable is an option of the installed Airflow;
* versions agree: the Airflow image with the lock, the MLflow image with the lock.

Native checks (``services``): the PostgreSQL init script of the compose file creates the
roles and databases the connection URLs use, and the MLflow service's command and
environment run a real server on them (host allow-list, artifacts proxied to S3 on moto).
Airflow's CLI parses the commands and healthchecks of the Airflow services.
"""

from __future__ import annotations

import ast
import copy
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml
from sqlalchemy.engine import make_url

from propensity.envvars import Deploy, env_vars, is_secret_name, settings_env_vars
from propensity.services import LOOPBACK, MlflowServer, PostgresServer, S3Server, find_postgres_bin, postgres_available

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
SCHEMA = Path(__file__).resolve().parent / "data" / "compose-spec.json"
CODE_DIRS = (ROOT / "src" / "propensity", ROOT / "dags", ROOT / "plugins")

AIRFLOW_SERVICES = {
    "airflow-init": None,  # one-shot: db migrate + admin user
    "airflow-apiserver": ["airflow", "api-server"],
    "airflow-scheduler": ["airflow", "scheduler"],
    "airflow-dag-processor": ["airflow", "dag-processor"],
    "airflow-triggerer": ["airflow", "triggerer"],
    "airflow-worker": ["airflow", "celery", "worker"],
}
STACK_SERVICES = {"postgres", "redis", "minio", "minio-init", "mlflow", *AIRFLOW_SERVICES}
ONE_SHOT = {"minio-init", "airflow-init"}
"""Jobs that run to completion; everything else runs for good and needs a healthcheck."""
DATA_VOLUMES = {"postgres": "/var/lib/postgresql/data", "redis": "/data", "minio": "/data"}

CORE_PROPENSITY = {
    "PROPENSITY_HOME",
    "PROPENSITY_LAKE",
    "PROPENSITY_SHOP_DB",
    "PROPENSITY_MLFLOW_TRACKING_URI",
    "PROPENSITY_S3_ENDPOINT_URL",
}
"""Named by the issue; also derived from the settings model, so a renamed field fails here."""
S3_CLIENT = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL"}
MLFLOW_SERVER_ENV = {
    "MLFLOW_BACKEND_STORE_URI",
    "MLFLOW_ARTIFACTS_DESTINATION",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION",
    "MLFLOW_SERVER_ALLOWED_HOSTS",
}
PROVIDER_SECTIONS = {"celery": "apache-airflow-providers-celery", "fab": "apache-airflow-providers-fab"}
"""Airflow config sections of providers the image ships but the test venv lacks: not checkable here."""
PROVIDER_COMMANDS = {"celery": "apache-airflow-providers-celery", "users": "apache-airflow-providers-fab"}

SECRET_REFERENCE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?\?[^}]*)?\}")
"""``${VAR}``, ``${VAR:?msg}`` or ``${VAR?msg}``: a secret may not have a default in the file."""


# ------------------------------------------------------------------------------ loading


@cache
def _compose_text() -> str:
    return COMPOSE.read_text()


def load_compose() -> dict[str, Any]:
    """The compose file as YAML (anchors and ``<<`` merges resolved, nothing interpolated)."""
    return yaml.safe_load(_compose_text())


def load_env_example(text: str | None = None) -> dict[str, str]:
    text = ENV_EXAMPLE.read_text() if text is None else text
    pairs = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f".env.example: not KEY=VALUE: {line!r}"
            pairs[key.strip()] = value.strip()
    return pairs


def _strings(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every string value (not key) in the document, with its path."""
    if isinstance(node, str):
        yield path, node
    elif isinstance(node, Mapping):
        for key, value in node.items():
            yield from _strings(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _strings(value, f"{path}[{i}]")


# ------------------------------------------------------------------------ interpolation

_DOLLAR = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*)|)")
_BRACED = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>.*))?", re.S)


class MissingVariable(KeyError):
    pass


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's interpolation: ``$$`` -> ``$``, ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}``, ..."""

    def replace(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        if match["bare"]:
            return env.get(match["bare"], "")
        braced = _BRACED.fullmatch(match["braced"] or "")
        if braced is None:
            raise ValueError(f"invalid interpolation {match[0]!r}")
        name, op, arg = braced["name"], braced["op"], braced["arg"] or ""
        current = env.get(name)
        if op in (":?", "?") and (current is None or (op == ":?" and current == "")):
            raise MissingVariable(f"{name} is required: {arg}".rstrip(": "))
        if op == ":-":
            return current or arg
        if op == "-":
            return arg if current is None else current
        if op == ":+":
            return arg if current else ""
        if op == "+":
            return "" if current is None else arg
        return current or ""

    return _DOLLAR.sub(replace, value)


def interpolated(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, Mapping):
        return {key: interpolated(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolated(value, env) for value in node]
    return node


def compose_variables(doc: Mapping[str, Any]) -> set[str]:
    """Names of the variables compose interpolates (``$$`` escapes are the container's)."""
    names = set()
    for _, value in _strings(doc):
        for match in _DOLLAR.finditer(value):
            if match["braced"] is not None:
                braced = _BRACED.fullmatch(match["braced"])
                if braced:
                    names.add(braced["name"])
            elif match["bare"]:
                names.add(match["bare"])
    return names


def service_env(doc: Mapping[str, Any], name: str) -> dict[str, str | None]:
    env = doc["services"][name].get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {key: None if value is None else str(value) for key, value in env.items()}


@cache
def _live() -> dict[str, Any]:
    """The compose file interpolated with .env.example, as ``docker compose config`` would see it."""
    return interpolated(load_compose(), load_env_example())


def live_compose() -> dict[str, Any]:
    return copy.deepcopy(_live())


# ------------------------------------------------------------------------------- checks


def schema_problems(doc: Mapping[str, Any]) -> list[str]:
    schema = json.loads(SCHEMA.read_text())
    validator_cls = jsonschema.validators.validator_for(schema)
    validator_cls.check_schema(schema)
    errors = sorted(validator_cls(schema).iter_errors(doc), key=lambda e: [str(p) for p in e.absolute_path])
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message[:300]}" for e in errors]


def service_problems(doc: Mapping[str, Any]) -> list[str]:
    services = doc.get("services", {})
    problems = [f"missing service {name}" for name in sorted(STACK_SERVICES - set(services))]
    for name, svc in services.items():
        if "image" not in svc and "build" not in svc:
            problems.append(f"{name}: neither image nor build")
        if "build" in svc:
            build = svc["build"] if isinstance(svc["build"], dict) else {"context": svc["build"]}
            dockerfile = ROOT / build.get("context", ".") / build.get("dockerfile", "Dockerfile")
            if not dockerfile.is_file():
                problems.append(f"{name}: no Dockerfile at {dockerfile.relative_to(ROOT)}")
    for name, command in AIRFLOW_SERVICES.items():
        if command is not None and name in services and services[name].get("command") != command:
            problems.append(f"{name}: command should be {command}, is {services[name].get('command')}")
    return problems


def healthcheck_problems(doc: Mapping[str, Any]) -> list[str]:
    problems = []
    for name, svc in doc.get("services", {}).items():
        restart = str(svc.get("restart", "no"))
        if name in ONE_SHOT:
            if restart not in ("no", "on-failure") and not restart.startswith("on-failure:"):
                problems.append(f"{name}: a one-shot job must not restart {restart!r}")
            continue
        check = svc.get("healthcheck") or {}
        if not check.get("test") or check.get("disable") in (True, "true"):
            problems.append(f"{name}: long-running service without a healthcheck")
        if restart not in ("always", "unless-stopped"):
            problems.append(f"{name}: long-running service should restart (always/unless-stopped), has {restart!r}")
    return problems


def dependency_problems(doc: Mapping[str, Any]) -> list[str]:
    services = doc.get("services", {})
    problems = []
    for name, svc in services.items():
        depends = svc.get("depends_on") or {}
        if isinstance(depends, list):
            problems.append(f"{name}: depends_on without conditions {depends}")
            continue
        for dep, spec in depends.items():
            if dep not in services:
                problems.append(f"{name}: depends on unknown service {dep}")
                continue
            wanted = "service_completed_successfully" if dep in ONE_SHOT else "service_healthy"
            if (spec or {}).get("condition") != wanted:
                problems.append(f"{name} -> {dep}: condition should be {wanted}, is {(spec or {}).get('condition')}")
    # no cycles
    state: dict[str, int] = {}

    def visit(name: str, trail: tuple[str, ...]) -> None:
        if state.get(name) == 1:
            problems.append(f"dependency cycle: {' -> '.join((*trail, name))}")
        if state.get(name):
            return
        state[name] = 1
        for dep in services.get(name, {}).get("depends_on") or {}:
            visit(dep, (*trail, name))
        state[name] = 2

    for name in services:
        visit(name, ())
    return problems


def volume_problems(doc: Mapping[str, Any]) -> list[str]:
    declared = set(doc.get("volumes") or {})
    used = set()
    problems = []
    for name, svc in doc.get("services", {}).items():
        mounts = {}
        for volume in svc.get("volumes", []):
            source, _, rest = (
                volume if isinstance(volume, str) else f"{volume['source']}:{volume['target']}"
            ).partition(":")
            mounts[rest.split(":")[0]] = source
            if not source.startswith((".", "/", "~", "$")):
                used.add(source)
                if source not in declared:
                    problems.append(f"{name}: volume {source} is not declared under volumes:")
            elif not (ROOT / source).exists():
                problems.append(f"{name}: bind mount of missing {source}")
        if name in DATA_VOLUMES and mounts.get(DATA_VOLUMES[name], ".").startswith((".", "/")):
            problems.append(f"{name}: its data ({DATA_VOLUMES[name]}) must live in a named volume")
    problems += [f"volume {v} is declared but unused" for v in sorted(declared - used)]
    return problems


def port_problems(doc: Mapping[str, Any]) -> list[str]:
    return [
        f"{name}: port {port} must bind to 127.0.0.1"
        for name, svc in doc.get("services", {}).items()
        for port in svc.get("ports", [])
        if not str(port).startswith(f"{LOOPBACK}:")
    ]


_URL_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^:/@\s]*:(?P<password>[^@\s]*)@")
_FLAG_SECRET = re.compile(r"--(?:password|requirepass|secret[\w-]*)[ =]+(?P<value>\S+)", re.I)
_SQL_PASSWORD = re.compile(r"\b(?:CREATE|ALTER)\s+(?:ROLE|USER)\b[^;]*\bPASSWORD\s+(?!:)['\"]", re.I)
"""``CREATE ROLE x PASSWORD 'literal'``; ``PASSWORD :'psql_variable'`` is fine."""


def secret_problems(doc: Mapping[str, Any], env_example: Mapping[str, str]) -> list[str]:
    """Secrets only by ``${VAR}`` reference; ``.env.example`` holds placeholders only."""
    problems = []
    for name in doc.get("services", {}):
        for key, value in service_env(doc, name).items():
            if is_secret_name(key) and not (value and SECRET_REFERENCE.fullmatch(value)):
                problems.append(f"{name}: {key} must be a ${{VAR}} reference to .env, is {value!r}")
    for path, value in _strings(doc):
        for match in _URL_PASSWORD.finditer(value):
            if match["password"] and not SECRET_REFERENCE.fullmatch(match["password"]):
                problems.append(f"{path}: password written into a URL: {match[0]!r}")
        for match in _FLAG_SECRET.finditer(value):
            if not match["value"].lstrip("\"'").startswith("$"):
                problems.append(f"{path}: literal secret on a command line: {match[0]!r}")
        if _SQL_PASSWORD.search(value):
            problems.append(f"{path}: literal password in SQL")
    for key, value in env_example.items():
        if is_secret_name(key) and not key.endswith("_KEY_ID") and not value.startswith("change-me"):
            problems.append(f".env.example: {key} must be a change-me placeholder, not a value")
    if env_example.get("AWS_ACCESS_KEY_ID") == env_example.get("MINIO_ROOT_USER"):
        problems.append(".env.example: the application's S3 user must differ from MinIO's root user")
    return problems


def variable_problems(doc: Mapping[str, Any], env_example: Mapping[str, str]) -> list[str]:
    problems = []
    for path, value in _strings(doc):
        for match in _DOLLAR.finditer(value):
            if match["bare"]:
                problems.append(f"{path}: ${match['bare']} is interpolated by compose: write ${{...}} or $$ (shell)")
            elif match[0] == "$":
                problems.append(f"{path}: lone $ (write $$ for the container)")
    used = compose_variables(doc)
    problems += [f"${{{v}}} is used but missing from .env.example" for v in sorted(used - set(env_example))]
    problems += [f".env.example: {v} is not used by docker-compose.yml" for v in sorted(set(env_example) - used)]
    return problems


def airflow_env_problems(doc: Mapping[str, Any]) -> list[str]:
    """The Airflow services set what the code needs; no PROPENSITY_* typo (pydantic ignores unknown ones)."""
    known = env_vars()
    must = {name for name, var in known.items() if var.deploy in (Deploy.REQUIRED, Deploy.SECRET)}
    must |= CORE_PROPENSITY | S3_CLIENT
    problems = []
    for name in AIRFLOW_SERVICES:
        if name not in doc.get("services", {}):
            continue
        env = service_env(doc, name)
        problems += [f"{name}: {var} is not set ({_why(known, var)})" for var in sorted(must - set(env))]
        problems += [
            f"{name}: {var} is not a setting of propensity (see propensity.envvars.env_vars())"
            for var in sorted(env)
            if var.startswith("PROPENSITY_") and var not in known
        ]
        problems += [
            f"{name}: {var} is for the local stack only"
            for var in sorted(env)
            if var in known and known[var].deploy == Deploy.LOCAL
        ]
        if env.get("AIRFLOW__CORE__EXECUTOR") != "CeleryExecutor":
            problems.append(f"{name}: AIRFLOW__CORE__EXECUTOR must be CeleryExecutor")
    return problems


def _why(known: Mapping[str, Any], var: str) -> str:
    return known[var].purpose if var in known and known[var].purpose else "needed by the code"


def mlflow_env_problems(doc: Mapping[str, Any]) -> list[str]:
    if "mlflow" not in doc.get("services", {}):
        return ["missing service mlflow"]
    env = service_env(doc, "mlflow")
    problems = [f"mlflow: {var} is not set" for var in sorted((MLFLOW_SERVER_ENV | S3_CLIENT) - set(env))]
    if env.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION") != "false":
        problems.append("mlflow: MLFLOW_SERVER_ENABLE_JOB_EXECUTION must be false")
    command = doc["services"]["mlflow"].get("command") or []
    for flag, value in (("--workers", "1"), ("--host", "0.0.0.0"), ("--port", "5000")):
        if flag not in command or command[command.index(flag) + 1 : command.index(flag) + 2] != [value]:
            problems.append(f"mlflow: command needs {flag} {value}")
    if "--serve-artifacts" not in command:
        problems.append("mlflow: command needs --serve-artifacts (artifacts proxied to MinIO)")
    return problems


@cache
def _airflow_options() -> dict[str, set[str]]:
    """Sections and options of the installed Airflow, read from its config.yml without importing Airflow
    (importing it configures a process-wide ORM and home; see tests/airflow_env.py)."""
    spec = importlib.util.find_spec("airflow")
    assert spec and spec.submodule_search_locations, "Airflow is not installed"
    config_yml = Path(next(iter(spec.submodule_search_locations))) / "config_templates" / "config.yml"
    config = yaml.safe_load(config_yml.read_text())
    return {section: set(spec.get("options", {})) for section, spec in config.items()}


def airflow_config_problems(doc: Mapping[str, Any]) -> list[str]:
    """Every ``AIRFLOW__SECTION__KEY`` is an option of the installed Airflow (or of a provider of the image)."""
    options = _airflow_options()
    problems = []
    for name in doc.get("services", {}):
        for var in service_env(doc, name):
            if not var.startswith("AIRFLOW__"):
                continue
            section, _, key = var[len("AIRFLOW__") :].lower().partition("__")
            if section in PROVIDER_SECTIONS:
                continue
            if key.endswith(("_cmd", "_secret")) and key.rsplit("_", 1)[0] in options.get(section, set()):
                continue
            if key not in options.get(section, set()):
                problems.append(f"{name}: {var} is no option of Airflow's [{section}] section")
    return problems


def connection_problems(live: Mapping[str, Any]) -> list[str]:
    """Interpolated URLs point at services of the stack, as roles and databases the init script creates."""
    services = live["services"]
    roles, databases = postgres_init_objects(live)
    problems = []
    urls = {
        "airflow metadata": service_env(live, "airflow-scheduler")["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"],
        "celery results": service_env(live, "airflow-worker")["AIRFLOW__CELERY__RESULT_BACKEND"],
        "shop database": service_env(live, "airflow-worker")["PROPENSITY_SHOP_DB"],
        "mlflow backend": service_env(live, "mlflow")["MLFLOW_BACKEND_STORE_URI"],
    }
    for what, raw in urls.items():
        url = make_url(str(raw).removeprefix("db+"))
        if url.drivername != "postgresql+psycopg2":  # SQLAlchemy 2.1's default is psycopg 3, not in the lock
            problems.append(f"{what}: driver {url.drivername}, should be postgresql+psycopg2")
        if url.host not in services or url.host != "postgres":
            problems.append(f"{what}: host {url.host} is not the postgres service")
        if url.database not in databases or databases.get(url.database) != url.username:
            problems.append(f"{what}: {url.username}@{url.database} is not a role owning a database of the init script")
        if url.username not in roles:
            problems.append(f"{what}: role {url.username} is not created by the init script")
    broker = make_url(str(service_env(live, "airflow-worker")["AIRFLOW__CELERY__BROKER_URL"]))
    if broker.host != "redis" or broker.password != service_env(live, "redis")["REDIS_PASSWORD"]:
        problems.append("celery broker: not the redis service with its password")
    created = minio_buckets(live)
    for what, raw in {
        "lake": service_env(live, "airflow-worker")["PROPENSITY_LAKE"],
        "landing": service_env(live, "airflow-worker")["PROPENSITY_LANDING"],
        "mlflow artifacts": service_env(live, "mlflow")["MLFLOW_ARTIFACTS_DESTINATION"],
    }.items():
        bucket = str(raw).removeprefix("s3://").split("/")[0]
        if bucket not in created:
            problems.append(f"{what}: bucket {bucket} is not created by minio-init ({sorted(created)})")
    for name in ("airflow-worker", "mlflow"):
        for var in ("AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL", "PROPENSITY_S3_ENDPOINT_URL"):
            value = service_env(live, name).get(var)
            if value is not None and value != "http://minio:9000":
                problems.append(f"{name}: {var} should be MinIO's http://minio:9000, is {value}")
    tracking = urlsplit(str(service_env(live, "airflow-worker")["PROPENSITY_MLFLOW_TRACKING_URI"]))
    command = services["mlflow"]["command"]
    if tracking.hostname != "mlflow" or str(tracking.port) != command[command.index("--port") + 1]:
        problems.append(f"tracking URI {tracking.geturl()} is not the mlflow service's port")
    return problems


def postgres_init_objects(doc: Mapping[str, Any]) -> tuple[set[str], dict[str, str]]:
    """Roles, and databases with their owners, that the postgres-init config creates."""
    sql = doc["configs"]["postgres-init"]["content"]
    roles = set(re.findall(r"CREATE ROLE (\w+)", sql))
    databases = dict(re.findall(r"CREATE DATABASE (\w+) OWNER (\w+)", sql))
    return roles, databases


def minio_buckets(live: Mapping[str, Any]) -> set[str]:
    """Buckets of the ``mc mb`` line of minio-init, its shell variables expanded from its environment."""
    script = " ".join(live["services"]["minio-init"]["command"])
    env = {k: v or "" for k, v in service_env(live, "minio-init").items()}
    buckets = set()
    for line in script.splitlines():
        words = shlex.split(line)
        if words[:2] == ["mc", "mb"]:
            for word in words[2:]:
                if not word.startswith("-"):
                    buckets.add(re.sub(r"\$\{(\w+)\}", lambda m: env.get(m[1], ""), word).split("/", 1)[1])
    return buckets


def all_problems(doc: Mapping[str, Any], env_example: Mapping[str, str]) -> list[str]:
    """Every check on ``doc``; a check that crashes on a broken file counts as having found it."""
    problems: list[str] = []

    def run(check: Any, *args: Any) -> None:
        try:
            problems.extend(check(*args))
        except Exception as exc:
            problems.append(f"{check.__name__} failed: {exc!r}")

    for check in (service_problems, healthcheck_problems, dependency_problems, volume_problems, port_problems):
        run(check, doc)
    run(schema_problems, doc)
    run(secret_problems, doc, env_example)
    run(variable_problems, doc, env_example)
    for check in (airflow_env_problems, mlflow_env_problems, airflow_config_problems):
        run(check, doc)
    try:
        live = interpolated(doc, env_example)
    except (MissingVariable, ValueError) as exc:
        return [*problems, f"interpolation with .env.example fails: {exc}"]
    run(schema_problems, live)
    run(connection_problems, live)
    return problems


# -------------------------------------------------------------------- the code's reads


def _module_constants(tree: ast.Module) -> dict[str, str]:
    return {
        target.id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
        for target in node.targets
        if isinstance(target, ast.Name)
    }


def _is_environ(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "environ") or (
        isinstance(node, ast.Name) and node.id == "environ"
    )


def code_env_reads() -> dict[str, str]:
    """``{variable: where}`` for what the code reads: ``os.environ[...]``, ``.get``, ``os.getenv``,
    ``in os.environ``, and every ``"PROPENSITY_..."`` string literal (reads through helpers)."""
    trees = {path: ast.parse(path.read_text(), str(path)) for d in CODE_DIRS for path in sorted(d.rglob("*.py"))}
    constants: dict[str, str] = {}
    for tree in trees.values():
        constants.update(_module_constants(tree))

    def name_of(node: ast.AST) -> str | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if isinstance(node, ast.Name):
            return constants.get(node.id)
        return None

    reads: dict[str, str] = {}
    for path, tree in trees.items():
        where = str(path.relative_to(ROOT))
        for node in ast.walk(tree):
            found = None
            if isinstance(node, ast.Call) and node.args and isinstance(node.func, ast.Attribute):
                func = node.func
                if (func.attr == "get" and _is_environ(func.value)) or func.attr == "getenv":
                    found = name_of(node.args[0])
            elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and _is_environ(node.value):
                found = name_of(node.slice)
            elif isinstance(node, ast.Compare) and any(_is_environ(c) for c in node.comparators):
                found = name_of(node.left)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                found = node.value if re.fullmatch(r"PROPENSITY_[A-Z0-9_]+", node.value) else None
            if found and re.fullmatch(r"[A-Z_][A-Z0-9_]*", found):
                reads.setdefault(found, f"{where}:{getattr(node, 'lineno', '?')}")
    return reads


# -------------------------------------------------------------------------------- tests


def assert_none(problems: list[str]) -> None:
    assert not problems, "\n".join(["docker-compose.yml:", *problems])


def test_vendored_schema_is_the_compose_spec() -> None:
    schema = json.loads(SCHEMA.read_text())
    assert schema["title"] == "Compose Specification"
    assert {"service", "healthcheck", "config"} <= set(schema["definitions"])
    jsonschema.validators.validator_for(schema).check_schema(schema)


def test_compose_matches_the_compose_spec_schema() -> None:
    assert_none(schema_problems(load_compose()))
    assert_none(schema_problems(live_compose()))


def test_every_service_of_the_stack_exists_and_builds_from_this_repository() -> None:
    assert_none(service_problems(load_compose()))


def test_long_running_services_have_healthchecks_and_one_shot_jobs_do_not_restart() -> None:
    assert_none(healthcheck_problems(load_compose()))


def test_dependencies_wait_for_healthy_or_completed_services() -> None:
    assert_none(dependency_problems(load_compose()))


def test_data_lives_in_named_volumes_and_ports_bind_to_loopback() -> None:
    doc = load_compose()
    assert_none(volume_problems(doc))
    assert_none(port_problems(doc))


def test_secrets_come_only_from_the_env_file() -> None:
    assert_none(secret_problems(load_compose(), load_env_example()))


def test_every_variable_is_in_env_example_and_every_example_is_used() -> None:
    assert_none(variable_problems(load_compose(), load_env_example()))


def test_compose_refuses_to_start_without_its_secrets() -> None:
    env = load_env_example()
    for secret in [k for k in env if is_secret_name(k)]:
        with pytest.raises(MissingVariable, match=secret):
            interpolated(load_compose(), {k: v for k, v in env.items() if k != secret})


def test_the_code_reads_only_declared_variables() -> None:
    """A new ``os.environ`` read must be declared in propensity.envvars.ENV_VARS with its deploy need."""
    known = env_vars()
    undeclared = {name: where for name, where in code_env_reads().items() if name not in known}
    assert not undeclared, f"declare these in propensity.envvars.ENV_VARS: {undeclared}"


def test_core_settings_are_fields_of_the_settings_model() -> None:
    assert set(settings_env_vars()) >= CORE_PROPENSITY
    assert {Deploy.REQUIRED} == {settings_env_vars()[name].deploy for name in CORE_PROPENSITY}


def test_airflow_services_set_every_variable_the_code_needs() -> None:
    assert_none(airflow_env_problems(load_compose()))


def test_mlflow_service_is_configured_like_the_native_server() -> None:
    assert_none(mlflow_env_problems(load_compose()))


def test_airflow_variables_are_options_of_the_installed_airflow() -> None:
    assert_none(airflow_config_problems(load_compose()))


def test_urls_point_at_the_stack_and_at_what_its_init_jobs_create() -> None:
    assert_none(connection_problems(live_compose()))


def test_airflow_services_get_settings_on_minio_postgres_and_mlflow(monkeypatch: pytest.MonkeyPatch) -> None:
    from propensity.config import Settings

    live = live_compose()
    for name in AIRFLOW_SERVICES:
        for var in [v for v in os.environ if v.startswith("PROPENSITY_")]:
            monkeypatch.delenv(var)
        for var, value in service_env(live, name).items():
            monkeypatch.setenv(var, value or "")
        settings = Settings()
        env = load_env_example()
        assert settings.lake_uri == f"s3://{env['LAKE_BUCKET']}/lake", name
        assert settings.landing_uri.startswith(f"s3://{env['LAKE_BUCKET']}/"), name
        assert settings.drops_uri.startswith(f"s3://{env['LAKE_BUCKET']}/"), name
        assert make_url(settings.shop_db_url).get_backend_name() == "postgresql", name
        assert settings.tracking_uri == "http://mlflow:5000", name
        assert settings.s3_endpoint_url == "http://minio:9000", name
        assert settings.audiences.salt == env["AUDIENCES_SALT"], name
        # PROPENSITY_HOME is persisted: a named volume is mounted exactly there
        mounts = {v.split(":")[1]: v.split(":")[0] for v in live["services"][name]["volumes"]}
        assert mounts.get(str(settings.home)) in live["volumes"], name


def test_images_agree_with_the_lock() -> None:
    lock = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (ROOT / "requirements.txt").read_text(), re.M))
    lock = {k.lower(): v for k, v in lock.items()}
    dockerfile = (ROOT / "Dockerfile").read_text()
    image = re.search(r"^FROM apache/airflow:(?P<airflow>[\d.]+)-python(?P<python>[\d.]+)\s*$", dockerfile, re.M)
    assert image, "Dockerfile must build FROM apache/airflow:<version>-python<version>"
    assert image["airflow"] == lock["apache-airflow"]
    assert f">={image['python']}" in (ROOT / "pyproject.toml").read_text()
    assert load_compose()["x-airflow-common"]["image"].endswith(f":{image['airflow']}")
    server_pins = dict(
        re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (ROOT / "mlflow" / "requirements.txt").read_text(), re.M)
    )
    assert server_pins and all(lock.get(k.lower()) == v for k, v in server_pins.items()), server_pins
    assert load_compose()["services"]["mlflow"]["image"].endswith(f":{lock['mlflow']}")


def test_mlflow_image_command_is_the_compose_command() -> None:
    cmd = re.search(r"^CMD (\[.*\])\s*$", (ROOT / "mlflow" / "Dockerfile").read_text(), re.M)
    assert cmd and json.loads(cmd[1]) == load_compose()["services"]["mlflow"]["command"]


def test_mlflow_reads_its_stores_from_these_environment_variables() -> None:
    from mlflow.cli import server

    envvars = {param.envvar for param in server.params}
    assert MLFLOW_SERVER_ENV - {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION"} <= envvars


def test_airflow_build_context_holds_what_the_dockerfile_needs() -> None:
    ignore = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    rules = [line for line in ignore if line and not line.startswith("#")]
    assert rules[0] == "*", "the context starts empty and re-includes what the image needs"
    included = {line[1:] for line in rules if line.startswith("!")}
    assert included == {"requirements.txt", "pyproject.toml", "README.md", "src"}
    assert all((ROOT / path).exists() for path in included)


@pytest.mark.slow
def test_airflow_cli_accepts_the_commands_of_the_airflow_services(tmp_path: Path) -> None:
    """Commands and healthchecks parse with the installed Airflow (provider commands excepted)."""
    live = live_compose()
    lines = []
    for name in AIRFLOW_SERVICES:
        svc = live["services"][name]
        command = svc["command"]
        if command[0] == "bash":
            script = command[-1].replace("\\\n", " ")
            lines += [shlex.split(line) for line in script.splitlines() if line.strip().startswith("airflow ")]
        else:
            lines.append(command)
        test = (svc.get("healthcheck") or {}).get("test") or []
        if test[:1] == ["CMD-SHELL"] and test[1].startswith("airflow "):
            lines.append(shlex.split(test[1].replace("${HOSTNAME}", "worker-1")))
    argvs = [line[1:] for line in lines if line[0] == "airflow" and line[1] not in PROVIDER_COMMANDS]
    assert len(argvs) >= 6, argvs
    probe = (
        "import json, sys\n"
        "from airflow.cli.cli_parser import get_parser\n"
        "parser, bad = get_parser(), {}\n"
        "for argv in json.loads(sys.argv[1]):\n"
        "    try:\n"
        "        parser.parse_args(argv)\n"
        "    except SystemExit as exc:\n"
        "        bad[' '.join(argv)] = exc.code\n"
        "print(json.dumps(bad))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "_AIRFLOW", "PROPENSITY_"))}
    env |= {"AIRFLOW_HOME": str(tmp_path), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{tmp_path / 'airflow.db'}"
    done = subprocess.run(
        [sys.executable, "-c", probe, json.dumps(argvs)], capture_output=True, text=True, env=env, timeout=180
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {}, done.stderr[-3000:]


@pytest.mark.parametrize(
    "mutation",
    [
        "drop the scheduler's healthcheck",
        "write the postgres password into the file",
        "put a password into a connection URL",
        "use a variable missing from .env.example",
        "drop PROPENSITY_LAKE from the worker",
        "misspell a PROPENSITY_ variable",
        "start before postgres is healthy",
        "misspell a healthcheck key",
        "remove the redis service",
        "publish a port on every interface",
        "let mlflow run jobs",
        "misspell an Airflow option",
        "point the shop database at a database nobody creates",
        "keep MLflow's artifacts in a bucket nobody creates",
        "leave the database driver to SQLAlchemy",
    ],
)
def test_the_checks_catch_a_broken_compose_file(mutation: str) -> None:
    doc = copy.deepcopy(load_compose())
    env = load_env_example()
    assert_none(all_problems(doc, env))
    services = doc["services"]
    worker_env = services["airflow-worker"]["environment"]
    if mutation == "drop the scheduler's healthcheck":
        del services["airflow-scheduler"]["healthcheck"]
    elif mutation == "write the postgres password into the file":
        services["postgres"]["environment"]["POSTGRES_PASSWORD"] = "hunter22"
    elif mutation == "put a password into a connection URL":
        worker_env["PROPENSITY_SHOP_DB"] = "postgresql+psycopg2://shop:hunter22@postgres:5432/shop"
    elif mutation == "use a variable missing from .env.example":
        worker_env["PROPENSITY_DROPS"] = "s3://${DROPS_BUCKET:?}/drops"
    elif mutation == "drop PROPENSITY_LAKE from the worker":
        del worker_env["PROPENSITY_LAKE"]
    elif mutation == "misspell a PROPENSITY_ variable":
        worker_env["PROPENSITY_MLFLOW_TRACKING_URL"] = worker_env.pop("PROPENSITY_MLFLOW_TRACKING_URI")
    elif mutation == "start before postgres is healthy":
        services["mlflow"]["depends_on"]["postgres"]["condition"] = "service_started"
    elif mutation == "misspell a healthcheck key":
        services["redis"]["healthcheck"]["retry"] = services["redis"]["healthcheck"].pop("retries")
    elif mutation == "remove the redis service":
        del services["redis"]
    elif mutation == "publish a port on every interface":
        services["mlflow"]["ports"] = ["5000:5000"]
    elif mutation == "let mlflow run jobs":
        services["mlflow"]["environment"]["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "true"
    elif mutation == "misspell an Airflow option":
        worker_env["AIRFLOW__CORE__DAGS_ARE_PAUSED_ON_CREATION"] = "true"
    elif mutation == "point the shop database at a database nobody creates":
        worker_env["PROPENSITY_SHOP_DB"] = worker_env["PROPENSITY_SHOP_DB"].replace("/shop", "/store")
    elif mutation == "keep MLflow's artifacts in a bucket nobody creates":
        services["mlflow"]["environment"]["MLFLOW_ARTIFACTS_DESTINATION"] = "s3://${LAKE_BUCKET:?}x/artifacts"
    elif mutation == "leave the database driver to SQLAlchemy":
        worker_env["AIRFLOW__CELERY__RESULT_BACKEND"] = worker_env["AIRFLOW__CELERY__RESULT_BACKEND"].replace(
            "+psycopg2", ""
        )
    else:  # pragma: no cover
        raise AssertionError(mutation)
    assert all_problems(doc, env), f"no check noticed: {mutation}"


# ------------------------------------------------------------------- native services


def _psql() -> str | None:
    bin_dir = find_postgres_bin()
    candidate = bin_dir / "psql" if bin_dir else None
    return str(candidate) if candidate and candidate.is_file() else shutil.which("psql")


@pytest.fixture(scope="module")
def compose_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """A private PostgreSQL cluster initialised by the compose file's postgres-init script, as the image does."""
    reason = postgres_available() or (None if _psql() else "no psql binary")
    if reason:
        pytest.skip(f"PostgreSQL unavailable: {reason}")
    live = live_compose()
    script = tmp_path_factory.mktemp("postgres-init") / "10-propensity.sql"
    script.write_text(live["configs"]["postgres-init"]["content"])
    with PostgresServer() as server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env |= {k: v or "" for k, v in service_env(live, "postgres").items()}
        done = subprocess.run(
            [_psql(), "-v", "ON_ERROR_STOP=1", "--no-psqlrc", "-h", LOOPBACK, "-p", str(server.port),
             "-U", "postgres", "-d", "postgres", "-f", str(script)],
            capture_output=True, text=True, env=env, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        yield server


def _local(url: str, server: PostgresServer) -> str:
    return make_url(url.removeprefix("db+")).set(host=LOOPBACK, port=server.port).render_as_string(hide_password=False)


@pytest.mark.services
def test_postgres_init_creates_what_the_connection_urls_use(compose_postgres: PostgresServer) -> None:
    import sqlalchemy as sa

    live = live_compose()
    urls = [
        service_env(live, "airflow-scheduler")["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"],
        service_env(live, "airflow-worker")["AIRFLOW__CELERY__RESULT_BACKEND"],
        service_env(live, "airflow-worker")["PROPENSITY_SHOP_DB"],
        service_env(live, "mlflow")["MLFLOW_BACKEND_STORE_URI"],
    ]
    for url in urls:
        expected = make_url(str(url).removeprefix("db+"))
        engine = sa.create_engine(_local(str(url), compose_postgres))
        try:
            with engine.begin() as conn:
                user, database = conn.execute(sa.text("SELECT current_user, current_database()")).one()
                conn.execute(sa.text("CREATE TABLE probe (id int)"))  # the role owns its database's schema
                conn.execute(sa.text("DROP TABLE probe"))
        finally:
            engine.dispose()
        assert (user, database) == (expected.username, expected.database)
    engine = sa.create_engine(compose_postgres.url)
    try:
        with engine.connect() as conn:
            passwords = dict(conn.execute(sa.text("SELECT rolname, rolpassword FROM pg_authid")).tuples().all())
    finally:
        engine.dispose()
    for role in ("airflow", "mlflow", "shop"):
        assert passwords[role], f"role {role} has no password: \\getenv did not read it"


class _ComposeMlflow(MlflowServer):
    """``mlflow server`` run with the compose service's command and environment (host and port local)."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        super().__init__(env["MLFLOW_BACKEND_STORE_URI"], env["MLFLOW_ARTIFACTS_DESTINATION"], extra_env=env)
        self.compose_command = command

    def _command(self) -> list[str]:
        cmd = list(self.compose_command)
        cmd[cmd.index("--host") + 1] = LOOPBACK
        cmd[cmd.index("--port") + 1] = str(self.port)
        return [sys.executable, "-m", *cmd]

    def _env(self) -> dict[str, str]:
        return {**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}, **self.extra_env}


@pytest.mark.services
@pytest.mark.slow
def test_mlflow_service_runs_natively_with_the_compose_settings(
    compose_postgres: PostgresServer, s3_server: S3Server
) -> None:
    import boto3
    from mlflow.server.security_utils import get_default_allowed_hosts, is_allowed_host_header
    from mlflow.tracking import MlflowClient

    live = live_compose()
    env = {k: v or "" for k, v in service_env(live, "mlflow").items()}
    env["MLFLOW_BACKEND_STORE_URI"] = _local(env["MLFLOW_BACKEND_STORE_URI"], compose_postgres)
    bucket = f"mlflow-{uuid.uuid4().hex[:8]}"
    env["MLFLOW_ARTIFACTS_DESTINATION"] = env["MLFLOW_ARTIFACTS_DESTINATION"].replace(
        f"s3://{load_env_example()['MLFLOW_BUCKET']}/", f"s3://{bucket}/"
    )
    env |= {k: v for k, v in s3_server.env().items() if k.startswith("AWS_")}
    env |= {"MLFLOW_S3_ENDPOINT_URL": s3_server.endpoint_url, "AWS_ENDPOINT_URL": s3_server.endpoint_url}
    s3 = boto3.client("s3", endpoint_url=s3_server.endpoint_url)
    s3.create_bucket(Bucket=bucket)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def status(server: MlflowServer, host: str) -> int:
        """Status of an API call with this Host header (/health is exempt from host validation)."""
        url = f"{server.endpoint_url}/api/2.0/mlflow/experiments/search?max_results=1"
        request = urllib.request.Request(url, headers={"Host": host})
        try:
            with opener.open(request, timeout=10) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code

    tracking = urlsplit(str(service_env(live, "airflow-worker")["PROPENSITY_MLFLOW_TRACKING_URI"]))
    with _ComposeMlflow(live["services"]["mlflow"]["command"], env) as server:
        # Airflow calls http://mlflow:5000: MLflow's default allow-list (localhost, private IPs)
        # rejects that Host header, the compose service's admits it (and still rejects others)
        assert not is_allowed_host_header(get_default_allowed_hosts(), tracking.netloc)
        assert status(server, tracking.netloc) == 200
        assert status(server, "localhost:5000") == 200  # the browser, through the published port
        assert status(server, "attacker.example:5000") == 403
        # artifacts go through the server (mlflow-artifacts:/) into the S3 bucket
        client = MlflowClient(tracking_uri=server.tracking_uri, registry_uri=server.tracking_uri)
        experiment = client.create_experiment(f"compose-{uuid.uuid4().hex[:8]}")
        run = client.create_run(experiment)
        client.log_text(run.info.run_id, "hello lake", "probe/hello.txt")
        keys = [obj["Key"] for obj in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert any(key.startswith("artifacts/") and key.endswith("probe/hello.txt") for key in keys), keys
