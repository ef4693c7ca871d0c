#!/usr/bin/env bash
# Record Module 01's reference results on a GPU machine, in one prepared run.
#
#   bash scripts/gpu_reference.sh [STEP ...]     (default: every step, in this order)
#
# Steps: env twin harness mamf telemetry lab01-2 lab01-1 lab01-3 [bench-ladder]
#   env          the environment every result is recorded with (device, driver, versions)
#   twin         Llama-3.2-1B's architecture with random weights, built on the GPU (skipped when
#                SMML_REF_MODEL names a real checkpoint folder): timings and memory as the real model
#   harness      our timing harness vs triton.testing.do_bench, large bf16 GEMMs (target: within 3%)
#   mamf         maximum achievable bf16 matmul in a 50 s search (target: >= 75% of the dense peak)
#   telemetry    the NVML sampler's cost at 10 Hz (target: < 1% of one core)
#   lab01-N      the Module 01 lab in real mode, run as plain Python (no Jupyter needed); its saved
#                results are the reference results learners see beside their own
#   bench-ladder the decode ladder benchmark: issue 3's decode targets (lab 01-3 measures the same ladder)
#
# Made for a borrowed machine that has torch, transformers, pandas and matplotlib but no Jupyter and
# no network. Nothing is installed. Each step has its own time limit and its own log; a failing step
# does not stop the others. Everything lands in $SMML_REF_DIR (default /tmp/smml-reference) and, after
# every step, in $OUT/reference.tar.gz when $OUT is set (the device tool brings $OUT back).
# With the device tool (at most 10 min per call, warm for 30 s in between), two calls, back to back. The
# first prints every figure issue 3 asks for, the second records the labs' reference results:
#   bash scripts/gpu_reference.sh env twin harness mamf telemetry bench-ladder   (estimated 4-5 min)
#   bash scripts/gpu_reference.sh twin lab01-3 lab01-2 lab01-1   (estimated 6-9 min: lab01-3 compiles one
#                                              decode graph per batch size; twin is kept if still warm)
# Estimates only: none of this has run on a GPU yet. Every step's results come back even if a later one is cut.
# Then: tar xzf reference.tar.gz; cp results/m01_*.json assets/reference_results/; commit with the logs'
# figures. In smoke mode (SMML_REF_MODE=smoke) the same steps run on a CPU with the tiny model: a dry run.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
REF=${SMML_REF_DIR:-/tmp/smml-reference}
MODE=${SMML_REF_MODE:-real}
mkdir -p "$REF/logs"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 SMML_OUTPUT_DIR="$REF" \
       TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TQDM_MININTERVAL=5
MODEL=${SMML_REF_MODEL:-$REF/Llama-3.2-1B-twin-random-weights}
[ "$MODE" = smoke ] && MODEL=tiny

# The environment, and what triton needs at run time (a C compiler and Python.h: do_bench and torch.compile on
# GPUs build a small launcher on first use).
ENV_PY='
import json, os, shutil, sysconfig
from smml_lib.perf.environment import environment
print(json.dumps(environment(), indent=1, default=str))
try:
    import triton; print("triton", triton.__version__)
except ImportError:
    print("triton: not installed")
print("C compiler:", shutil.which("cc") or shutil.which("gcc") or shutil.which("clang") or "none",
      "| Python.h:", os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))
'

snapshot() {  # what is there so far comes back even if a later step runs out of time
  [ -n "${OUT:-}" ] && tar czf "$OUT/reference.tar.gz" -C "$REF" --exclude='*.safetensors' . 2>/dev/null
  return 0
}

step() {  # step NAME LIMIT_S COMMAND...: run with a time limit, log, report, never stop the script
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS rc
  echo "=== $name (limit ${limit} s) ==="
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$REF/logs/$name.log"
  rc=${PIPESTATUS[0]}
  echo "=== $name: rc=$rc in $((SECONDS - t0)) s ===" | tee -a "$REF/logs/steps.txt"
  [ "$rc" -eq 0 ] || FAILED+=("$name")
  snapshot
}

lab() {  # lab NAME LIMIT_S NOTEBOOK [-p NAME=VALUE ...]: a Module 01 lab through the plain runner
  local name=$1 limit=$2 nb=$3; shift 3
  step "$name" "$limit" "$PY" -m smml_lib.course.plainrun "01_Leveraging_Hardware/$nb" -p "mode=$MODE" "$@"
}

run_step() {
  case $1 in
    env) step env 60 "$PY" -c "$ENV_PY" ;;
    twin)
      if [ "$MODE" = smoke ] || [ -n "${SMML_REF_MODEL:-}" ]; then echo "=== twin: not needed ($MODEL) ==="
      elif [ -f "$MODEL/model.safetensors" ]; then echo "=== twin: already built in $MODEL ==="
      else step twin 120 "$PY" -m smml_lib.models.tiny --twin Llama-3.2-1B --dest "$MODEL" --device cuda; fi ;;
    harness) step harness 120 "$PY" -m smml_lib.benchmarks.harness_agreement --rounds 3 ;;
    mamf) step mamf 120 "$PY" -m smml_lib.benchmarks.mamf ;;
    telemetry) step telemetry 90 "$PY" -m smml_lib.benchmarks.telemetry_overhead --seconds 5
               step telemetry-no-pcie 90 "$PY" -m smml_lib.benchmarks.telemetry_overhead --seconds 5 --pcie-interval inf ;;
    lab01-1) lab lab01-1 240 01_llama_on_one_gpu.ipynb -p "model_id=$MODEL" ;;
    lab01-2) lab lab01-2 240 02_gemm_and_roofline.ipynb ;;
    lab01-3) lab lab01-3 540 03_optimizing_llama.ipynb -p "model_id=$MODEL" ;;
    bench-ladder) step bench-ladder 300 "$PY" -m smml_lib.benchmarks.decode_ladder --model "$MODEL" ;;
    *) echo "unknown step $1 (steps: env twin harness mamf telemetry lab01-2 lab01-1 lab01-3 bench-ladder)" >&2
       return 2 ;;
  esac
}

FAILED=()
STEPS=("$@")
[ ${#STEPS[@]} -eq 0 ] && STEPS=(env twin harness mamf telemetry lab01-2 lab01-1 lab01-3)
for s in "${STEPS[@]}"; do
  case $s in env|twin|harness|mamf|telemetry|lab01-1|lab01-2|lab01-3|bench-ladder) ;;
    *) run_step "$s"; exit 2 ;; esac
done
for s in "${STEPS[@]}"; do run_step "$s"; done
echo "--- steps so far in $REF ---"; cat "$REF/logs/steps.txt"
echo "results in $REF/results${OUT:+ and $OUT/reference.tar.gz}"
[ ${#FAILED[@]} -eq 0 ] || { echo "failed this run: ${FAILED[*]}"; exit 1; }
