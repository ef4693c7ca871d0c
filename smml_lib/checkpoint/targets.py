"""Where training checkpoints go beyond the node: an S3 bucket, or a local S3-compatible server.

Why S3 for checkpoints: a node's local NVMe disappears with the node (spot reclaim, a terminated
capacity block); a shared file system (FSx for Lustre, NFS) survives the node but is one more thing to
run. Object storage is the durable copy. ``torch.distributed.checkpoint`` writes one file per rank plus
``.metadata`` (``smml_lib.checkpoint.sharded``); ``smml_lib.common.object_storage`` moves such folders, and this
module says which checkpoints under a prefix are complete and where a lab's checkpoints go:

- ``list_checkpoints(url)``: the ``step_*`` prefixes that hold their ``meta.json`` (uploaded last);
- ``open_target(s3_url)``: a real bucket when ``s3_url`` is given (credentials needed), else a local S3
  server on 127.0.0.1 (moto), one per bucket per process, so a lab runs the same cells either way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from smml_lib.common.object_storage import COMMIT_MARKER, LocalS3, StorageError, list_prefix, parse_s3_url, s3_client


def list_checkpoints(url: str, *, client: Any = None, endpoint_url: str | None = None) -> list[str]:
    """Complete checkpoints (``step_*`` prefixes holding ``meta.json``) under ``url``, oldest first."""
    steps = set()
    for o in list_prefix(url, client=client, endpoint_url=endpoint_url):
        parts = o["key"].split("/")
        if parts[-1] == COMMIT_MARKER and len(parts) >= 2 and parts[-2].startswith("step_"):
            steps.add("s3://" + parse_s3_url(url)[0] + "/" + "/".join(parts[:-1]))
    return sorted(steps)



LOCAL_SERVER_MEMORY_PER_BYTE = 2.5  # peak process memory per uploaded byte (measured 2.4: see Target.check_room)


@dataclass
class Target:
    """Where a lab puts checkpoints: a real bucket (``s3_url``) or a local S3-compatible server."""

    base_url: str
    client: Any
    server: LocalS3 | None = None

    def url(self, *parts: str) -> str:
        return "/".join([self.base_url.rstrip("/"), *[p.strip("/") for p in parts if p]])

    @property
    def kind(self) -> str:
        return f"local S3 server {self.server.endpoint_url}" if self.server else "AWS S3"

    def check_room(self, local: str | os.PathLike) -> None:
        """Refuse a folder the local server could not hold: it keeps what it stores in this process's memory.

        Measured here: 2.15 GB uploaded through it raised this process's peak memory by 5.07 GB (2.4x), so
        a 15 GB checkpoint needs about 36 GB free. Real S3 (``s3_url``) has no such limit: a no-op then.
        """
        if not self.server:
            return

        nbytes = sum(f.stat().st_size for f in Path(local).rglob("*") if f.is_file())
        need, free = LOCAL_SERVER_MEMORY_PER_BYTE * nbytes, psutil.virtual_memory().available
        if need > free:
            raise StorageError(
                f"{nbytes / 1e9:.1f} GB through the local S3 server needs about {need / 1e9:.0f} GB of free memory "
                f"(it keeps objects in this process); {free / 1e9:.0f} GB are available. Set s3_url to a bucket "
                "you may write to (AWS credentials configured), or train a smaller model.")

    def close(self) -> None:
        if self.server:
            self.server.stop()


_LOCAL_SERVERS: dict[str, LocalS3] = {}  # one local server per bucket per process (a re-run cell reuses it)


def open_target(s3_url: str = "", *, bucket: str = "smml-checkpoints") -> Target:
    """``s3_url`` (e.g. ``"s3://my-bucket/smml"``, needs credentials) or, when empty, a local S3 server."""
    if s3_url:
        parse_s3_url(s3_url)
        return Target(s3_url.rstrip("/"), s3_client())
    server = _LOCAL_SERVERS.get(bucket)
    if server is None or server._server is None:
        server = _LOCAL_SERVERS[bucket] = LocalS3(bucket).start()
    return Target(f"s3://{bucket}/smml", server.client(), server)

