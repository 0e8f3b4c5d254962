#!/usr/bin/env bash
# After `make demo`: fine-tune its model with the sequence-level criterion sequence_risk (expected
# 1 - sentence BLEU over the model's own candidate translations, plus the token-level loss), then
# translate and score the test set as the demo does.
#
#   make demo-risk                              # the setting chosen in examples/gettext/README.md
#   RISK_UPDATES=60 RISK_LR=0.0002 make demo-risk
#
# Stages: fairseq-train --criterion sequence_risk from work/demo-en-X/checkpoints/checkpoint_last.pt
# (risk_train.py: a progress bar with an ETA) -> fairseq-generate -> detokenize -> sacrebleu, written
# to work/demo-en-X/risk/ (bleu.json beside the demo's own bleu.json).
set -euo pipefail

LANG_TGT=${DEMO_LANG:-de}
ARCH=${DEMO_ARCH:-fconv_ext_iwslt_de_en}
WORK=${DEMO_DIR:-work/demo-en-$LANG_TGT}
THREADS=${DEMO_THREADS:-$(nproc)}
# the setting examples/gettext/README.md chose ("Sequence-level fine-tuning"); each one can be overridden
UPDATES=${RISK_UPDATES:-50}
LR=${RISK_LR:-0.0001}
ALPHA=${RISK_ALPHA:-0.3}
CANDIDATES=${RISK_CANDIDATES:-4}
MAX_TOKENS=${RISK_MAX_TOKENS:-1000}
SAMPLING=${RISK_SAMPLING:-0}   # 1: sampled candidates instead of the beam's n-best
REPO=$(cd "$(dirname "$0")/../.." && pwd)
export OMP_NUM_THREADS=$THREADS

stage() { echo; echo "== [$(date +%H:%M:%S)] $*"; }
if [ ! -f "$WORK/checkpoints/checkpoint_last.pt" ]; then
  echo "demo-risk: no model at $WORK/checkpoints/checkpoint_last.pt: run \`make demo\` first" >&2
  exit 2
fi
cd "$WORK"
mkdir -p risk
sampling=()
[ "$SAMPLING" = 1 ] && sampling=(--risk-sampling)

# the candidates' cost is 1 - sentence BLEU on the text the demo scores: BPE removed, then this corpus's
# detokenizer (moses_protected: placeholders kept whole, German quotes closed up)
stage "1/3 fine-tune with sequence_risk: $UPDATES updates, $CANDIDATES candidates per sentence, alpha $ALPHA, lr $LR (fairseq-train --criterion sequence_risk)"
python "$REPO/examples/gettext/risk_train.py" --updates "$UPDATES" --restore checkpoints/checkpoint_last.pt \
  --save-dir risk/checkpoints --log risk/train.log --record risk/plan.json -- \
  bin --user-dir "$REPO/fconv_plugin" --arch "$ARCH" --task fconv_translation --disable-validation \
  --optimizer adam --adam-betas '(0.9,0.98)' --lr "$LR" --clip-norm 0.1 --dropout 0.1 \
  --criterion sequence_risk --label-smoothing 0.1 --risk-alpha "$ALPHA" --risk-candidates "$CANDIDATES" \
  --risk-beam "$CANDIDATES" "${sampling[@]}" \
  --eval-bleu-detok moses_protected --eval-bleu-detok-args "{\"target_lang\": \"$LANG_TGT\"}" \
  --max-tokens "$MAX_TOKENS" --required-batch-size-multiple 1 --max-epoch 100 --no-epoch-checkpoints --seed 1

stage "2/3 translate the test set (fairseq-generate, beam 5)"
python "$REPO/fconv_plugin/cli/demo_plan.py" generate --out risk/generate.log --total "$(wc -l < raw/test.en)" -- \
  bin --user-dir "$REPO/fconv_plugin" --path risk/checkpoints/checkpoint_last.pt \
  --beam 5 --batch-size 64 --required-batch-size-multiple 1 --remove-bpe
grep '^H-' risk/generate.log | sed 's/^H-//' | sort -n -k1,1 | cut -f3 \
  | python "$REPO/fconv_plugin/data/gettext_corpus.py" --detokenize "$LANG_TGT" > "risk/test.hyp.$LANG_TGT"

stage "3/3 score with sacrebleu (detokenized)"
sacrebleu "raw/test.$LANG_TGT" -i "risk/test.hyp.$LANG_TGT" -m bleu -w 2 > risk/bleu.json
sacrebleu "raw/test.$LANG_TGT" -i "risk/test.hyp.$LANG_TGT" -m chrf -w 2 > risk/chrf.json
tr -d '\n' < risk/bleu.json | sed 's/  */ /g'; echo

echo
echo "== [$(date +%H:%M:%S)] done"
python - risk/bleu.json bleu.json risk/plan.json <<'EOF'
import json, os, sys
risk = json.load(open(sys.argv[1]))
plan = json.load(open(sys.argv[3]))
line = f"BLEU {risk['score']:.1f} after sequence_risk fine-tuning ({plan['updates_done']} updates, {plan['seconds'] / 60:.1f} minutes)"
if os.path.exists(sys.argv[2]):
    before = json.load(open(sys.argv[2]))
    line += f"; the demo's model: {before['score']:.1f} ({risk['score'] - before['score']:+.1f})"
print(line)
EOF
echo "model:        $PWD/risk/checkpoints/checkpoint_last.pt"
echo "translations: $PWD/risk/test.hyp.$LANG_TGT (references: $PWD/raw/test.$LANG_TGT)"
