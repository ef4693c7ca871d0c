"""Shared test set-up: CPU-only, offline, quiet, and nothing written into the checkout.

Run everything with ``bash scripts/course.sh test`` (what CI runs), or ``.venv/bin/pytest`` after set-up.
Set ``SMML_TEST_GPU=1`` on a GPU machine to let tests see the GPUs.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no model hub in CI: a hub load must fail fast and clearly
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("SMML_CI", "1")
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"  # never probe 169.254.169.254 from a test
if not os.environ.get("SMML_TEST_GPU"):
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
# Figures and results of notebooks and tests go to a throwaway folder, never into the checkout.
os.environ.setdefault("SMML_OUTPUT_DIR", tempfile.mkdtemp(prefix="smml-test-outputs-"))

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def kernel_name() -> str:
    """The Jupyter kernel the notebooks run on, registered for (and pointing at) this interpreter."""
    from smml_lib.kernel import KERNEL_NAME, ensure_kernel, kernel_python

    ensure_kernel()
    assert Path(kernel_python(KERNEL_NAME)).resolve() == Path(sys.executable).resolve(), (
        f"kernel {KERNEL_NAME!r} does not point at the test interpreter {sys.executable}")
    return KERNEL_NAME


@pytest.fixture(scope="session")
def tiny_path() -> Path:
    """The offline tiny Llama checkpoint folder (built once, cached)."""
    from smml_lib.tiny import tiny_llama_path

    return tiny_llama_path()


@pytest.fixture(scope="session")
def tiny_model(tiny_path):
    """The tiny Llama loaded on the CPU in fp32: ``(model, tokenizer)``. Do not modify it in a test."""
    from smml_lib.models import load_llama

    return load_llama("tiny", device="cpu", dtype="fp32")
