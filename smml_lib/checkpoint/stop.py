"""A cooperative stop for preemption: "please stop soon" becomes a flag the training loop checks each step.

What Module 04's spot-interruption drill relies on. ``StopRequest`` turns the outside world's "please
stop" into a flag the training loop checks once per step:

- ``SIGTERM`` (what ``kill``, ``scancel``, torchrun and a spot reclaim send first) or ``SIGUSR1``
  (Slurm's ``--signal=USR1@60`` warning) sets the flag; so does the first ``SIGINT`` (Ctrl-C). A
  second SIGINT aborts at once. Repeated SIGTERMs are harmless (torchrun forwards one more).
- optionally a background thread polls an instance-metadata-style URL every ``poll_s`` seconds:
  HTTP 200 with a (JSON) body = an interruption notice (the body is kept as the reason), 404 = none.
  On EC2 this is ``http://169.254.169.254/latest/meta-data/spot/instance-action`` with IMDSv2 tokens;
  tests only ever serve it on 127.0.0.1.

``check(env)`` all-reduces the flag, so all ranks stop after the *same* step even if the signal reached
them at different moments. The worker then finishes that step, saves a checkpoint at once, writes its
result with ``stopped_early=true, last_step, steps_since_checkpoint=0`` and exits with ``EXIT_STOPPED``
(75, ``EX_TEMPFAIL`` from sysexits.h: "temporary failure, run me again"). Restart the same command with
``--resume`` and it continues from that step with the same data and the same losses.

torchrun gives workers ``TORCH_ELASTIC_SHUTDOWN_TIMEOUT`` seconds (default 30; the launcher sets 120)
between the SIGTERM it forwards and a SIGKILL: the step plus the save must fit in that window.

This module needs only the process group (``smml_lib.distributed.runtime``), not the checkpoint writer
(``smml_lib.checkpoint.sharded``), so a worker that saves no model state (``workers.hello``) starts
without importing ``torch.distributed.checkpoint``.
"""

from __future__ import annotations

import os
import signal
import threading
import urllib.error
import urllib.request
from typing import Any

from smml_lib.distributed.runtime import DistEnv, any_rank

EXIT_STOPPED = 75  # EX_TEMPFAIL: stopped on request after saving a checkpoint; rerun with --resume


class StopRequest:
    """A "please stop soon" flag set by signals or an interruption-notice URL; see the module docstring."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""
        self._sigint_count = 0
        self._reported = False
        self._thread: threading.Thread | None = None
        self.poll_errors = 0

    @property
    def requested(self) -> bool:
        """True once this process was asked to stop (not yet agreed with the other ranks)."""
        return self._event.is_set()

    def request(self, reason: str) -> None:
        # Called from a signal handler: only set the flag. No printing here: a handler runs between two
        # bytecodes of the main thread, possibly while it holds stdout's lock; check() reports the request.
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    def install_signal_handlers(self) -> "StopRequest":
        """SIGTERM / SIGUSR1 / first SIGINT set the flag; a second SIGINT aborts. Main thread only."""
        def on_signal(signum: int, frame: Any) -> None:
            if signum == signal.SIGINT:
                self._sigint_count += 1
                if self._sigint_count > 1:
                    raise KeyboardInterrupt("second Ctrl-C: aborting without a checkpoint")
            self.request(f"signal {signal.Signals(signum).name}")

        for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
            signal.signal(sig, on_signal)
        return self

    def watch_notice_url(self, url: str, poll_s: float = 5.0, *, imdsv2: bool = False,
                         timeout_s: float = 2.0) -> "StopRequest":
        """Poll ``url`` in a daemon thread: HTTP 200 = interruption notice (stop), 404 = none.

        ``imdsv2``: first get a session token with ``PUT /latest/api/token`` on the same host, as EC2's
        instance metadata service (IMDSv2) requires, and send it with every poll.
        """
        def fetch(req: urllib.request.Request) -> tuple[int, str]:
            try:
                with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # URL given by the user
                    return resp.status, resp.read(4096).decode("utf-8", "replace")
            except urllib.error.HTTPError as exc:
                return exc.code, ""

        def token() -> str | None:
            base = url.split("/latest/")[0] if "/latest/" in url else url.rsplit("/", 1)[0]
            req = urllib.request.Request(base + "/latest/api/token", method="PUT",
                                         headers={"X-aws-ec2-metadata-token-ttl-seconds": "21600"})
            status, body = fetch(req)
            return body.strip() if status == 200 else None

        def loop() -> None:
            tok = None
            while not self._event.is_set():
                try:
                    if imdsv2 and tok is None:
                        tok = token()
                    headers = {"X-aws-ec2-metadata-token": tok} if tok else {}
                    status, body = fetch(urllib.request.Request(url, headers=headers))
                    if status == 200:
                        self.request(f"interruption notice from {url}: {body.strip()[:200]}")
                        return
                    if status == 401:
                        tok = None  # token expired: get a new one
                except (OSError, ValueError):
                    self.poll_errors += 1  # endpoint down or slow: keep training, try again
                self._event.wait(poll_s)

        self._thread = threading.Thread(target=loop, name="smml-notice-poller", daemon=True)
        self._thread.start()
        return self

    def check(self, env: DistEnv) -> bool:
        """Collective: True on every rank if any rank was asked to stop. Call once per step on all ranks."""
        requested = self.requested
        if requested and not self._reported:
            self._reported = True
            print(f"[rank {os.environ.get('RANK', 0)}] stop requested ({self.reason}): finishing this step, "
                  "then saving a checkpoint", flush=True)
        agreed = any_rank(env, requested)
        if agreed and not requested:
            self.reason = "another rank was asked to stop"
        return agreed
