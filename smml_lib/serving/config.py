"""What a server is told when it starts, in one place: how it batches, what it serves, where it listens.

``BatchingConfig`` is one scheduler's policy (static or continuous batching, its slots and queue);
``ServerConfig`` is the whole server: the model, its batching (and, optionally, more names served by the
same weights with other batching), the limits a request must respect, and the address. The notebook's
``start_server``, the ``smml serve`` command and the server subprocess all build and read these records, so
a default (``max_batch=16``...) is written once, here::

    cfg = ServerConfig.build("tiny", max_batch=4, max_queue=16)        # fields of either record, by name
    cfg.argv()                                                           # the subprocess's command line
    ServerConfig.from_args(parser().parse_args(cfg.argv()))              # == cfg
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field, fields
from typing import Any

SCHEDULERS = ("static", "continuous")


@dataclass(frozen=True)
class BatchingConfig:
    """One scheduler: which policy, how many sequences it decodes together, how many may wait."""

    scheduler: str = "continuous"  # "static" (fill a batch, run it to the end) or "continuous" (admit every step)
    max_batch: int = 16  # sequences decoded together: the batch "slots"
    max_queue: int = 64  # sequences that may wait for a slot; beyond that a request is refused (429)
    max_wait_ms: float = 20.0  # static batching: how long a batch may wait to fill after its first sequence

    def __post_init__(self) -> None:
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler={self.scheduler!r}: use one of {', '.join(SCHEDULERS)}")
        if self.max_batch < 1 or self.max_queue < 0 or self.max_wait_ms < 0:
            raise ValueError(f"max_batch={self.max_batch} must be >= 1, max_queue={self.max_queue} and "
                             f"max_wait_ms={self.max_wait_ms} >= 0")

    def replace(self, **changes: Any) -> "BatchingConfig":
        return dataclasses.replace(self, **changes)


BATCHING_FIELDS = tuple(f.name for f in fields(BatchingConfig))


@dataclass(frozen=True)
class ServerConfig:
    """Everything a server process needs to start. Frozen: a running server's settings do not drift."""

    model_id: str = "tiny"  # "tiny", a checkpoint folder, an S3 prefix or a hub id (see load_llama)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    variants: tuple[tuple[str, BatchingConfig], ...] = ()  # (name, batching): more names, same weights
    served_model_name: str | None = None  # the name clients send in "model" (default: model_id)
    max_model_len: int | None = None  # prompt + max_tokens limit (default: the model's, at most 4096)
    dtype: str = "auto"  # auto (bf16 on GPUs, fp32 on the CPU), fp32, bf16, fp16
    device: str = "auto"  # auto (cuda:0 if there is a GPU), cpu, cuda:N
    host: str = "127.0.0.1"  # loopback: only this machine can reach the server
    port: int = 0  # 0: any free port
    threads: int | None = None  # torch CPU threads in the server (default: 1 on a CPU)
    max_body_bytes: int | None = None  # request body limit (default: 32 bytes per context token, at least 1 MiB)
    drain_timeout_s: float = 10.0  # on SIGTERM: how long running sequences may finish before they are ended

    def body_limit_bytes(self, max_model_len: int) -> int:
        """The request body limit: a prompt filling the whole context fits with room to spare (413 beyond)."""
        return self.max_body_bytes or max(2**20, 32 * max_model_len)

    @classmethod
    def build(cls, model_id: str = "tiny", *, variants: dict[str, dict[str, Any]] | None = None,
              **settings: Any) -> "ServerConfig":
        """A config from keyword settings: any ``ServerConfig`` or ``BatchingConfig`` field by name.

        ``variants`` maps extra names to batching changes, e.g. ``{"batch-1": {"scheduler": "static",
        "max_batch": 1}}``; each starts from this server's batching. With variants, only their names are served.
        """
        batching = BatchingConfig(**{k: settings.pop(k) for k in BATCHING_FIELDS if k in settings})
        unknown = set(settings) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"unknown server setting(s) {sorted(unknown)}; known: "
                            f"{', '.join([f.name for f in fields(cls)] + list(BATCHING_FIELDS))}")
        named = tuple((name, batching.replace(**_checked(name, changes))) for name, changes in (variants or {}).items())
        return cls(model_id=model_id, batching=batching, variants=named, **settings)

    @property
    def schedulers(self) -> dict[str, BatchingConfig]:
        """Model name -> batching: the variants if any, else one name (``served_model_name`` or ``model_id``)."""
        return dict(self.variants) if self.variants else {self.served_model_name or self.model_id: self.batching}

    @property
    def first_name(self) -> str:
        return next(iter(self.schedulers))

    def key(self) -> str:
        """A stable text key of the whole config (a notebook cell run twice reuses its running server)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True, default=str)

    def argv(self) -> list[str]:
        """The ``smml serve`` flags that start a server with exactly this config."""
        b = self.batching
        out = ["--model", self.model_id, "--scheduler", b.scheduler, "--max-batch", str(b.max_batch),
               "--max-queue", str(b.max_queue), "--max-wait-ms", str(b.max_wait_ms), "--dtype", self.dtype,
               "--device", self.device, "--host", self.host, "--port", str(self.port)]
        for flag, value in (("--served-model-name", self.served_model_name), ("--max-model-len", self.max_model_len),
                            ("--threads", self.threads), ("--max-body-bytes", self.max_body_bytes),
                            ("--drain-timeout-s", self.drain_timeout_s)):
            if value is not None:
                out += [flag, str(value)]
        for name, batching in self.variants:
            changes = {k: v for k, v in dataclasses.asdict(batching).items() if getattr(b, k) != v}
            out += ["--variant", f"{name}={json.dumps(changes)}"]
        return out

    @classmethod
    def add_arguments(cls, p: argparse.ArgumentParser, *, port: int = 8000) -> None:
        """The ``smml serve`` flags; every default comes from the dataclasses above (``port``: the command's)."""
        b = BatchingConfig()
        p.add_argument("--model", default=cls.model_id, help="'tiny', a local checkpoint folder, an s3:// prefix "
                       "or a hub id (default: tiny)")
        p.add_argument("--scheduler", choices=SCHEDULERS, default=b.scheduler)
        p.add_argument("--max-batch", type=int, default=b.max_batch, help=f"sequences decoded together ({b.max_batch})")
        p.add_argument("--max-queue", type=int, default=b.max_queue,
                       help=f"sequences that may wait; beyond: 429 ({b.max_queue})")
        p.add_argument("--max-wait-ms", type=float, default=b.max_wait_ms, help="static batching: wait to fill a batch")
        p.add_argument("--host", default=cls.host, help="address to listen on (default: loopback only)")
        p.add_argument("--port", type=int, default=port, help=f"port (0 = any free port; default: {port})")
        p.add_argument("--dtype", default=cls.dtype, help="auto (bf16 on GPU, fp32 on CPU), fp32, bf16, fp16")
        p.add_argument("--device", default=cls.device, help="auto, cpu, cuda:0 ...")
        p.add_argument("--served-model-name", default=None, help="the name clients put in 'model' (default: --model)")
        p.add_argument("--max-model-len", type=int, default=None,
                       help="prompt + max_tokens limit (default: min(model, 4096))")
        p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: 1 on CPU)")
        p.add_argument("--max-body-bytes", type=int, default=None,
                       help="request body limit; larger bodies get 413 (default: max(1 MiB, 32 x context tokens))")
        p.add_argument("--drain-timeout-s", type=float, default=cls.drain_timeout_s,
                       help=f"on SIGTERM, seconds running sequences may finish ({cls.drain_timeout_s})")
        p.add_argument("--variant", action="append", default=[], metavar="NAME=JSON",
                       help="serve the weights also as NAME with other batching, e.g. "
                       "'batch-1={\"scheduler\": \"static\", \"max_batch\": 1}' "
                       "(repeatable; replaces the default name)")

    @classmethod
    def from_args(cls, a: argparse.Namespace) -> "ServerConfig":
        """The config a parsed ``smml serve`` command line describes (``ValueError`` for a bad ``--variant``)."""
        variants = {}
        for spec in a.variant:
            name, sep, changes = spec.partition("=")
            try:
                variants[name] = json.loads(changes) if sep else {}
            except json.JSONDecodeError:
                raise ValueError(f"--variant {spec!r}: expected NAME={{json}}, e.g. batch-1={{\"max_batch\": 1}}") \
                    from None
        return cls.build(a.model, variants=variants, scheduler=a.scheduler, max_batch=a.max_batch,
                         max_queue=a.max_queue, max_wait_ms=a.max_wait_ms, dtype=a.dtype, device=a.device, host=a.host,
                         port=a.port, served_model_name=a.served_model_name, max_model_len=a.max_model_len,
                         threads=a.threads, max_body_bytes=a.max_body_bytes, drain_timeout_s=a.drain_timeout_s)


def _checked(name: str, changes: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(changes, dict) or set(changes) - set(BATCHING_FIELDS):
        raise ValueError(f"variant {name!r}: only the batching settings {', '.join(BATCHING_FIELDS)} may change "
                         f"(got {changes})")
    return changes
