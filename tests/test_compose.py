"""docker-compose.yml: well-formed, services buildable from this repository, secrets only from .env."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _env_example() -> set[str]:
    lines = (ROOT / ".env.example").read_text().splitlines()
    return {ln.split("=", 1)[0] for ln in lines if ln and not ln.startswith("#")}


def test_compose_is_well_formed_and_uses_only_env_file_variables():
    text = (ROOT / "docker-compose.yml").read_text()
    doc = yaml.safe_load(text)
    assert set(doc["services"]) >= {"postgres", "minio", "minio-init", "mlflow"}
    for name, svc in doc["services"].items():
        assert "image" in svc or "build" in svc, f"service {name} has neither image nor build"
        for dep in svc.get("depends_on", {}):
            assert dep in doc["services"], f"{name} depends on unknown service {dep}"
    build = doc["services"]["mlflow"]["build"]
    assert (ROOT / build / "Dockerfile").is_file()
    # ${VAR} is interpolated from .env by compose ($${VAR} is escaped for the container shell)
    used = set(re.findall(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*)\}", text))
    missing = used - _env_example()
    assert not missing, f"docker-compose.yml uses variables not in .env.example: {sorted(missing)}"
    assert not re.search(r"(PASSWORD|SECRET)[A-Z_]*:\s*(?!\$\{)\S", text), "a secret is written into the compose file"
    ports = [p for svc in doc["services"].values() for p in svc.get("ports", [])]
    assert all(str(p).startswith("127.0.0.1:") for p in ports), "published ports must bind to loopback"
