#!/usr/bin/env bash
# bench.py on a lent GPU machine (no network), in one command from the repository root:
#
#   bash benchmarks/gpu_run.sh DEVENV CHECKPOINT [OUT]
#
# DEVENV: the bundle from benchmarks/make_devenv.sh (wheels, fairseq, Cython modules, gt-bin data);
# CHECKPOINT: the fairseq fconv checkpoint (benchmarks/strip_checkpoint.py makes it small); OUT: where
# results_gpu.json, results_gpu.md and gpu_run.log go (default: $OUT, else /tmp/fconv-gpu-out).
# Steps, each timed: machine report (nvidia-smi, Python, torch), install into SITE, import check (builds
# fairseq's Cython modules with pyximport if the prebuilt ones do not load), then bench.py.  bench.py
# rewrites its results after every configuration, so a run cut short keeps what finished; it is stopped
# after TIME_LIMIT seconds of this script (so that the script can still report before an outer limit).
#
# Settings (environment), defaults in brackets:
#   PYTHON [python3]  DEVICE [cuda]  DATA [DEVENV/gt-bin]  SITE [/tmp/fconv-gpu-site]  TIME_LIMIT [420]
#   DTYPES [fp16 bf16]  GEN_CONFIGS [beam5_batch64 beam1_batch64 beam5_batch1]  REPS [3]
#   LATENCY_SENTENCES [100]  TRAIN_PRESETS [checkpoint:100]  TRAIN_MAX_TOKENS [4000]
#   TRAIN_FIRST [1: training before generation, so that a run cut short has it]  THREADS [all CPUs]
# DTYPES= or TRAIN_PRESETS= (set, empty) leaves those out.  DEVICE=cpu PYTHON=/some/python3.11 runs the
# same steps without a GPU (how it was tested).
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ $# -lt 2 ]; then
  echo "usage: bash benchmarks/gpu_run.sh DEVENV CHECKPOINT [OUT]" >&2
  exit 2
fi
DEVENV=$(realpath -m "$1")
CHECKPOINT=$(realpath -m "$2")
OUT_DIR=${3:-${OUT:-/tmp/fconv-gpu-out}}
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
DATA=${DATA:-$DEVENV/gt-bin}
SITE=${SITE:-/tmp/fconv-gpu-site}
TIME_LIMIT=${TIME_LIMIT:-420}
DTYPES=${DTYPES-fp16 bf16}  # set but empty: none
GEN_CONFIGS=${GEN_CONFIGS:-beam5_batch64 beam1_batch64 beam5_batch1}
REPS=${REPS:-3}
LATENCY_SENTENCES=${LATENCY_SENTENCES:-100}
TRAIN_PRESETS=${TRAIN_PRESETS-checkpoint:100}  # set but empty: no training
TRAIN_MAX_TOKENS=${TRAIN_MAX_TOKENS:-4000}
TRAIN_FIRST=${TRAIN_FIRST:-1}
THREADS=${THREADS:-}

mkdir -p "$OUT_DIR" || { echo "cannot create $OUT_DIR" >&2; exit 1; }
exec > >(tee -a "$OUT_DIR/gpu_run.log") 2>&1
cd "$REPO" || exit 1
export PYTHONUNBUFFERED=1

START_MS=$(date +%s%3N)
PHASE_MS=$START_MS
PHASE_NAME=""
PHASE_TIMES=()
elapsed_s() { echo $(( ($(date +%s%3N) - START_MS) / 1000 )); }
# phase NAME: close the previous phase (print its duration) and open the next one
phase() {
  local now
  now=$(date +%s%3N)
  if [ -n "$PHASE_NAME" ]; then
    PHASE_TIMES+=("$PHASE_NAME: $(( (now - PHASE_MS) / 1000 )).$(( (now - PHASE_MS) % 1000 / 100 )) s")
    echo "-- $PHASE_NAME took $(( (now - PHASE_MS) / 1000 )).$(( (now - PHASE_MS) % 1000 / 100 )) s"
  fi
  PHASE_NAME=$1
  PHASE_MS=$now
  if [ -n "$PHASE_NAME" ]; then
    echo
    echo "== [$(( (now - START_MS) / 1000 )) s] $PHASE_NAME"
  fi
}
summary() {
  phase ""
  echo
  echo "== phases: $(printf '%s; ' "${PHASE_TIMES[@]}")total $(elapsed_s) s"
  echo "== files in $OUT_DIR:"
  ls -l "$OUT_DIR"
}
fail() {
  echo "FAILED: $*"
  summary
  exit 1
}

phase "machine"
echo "repo $REPO; bundle $DEVENV; checkpoint $CHECKPOINT; data $DATA; out $OUT_DIR; device $DEVICE"
for path in "$DEVENV/wheels" "$DEVENV/fairseq.tar.gz" "$DEVENV/fast_ext" "$CHECKPOINT" "$DATA/dict.en.txt"; do
  [ -e "$path" ] || fail "missing $path (build the bundle with benchmarks/make_devenv.sh and carry it)"
done
if [ "$DEVICE" = cuda ]; then
  nvidia-smi || echo "(nvidia-smi failed; torch's view follows)"
fi
command -v "$PYTHON" > /dev/null || fail "no Python at '$PYTHON'"
"$PYTHON" - <<'EOF' || fail "torch does not import"
import os, platform, sys
import torch
print(f"python {platform.python_version()} at {sys.executable}; torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"cuda available {torch.cuda.is_available()}; {os.cpu_count()} CPUs")
if torch.cuda.is_available():
    print("GPU:", torch.cuda.get_device_name(0), f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
EOF
echo "C++ compiler (only needed if the prebuilt Cython modules do not load): $(command -v g++ || command -v c++ || echo none)"

phase "install into $SITE"
"$PYTHON" benchmarks/gpu_env.py install "$DEVENV" "$SITE" || fail "install from $DEVENV"
export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}"

phase "import check"
"$PYTHON" benchmarks/gpu_env.py check "$SITE" || fail "import check (see the traceback above)"

phase "benchmark"
budget=$(( TIME_LIMIT - $(elapsed_s) - 15 ))
[ "$budget" -gt 30 ] || fail "no time left for the benchmark (TIME_LIMIT=$TIME_LIMIT)"
# word splitting of the list settings is intended
# shellcheck disable=SC2206
cmd=("$PYTHON" benchmarks/bench.py --device "$DEVICE" --data "$DATA" --fconv-checkpoint "$CHECKPOINT"
     --dtypes $DTYPES --gen-configs $GEN_CONFIGS --reps "$REPS" --latency-sentences "$LATENCY_SENTENCES"
     --train-presets $TRAIN_PRESETS --train-max-tokens "$TRAIN_MAX_TOKENS" --keep-going --log-children
     --out "$OUT_DIR/results_gpu")
if [ "$TRAIN_FIRST" = 1 ]; then
  cmd+=(--train-first)
fi
if [ -n "$THREADS" ]; then
  cmd+=(--threads "$THREADS")
fi
echo "${cmd[*]}  (stopped after $budget s)"
timeout --signal=TERM --kill-after=10 "$budget" "${cmd[@]}"
rc=$?
case $rc in
  0) echo "benchmark finished" ;;
  124|137) echo "benchmark stopped after $budget s: results_gpu.* hold the configurations that finished (marked partial)" ;;
  *) echo "benchmark FAILED (exit $rc): results_gpu.* hold the configurations that finished, if any" ;;
esac
if [ "$rc" != 0 ] && [ -f "$OUT_DIR/results_gpu.md" ]; then  # (a finished bench.py printed it already)
  echo
  cat "$OUT_DIR/results_gpu.md"
fi
summary
exit $rc
