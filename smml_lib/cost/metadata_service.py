"""A stand-in for the EC2 instance metadata service (IMDS): the spot interruption notice on 127.0.0.1.

On AWS, two minutes before a spot instance is reclaimed, ``/latest/meta-data/spot/instance-action`` stops
answering 404 and returns 200 with ``{"action": "terminate", "time": "..."}``; AWS suggests polling it
every 5 seconds. ``NoticeServer`` serves the same paths, status codes and JSON from Python's
``http.server``, with IMDSv2 session tokens (``PUT /latest/api/token``) when asked for, so the course's
training worker polls it exactly as it would poll the real service. ``get_notice`` is one such poll.
Lab 04-3's drill (``smml_lib.cost.spot_drill``) posts a notice mid-run and watches the worker save itself in time.
"""

from __future__ import annotations

import datetime as _dt
import json
import secrets
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

INSTANCE_ACTION_PATH = "/latest/meta-data/spot/instance-action"
TOKEN_PATH = "/latest/api/token"
AWS_NOTICE_S = 120.0  # EC2 publishes the notice two minutes before it reclaims the instance
AWS_POLL_S = 5.0  # AWS's suggested polling interval


class _Handler(BaseHTTPRequestHandler):
    server: "_MetadataHTTPServer"

    def log_message(self, *args: Any) -> None:  # keep the notebook quiet
        pass

    def _send(self, status: int, body: str = "", ctype: str = "text/plain") -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_PUT(self) -> None:  # http.server's naming
        if self.path != TOKEN_PATH:
            return self._send(404, "Not Found")
        try:
            ttl = int(self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", ""))
        except ValueError:
            ttl = 0
        if not 1 <= ttl <= 21600:
            return self._send(400, "Bad Request: X-aws-ec2-metadata-token-ttl-seconds must be 1-21600")
        token = secrets.token_urlsafe(32)
        self.server.owner._tokens[token] = time.monotonic() + ttl
        return self._send(200, token)

    def do_GET(self) -> None:
        owner = self.server.owner
        if owner.require_token:
            expiry = owner._tokens.get(self.headers.get("X-aws-ec2-metadata-token", ""), 0)
            if expiry < time.monotonic():
                return self._send(401, "Unauthorized")
        if self.path != INSTANCE_ACTION_PATH:
            return self._send(404, "Not Found")
        with owner._lock:
            owner.polls += 1
            notice = owner._notice
            if notice is not None and owner.first_seen_at is None:
                owner.first_seen_at = time.time()
        if notice is None:
            return self._send(404, "Not Found")
        return self._send(200, json.dumps(notice), "application/json")


class _MetadataHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    owner: "NoticeServer"


class NoticeServer:
    """A local instance-metadata endpoint for spot interruption notices (127.0.0.1 only).

    ::

        with NoticeServer() as imds:
            imds.url                      # http://127.0.0.1:<port>/latest/meta-data/spot/instance-action
            ...                           # GET -> 404 (no notice)
            imds.interrupt(notice_s=120)  # GET -> 200 {"action": "terminate", "time": "<now + 120 s>"}
    """

    def __init__(self, port: int = 0, *, require_token: bool = False) -> None:
        self.require_token = require_token
        self.polls = 0
        self.posted_at: float | None = None  # time.time() when the notice was posted
        self.first_seen_at: float | None = None  # time.time() of the first poll that got it
        self._notice: dict[str, str] | None = None
        self._tokens: dict[str, float] = {}
        self._lock = threading.Lock()
        self._httpd = _MetadataHTTPServer(("127.0.0.1", port), _Handler)
        self._httpd.owner = self
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def url(self) -> str:
        return self.base_url + INSTANCE_ACTION_PATH

    def start(self) -> "NoticeServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="smml-notice-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> "NoticeServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def interrupt(self, notice_s: float = AWS_NOTICE_S, action: str = "terminate") -> dict[str, str]:
        """Post an interruption notice: the instance goes away ``notice_s`` seconds from now."""
        when = _dt.datetime.now(_dt.timezone.utc) + _dt.timedelta(seconds=notice_s)
        with self._lock:
            self._notice = {"action": action, "time": when.strftime("%Y-%m-%dT%H:%M:%SZ")}
            self.posted_at = time.time()
            self.first_seen_at = None
        return dict(self._notice)

    def clear(self) -> None:
        with self._lock:
            self._notice, self.posted_at, self.first_seen_at = None, None, None


def get_notice(url: str, timeout_s: float = 1.0) -> dict[str, Any] | None:
    """One poll: the notice as a dict, or ``None`` on 404 (what a worker does every few seconds)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # a URL we were given
            return json.loads(resp.read().decode())
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise
