"""Object stores: one small interface over local folders and S3-compatible buckets.

Everything that persists files (lake, landing area, CSV drops, exports) goes through a
:class:`Store`, so the same code runs against ``file://`` and ``s3://``. Puts are atomic
per object: locally through write-to-temp + ``os.replace``, on S3 because a PUT is
atomic. Object-store operations use boto3; Parquet reads use pyarrow's filesystems,
which read in parallel and are faster for columnar data.

Failures are handled where they happen:

* **S3 outages.** An object store that restarts refuses connections for seconds, longer
  than the SDKs' quick retries last (botocore's standard mode backs off from 50 ms and
  gives up after 3 attempts). Every S3 call therefore runs under a :class:`RetryPolicy`:
  botocore (and the AWS SDK under pyarrow) retry each call ``max_attempts`` times in
  ``mode`` (``AWS_MAX_ATTEMPTS``, default 5; ``AWS_RETRY_MODE``: standard, adaptive or legacy), and
  connection errors and 5xx answers are retried again with capped exponential backoff
  until ``PROPENSITY_S3_OUTAGE_SECONDS`` (default 60) have passed. What still fails becomes one
  :class:`~propensity.errors.StoreError` line naming the operation, object and endpoint.
* **Temporary files of killed writers.** A local put writes ``.tmp-<pid>-<id>-<name>``
  first; a process killed before its ``os.replace`` leaves that file behind. Writes and
  listings remove the temporary files of processes that are gone (or, whatever their
  owner, older than :data:`TMP_MAX_AGE`), and listings never return them.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlparse

import pyarrow.fs as pafs

from propensity.errors import StoreError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Environment variables of the retry policy (the first two are botocore's own names).
RETRY_MODE_ENV = "AWS_RETRY_MODE"
MAX_ATTEMPTS_ENV = "AWS_MAX_ATTEMPTS"
OUTAGE_ENV = "PROPENSITY_S3_OUTAGE_SECONDS"
RETRY_MODES = ("standard", "adaptive", "legacy")

#: Prefix of a local put's temporary file; such files are never listed.
TMP_PREFIX = ".tmp-"
#: A temporary file older than this is stale whoever wrote it: no put takes an hour.
TMP_MAX_AGE = 3600.0
_TMP_PID = re.compile(r"^\.tmp-(\d+)-[0-9a-f]{12}-")


# --------------------------------------------------------------------------- retries


@dataclass(frozen=True)
class RetryPolicy:
    """How S3 calls ride out failures: ``max_attempts`` per call in botocore's ``mode``, then
    connection errors and 5xx answers again for up to ``outage_seconds`` (a store restarting)."""

    mode: str = "standard"
    max_attempts: int = 5
    outage_seconds: float = 60.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RetryPolicy:
        """The policy from ``AWS_RETRY_MODE``, ``AWS_MAX_ATTEMPTS`` and ``PROPENSITY_S3_OUTAGE_SECONDS``."""
        env = os.environ if env is None else env
        default = cls()
        mode = env.get(RETRY_MODE_ENV) or default.mode
        if mode not in RETRY_MODES:
            raise ValueError(f"{RETRY_MODE_ENV}={mode!r}: use one of {', '.join(RETRY_MODES)}")
        return cls(
            mode,
            int(_number(env, MAX_ATTEMPTS_ENV, default.max_attempts, minimum=1)),
            _number(env, OUTAGE_ENV, default.outage_seconds, minimum=0),
        )

    def botocore_config(self):
        """botocore's client configuration: this retry mode and attempt count, bounded timeouts."""
        from botocore.config import Config

        # total_max_attempts counts the first try, as AWS_MAX_ATTEMPTS does (botocore's max_attempts does not)
        retries = {"mode": self.mode, "total_max_attempts": self.max_attempts}
        return Config(retries=retries, connect_timeout=10, read_timeout=60)

    def arrow_strategy(self) -> pafs.S3RetryStrategy:
        """The same attempt count for pyarrow's S3 filesystem (the AWS SDK's standard strategy,
        its default one in legacy mode); pyarrow has no adaptive mode."""
        if self.mode == "legacy":
            return pafs.AwsDefaultS3RetryStrategy(max_attempts=self.max_attempts)
        return pafs.AwsStandardS3RetryStrategy(max_attempts=self.max_attempts)


def _number(env: Mapping[str, str], name: str, default: float, minimum: float) -> float:
    text = env.get(name)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not a number") from None
    if value < minimum:
        raise ValueError(f"{name}={text!r} must be at least {minimum:g}")
    return value


def backoff_delays(budget: float, first: float = 0.5, cap: float = 8.0) -> Iterator[float]:
    """Waits between attempts: ``first``, doubling up to ``cap``, until they add up to ``budget``.

    The last wait is cut so the total is exactly ``budget``: the error can then say how long
    the store was given to come back.
    """
    spent, delay = 0.0, first
    while spent < budget:
        wait = min(delay, cap, budget - spent)
        spent += wait
        yield wait
        delay *= 2


def is_outage(exc: BaseException) -> bool:
    """True for failures that a store coming back would cure: no connection, a connection
    dropped or timed out, or a 5xx answer (a proxy in front of a restarting store)."""
    from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

    if isinstance(exc, ConnectionError | HTTPClientError):
        return True
    if isinstance(exc, ClientError):
        return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0) >= 500
    return False


def one_line(exc: BaseException) -> str:
    """An exception as one line of text (botocore messages may carry newlines)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def with_retries(call: Callable[[], T], what: str, budget: float, sleep: Callable[[float], None] = time.sleep) -> T:
    """``call()``, retried on outages (:func:`is_outage`) with :func:`backoff_delays` for up to
    ``budget`` seconds; any botocore error left becomes a one-line :class:`StoreError` about ``what``."""
    from botocore.exceptions import BotoCoreError, ClientError

    delays = backoff_delays(budget)
    while True:
        try:
            return call()
        except (BotoCoreError, ClientError) as exc:
            if not is_outage(exc):
                raise StoreError(f"{what}: {one_line(exc)}") from exc
            delay = next(delays, None)
            if delay is None:
                raise StoreError(f"{what}: {one_line(exc)} (still failing after {budget:g} s of retries)") from exc
            log.warning("%s: %s; retrying in %.1f s", what, one_line(exc), delay)
            sleep(delay)


# --------------------------------------------------------------------------- stores


class Store:
    """An object store rooted at ``uri``; keys are ``/``-separated and relative to the root."""

    uri: str
    #: objects read or written at once: an object store's cost per object is its latency
    io_threads: int = 8

    def put_bytes(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    def get_bytes(self, key: str) -> bytes:
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        raise NotImplementedError

    def list(self, prefix: str = "") -> list[str]:
        """All keys below ``prefix`` (recursive), sorted."""
        raise NotImplementedError

    def delete(self, keys: Iterable[str]) -> None:
        raise NotImplementedError

    @property
    def arrow_fs(self) -> pafs.FileSystem:
        raise NotImplementedError

    def arrow_path(self, key: str) -> str:
        """The path of ``key`` in :attr:`arrow_fs`."""
        raise NotImplementedError

    def child(self, prefix: str) -> Store:
        """A store rooted at ``prefix`` below this one."""
        raise NotImplementedError

    def put_text(self, key: str, text: str) -> None:
        self.put_bytes(key, text.encode())

    def get_text(self, key: str) -> str:
        return self.get_bytes(key).decode()


def tmp_name(name: str, pid: int | None = None) -> str:
    """The temporary name a put of ``name`` writes first: it carries the writer's pid, so a
    leftover can be told from a write in flight."""
    return f"{TMP_PREFIX}{os.getpid() if pid is None else pid}-{uuid.uuid4().hex[:12]}-{name}"


def tmp_owner(filename: str) -> int | None:
    """The pid in a temporary file's name; None when it has none (names written before pids were)."""
    m = _TMP_PID.match(filename)
    return int(m.group(1)) if m else None


def pid_alive(pid: int) -> bool:
    """True while a process ``pid`` exists on this host (another user's process counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def tmp_is_stale(filename: str, age_seconds: float, alive: Callable[[int], bool] = pid_alive) -> bool:
    """A temporary file is left over when its writer is gone, or when it is older than
    :data:`TMP_MAX_AGE` (a recycled pid, or a name without one)."""
    if age_seconds > TMP_MAX_AGE:
        return True
    pid = tmp_owner(filename)
    return pid is not None and not alive(pid)


def remove_stale_tmp(folder: Path, now: float | None = None) -> list[Path]:
    """Delete the left-over temporary files directly in ``folder``; returns what was removed."""
    now = time.time() if now is None else now
    removed = []
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []
    for entry in entries:
        if not entry.name.startswith(TMP_PREFIX) or not entry.is_file(follow_symlinks=False):
            continue
        try:
            if tmp_is_stale(entry.name, now - entry.stat(follow_symlinks=False).st_mtime):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except FileNotFoundError:
            continue  # its writer renamed it, or another cleaner got there first
    if removed:
        log.info("removed %d left-over temporary file(s) in %s", len(removed), folder)
    return removed


@dataclass
class LocalStore(Store):
    root: Path
    #: a local disk answers in microseconds, so more threads than cores only fight over the GIL:
    #: collecting 60 demo days took 4.5 s with 8, 3.8 with 4, 4.1 with 2 and 5.1 with 1 (median of 4)
    io_threads: int = 4

    def __post_init__(self) -> None:
        self.root = Path(self.root).expanduser().resolve()
        self.uri = f"file://{self.root}"

    def _path(self, key: str) -> Path:
        return Path(self._str(key))

    def _str(self, key: str) -> str:
        """The key's file path, checked lexically: keys are built by the library (``..`` is the
        only way out of the root), and stages resolve thousands of them per run, which
        ``Path.resolve`` (a syscall per component) made a quarter of a snapshot's load."""
        root = str(self.root)
        path = os.path.normpath(os.path.join(root, key))
        if path != root and not path.startswith(root + os.sep):
            raise ValueError(f"key escapes the store root: {key!r}")
        return path

    def put_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_tmp(path.parent)
        tmp = path.parent / tmp_name(path.name)
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)  # a failed write (disk full, interrupt) leaves nothing behind
            raise

    def get_bytes(self, key: str) -> bytes:
        with open(self._str(key), "rb") as fh:
            return fh.read()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        base = self._path(prefix) if prefix else self.root
        if base.is_file():
            return [prefix]
        if not base.is_dir():
            return []
        keys: list[str] = []
        skip = len(str(self.root)) + 1
        folders = [str(base)]
        while folders:  # scandir, not os.walk: half the time on a lake of thousands of partitions
            folder = folders.pop()
            with os.scandir(folder) as entries:
                found = [(e.name, e.path, e.is_dir(follow_symlinks=False)) for e in entries]
            if any(name.startswith(TMP_PREFIX) for name, _, is_dir in found if not is_dir):
                remove_stale_tmp(Path(folder))
            for name, path, is_dir in found:
                if is_dir:
                    folders.append(path)
                elif not name.startswith(TMP_PREFIX):  # an in-flight or crashed write: never visible
                    keys.append(path[skip:])
        return sorted(keys)

    def delete(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._path(key).unlink(missing_ok=True)

    @cached_property
    def arrow_fs(self) -> pafs.FileSystem:
        return pafs.LocalFileSystem()

    def arrow_path(self, key: str) -> str:
        return self._str(key)

    def child(self, prefix: str) -> LocalStore:
        return LocalStore(self._path(prefix))


_CLIENT_LOCK = threading.Lock()


@dataclass
class S3Store(Store):
    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy.from_env)

    def __post_init__(self) -> None:
        self.prefix = self.prefix.strip("/")
        self.uri = f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    @cached_property
    def client(self):
        """One client per store, made under a lock: stages call the store from thread pools, and
        boto3's default session is not safe to build clients from concurrently (a client is safe
        to share)."""
        import boto3

        with _CLIENT_LOCK:
            return boto3.client(
                "s3", endpoint_url=self.endpoint_url, region_name=_region(), config=self.retry.botocore_config()
            )

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}".lstrip("/") if self.prefix else key

    def _call(self, op: str, key: str | None, call: Callable[[], T]) -> T:
        """``call()`` under the retry policy; errors name the operation, the object and the endpoint."""
        where = f"s3://{self.bucket}/{self._key(key)}" if key is not None else f"s3://{self.bucket}"
        what = f"S3 {op} of {where} at {self.endpoint_url or 'the AWS endpoint'}"
        return with_retries(call, what, self.retry.outage_seconds)

    def ensure_bucket(self) -> None:
        from botocore.exceptions import ClientError

        def ensure() -> None:
            try:
                self.client.head_bucket(Bucket=self.bucket)
            except ClientError as exc:
                if is_outage(exc):
                    raise
                self.client.create_bucket(Bucket=self.bucket)

        self._call("bucket check", None, ensure)

    def put_bytes(self, key: str, data: bytes) -> None:
        self._call("put", key, lambda: self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data))

    def get_bytes(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        def get() -> bytes | None:
            try:
                return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
            except ClientError as exc:
                if _error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                    return None
                raise

        data = self._call("get", key, get)
        if data is None:
            raise FileNotFoundError(f"s3://{self.bucket}/{self._key(key)}: no such object")
        return data

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        def head() -> bool:
            try:
                self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            except ClientError as exc:
                if _error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                    return False
                raise
            return True

        return self._call("head", key, head)

    def list(self, prefix: str = "") -> list[str]:
        full = self._key(prefix)
        strip = len(self.prefix) + 1 if self.prefix else 0

        def listing() -> list[str]:
            keys = []
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                keys.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
            return keys

        return sorted(self._call("list", prefix, listing))

    def delete(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        for i in range(0, len(keys), 1000):
            chunk = [{"Key": self._key(k)} for k in keys[i : i + 1000]]
            answer = self._call(
                "delete",
                keys[i],
                lambda chunk=chunk: self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": chunk}),
            )
            if answer.get("Errors"):  # a batch delete reports per-key failures in its answer, not by raising
                first = answer["Errors"][0]
                raise StoreError(
                    f"S3 delete of s3://{self.bucket}/{first.get('Key')}: {first.get('Code')}: {first.get('Message')}"
                    f" ({len(answer['Errors'])} of {len(chunk)} objects not deleted)"
                )

    @cached_property
    def arrow_fs(self) -> pafs.FileSystem:
        kwargs: dict[str, object] = {
            "region": _region(),
            "retry_strategy": self.retry.arrow_strategy(),
            "connect_timeout": 10.0,
            "request_timeout": 60.0,
        }
        if self.endpoint_url:
            parsed = urlparse(self.endpoint_url)
            kwargs["endpoint_override"] = parsed.netloc
            kwargs["scheme"] = parsed.scheme or "http"
        return pafs.S3FileSystem(**kwargs)

    def arrow_path(self, key: str) -> str:
        return f"{self.bucket}/{self._key(key)}"

    def child(self, prefix: str) -> S3Store:
        return S3Store(self.bucket, f"{self.prefix}/{prefix}".strip("/"), self.endpoint_url, self.retry)


def _error_code(exc: BaseException) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def _region() -> str:
    return os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1"


def open_store(uri: str | Path, endpoint_url: str | None = None, create: bool = True) -> Store:
    """A store for ``file:///path``, a plain path, or ``s3://bucket/prefix``.

    With ``create`` the bucket is created when missing, so a fresh S3-compatible server
    works without a separate init step (production buckets usually exist already).
    """
    text = str(uri)
    parsed = urlparse(text)
    if parsed.scheme == "s3":
        store = S3Store(parsed.netloc, parsed.path, endpoint_url or os.environ.get("PROPENSITY_S3_ENDPOINT_URL"))
        if create:
            store.ensure_bucket()
        return store
    if parsed.scheme in ("", "file"):
        path = Path(parsed.path if parsed.scheme == "file" else text)
        if create:
            path.mkdir(parents=True, exist_ok=True)
        return LocalStore(path)
    raise ValueError(f"unsupported store URI {text!r}: use a path, file:// or s3://")
