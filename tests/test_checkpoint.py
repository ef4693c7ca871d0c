"""Checkpoint folders (atomic, newest-K, resumable in one process) and the cooperative stop request."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from smml_lib.checkpoint import sharded as ckpt
from smml_lib.checkpoint.stop import StopRequest
from smml_lib.distributed.runtime import init_distributed


def test_save_load_roundtrip_single_process(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    env = init_distributed()
    assert not env.distributed
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for step in range(1, 4):
        model(torch.randn(4, 8)).sum().backward()
        opt.step()
        opt.zero_grad()
        info = ckpt.save_checkpoint(tmp_path, step, model, opt, env, meta={"next_step": step + 1}, keep_last=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000002", "step_00000003"]
    assert info.size_bytes > 0 and info.seconds >= 0 and (tmp_path / "latest").read_text() == "step_00000003"
    (tmp_path / ".step_00000004.partial").mkdir()  # a save that was killed midway is ignored
    assert ckpt.latest_checkpoint(tmp_path).name == "step_00000003"
    expected_rng = torch.rand(1)  # the generator state right after the save...
    x = torch.randn(3, 8)
    want = model(x)
    fresh = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
    meta = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path), fresh, fresh_opt, env)
    assert meta["step"] == 3 and meta["next_step"] == 4 and meta["world_size"] == 1
    torch.testing.assert_close(fresh(x), want, rtol=0, atol=0)
    assert torch.equal(torch.rand(1), expected_rng)  # ...is restored by the load
    assert fresh_opt.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        ckpt.load_checkpoint(tmp_path / ".step_00000004.partial", fresh, fresh_opt, env)


class _Metadata(BaseHTTPRequestHandler):
    """Loopback stand-in for EC2 instance metadata with IMDSv2 tokens."""

    notice = False
    tokens_issued = 0

    def do_PUT(self):
        assert self.path == "/latest/api/token" and self.headers["X-aws-ec2-metadata-token-ttl-seconds"]
        type(self).tokens_issued += 1
        self._send(200, b"tok-123")

    def do_GET(self):
        if self.headers.get("X-aws-ec2-metadata-token") != "tok-123":
            return self._send(401, b"")
        if not type(self).notice:
            return self._send(404, b"")
        self._send(200, json.dumps({"action": "stop", "time": "2030-01-01T00:00:00Z"}).encode())

    def _send(self, code, body):
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_notice_url_with_imdsv2_token():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Metadata)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/latest/meta-data/spot/instance-action"
    try:
        stop = StopRequest().watch_notice_url(url, poll_s=0.05, imdsv2=True)
        time.sleep(0.4)
        assert not stop.requested and _Metadata.tokens_issued >= 1  # 404: no notice yet
        _Metadata.notice = True
        deadline = time.monotonic() + 5
        while not stop.requested and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stop.requested and '"action": "stop"' in stop.reason
    finally:
        server.shutdown()
        server.server_close()


def test_unreachable_notice_url_keeps_training():
    stop = StopRequest().watch_notice_url("http://127.0.0.1:9/none", poll_s=0.05, timeout_s=0.2)
    time.sleep(0.3)
    assert not stop.requested and stop.poll_errors >= 1


def test_signals_set_the_flag():
    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}
    try:
        stop = StopRequest().install_signal_handlers()
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.05)
        assert stop.requested and "SIGUSR1" in stop.reason
        os.kill(os.getpid(), signal.SIGTERM)  # a repeated SIGTERM (torchrun forwards one) does not abort
        time.sleep(0.05)
        assert stop.requested
    finally:
        for s, h in old.items():
            signal.signal(s, h)
