"""Object stores: one small interface over local folders and S3-compatible buckets.

Everything that persists files (lake, landing area, CSV drops, exports) goes through a
:class:`Store`, so the same code runs against ``file://`` and ``s3://``. Puts are atomic
per object: locally through write-to-temp + ``os.replace``, on S3 because a PUT is
atomic. Object-store operations use boto3; Parquet reads use pyarrow's filesystems,
which read in parallel and are faster for columnar data.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs


class Store:
    """An object store rooted at ``uri``; keys are ``/``-separated and relative to the root."""

    uri: str

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


@dataclass
class LocalStore(Store):
    root: Path

    def __post_init__(self) -> None:
        self.root = Path(self.root).expanduser().resolve()
        self.uri = f"file://{self.root}"

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents and path != self.root:
            raise ValueError(f"key escapes the store root: {key!r}")
        return path

    def put_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".tmp-{uuid.uuid4().hex}-{path.name}"
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def get_bytes(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        base = self._path(prefix) if prefix else self.root
        if base.is_file():
            return [prefix]
        if not base.is_dir():
            return []
        keys = []
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                if name.startswith(".tmp-"):
                    continue  # an in-flight or crashed write: never visible
                keys.append(str(Path(dirpath, name).relative_to(self.root)))
        return sorted(keys)

    def delete(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._path(key).unlink(missing_ok=True)

    @cached_property
    def arrow_fs(self) -> pafs.FileSystem:
        return pafs.LocalFileSystem()

    def arrow_path(self, key: str) -> str:
        return str(self._path(key))

    def child(self, prefix: str) -> LocalStore:
        return LocalStore(self._path(prefix))


@dataclass
class S3Store(Store):
    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None

    def __post_init__(self) -> None:
        self.prefix = self.prefix.strip("/")
        self.uri = f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    @cached_property
    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name=_region())

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}".lstrip("/") if self.prefix else key

    def ensure_bucket(self) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            self.client.create_bucket(Bucket=self.bucket)

    def put_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def get_bytes(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def list(self, prefix: str = "") -> list[str]:
        full = self._key(prefix)
        strip = len(self.prefix) + 1 if self.prefix else 0
        keys = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
            keys.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        return sorted(keys)

    def delete(self, keys: Iterable[str]) -> None:
        batch = [{"Key": self._key(k)} for k in keys]
        for i in range(0, len(batch), 1000):
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch[i : i + 1000]})

    @cached_property
    def arrow_fs(self) -> pafs.FileSystem:
        kwargs: dict[str, object] = {"region": _region()}
        if self.endpoint_url:
            parsed = urlparse(self.endpoint_url)
            kwargs["endpoint_override"] = parsed.netloc
            kwargs["scheme"] = parsed.scheme or "http"
        return pafs.S3FileSystem(**kwargs)

    def arrow_path(self, key: str) -> str:
        return f"{self.bucket}/{self._key(key)}"

    def child(self, prefix: str) -> S3Store:
        return S3Store(self.bucket, f"{self.prefix}/{prefix}".strip("/"), self.endpoint_url)


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
