"""load_llama: the offline tiny Llama, local folders, and clear, fast errors for every bad input."""

from __future__ import annotations

import hashlib
import json
import time

import pytest
import torch

from smml_lib.common import device
from smml_lib.models import tiny
from smml_lib.models.loading import ModelLoadError, load_llama

SECRET = "hf_THIS_IS_A_SECRET_TOKEN_123"


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_tiny_build_is_deterministic(tmp_path):
    a, b = tiny.build_tiny_llama(tmp_path / "a"), tiny.build_tiny_llama(tmp_path / "b")
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert _digest(a / name) == _digest(b / name), name


def test_tiny_is_a_real_llama_checkpoint(tiny_path):
    cfg = json.loads((tiny_path / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["architectures"] == ["LlamaForCausalLM"]
    assert (tiny_path / "model.safetensors").exists() and (tiny_path / "tokenizer.json").exists()
    assert cfg["num_key_value_heads"] < cfg["num_attention_heads"]  # grouped-query attention, like Llama 3


def test_tiny_loads_through_the_same_path_as_a_local_folder(tiny_path):
    m1, tok1 = load_llama("tiny")
    m2, tok2 = load_llama(str(tiny_path))
    assert m1.smml_source["kind"] == "tiny" and m2.smml_source["kind"] == "local"
    assert type(m1) is type(m2) and m1.config.to_dict() == m2.config.to_dict()
    ids = tok1("hello world", return_tensors="pt").input_ids
    assert ids[0, 0].item() == tok1.bos_token_id
    assert torch.equal(m1(input_ids=ids).logits, m2(input_ids=ids).logits)
    assert tok1.padding_side == "left" and tok1.pad_token is not None


def test_dtype_and_device_defaults_on_cpu():
    assert device.resolve_dtype("auto", "cpu") == torch.float32
    assert device.resolve_dtype("bf16") == torch.bfloat16
    m, _ = load_llama("tiny", dtype="bf16")
    assert next(m.parameters()).dtype == torch.bfloat16 and next(m.parameters()).device.type == "cpu"
    with pytest.raises(ValueError, match="dtype"):
        device.resolve_dtype("fp7")


def test_asking_for_a_gpu_without_one_is_a_clear_error():
    with pytest.raises(ModelLoadError, match="torch sees none"):
        load_llama("tiny", device="cuda")


def _fails_fast(fn, match, limit_s=5.0):
    t0 = time.perf_counter()
    with pytest.raises(ModelLoadError, match=match) as info:
        fn()
    assert time.perf_counter() - t0 < limit_s
    return str(info.value)


def test_offline_hub_id_fails_fast_and_says_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    msg = _fails_fast(lambda: load_llama("meta-llama/Llama-3.2-1B"), "HF_HUB_OFFLINE")
    assert "tiny" in msg and "local folder" in msg


def test_unreachable_hub_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    msg = _fails_fast(lambda: load_llama("meta-llama/Llama-3.2-1B"), "Cannot reach the model hub")
    assert "tiny" in msg


class _FakeHub:
    """A loopback HTTP server that answers every request the way the hub answers a gated / missing repo."""

    def __init__(self, error_code: str):
        import http.server
        import threading

        code = error_code

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self):
                self.server.auth_headers.append(self.headers.get("Authorization", ""))
                self.send_response(401 if code == "GatedRepo" else 404)
                self.send_header("X-Error-Code", code)
                self.send_header("X-Error-Message", "Access to this repo is restricted" if code == "GatedRepo"
                                 else "Repository not found")
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_HEAD = _answer

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.auth_headers = []
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("error_code,match", [("GatedRepo", "gated model"), ("RepoNotFound", "No model")])
def test_hub_errors_become_instructions_and_never_show_the_token(monkeypatch, tmp_path, error_code, match):
    hub = _FakeHub(error_code)
    try:
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
        monkeypatch.setenv("HF_TOKEN", SECRET)
        msg = _fails_fast(lambda: load_llama("meta-llama/Llama-3.2-1B"), match)
    finally:
        hub.close()
    assert any(SECRET in h for h in hub.server.auth_headers)  # the token was sent to the hub...
    assert SECRET not in msg  # ...but is never shown
    if error_code == "GatedRepo":
        assert "HF_TOKEN" in msg and "license" in msg and "has not been granted" in msg


def test_missing_folder_not_llama_no_weights_and_bad_id(tmp_path):
    _fails_fast(lambda: load_llama(str(tmp_path / "nope")), "No checkpoint folder")
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    _fails_fast(lambda: load_llama(str(gpt2)), "not a Llama checkpoint")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps({"model_type": "llama"}))
    _fails_fast(lambda: load_llama(str(empty)), "safetensors")
    _fails_fast(lambda: load_llama(str(tmp_path)), "no config.json")
    _fails_fast(lambda: load_llama("not-a-hub-id"), "neither a folder nor a hub id")
