"""Folders to and from S3 (or any S3-compatible server) with boto3, with progress, timing and clear errors.

    up = upload_folder(ckpt_dir, "s3://my-bucket/runs/llama/step_00000100")   # -> Transfer (files, bytes, s)
    down = download_prefix("s3://my-bucket/runs/llama/step_00000100", "/tmp/restore/step_00000100")
    folder = fetch_folder("s3://my-bucket/models/Llama-3.2-1B")                # cached: load_llama uses it

Folders move file by file, several at once (``max_workers``), each big file in parallel parts (multipart,
``TransferConfig``). Two packages use this: ``smml_lib.models`` loads checkpoints from S3 prefixes, and
``smml_lib.checkpoint`` keeps training checkpoints there (``smml_lib.checkpoint.targets``).

**Completeness.** S3 has no atomic folder rename, so ``COMMIT_MARKER`` (``meta.json``, the file a
checkpoint writes last to say it is complete) is uploaded *last*: a prefix without it is an interrupted
upload, the same rule as ``.partial`` folders on disk.

**Endpoints and credentials.** ``endpoint_url`` (or ``AWS_ENDPOINT_URL_S3``) points boto3 at an
S3-compatible server: MinIO, Ceph, or moto for tests (``LocalS3``: a real HTTP server on 127.0.0.1).
For AWS itself, credentials must be configured (``smml_lib.common.credentials.aws_credentials_source``); without
them the error says so at once instead of boto3 searching for minutes. Keys are never printed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from tqdm.auto import tqdm

from smml_lib.common.credentials import aws_credentials_source, redact
from smml_lib.common.paths import cache_dir

COMMIT_MARKER = "meta.json"  # uploaded last; smml_lib.checkpoint.sharded writes it last too


class StorageError(RuntimeError):
    """An S3 transfer failed; the message says why (no credentials, no bucket, no server...) and what to do."""


@dataclass
class Transfer:
    """One upload or download: how many files and bytes, how long, how fast."""

    direction: str  # "upload" or "download"
    url: str
    local: Path
    files: int
    bytes: int
    seconds: float

    @property
    def mb_per_s(self) -> float:
        return self.bytes / self.seconds / 1e6 if self.seconds > 0 else float("nan")

    def row(self) -> dict[str, Any]:
        return {"direction": self.direction, "url": self.url, "files": self.files, "size_bytes": self.bytes,
                "seconds": self.seconds, "mb_per_s": self.mb_per_s}


def parse_s3_url(url: str) -> tuple[str, str]:
    """``"s3://bucket/a/b/"`` -> ``("bucket", "a/b")``."""
    if not url.startswith("s3://") or len(url) <= 5:
        raise StorageError(f"{url!r} is not an S3 URL; use s3://bucket/prefix")
    bucket, _, prefix = url[5:].partition("/")
    return bucket, prefix.strip("/")


def s3_client(endpoint_url: str | None = None, *, region: str | None = None, access_key: str | None = None,
              secret_key: str | None = None) -> Any:
    """A boto3 S3 client with short timeouts and few retries (errors in seconds, not minutes).

    ``endpoint_url`` (else ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``): an S3-compatible server. For AWS
    itself, credentials must be configured (env, profile, role); checked first without any network call.
    """
    import boto3  # deferred: optional extra [aws]
    from botocore.config import Config  # deferred: optional extra [aws]

    endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not (access_key or endpoint or aws_credentials_source()):
        raise StorageError("No AWS credentials are configured (environment variables, ~/.aws profile, or an "
                           "instance role on EC2). Run `aws configure` or attach a role with S3 access; for an "
                           "S3-compatible server pass endpoint_url=... (tests use a local one, LocalS3).")
    config = Config(connect_timeout=5, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"},
                    s3={"addressing_style": "path"} if endpoint else None)
    return boto3.client("s3", endpoint_url=endpoint, region_name=region or os.environ.get("AWS_REGION", "us-east-1"),
                        aws_access_key_id=access_key, aws_secret_access_key=secret_key, config=config)


def explain(exc: Exception, url: str) -> StorageError:
    """Turn a botocore exception into a ``StorageError`` that says what to do (secrets redacted)."""
    from botocore.exceptions import (  # deferred: optional extra [aws]
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
    )

    bucket = parse_s3_url(url)[0] if url.startswith("s3://") else url
    if isinstance(exc, NoCredentialsError):
        return StorageError(f"{url}: no AWS credentials found (aws configure, or an instance role).")
    if isinstance(exc, EndpointConnectionError):
        return StorageError(f"{url}: cannot reach the S3 endpoint ({exc}). Check endpoint_url / the network.")
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        if code == "NoSuchBucket":
            return StorageError(f"{url}: bucket {bucket!r} does not exist (create it: aws s3 mb s3://{bucket}).")
        if code in ("404", "NoSuchKey"):
            return StorageError(f"{url}: an object listed a moment ago is gone (deleted during the transfer?).")
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return StorageError(f"{url}: access denied ({code}): these credentials may not use bucket {bucket!r}.")
        return StorageError(f"{url}: S3 error {code}: {redact(str(exc))}")
    if "NoSuchBucket" in str(exc):  # boto3's upload_file wraps the ClientError in S3UploadFailedError
        return StorageError(f"{url}: bucket {bucket!r} does not exist (create it: aws s3 mb s3://{bucket}).")
    return StorageError(f"{url}: {type(exc).__name__}: {redact(str(exc))}")


def _progress(total_bytes: int, desc: str, enabled: bool) -> Any:
    return tqdm(total=total_bytes, unit="B", unit_scale=True, desc=desc, disable=not enabled, leave=False)


def _transfer_config(max_workers: int) -> Any:
    from boto3.s3.transfer import TransferConfig  # deferred: optional extra [aws]

    return TransferConfig(multipart_threshold=64 * 2**20, multipart_chunksize=64 * 2**20,
                          max_concurrency=max_workers, use_threads=True)


def upload_folder(local: str | os.PathLike, url: str, *, client: Any = None, endpoint_url: str | None = None,
                  progress: bool = True, max_workers: int = 8) -> Transfer:
    """Upload every file under ``local`` to ``url`` (keys keep the relative paths); ``meta.json`` goes last."""
    local = Path(local)
    if not local.is_dir():
        raise StorageError(f"{local} is not a folder")
    bucket, prefix = parse_s3_url(url)
    client = client or s3_client(endpoint_url)
    files = sorted((f for f in local.rglob("*") if f.is_file()), key=lambda f: (f.name == COMMIT_MARKER, str(f)))
    total = sum(f.stat().st_size for f in files)
    cfg = _transfer_config(max_workers)
    t0 = time.perf_counter()
    with _progress(total, f"upload {local.name}", progress) as bar:
        def put(f: Path) -> None:
            key = "/".join(filter(None, [prefix, f.relative_to(local).as_posix()]))
            client.upload_file(str(f), bucket, key, Config=cfg, Callback=bar.update)

        try:
            with ThreadPoolExecutor(max_workers) as pool:
                list(pool.map(put, [f for f in files if f.name != COMMIT_MARKER]))
            for f in files:  # the commit markers, after everything else has arrived
                if f.name == COMMIT_MARKER:
                    put(f)
        except Exception as exc:  # boto3 raises many types; all become a clear StorageError
            raise explain(exc, url) from None
    return Transfer("upload", url, local, len(files), total, time.perf_counter() - t0)


def list_prefix(url: str, *, client: Any = None, endpoint_url: str | None = None) -> list[dict[str, Any]]:
    """Objects under ``url``: ``[{"key", "size_bytes", "last_modified"}]``."""
    bucket, prefix = parse_s3_url(url)
    client = client or s3_client(endpoint_url)
    out = []
    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/" if prefix else "")
        for page in pages:
            out += [{"key": o["Key"], "size_bytes": o["Size"], "last_modified": o["LastModified"]}
                    for o in page.get("Contents", [])]
    except Exception as exc:
        raise explain(exc, url) from None
    return out


def download_prefix(url: str, local: str | os.PathLike, *, client: Any = None, endpoint_url: str | None = None,
                    progress: bool = True, max_workers: int = 8, skip_existing: bool = True) -> Transfer:
    """Download every object under ``url`` into ``local`` (same relative paths).

    ``skip_existing``: files already there with the same size are not fetched again (a cache).
    """
    bucket, prefix = parse_s3_url(url)
    client = client or s3_client(endpoint_url)
    objects = list_prefix(url, client=client)
    if not objects:
        raise StorageError(f"nothing under {url} (wrong prefix, or the upload never happened)")
    local = Path(local)
    todo = []
    for o in objects:
        dest = local / o["key"][len(prefix):].lstrip("/")
        if not (skip_existing and dest.exists() and dest.stat().st_size == o["size_bytes"]):
            todo.append((o["key"], dest, o["size_bytes"]))
    total = sum(t[2] for t in todo)
    cfg = _transfer_config(max_workers)
    t0 = time.perf_counter()
    with _progress(total, f"download {Path(prefix).name or bucket}", progress) as bar:
        def get(item: tuple[str, Path, int]) -> None:
            key, dest, _ = item
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(dest.name + ".part")
            client.download_file(bucket, key, str(tmp), Config=cfg, Callback=bar.update)
            os.replace(tmp, dest)  # never a half-written file under the final name

        try:
            with ThreadPoolExecutor(max_workers) as pool:
                list(pool.map(get, todo))
        except Exception as exc:
            raise explain(exc, url) from None
    return Transfer("download", url, local, len(todo), total, time.perf_counter() - t0)


def fetch_folder(url: str, *, endpoint_url: str | None = None, progress: bool = True) -> Path:
    """Download a folder (a model checkpoint) from S3 into the smml cache, once, and return the local copy.

    Later calls fetch only what changed (same-size files are kept): ``load_llama("s3://...")`` goes through here.
    """
    bucket, prefix = parse_s3_url(url)
    dest = cache_dir("s3", bucket, *prefix.split("/"))
    download_prefix(url, dest, endpoint_url=endpoint_url, progress=progress)
    return dest


class LocalS3:
    """An S3-compatible server on 127.0.0.1 (moto's server mode) for tests and smoke-mode labs.

    Real HTTP, real boto3 calls, nothing leaves the machine. ``with LocalS3() as s3: s3.client()...``
    """

    def __init__(self, bucket: str = "smml-checkpoints"):
        self.bucket = bucket
        self._server: Any = None
        self.endpoint_url = ""

    def start(self) -> "LocalS3":
        try:
            from moto.server import ThreadedMotoServer  # deferred: dev extra: tests and smoke labs only
        except ImportError:
            raise StorageError("the local S3 server needs moto: pip install 'moto[server]' (part of the course's "
                               "dev extra: pip install -e '.[dev]')") from None
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        self.client().create_bucket(Bucket=self.bucket)
        return self

    def client(self) -> Any:
        return s3_client(self.endpoint_url, access_key="smml-local", secret_key="smml-local")

    def url(self, *parts: str) -> str:
        return "/".join([f"s3://{self.bucket}", *[p.strip("/") for p in parts if p]])

    @contextlib.contextmanager
    def environment(self) -> Iterator[None]:
        """Point boto3 default clients at this server (for code that takes no client, e.g. load_llama)."""
        keys = {"AWS_ENDPOINT_URL_S3": self.endpoint_url, "AWS_ACCESS_KEY_ID": "smml-local",
                "AWS_SECRET_ACCESS_KEY": "smml-local"}
        old = {k: os.environ.get(k) for k in keys}
        os.environ.update(keys)
        try:
            yield
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> "LocalS3":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
