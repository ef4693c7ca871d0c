"""Shared test set-up: CPU-only, offline, quiet, and nothing written into the checkout.

Run everything with ``bash scripts/course.sh test`` (what CI runs: two pytest-xdist workers), or
``.venv/bin/pytest`` after set-up (one process; add ``-n 2`` for two).
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
if os.environ.get("PYTEST_XDIST_WORKER") and not os.environ.get("SMML_TEST_KEEP_THREADS"):
    # Several workers share the cores: each (and every kernel and server it starts) gets its share of OpenMP
    # threads. Oversubscribed, torch's spinning thread pools stall each other: a 16-token prefill measured
    # 7 ms alone took 136 ms, enough to flip a lab's "prefill grows with the prompt" check.
    _workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // _workers))
# Figures and results of notebooks and tests go to a throwaway folder, never into the checkout.
if "SMML_OUTPUT_DIR" not in os.environ:
    os.environ["SMML_OUTPUT_DIR"] = _CREATED_OUTPUT_DIR = tempfile.mkdtemp(prefix="smml-test-outputs-")
else:
    _CREATED_OUTPUT_DIR = ""

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def kernel_name() -> str:
    """The Jupyter kernel the notebooks run on, registered for (and pointing at) this interpreter."""
    from smml_lib.course.jupyter_kernel import KERNEL_NAME, ensure_kernel, kernel_python

    ensure_kernel()
    assert Path(kernel_python(KERNEL_NAME)).resolve() == Path(sys.executable).resolve(), (
        f"kernel {KERNEL_NAME!r} does not point at the test interpreter {sys.executable}")
    return KERNEL_NAME


@pytest.fixture(scope="session")
def tiny_path() -> Path:
    """The offline tiny Llama checkpoint folder (built once, cached)."""
    from smml_lib.models.tiny import tiny_llama_path

    return tiny_llama_path()


@pytest.fixture(scope="session")
def tiny_model(tiny_path):
    """The tiny Llama loaded on the CPU in fp32: ``(model, tokenizer)``. Do not modify it in a test."""
    from smml_lib.models.loading import load_llama

    return load_llama("tiny", device="cpu", dtype="fp32")


def _cluster_test_ids() -> tuple[str, set[str]]:
    from smml_lib.course.runner import discover_notebooks, uses_local_cluster

    notebooks = {nb.relative_to(REPO).as_posix() for nb in discover_notebooks() if uses_local_cluster(nb)}
    return "tests/test_cluster.py::", notebooks


def _modules_with_module_fixtures() -> set[str]:
    """Test files that define a module-scoped fixture (a server, a reference training run): split over two
    workers, each worker would build it again (test_train_dist's reference run costs ~20 s)."""
    return {f"tests/{p.name}" for p in (REPO / "tests").glob("test_*.py")
            if '@pytest.fixture(scope="module")' in p.read_text()}


try:
    import xdist  # noqa: F401  (the hook below is only known to pytest when pytest-xdist is installed)
except ImportError:
    pass
else:
    def pytest_xdist_make_scheduler(config, log):
        """Two workers share the tests (the test command passes ``-n 2``), except that there is one local
        Slurm cluster per machine: tests/test_cluster.py and the labs that start the cluster form one unit
        that runs on one worker, in order; a test file with a module-scoped fixture is one unit too, so the
        fixture is built once. Every other test is a unit of its own. xdist hands out the units with the most
        tests first, then the rest in collection order (which ``pytest_collection_modifyitems`` sorts
        longest first), one at a time to whichever worker runs short: the long units do not end up last,
        where one worker would run them while the other waits. (xdist's own ``xdist_group`` grouping does not
        take effect with pytest 9.2, whose node ids it can no longer rewrite; this works from the ids alone.)"""
        from xdist.scheduler import LoadScopeScheduling

        prefix, notebooks = _cluster_test_ids()
        grouped = _modules_with_module_fixtures()

        class ClusterUnitScheduling(LoadScopeScheduling):
            def _split_scope(self, nodeid: str) -> str:
                if nodeid.startswith(prefix) or (nodeid.startswith("tests/test_notebooks.py::")
                                                 and nodeid.rsplit("[", 1)[-1].rstrip("]") in notebooks):
                    return "local-slurm-cluster"
                module = nodeid.split("::", 1)[0]
                return module if module in grouped else nodeid

        return ClusterUnitScheduling(config, log)


def pytest_sessionfinish(session, exitstatus):
    """Remove the throwaway output folder after a green run (the main process: xdist workers share it).
    After a failure it stays: it holds the executed copies of failed notebooks, named in the failure."""
    if _CREATED_OUTPUT_DIR and exitstatus == 0 and not os.environ.get("PYTEST_XDIST_WORKER"):
        import shutil

        shutil.rmtree(_CREATED_OUTPUT_DIR, ignore_errors=True)


def _expected_cost(item) -> tuple[int, str]:
    """Sort key, longest first: lab notebooks (later labs are the longer ones), then tests marked ``slow``,
    then the rest in file order. Cluster tests keep their place (they are one unit, in order)."""
    if "cluster" in item.keywords:
        return (3, "")
    if "notebook" in item.keywords and "solutions" not in item.nodeid:
        return (0, "".join(chr(255 - ord(c)) for c in item.nodeid))  # descending: 04-3, 04-2, ..., 00-1
    return (1, "") if "slow" in item.keywords else (2, "")


def pytest_collection_modifyitems(config, items):
    """Under xdist, order the tests longest first (see the scheduler above).

    Tests marked ``gpu`` need a CUDA GPU: on a CPU-only machine (CI) they are skipped with that reason."""
    if os.environ.get("PYTEST_XDIST_WORKER"):  # a single process keeps the file order
        items.sort(key=_expected_cost)  # stable: equal keys keep their order
    import torch  # deferred: CUDA_VISIBLE_DEVICES above must be set before torch looks for GPUs

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: on a GPU machine run SMML_TEST_GPU=1 pytest -m gpu")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def one_torch_thread():
    """In-process servers share the test process: one torch thread keeps them fast on a busy 2-core machine.
    A module opts in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch  # deferred, like the gpu hook above: CUDA_VISIBLE_DEVICES is set first

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
