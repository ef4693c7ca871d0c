"""Checkpoints to and from S3 over real HTTP: ``pytest tests/test_storage.py``.

The S3 server is moto's server mode on 127.0.0.1 (a free port), started and stopped by a fixture; boto3
talks to it exactly as it would to AWS. The checkpoints are real ``torch.distributed.checkpoint`` folders
written by ``smml_lib.checkpoint.sharded``. A multi-rank training job resumed from a checkpoint that went
to S3 and back, with the same losses, is Lab 03-3's check cell (``tests/test_notebooks.py`` runs it).
"""

from __future__ import annotations

import time

import pytest

from smml_lib.checkpoint import targets
from smml_lib.common import object_storage

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")


@pytest.fixture(scope="module")
def s3():
    server = object_storage.LocalS3(bucket="smml-test").start()
    yield server
    server.stop()


def _dcp_checkpoint(root, step=3):
    """A real single-process DCP checkpoint of a small model + Adam state via smml_lib.checkpoint.sharded."""
    import torch

    from smml_lib.checkpoint.sharded import save_checkpoint
    from smml_lib.distributed.runtime import DistEnv

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(4, 64)).sum().backward()
    opt.step()
    env = DistEnv(0, 1, 0, 1, 0, "none", torch.device("cpu"))
    info = save_checkpoint(root, step, model, opt, env, meta={"note": "test"})
    return model, opt, env, info


def test_checkpoint_round_trip_through_s3(s3, tmp_path):
    import torch

    from smml_lib.checkpoint.sharded import latest_checkpoint, load_checkpoint

    model, _, env, info = _dcp_checkpoint(tmp_path / "ckpt")
    url = s3.url("run-a", info.path.name)
    up = object_storage.upload_folder(info.path, url, client=s3.client(), progress=False)
    assert up.files >= 3 and up.bytes == info.size_bytes and up.seconds > 0
    assert targets.list_checkpoints(s3.url("run-a"), client=s3.client()) == [url]
    restore = tmp_path / "restore" / info.path.name
    down = object_storage.download_prefix(url, restore, client=s3.client(), progress=False)
    assert (down.files, down.bytes) == (up.files, up.bytes)
    again = object_storage.download_prefix(url, restore, client=s3.client(), progress=False)
    assert again.files == 0  # already there: nothing fetched twice
    fresh = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
    opt = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
    meta = load_checkpoint(latest_checkpoint(tmp_path / "restore"), fresh, opt, env)
    assert meta["step"] == 3 and meta["note"] == "test"
    for a, b in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(a, b)
    assert opt.state_dict()["state"]  # Adam moments came back too


def test_commit_marker_is_uploaded_last_and_partial_uploads_are_ignored(s3, tmp_path):
    _, _, _, info = _dcp_checkpoint(tmp_path / "ckpt", step=5)
    client = s3.client()
    order = []
    real = client.upload_file

    def recording(filename, bucket, key, **kw):
        order.append(key)
        return real(filename, bucket, key, **kw)

    client.upload_file = recording
    object_storage.upload_folder(info.path, s3.url("run-b", info.path.name), client=client, progress=False,
                                 max_workers=4)
    assert order[-1].endswith("/meta.json") and sum(k.endswith("meta.json") for k in order) == 1
    (info.path / "meta.json").unlink()  # an upload interrupted before its marker
    object_storage.upload_folder(info.path, s3.url("run-c", info.path.name), client=s3.client(), progress=False)
    assert targets.list_checkpoints(s3.url("run-c"), client=s3.client()) == []


def test_errors_are_clear_and_fast(s3, tmp_path, monkeypatch):
    (tmp_path / "f.bin").write_bytes(b"x" * 10)
    with pytest.raises(object_storage.StorageError, match="does not exist"):
        object_storage.upload_folder(tmp_path, "s3://no-such-bucket/x", client=s3.client(), progress=False)
    with pytest.raises(object_storage.StorageError, match="nothing under"):
        object_storage.download_prefix(s3.url("never-uploaded"), tmp_path / "d", client=s3.client(), progress=False)
    t0 = time.monotonic()
    dead = object_storage.s3_client("http://127.0.0.1:9", access_key="k", secret_key="s")
    with pytest.raises(object_storage.StorageError, match="cannot reach"):
        object_storage.download_prefix("s3://b/x", tmp_path / "d", client=dead, progress=False)
    assert time.monotonic() - t0 < 10
    with pytest.raises(object_storage.StorageError, match="not an S3 URL"):
        object_storage.parse_s3_url("/local/path")
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(object_storage.StorageError, match="No AWS credentials"):
        object_storage.s3_client()


def test_load_llama_from_an_s3_model_id(s3, tiny_path, tmp_path, monkeypatch):
    from smml_lib.models.loading import ModelLoadError, load_llama

    monkeypatch.setenv("SMML_CACHE", str(tmp_path / "cache"))
    object_storage.upload_folder(tiny_path, s3.url("models", "tiny-llama"), client=s3.client(), progress=False)
    with s3.environment():
        model, tok = load_llama(s3.url("models", "tiny-llama"), device="cpu", dtype="fp32")
        assert model.smml_source["kind"] == "s3" and str(tmp_path / "cache") in model.smml_source["path"]
        assert model.config.model_type == "llama" and tok("hello")["input_ids"]
        with pytest.raises(ModelLoadError, match="nothing under"):
            load_llama(s3.url("models", "missing"))


def test_local_server_refuses_a_folder_it_could_not_hold_in_memory(s3, tmp_path, monkeypatch):
    import psutil

    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "shard.distcp").write_bytes(b"x" * 1_000_000)
    local = targets.Target("s3://smml-test/smml", s3.client(), s3)
    local.check_room(folder)  # 1 MB: plenty of room
    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("vm", (), {"available": 2_000_000})())
    with pytest.raises(object_storage.StorageError, match=r"needs about .* GB of free memory .* Set s3_url"):
        local.check_room(folder)  # 2.5 MB needed, 2 MB free
    targets.Target("s3://real-bucket/x", client=None).check_room(folder)  # real S3: no memory limit here
