"""The Jupyter kernel "smml": the notebooks run on the interpreter that has smml_lib installed.

A notebook names its kernel. If that name resolves to some other Python (a system ``python3``
without torch), every import fails in confusing ways. ``ensure_kernel()`` registers a kernel called
``smml`` inside the current environment (``<venv>/share/jupyter/kernels/smml``) whose command is
*this* interpreter, so JupyterLab started from the venv and papermill both find the right one.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

KERNEL_NAME = "smml"
DISPLAY_NAME = "Python (smml)"


def kernel_spec_dict() -> dict[str, Any]:
    # log_level=ERROR: ipykernel warns on every start that its loopback (127.0.0.1) TCP sockets are not
    # encrypted, once per lab in the main job's output; errors from the kernel process still show.
    return {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}",
                 "--IPKernelApp.log_level=ERROR"],
        "display_name": DISPLAY_NAME,
        "language": "python",
        "metadata": {"debugger": True},
        "env": {"PYTHONUNBUFFERED": "1"},
    }


def ensure_kernel(quiet: bool = True) -> Path:
    """Install (or refresh) the ``smml`` kernel spec in ``sys.prefix``; return its folder. Idempotent."""
    from jupyter_client.kernelspec import KernelSpecManager  # deferred: optional extra [notebooks]

    ksm = KernelSpecManager()
    try:
        current = ksm.get_kernel_spec(KERNEL_NAME)
        if current.argv == kernel_spec_dict()["argv"]:
            if not quiet:
                print(f"kernel {KERNEL_NAME!r} ok: {current.resource_dir} -> {current.argv[0]}")
            return Path(current.resource_dir)
    except Exception:  # NoSuchKernel
        pass
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "kernel.json").write_text(json.dumps(kernel_spec_dict(), indent=1))
        dest = ksm.install_kernel_spec(tmp, KERNEL_NAME, prefix=sys.prefix, replace=True)
    if not quiet:
        print(f"installed Jupyter kernel {KERNEL_NAME!r} ({DISPLAY_NAME}) -> {sys.executable}")
    return Path(dest)


def kernel_python(name: str = KERNEL_NAME) -> str:
    """The interpreter a kernel name resolves to (``argv[0]`` of its spec)."""
    from jupyter_client.kernelspec import KernelSpecManager  # deferred: optional extra [notebooks]

    return KernelSpecManager().get_kernel_spec(name).argv[0]


def cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="smml kernel", description="Register the Jupyter kernel 'smml' for this venv.")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    ensure_kernel(quiet=args.quiet)
    return 0
