"""Start and stop the completion server from a notebook or a test, and the ``smml serve`` command.

    from smml_lib.serving.process import start_server
    with start_server("tiny", scheduler="continuous", max_batch=16) as server:   # waits until /health answers
        print(server.url, server.health()["running"])
    # leaving the block stops the server: no process is left behind

By default the server runs in a **subprocess** (its own Python, its own GIL: a load generator in the notebook
does not slow it down), logging to ``<outputs>/logs/``. ``in_process=True`` runs it in a thread of this
process instead (starts in a fraction of a second: handy in tests). Either way ``start_server`` returns only
once the server answers ``/health``, or raises ``ServerStartError`` with the end of the server's log.

Shutdown drains: SIGTERM (or ``stop()`` of an in-process server) first runs the service's ``drain`` (503 for
new requests, running sequences finish within ``drain_timeout_s``, the rest end with an OpenAI-shaped error
or an SSE error event and ``[DONE]``), and only then lets uvicorn close the connections; a second SIGTERM
or Ctrl-C exits at once.

No orphans: ``stop()`` sends SIGTERM and SIGKILL after the drain timeout and a margin; servers
still running when Python exits are stopped by an ``atexit`` hook; and the subprocess watches the process that
started it and exits when that one is gone (a crashed or killed notebook kernel).
"""

from __future__ import annotations

import argparse
import atexit
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import torch

from smml_lib.common.credentials import redact
from smml_lib.common.device import NoGpuError, resolve_device
from smml_lib.common.paths import output_dir
from smml_lib.models.loading import ModelLoadError
from smml_lib.serving.app import uvicorn_server
from smml_lib.serving.config import ServerConfig
from smml_lib.serving.server import build_service

_LIVE: "set[ServerHandle]" = set()
_BY_CONFIG: "dict[str, ServerHandle]" = {}  # for start_server(..., reuse=True)


class ServerStartError(RuntimeError):
    """The server did not come up; the message holds the reason and the end of its log."""


@dataclass(eq=False)
class ServerHandle:
    """A running server: its URL, model name and process id, with ``health()``, ``rss_bytes()`` and ``stop()``."""

    url: str
    model_name: str
    scheduler: str
    pid: int
    log_path: Path | None = None
    process: Any = field(default=None, repr=False)  # subprocess.Popen, or None when in-process
    server: Any = field(default=None, repr=False)  # uvicorn.Server when in-process
    thread: Any = field(default=None, repr=False)
    ready_file: Path | None = field(default=None, repr=False)  # the subprocess writes its URL here when listening
    deadline: float = field(default=0.0, repr=False)
    models: list[str] = field(default_factory=list)  # every served model name (variants), the default first

    def wait_ready(self) -> "ServerHandle":
        """Block until the server answers ``/health`` (for ``start_server(..., wait=False)``). Returns self."""
        proc, ready = self.process, self.ready_file
        if proc is None or ready is None or self.url:
            return self
        try:
            while not ready.exists():
                if proc.poll() is not None:
                    raise ServerStartError(f"the server exited with code {proc.returncode} during start-up:\n"
                                           f"{self.log_tail()}")
                if time.perf_counter() > self.deadline:
                    raise ServerStartError(f"the server was not ready in time:\n{self.log_tail()}")
                time.sleep(0.05)
            self.url = ready.read_text().strip()
            _wait_healthy(self.url, self.deadline, lambda: proc.poll() is None, self.log_tail)
        except BaseException:
            self.url = ""
            self.stop(timeout_s=3.0)
            raise
        finally:
            ready.unlink(missing_ok=True)
        return self

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL (what ``openai.OpenAI(base_url=...)`` and the load generator take)."""
        return self.url + "/v1"

    @property
    def running(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        return self.thread is not None and self.thread.is_alive()

    def health(self, timeout_s: float = 5.0) -> dict[str, Any]:
        import httpx  # deferred: optional extra [serve]

        return httpx.get(self.url + "/health", timeout=timeout_s).json()

    def rss_bytes(self) -> int:
        """Resident memory of the server process (this process, when in-process)."""
        return psutil.Process(self.pid).memory_info().rss

    def log_tail(self, lines: int = 20) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return redact("\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:]))

    def stop(self, timeout_s: float = 20.0) -> None:
        """Shut down gracefully (SIGTERM, or the drain in-process), force after ``timeout_s``. Safe to call twice."""
        _LIVE.discard(self)
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self.server is not None:
            self.server.begin_shutdown()
            if self.thread is not None:
                self.thread.join(timeout_s)

    def __enter__(self) -> "ServerHandle":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _stop_all() -> None:
    for handle in list(_LIVE):
        handle.stop(timeout_s=5.0)


atexit.register(_stop_all)


def _bind(host: str, port: int) -> socket.socket:
    """Bind the listening socket ourselves, so port 0 (any free port) works and we know the port at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ServerStartError(f"cannot listen on {host}:{port} ({exc}); pick another port, or port=0 for any "
                               "free one") from None
    return sock


def _wait_healthy(url: str, deadline: float, alive: Any, log: Any) -> None:
    import httpx  # deferred: optional extra [serve]

    while time.perf_counter() < deadline:
        if not alive():
            raise ServerStartError(f"the server stopped during start-up.\n{log()}")
        try:
            if httpx.get(url + "/health", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise ServerStartError(f"the server did not answer {url}/health in time.\n{log()}")


def start_server(model_id: str = "tiny", *, config: ServerConfig | None = None, in_process: bool = False,
                 ready_timeout_s: float = 180.0, wait: bool = True, reuse: bool = False,
                 **settings: Any) -> ServerHandle:
    """Start the completion server and return once it answers ``/health``.

    Args:
        model_id: ``"tiny"``, a local checkpoint folder or a hub id (see ``load_llama``).
        config: the whole ``ServerConfig``; or give its settings (and ``BatchingConfig``'s) as keywords:
            ``scheduler``, ``max_batch``, ``max_queue``, ``max_wait_ms``, ``variants``, ``host``, ``port``,
            ``dtype``, ``device``, ``served_model_name``, ``max_model_len``, ``threads``.
        in_process: run in a thread of this process instead of a subprocess.
        wait: return only once the server answers (default); with False, call ``handle.wait_ready()`` later,
            so several servers can start at the same time.
        reuse: return the running server started earlier with the same config, if there is one (a notebook
            cell that is run twice does not start a second server).
    """
    config = config or ServerConfig.build(model_id, **settings)
    key = f"{config.key()}|in_process={in_process}"
    if reuse and key in _BY_CONFIG and _BY_CONFIG[key].running:
        return _BY_CONFIG[key].wait_ready()
    handle = _start_in_thread(config, ready_timeout_s) if in_process else _start_process(config, ready_timeout_s)
    _BY_CONFIG[key] = handle
    return handle.wait_ready() if wait else handle


def _start_in_thread(config: ServerConfig, ready_timeout_s: float) -> ServerHandle:
    if config.threads:
        torch.set_num_threads(config.threads)
    service = build_service(config)
    sock = _bind(config.host, config.port)
    url = f"http://{config.host}:{sock.getsockname()[1]}"
    server = uvicorn_server(service, config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="smml-server", daemon=True)
    thread.start()
    handle = ServerHandle(url, config.first_name, config.batching.scheduler, os.getpid(), None, None, server, thread,
                          models=list(config.schedulers))
    _wait_healthy(url, time.perf_counter() + ready_timeout_s, thread.is_alive, lambda: "")
    _LIVE.add(handle)
    return handle


def _start_process(config: ServerConfig, ready_timeout_s: float) -> ServerHandle:
    tag = f"{config.batching.scheduler}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    log_path = output_dir("logs") / f"server-{tag}.log"
    ready = output_dir("logs") / f"server-{tag}.ready"
    cmd = [sys.executable, "-m", "smml_lib.serving.process", *config.argv(), "--ready-file", str(ready),
           "--exit-with-parent", str(os.getpid())]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    handle = ServerHandle("", config.first_name, config.batching.scheduler, proc.pid, log_path, proc,
                          ready_file=ready, deadline=time.perf_counter() + ready_timeout_s,
                          models=list(config.schedulers))
    _LIVE.add(handle)
    return handle


def _watch_parent(parent_pid: int) -> None:
    """Exit when the process that started us is gone (its kernel crashed or was killed): no orphans."""
    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                os.kill(os.getpid(), signal.SIGTERM)  # uvicorn's graceful shutdown
                time.sleep(10.0)
                os._exit(1)

    threading.Thread(target=watch, name="smml-parent-watch", daemon=True).start()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="smml serve", description="An OpenAI-compatible /v1/completions server over "
                                "a Llama, with static or continuous batching.")
    ServerConfig.add_arguments(p)
    p.add_argument("--ready-file", default=None, help=argparse.SUPPRESS)
    p.add_argument("--exit-with-parent", type=int, default=None, help=argparse.SUPPRESS)
    return p


def cli(argv: list[str]) -> int:
    """``smml serve``: run the server in the foreground until Ctrl-C."""
    args = parser().parse_args(argv)
    if args.exit_with_parent:
        _watch_parent(args.exit_with_parent)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {args.host}: this server has no authentication; anyone who can reach the "
              "address can use it.", file=sys.stderr)

    # One CPU thread by default: a small model gains nothing from more, and when other processes compete for
    # the cores, multi-threaded small matmuls slow down several-fold (threads wait for each other).
    try:
        config = ServerConfig.from_args(args)
        torch.set_num_threads(config.threads or (1 if resolve_device(config.device).type == "cpu"
                                                 else torch.get_num_threads()))
        service = build_service(config)
    except (ModelLoadError, NoGpuError, ValueError) as exc:
        print(f"smml serve: {exc}", file=sys.stderr)
        return 2
    sock = _bind(args.host, args.port)
    host = f"[{args.host}]" if ":" in args.host else args.host
    url = f"http://{host}:{sock.getsockname()[1]}"

    def on_started() -> None:
        models = ", ".join(f"{n!r} ({s.name} batching, max_batch={s.max_batch}, max_queue={s.max_queue})"
                           for n, s in service.schedulers.items())
        print(f"serving {models} at {url}/v1; Ctrl-C stops", flush=True)
        if args.ready_file:
            tmp = Path(args.ready_file + ".tmp")
            tmp.write_text(url)
            tmp.replace(args.ready_file)  # atomic: the parent never reads half a URL

    uvicorn_server(service, config, on_started).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    code = cli(sys.argv[1:])
    # The server has stopped and answered everyone; skip the interpreter's teardown (torch's alone takes 1-2 s
    # on a busy machine), so a drained server exits within its drain timeout plus a moment.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
