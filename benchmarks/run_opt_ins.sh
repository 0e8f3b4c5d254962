#!/usr/bin/env bash
# The fast-serving benchmark in one command: the fast-serving opt-ins (shortlist, int8, both), the ensemble of
# 2 on the fast path, the 32k-vocabulary model, and the exact default under fairseq-generate's own timer
# natively and on an emulated AVX2-only CPU, plus the timer-gap analysis at beam 1 batch 64.
#   usage: benchmarks/run_opt_ins.sh            (from the repository root; about 20-25 minutes at REPS=3
#                                                on a quiet 2-core machine, see benchmarks/README.md)
# Settings (environment): GT (/tmp/gt: prepare_gettext.sh + the fconv training of benchmarks/README.md),
# GT32K (/tmp/gt32k: benchmarks/prepare_32k.sh; skipped when its checkpoint is missing), REPS (3),
# THREADS (2), OUT (benchmarks/results/opt_ins: the prefix of every file written), PYTHON (.venv/bin/python),
# SHORTLIST / SHORTLIST32K (existing shortlist files; default: built in the run, the build timed).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
gt=${GT:-/tmp/gt}
gt32k=${GT32K:-/tmp/gt32k}
reps=${REPS:-3}
threads=${THREADS:-2}
out=${OUT:-benchmarks/results/opt_ins}
refs=${REFERENCES:-../shared/data/gettext-en-de/test.de}
ck=$gt/ck_fconv_1091/checkpoint_best.pt
ck2=${ENSEMBLE_WITH:-$gt/ck_fconv_1091/checkpoint_6_1000.pt}  # the same run 91 updates earlier
export PATH="$(dirname "$py"):$PATH"
avx2=(MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2)
t0=$(date +%s)
stamp() { echo "== $1 ($(( $(date +%s) - t0 )) s into the run)"; }

stamp "1/5 opt-ins and the ensemble, 8k vocabulary"
$py benchmarks/bench.py --data "$gt/bin" --fconv-checkpoint "$ck" --train-presets --dtypes --no-seqgen \
    --opt-ins shortlist int8 shortlist+int8 ${SHORTLIST:+--shortlist "$SHORTLIST"} --ensemble-with "$ck2" \
    --references "$refs" --reps "$reps" --threads "$threads" --latency-sentences 200 --keep-going --out "$out"

if [ -f "$gt32k/ck_fconv/checkpoint_best.pt" ]; then
  stamp "2/5 the 32k-vocabulary model, beam 5 batch 64"
  $py benchmarks/bench.py --data "$gt32k/bin" --fconv-checkpoint "$gt32k/ck_fconv/checkpoint_best.pt" \
      --train-presets --dtypes --no-seqgen --gen-configs beam5_batch64 --opt-ins shortlist int8 shortlist+int8 \
      ${SHORTLIST32K:+--shortlist "$SHORTLIST32K"} --references "$refs" --reps "$reps" --threads "$threads" \
      --keep-going --out "${out}_32k"
else
  stamp "2/5 skipped: no $gt32k/ck_fconv/checkpoint_best.pt (benchmarks/prepare_32k.sh $gt32k)"
fi

stamp "3/5 fairseq-generate's own timer, native and AVX2-only emulation"
$py benchmarks/bench_cli.py --data "$gt/bin" --fconv-checkpoint "$ck" --reps "$reps" --threads "$threads" \
    --emulations native avx2 --configs beam5_batch64 beam1_batch64 --out "${out}_cli"

stamp "4/5 the timer gap at beam 1 batch 64 (AVX2 emulation): per batch, bench.py's and fairseq-generate's limits"
work=$(mktemp -d)
$py -c "import sys; sys.path.insert(0, 'benchmarks'); from bench_inputs import convert_to; convert_to('$ck', '$work/ext.pt')"
{
  echo "Command: benchmarks/run_opt_ins.sh (REPS=$reps THREADS=$threads GT=$gt), parts 4 and 5: benchmarks/timer_gap.py"
  echo "and benchmarks/profile_decode.py on $ck and its conversion, beam 1 batch 64, under ${avx2[*]}."
  env "${avx2[@]}" OMP_NUM_THREADS="$threads" MKL_NUM_THREADS="$threads" $py -c \
      "import sys; sys.path.insert(0, 'benchmarks'); import bench_common as c; print(c.machine_line(c.machine()))"
  echo
  for side in "$ck" "$work/ext.pt"; do
    env "${avx2[@]}" OMP_NUM_THREADS="$threads" MKL_NUM_THREADS="$threads" \
        $py benchmarks/timer_gap.py --data "$gt/bin" --checkpoint "$side" --beam 1 --batch 64 --threads "$threads" \
        --limits 1.2,10 0,200 --passes 2 2>/dev/null
  done
  stamp "5/5 torch.profiler, 6 batches at beam 1 batch 64 (AVX2 emulation; bench.py's limits, after a warm-up pass)"
  for side in "$ck" "$work/ext.pt"; do
    env "${avx2[@]}" OMP_NUM_THREADS="$threads" MKL_NUM_THREADS="$threads" \
        $py benchmarks/profile_decode.py --data "$gt/bin" --checkpoint "$side" --beam 1 --batch 64 \
        --max-batches 6 --threads "$threads" --rows 12 2>/dev/null
  done
} | tee "${out}_timer_gap.txt"
rm -rf "$work"
stamp "done"
