#!/usr/bin/env bash
# The sequence-level (sequence_risk) fine-tuning experiment of examples/gettext/README.md, one step per call:
#
#   risk_experiment.sh base                                  # the token-level base model (fixed updates)
#   risk_experiment.sh finetune NAME UPDATES SEED -- ARGS    # resume the base, fine-tune; ARGS: criterion, lr...
#   risk_experiment.sh eval NAME [valid|test]                # beam 5, 5-best, scored at several --lenpen
#
# Every step runs with one thread (OMP_NUM_THREADS=1) so that runs on a shared machine compare; the
# seconds a fine-tuning step takes are what fairseq-train reports ("done training in N seconds") and
# the process's user+system CPU time, both written to EXP/NAME/time.txt.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
DEMO=${DEMO_DIR:-$REPO/work/demo-en-de}     # make demo's data (bin/, raw/)
EXP=${RISK_EXP_DIR:-$REPO/work/risk-exp}
BASE_UPDATES=${BASE_UPDATES:-600}
LENPENS=${LENPENS:-0.6 0.8 0.9 1.0 1.1 1.2 1.4 1.6 2.0}
PY=${PYTHON:-$REPO/.venv/bin/python}
# the plugin to run: this checkout's by default; FCONV_PLUGIN_DIR=/path/fconv_plugin runs a fixed copy
# (e.g. `git archive HEAD fconv_plugin | tar -x -C /tmp/code`) while the checkout is being edited
PLUGIN=${FCONV_PLUGIN_DIR:-$REPO/fconv_plugin}
export PYTHONPATH=$(dirname "$PLUGIN")${PYTHONPATH:+:$PYTHONPATH}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$EXP"

# the demo's training options (demo.sh), without its schedule
COMMON=(--user-dir "$PLUGIN" --arch fconv_ext_iwslt_de_en --task fconv_translation --disable-validation
        --optimizer adam --adam-betas '(0.9,0.98)' --clip-norm 0.1 --dropout 0.1 --label-smoothing 0.1
        --required-batch-size-multiple 1 --max-epoch 100 --no-epoch-checkpoints --save-interval 1000000
        --log-format json --log-interval 1)

timed() {  # timed OUT CMD...: run CMD, append its wall and CPU seconds to OUT
  local out=$1; shift
  /usr/bin/time -f "wall %e s, user %U s, sys %S s" -a -o "$out" "$@"
}

case "${1:-}" in
  base)
    # the demo's recipe (demo.sh) for a fixed number of updates instead of a wall-clock budget
    timed "$EXP/base.time.txt" "$PY" -m fairseq_cli.train "$DEMO/bin" "${COMMON[@]}" --lr 0.004 \
      --criterion fused_label_smoothed_cross_entropy --max-tokens 4000 --seed 1 --save-dir "$EXP/base" \
      --lr-scheduler polynomial_decay --warmup-updates 40 --total-num-update "$BASE_UPDATES" \
      --max-update "$BASE_UPDATES" > "$EXP/base.log" 2>&1
    ;;
  finetune)
    # a fresh optimizer and schedule from the base model: the learning rate decays linearly from --lr to 0
    # over UPDATES updates; ARGS choose the criterion, the learning rate and the batch size
    name=$2 updates=$3 seed=$4; shift 4; [ "${1:-}" = "--" ] && shift
    mkdir -p "$EXP/$name"
    timed "$EXP/$name/time.txt" "$PY" -m fairseq_cli.train "$DEMO/bin" "${COMMON[@]}" \
      --restore-file "$EXP/base/checkpoint_last.pt" --reset-optimizer --reset-dataloader --reset-meters \
      --reset-lr-scheduler --lr-scheduler polynomial_decay --warmup-updates 0 --total-num-update "$updates" \
      --max-update "$updates" --seed "$seed" --save-dir "$EXP/$name" "$@" > "$EXP/$name/train.log" 2>&1
    grep -o 'done training in [0-9.]* seconds' "$EXP/$name/train.log" >> "$EXP/$name/time.txt"
    ;;
  eval)
    name=$2 split=${3:-test}
    ck="$EXP/$name/checkpoint_last.pt"
    [ "$name" = base ] && ck="$EXP/base/checkpoint_last.pt"
    mkdir -p "$EXP/$name"
    "$PY" -m fairseq_cli.generate "$DEMO/bin" --user-dir "$PLUGIN" --path "$ck" --gen-subset "$split" \
      --beam 5 --nbest 5 --batch-size 64 --required-batch-size-multiple 1 --remove-bpe \
      > "$EXP/$name/gen.$split.log" 2> "$EXP/$name/gen.$split.err"
    # shellcheck disable=SC2086
    "$PY" "$REPO/examples/gettext/lenpen_rerank.py" --generate "$EXP/$name/gen.$split.log" \
      --ref "$DEMO/raw/$split.de" --lang de --lenpen $LENPENS --json "$EXP/$name/scores.$split.json"
    ;;
  *)
    echo "usage: $0 base | finetune NAME UPDATES SEED -- FAIRSEQ_ARGS | eval NAME [valid|test]" >&2
    exit 2
    ;;
esac
