#!/usr/bin/env bash
# SMML Lab: the one entry point for a fresh machine.
#
#   bash scripts/course.sh labs   # set up, then run every lab headlessly and write a browsable report
#   bash scripts/course.sh test   # set up, then run the full test suite (this is what .ci/run calls)
#   bash scripts/course.sh setup  # set up only: .venv, the smml_lib package, the Jupyter kernel "smml"
#
# Extra arguments after "labs" go to `smml labs` (e.g. --only 00 --param model_id=/models/llama-1b);
# after "test" they go to pytest (e.g. -k gemm).
#
# Set-up is idempotent and fast the second time: it re-installs only when pyproject.toml changed.
# Environment knobs: SMML_VENV (where the virtual environment lives, default ./.venv),
# SMML_TORCH_SPEC (pip requirement for torch, overrides the GPU/CPU choice below),
# SMML_TEST_WORKERS (pytest-xdist workers for "test", default 2).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SMML_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
STAMP="$VENV/.smml-setup-stamp"

say() { printf '\033[1m[smml]\033[0m %s\n' "$*"; }
die() { printf '\033[1;31m[smml] error:\033[0m %s\n' "$*" >&2; exit 1; }

have_nvidia_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; }

install_python_env() {
  command -v python3 >/dev/null 2>&1 || die "python3 not found: install Python 3.10 or newer (e.g. apt-get install python3 python3-venv)."
  python3 - <<'PY' || die "Python 3.10 or newer is needed (found $(python3 --version 2>&1))."
import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)
PY
  if [ ! -x "$PY" ]; then
    say "creating virtual environment $VENV"
    python3 -m venv "$VENV" || die "could not create a venv: on Debian/Ubuntu run: apt-get install python3-venv"
  fi
  local want; want="$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/course.sh" | sha256sum | cut -c1-16)"
  if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && "$PY" -c "import smml_lib, torch, papermill" 2>/dev/null; then
    say "environment up to date ($VENV)"
  else
    "$PY" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
    if ! "$PY" -c "import torch" 2>/dev/null; then
      if [ -n "${SMML_TORCH_SPEC:-}" ]; then
        say "installing torch ($SMML_TORCH_SPEC)"
        "$PY" -m pip install -q "$SMML_TORCH_SPEC"
      elif have_nvidia_gpu; then
        say "NVIDIA GPU found: installing the CUDA build of torch from PyPI"
        "$PY" -m pip install -q torch
      else
        # No GPU: the CPU build is ~10x smaller than the CUDA one. Try PyTorch's CPU index (or a local
        # wheel cache that pip already knows), and fall back to the default build if neither answers.
        say "no NVIDIA GPU: installing the CPU build of torch"
        "$PY" -m pip install -q "torch==2.13.0+cpu" --extra-index-url https://download.pytorch.org/whl/cpu \
            --retries 1 --timeout 10 2>/dev/null \
          || "$PY" -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu --retries 1 --timeout 10 2>/dev/null \
          || "$PY" -m pip install -q torch
      fi
    fi
    say "installing smml_lib with its extras (pip install -e '.[dev]')"
    "$PY" -m pip install -q -e "$ROOT[dev]"
    echo "$want" > "$STAMP"
  fi
  # The notebooks name the kernel "smml"; register it inside the venv, pointing at this interpreter.
  "$VENV/bin/smml" kernel --quiet
}

install_system_packages() {
  # Module 03 runs a real two-node Slurm cluster on this machine. It needs Debian's slurm + munge
  # packages and root; without them the cluster tests and labs say so and the rest still runs.
  if command -v slurmctld >/dev/null 2>&1 && command -v munged >/dev/null 2>&1; then return 0; fi
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    say "note: Slurm is not installed and this is not a root apt machine; the local-cluster labs will explain how to get it"
    return 0
  fi
  say "installing Slurm and munge (Debian packages) for the local two-node cluster"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      slurmctld slurmd slurm-client munge iproute2 >/dev/null) \
    || say "warning: could not install Slurm; the local-cluster tests will be skipped with a reason"
}

cmd="${1:-}"; shift || true
case "$cmd" in
  setup)
    install_python_env; install_system_packages ;;
  labs)
    install_python_env; install_system_packages
    exec "$VENV/bin/smml" labs "$@" ;;
  test)
    install_python_env; install_system_packages
    cd "$ROOT"
    # Two workers: the notebook and launcher tests wait on subprocesses about half the time, so a second
    # worker uses the idle core. The cluster tests (one local Slurm cluster per machine) share one worker (conftest).
    exec "$PY" -m pytest -n "${SMML_TEST_WORKERS:-2}" "$@" ;;
  *)
    sed -n '2,15p' "$0"; exit 2 ;;
esac
