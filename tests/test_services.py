"""The native service harness: real PostgreSQL and moto servers on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import boto3
import pytest
import sqlalchemy as sa

from propensity.services import (
    LOOPBACK,
    PostgresServer,
    S3Server,
    ServiceError,
    free_port,
    postgres_available,
)

pytestmark = pytest.mark.services


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex((LOOPBACK, port)) == 0


def _bindable(port: int) -> bool:
    """Whether we could listen on ``port`` ourselves (SO_REUSEADDR tolerates TIME_WAIT)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
            sock.listen()
        except OSError:
            return False
        return True


def _alive(pid: int) -> bool:
    """True while ``pid`` runs; an unreaped zombie counts as ended."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_free_port_is_bindable() -> None:
    assert _bindable(free_port())


# --------------------------------------------------------------------------------- S3


def test_s3_roundtrip(s3_server: S3Server) -> None:
    assert os.environ["PROPENSITY_S3_ENDPOINT_URL"] == s3_server.endpoint_url
    assert os.environ["MLFLOW_S3_ENDPOINT_URL"] == s3_server.endpoint_url
    client = boto3.client("s3", endpoint_url=s3_server.endpoint_url)  # credentials from env
    bucket = f"roundtrip-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=bucket, Key="a/b.txt", Body=b"hello lake")

    assert client.get_object(Bucket=bucket, Key="a/b.txt")["Body"].read() == b"hello lake"
    listed = client.list_objects_v2(Bucket=bucket, Prefix="a/")
    assert [obj["Key"] for obj in listed["Contents"]] == ["a/b.txt"]
    assert bucket in {b["Name"] for b in client.list_buckets()["Buckets"]}


def test_s3_stop_ends_process_and_frees_port() -> None:
    server = S3Server().start()
    port, pid, tmpdir = server.port, server.pid, server.tmpdir
    assert port is not None and pid is not None and tmpdir is not None
    assert _listening(port)

    server.stop()

    assert not _alive(pid)
    assert not _listening(port)
    assert _bindable(port)
    assert not tmpdir.exists()
    server.stop()  # idempotent
    with pytest.raises(ServiceError, match="start"):
        _ = server.endpoint_url


def test_s3_start_failure_reports_log_tail() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        server = S3Server(port=taken.getsockname()[1], startup_timeout=20)
        with pytest.raises(ServiceError, match="log tail"):
            server.start()
    assert server.process is None and server.tmpdir is None


# -------------------------------------------------------------------------- PostgreSQL


def test_postgres_roundtrip(postgres: PostgresServer) -> None:
    url = postgres.create_database(f"roundtrip_{uuid.uuid4().hex[:8]}")
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE scores (customer_id int PRIMARY KEY, score float8)"))
            conn.execute(
                sa.text("INSERT INTO scores VALUES (:c, :s)"),
                [{"c": 1, "s": 0.25}, {"c": 2, "s": 0.75}],
            )
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT customer_id, score FROM scores ORDER BY 1")).all()
            settings = dict(conn.execute(sa.text("SELECT name, setting FROM pg_settings")).tuples().all())
    finally:
        engine.dispose()

    assert [tuple(r) for r in rows] == [(1, 0.25), (2, 0.75)]
    assert settings["listen_addresses"] == LOOPBACK
    assert settings["fsync"] == "off"
    assert settings["unix_socket_directories"].startswith(str(postgres.tmpdir))


def test_postgres_default_url_and_dsn(postgres: PostgresServer) -> None:
    import psycopg2

    assert postgres.url == f"postgresql+psycopg2://postgres@{LOOPBACK}:{postgres.port}/postgres"
    with psycopg2.connect(postgres.dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT current_user, current_database()")
        assert cur.fetchone() == ("postgres", "postgres")
    conn.close()


def test_postgres_stop_ends_process_and_frees_port() -> None:
    reason = postgres_available()
    if reason is not None:
        pytest.skip(reason)
    server = PostgresServer().start()
    port, pid, tmpdir = server.port, server.pid, server.tmpdir
    assert port is not None and pid is not None and tmpdir is not None
    assert _alive(pid) and _listening(port)

    server.stop()

    assert not _alive(pid)
    assert not _listening(port)
    assert _bindable(port)
    assert not tmpdir.exists()
    server.stop()  # idempotent
    with pytest.raises(ServiceError, match="start"):
        _ = server.url

    with server:  # a stopped server can be started again, on a fresh cluster
        with sa.create_engine(server.url).connect() as conn:
            assert conn.execute(sa.text("SELECT 1")).scalar() == 1
        assert server.pid is not None and _alive(server.pid)


def test_postgres_creates_its_default_database() -> None:
    reason = postgres_available()
    if reason is not None:
        pytest.skip(reason)
    with PostgresServer("propensity") as server:
        engine = sa.create_engine(server.url)
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT current_database()")).scalar() == "propensity"
        engine.dispose()


def test_postgres_retries_on_a_taken_port(monkeypatch: pytest.MonkeyPatch) -> None:
    """free_port() can race with another process; start() then retries on a new port."""
    reason = postgres_available()
    if reason is not None:
        pytest.skip(reason)
    import propensity.services as services

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        taken_port = taken.getsockname()[1]
        ports = iter([taken_port, free_port()])
        monkeypatch.setattr(services, "free_port", lambda: next(ports))
        with PostgresServer() as server:
            assert server.port != taken_port
            assert _listening(server.port)


def test_s3_env_reaches_propensity_storage(s3_server: S3Server) -> None:
    """env() carries everything propensity.storage needs, for boto3 and pyarrow alike."""
    from propensity.storage import S3Store, open_store

    store = open_store(f"s3://env-{uuid.uuid4().hex[:8]}/lake")  # endpoint from the env
    assert isinstance(store, S3Store)
    assert store.endpoint_url == s3_server.endpoint_url
    store.put_text("part.txt", "via boto3")
    assert store.list() == ["part.txt"]
    with store.arrow_fs.open_input_stream(store.arrow_path("part.txt")) as stream:
        assert stream.read() == b"via boto3"
