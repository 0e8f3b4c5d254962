#!/usr/bin/env bash
# After `make summarization`: does sequence-level fine-tuning pay on headlines? Fine-tunes the model that
# run.sh trained two ways for the same minutes, side by side (one thread each, started together, so both
# see the same machine): sequence_risk with the cost 1 - ROUGE-L F1, and token-level label-smoothed cross
# entropy continued with the same optimizer settings. Then each model summarizes the test set as run.sh
# does and is scored with fconv-ext-rouge.
#
#   examples/summarization/risk.sh                        # seeds 1 and 2, 5 minutes each
#   SUMM_RISK_MINUTES=10 SUMM_RISK_SEEDS="1 2 3" examples/summarization/risk.sh
#
# Results: $WORK/risk/{risk,token}-seedN/rouge.txt and time.txt, and a summary in $WORK/risk/summary.md.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${SUMM_DIR:-work/summarization}
RAW=${SUMM_RAW:-$REPO/../shared/data/debian-descriptions}
ARCH=${SUMM_ARCH:-fconv_ext_summarization}
MINUTES=${SUMM_RISK_MINUTES:-5}
SEEDS=${SUMM_RISK_SEEDS:-1 2}
LR=${SUMM_RISK_LR:-0.0001}
# the gettext experiment's chosen setting (examples/gettext/README.md): the beam's 4-best, alpha 0.3;
# candidates are headlines: at most 30 tokens whatever the source length, as run.sh's decoding
RISK=${SUMM_RISK_ARGS:---criterion sequence_risk --risk-cost rougeL --risk-alpha 0.3 --risk-candidates 4 --risk-beam 4 --risk-max-len-a 0 --risk-max-len-b 30 --max-tokens 1000}
TOKEN=${SUMM_TOKEN_ARGS:---criterion label_smoothed_cross_entropy --max-tokens 4000}
GEN=${SUMM_GEN:---beam 5 --max-len-a 0 --max-len-b 30}
BASE="$WORK/checkpoints/checkpoint_best.pt"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

stage() { echo; echo "== [$(date +%H:%M:%S)] $*"; }
if [ ! -f "$BASE" ]; then
  echo "risk.sh: no model at $BASE: run \`make summarization\` (examples/summarization/run.sh) first" >&2
  exit 2
fi
mkdir -p "$WORK/risk"

# fairseq's --stop-time-hours counts the training time stored in the checkpoint too: add the base's
base_hours=$(python - "$BASE" <<'EOF'
import sys, torch
state = torch.load(sys.argv[1], map_location="cpu", weights_only=False)
print(state["extra_state"].get("previous_training_time", 0.0) / 3600)
EOF
)
stop_hours=$(python -c "print($base_hours + $MINUTES / 60)")

finetune() {  # finetune NAME SEED ARGS...: from the base, a fresh Adam at a constant --lr, for MINUTES
  local name=$1 seed=$2; shift 2
  local out="$WORK/risk/$name"
  rm -rf "$out"; mkdir -p "$out"
  /usr/bin/time -f "wall %e s, user %U s, sys %S s" -o "$out/time.txt" \
    fairseq-train "$WORK/bin" --user-dir "$REPO/fconv_plugin" --task fconv_translation --arch "$ARCH" \
    --restore-file "$BASE" --reset-optimizer --reset-dataloader --reset-meters --reset-lr-scheduler \
    --optimizer adam --adam-betas '(0.9,0.98)' --lr "$LR" --lr-scheduler fixed --clip-norm 0.1 \
    --dropout 0.2 --label-smoothing 0.1 --required-batch-size-multiple 1 --skip-long-examples \
    --max-source-positions 1020 --no-eval-bleu --eval-bleu-detok-args '{"target_lang": "en"}' \
    --disable-validation --stop-time-hours "$stop_hours" --max-epoch 100 --no-epoch-checkpoints \
    --save-dir "$out" --log-format simple --log-interval 10 --seed "$seed" "$@" > "$out/train.log" 2>&1
}

summarize() {  # summarize NAME: run.sh's decoding and scoring of the test set
  local out="$WORK/risk/$1"
  # shellcheck disable=SC2086
  fairseq-generate "$WORK/bin" --user-dir "$REPO/fconv_plugin" --path "$out/checkpoint_last.pt" \
    $GEN --batch-size 64 --required-batch-size-multiple 1 --remove-bpe > "$out/generate.log" 2> "$out/generate.err"
  grep '^H-' "$out/generate.log" | sed 's/^H-//' | sort -n -k1,1 | cut -f3 \
    | sacremoses -l en detokenize > "$out/test.hyp"
  fconv-ext-rouge --ref "$RAW/test.short" --hyp "$out/test.hyp" --json > "$out/rouge.json"
}

for seed in $SEEDS; do
  stage "seed $seed: sequence_risk (ROUGE-L cost) and token-level training side by side, $MINUTES minutes each"
  # shellcheck disable=SC2086
  finetune "risk-seed$seed" "$seed" $RISK & risk_pid=$!
  # shellcheck disable=SC2086
  finetune "token-seed$seed" "$seed" $TOKEN & token_pid=$!
  wait "$risk_pid"; wait "$token_pid"   # (each wait fails the script if that run failed)
  stage "seed $seed: summarize the test set with both models"
  summarize "risk-seed$seed" & risk_pid=$!
  summarize "token-seed$seed" & token_pid=$!
  wait "$risk_pid"; wait "$token_pid"
done
# the base model, scored the same way (run.sh wrote its summaries)
fconv-ext-rouge --ref "$RAW/test.short" --hyp "$WORK/test.hyp" --json > "$WORK/risk/base-rouge.json"

python - "$WORK/risk" $SEEDS <<'EOF' | tee "$WORK/risk/summary.md"
import json, os, re, sys
import torch
root, seeds = sys.argv[1], sys.argv[2:]
print("| run | updates | CPU s (wall s) | ROUGE-1 F1 | ROUGE-2 F1 | ROUGE-L F1 | mean words |")
print("|---|---|---|---|---|---|---|")
base = {t: v["fmeasure"] for t, v in json.load(open(os.path.join(root, "base-rouge.json"))).items()}
words = [len(line.split()) for line in open(os.path.join(root, "..", "test.hyp"))]
print(f"| base model (run.sh), no fine-tuning | 0 | - | {base['rouge1']:.2f} | {base['rouge2']:.2f} | "
      f"{base['rougeL']:.2f} | {sum(words) / len(words):.1f} |")
for kind in ("token", "risk"):
    for seed in seeds:
        d = os.path.join(root, f"{kind}-seed{seed}")
        rouge = {t: v["fmeasure"] for t, v in json.load(open(os.path.join(d, "rouge.json"))).items()}
        t = open(os.path.join(d, "time.txt")).read()
        wall, user, sys_ = (float(x) for x in re.search(r"wall ([\d.]+) s, user ([\d.]+) s, sys ([\d.]+) s", t).groups())
        state = torch.load(os.path.join(d, "checkpoint_last.pt"), map_location="cpu", weights_only=False)
        updates = state["optimizer_history"][-1]["num_updates"]
        words = [len(line.split()) for line in open(os.path.join(d, "test.hyp"))]
        print(f"| {kind}, seed {seed} | {updates} | {user + sys_:.0f} ({wall:.0f}) | {rouge['rouge1']:.2f} | "
              f"{rouge['rouge2']:.2f} | {rouge['rougeL']:.2f} | {sum(words) / len(words):.1f} |")
EOF
