#!/usr/bin/env bash
# Every way fconv_ext decodes, in one command, next to fairseq's fconv on the same weights:
#   1. bench.py (fairseq-generate's generator for each side, a fresh process per measurement, median of
#      REPS): fconv, fconv_ext exact, int8, shortlist + int8, compiled exact, compiled + shortlist + int8;
#   2. the 32k-vocabulary model (benchmarks/prepare_32k.sh GT32K; skipped without it): part 1 at beam 5 batch 64;
#   3. bench_export.py (the raw test sentences through each runtime, one measurement per cell, time to
#      first translation and peak RSS): fconv_ext eager, onnxruntime exact and int8, the AOTInductor
#      package, and fconv_ext compiled inside a fresh process (its compilation in the first translation).
# Beam 5 batch 64, beam 1 batch 64, beam 5 batch 1 (LATENCY sentences at batch 1).
#   usage: benchmarks/run_decoder_paths.sh     (from the repository root; about 40 minutes with one thread)
# Settings (environment): GT (/tmp/gt: prepare_gettext.sh + the fconv training of benchmarks/README.md),
# CK (GT/ck_fconv/checkpoint_last.pt), GT32K (/tmp/gt32k), REPS (3), THREADS (1), LATENCY (100), OUT (benchmarks/results/decoder_paths:
# the prefix of the files written), PYTHON (.venv/bin/python), NOTE (what else ran on the machine).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
gt=${GT:-/tmp/gt}
gt32k=${GT32K:-/tmp/gt32k}
ck=${CK:-$gt/ck_fconv/checkpoint_last.pt}
reps=${REPS:-3}
threads=${THREADS:-1}
latency=${LATENCY:-100}
out=${OUT:-benchmarks/results/decoder_paths}
refs=${REFERENCES:-../shared/data/gettext-en-de/test.de}
export PATH="$(dirname "$py"):$PATH"
work=$(mktemp -d)
t0=$(date +%s)
stamp() { echo "== $1 ($(( $(date +%s) - t0 )) s into the run)"; }

stamp "1/3 fairseq-generate's generators: exact, int8, shortlist + int8, compiled, compiled + shortlist + int8"
$py benchmarks/bench.py --data "$gt/bin" --fconv-checkpoint "$ck" --train-presets --dtypes --no-seqgen \
    --opt-ins int8 shortlist+int8 compiled compiled+shortlist+int8 --references "$refs" --reps "$reps" \
    --threads "$threads" --latency-sentences "$latency" --keep-going --out "$out"

if [ -f "$gt32k/ck_fconv/checkpoint_last.pt" ]; then
  stamp "2/3 the 32k-vocabulary model, beam 5 batch 64"
  $py benchmarks/bench.py --data "$gt32k/bin" --fconv-checkpoint "$gt32k/ck_fconv/checkpoint_last.pt" \
      --train-presets --dtypes --no-seqgen --gen-configs beam5_batch64 \
      --opt-ins int8 shortlist+int8 compiled compiled+shortlist+int8 --references "$refs" --reps "$reps" \
      --threads "$threads" --keep-going --out "${out}_32k"
else
  stamp "2/3 skipped: no $gt32k/ck_fconv/checkpoint_last.pt (benchmarks/prepare_32k.sh $gt32k)"
fi

stamp "3/3 exported models and a compiled process: onnxruntime, AOTInductor, compiled, next to eager"
$py -c "import sys; sys.path.insert(0, 'benchmarks'); from bench_inputs import convert_to; convert_to('$ck', '$work/ext.pt')"
$py benchmarks/bench_export.py --checkpoint "$work/ext.pt" --data "$gt/bin" --codes "$gt/tok/codes" \
    --threads "$threads" --sides eager onnx onnx_int8 aoti compiled --limit-batch1 "$latency" \
    --work "$work/export" --inductor-cache "$work/inductor" --note "${NOTE:-}" --out "${out}_export"
stamp "done"
rm -rf "$work"
