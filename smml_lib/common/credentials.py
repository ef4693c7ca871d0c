"""Is a Hugging Face token / are AWS credentials configured? Presence only: values never leave here.

Rules the whole course follows:

- We report *where* a credential comes from ("environment", "~/.aws/credentials profile default"),
  never its value, and ``redact()`` scrubs known secret values from any text we print.
- We never probe the EC2 instance-metadata address (169.254.169.254) off EC2: on a laptop that
  probe only times out. An instance role is assumed available only when the machine *is* an EC2
  instance (read from the local DMI files, no network).
"""

from __future__ import annotations

import configparser
import os
from pathlib import Path

SECRET_ENV_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                   "AWS_ACCESS_KEY_ID")


def hf_token_source() -> str | None:
    """Where a Hugging Face token is configured (``None`` when none is)."""
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        if os.environ.get(var):
            return f"environment variable {var}"
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")).expanduser()
    token_file = Path(os.environ.get("HF_TOKEN_PATH", home / "token")).expanduser()
    if token_file.is_file() and token_file.read_text().strip():
        return f"token file {token_file} (hf auth login)"
    return None


def on_ec2() -> bool:
    """True on an EC2 instance (from DMI/hypervisor files; no network)."""
    for f in ("/sys/class/dmi/id/board_asset_tag", "/sys/class/dmi/id/sys_vendor", "/sys/hypervisor/uuid"):
        try:
            text = Path(f).read_text().strip().lower()
        except OSError:
            continue
        if text.startswith("i-") or "amazon ec2" in text or text.startswith("ec2"):
            return True
    return False


def aws_credentials_source() -> str | None:
    """Where AWS credentials would come from (``None`` when nowhere), without contacting AWS."""
    if os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        return "environment variables AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
    profile = os.environ.get("AWS_PROFILE", "default")
    for path, section in ((os.environ.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials"), profile),
                          (os.environ.get("AWS_CONFIG_FILE", "~/.aws/config"),
                           profile if profile == "default" else f"profile {profile}")):
        cp = configparser.ConfigParser()
        try:
            cp.read(Path(path).expanduser())
        except configparser.Error:
            continue
        if cp.has_section(section) and any(cp.has_option(section, k) for k in (
                "aws_access_key_id", "credential_process", "sso_session", "sso_start_url", "role_arn")):
            return f"profile {profile!r} in {path}"
    if os.environ.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") or os.environ.get("AWS_WEB_IDENTITY_TOKEN_FILE"):
        return "container / web-identity role"
    if on_ec2() and os.environ.get("AWS_EC2_METADATA_DISABLED", "").lower() != "true":
        return "EC2 instance role (if one is attached)"
    return None


def redact(text: str) -> str:
    """Replace the values of known secret environment variables in ``text`` with ``***``."""
    for var in SECRET_ENV_VARS:
        value = os.environ.get(var)
        if value and len(value) >= 6:
            text = text.replace(value, "***")
    return text
