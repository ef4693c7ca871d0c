"""The spot interruption drill: the simulated metadata service, and the drill end to end on 2 gloo ranks.

All traffic stays on 127.0.0.1. The end-to-end test is the issue's acceptance test for a run killed without
warning: it loses only the steps since its last checkpoint, and the resumed run ends with parameters bitwise
equal to an uninterrupted run's. The notice scenario (no step lost, the checkpoint saved inside the window,
bitwise equal) is Lab 04-3's own check cell, which ``tests/test_notebooks.py`` runs: each drill scenario costs
two 2-rank launches, so it is run once in the suite, not twice.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import urllib.error
import urllib.request

import pytest

from smml_lib.cost import metadata_service, spot_drill


def _get(url: str, headers: dict | None = None) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def _put_token(base: str, ttl: str) -> tuple[int, str]:
    req = urllib.request.Request(base + metadata_service.TOKEN_PATH, method="PUT",
                                 headers={"X-aws-ec2-metadata-token-ttl-seconds": ttl})
    try:
        with urllib.request.urlopen(req, timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def test_notice_server_answers_like_the_metadata_service():
    with metadata_service.NoticeServer() as server:
        assert server.url.startswith("http://127.0.0.1:") and server.url.endswith(metadata_service.INSTANCE_ACTION_PATH)
        assert _get(server.url)[0] == 404 and metadata_service.get_notice(server.url) is None
        assert _get(server.base_url + "/latest/meta-data/other")[0] == 404
        before = dt.datetime.now(dt.timezone.utc)
        posted = server.interrupt(notice_s=120)
        status, body = _get(server.url)
        assert status == 200 and json.loads(body) == posted == metadata_service.get_notice(server.url)
        assert posted["action"] == "terminate"
        when = dt.datetime.strptime(posted["time"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)
        assert 118 <= (when - before).total_seconds() <= 122  # "two minutes from now", to the second
        assert server.polls == 4 and server.first_seen_at >= server.posted_at
        server.clear()
        assert metadata_service.get_notice(server.url) is None


def test_notice_server_imdsv2_tokens():
    with metadata_service.NoticeServer(require_token=True) as server:
        assert _get(server.url)[0] == 401  # no token
        assert _put_token(server.base_url, "0")[0] == 400 and _put_token(server.base_url, "x")[0] == 400
        status, token = _put_token(server.base_url, "21600")
        assert status == 200 and len(token) > 20
        assert _get(server.url, {"X-aws-ec2-metadata-token": token})[0] == 404
        assert _get(server.url, {"X-aws-ec2-metadata-token": "forged"})[0] == 401
        server.interrupt(5)
        assert _get(server.url, {"X-aws-ec2-metadata-token": token})[0] == 200


def test_worker_notice_poller_sees_the_notice(monkeypatch):
    """Module 02's stop flag (the one the training worker uses) against our server, IMDSv2 included."""
    from smml_lib.checkpoint.stop import StopRequest

    with metadata_service.NoticeServer(require_token=True) as server:
        stop = StopRequest().watch_notice_url(server.url, poll_s=0.05, imdsv2=True)
        time.sleep(0.3)
        assert not stop.requested and server.polls >= 2
        server.interrupt(10)
        deadline = time.time() + 3
        while not stop.requested and time.time() < deadline:
            time.sleep(0.02)
        assert stop.requested and '"action": "terminate"' in stop.reason


def test_drill_config_is_checked():
    with pytest.raises(ValueError, match="below max_steps"):
        short = spot_drill.DRILL_TRAINING.replace(max_steps=4)
        spot_drill.run_drill(spot_drill.DrillConfig(short, interrupt_after_step=4))
    with pytest.raises(ValueError, match="poll intervals"):
        spot_drill.run_drill(spot_drill.DrillConfig(notice_window_s=1, poll_s=0.5))


@pytest.mark.slow
def test_drill_killed_without_warning_loses_at_most_the_steps_since_checkpoint(tmp_path):
    # interrupt right after step 5: the kill lands before step 8's save
    cfg = spot_drill.DrillConfig(spot_drill.DRILL_TRAINING.replace(max_steps=10, checkpoint_every=4),
                                 interrupt_after_step=5, echo=False, workdir=str(tmp_path), timeout_s=300)
    report = spot_drill.run_drill(cfg, scenarios=("kill",))
    kill = report.row("kill")
    # killed without warning: it restarts from the last periodic checkpoint, losing the steps since then
    # (a kill during a save leaves only a .partial folder: then the previous checkpoint counts, at most `every` back)
    last = kill["interrupted_after_step"]
    assert not kill["stopped_cleanly"] and kill["checkpoint_step"] % cfg.checkpoint_every == 0
    assert 0 <= kill["steps_lost"] == last - kill["checkpoint_step"] <= cfg.checkpoint_every
    assert kill["resumed_from_step"] == kill["checkpoint_step"]
    # the resumed run ends with exactly the uninterrupted run's parameters (CPU: bitwise)
    assert kill["bitwise_equal"] and kill["max_abs_diff"] == 0.0
    assert json.loads((tmp_path / "report.json").read_text())["rows"][0]["scenario"] == "kill"
