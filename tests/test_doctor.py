"""smml doctor: one verdict per line, the fix, and never a secret's value."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from smml_lib.common import credentials
from smml_lib.course.doctor import run_doctor

SECRETS = {"HF_TOKEN": "hf_doctorSECRETtoken987", "AWS_ACCESS_KEY_ID": "AKIADOCTORSECRET42",
           "AWS_SECRET_ACCESS_KEY": "doctorSecretAccessKeyValue/abc123"}


def test_every_line_has_a_verdict_and_a_fix_when_not_ok():
    df = run_doctor()
    assert list(df.columns) == ["check", "value", "verdict", "fix"]
    assert set(df["verdict"]) <= {"ok", "warn", "missing"}
    assert (df.loc[df["verdict"] != "ok", "fix"].str.len() > 0).all()
    for needed in ["python", "torch", "transformers", "CUDA", "NCCL", "GPUs", "NVIDIA driver", "GPU peer access",
                   "NVML telemetry", "Hugging Face token", "AWS credentials", "free disk", "Jupyter kernel 'smml'"]:
        assert needed in set(df["check"]), needed


def test_cpu_machine_gets_warnings_not_errors():
    df = run_doctor().set_index("check")
    assert df.loc["CUDA", "verdict"] == "warn" and "smoke mode" in df.loc["CUDA", "fix"]
    assert df.loc["torch", "verdict"] == "ok"


def test_secrets_are_reported_by_presence_only(tmp_path):
    env = {**os.environ, **SECRETS, "HOME": str(tmp_path)}
    for args in (["doctor"], ["doctor", "--json"]):
        out = subprocess.run([sys.executable, "-m", "smml_lib.cli", *args], capture_output=True, text=True,
                             env=env, timeout=120)
        text = out.stdout + out.stderr
        for value in SECRETS.values():
            assert value not in text
        assert "configured (environment variable HF_TOKEN; value hidden)" in text
    rows = {r["check"]: r for r in json.loads(out.stdout)}
    assert rows["AWS credentials"]["verdict"] == "ok"


def test_credential_sources_without_network(tmp_path, monkeypatch):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    assert credentials.hf_token_source() is None
    assert credentials.aws_credentials_source() is None or "instance role" in credentials.aws_credentials_source()
    (tmp_path / "credentials").write_text("[default]\naws_access_key_id = AKIAFILE\naws_secret_access_key = x\n")
    assert "profile 'default'" in credentials.aws_credentials_source()
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "token").write_text("hf_filetoken")
    assert "token file" in credentials.hf_token_source()


def test_redact(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_redactme123")
    assert credentials.redact("token is hf_redactme123!") == "token is ***!"
