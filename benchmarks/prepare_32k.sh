#!/usr/bin/env bash
# The larger-vocabulary benchmark model: the gettext en-de corpus with 32k joint BPE merges (a WMT-like
# vocabulary size) and fairseq's fconv_iwslt_de_en trained on it briefly, with the 8k model's recipe.
#   usage: benchmarks/prepare_32k.sh OUT_DIR
# Writes OUT_DIR/bin (binarized, --joined-dictionary) and OUT_DIR/ck_fconv/checkpoint_best.pt.
# Settings (environment): MERGES (32000), TRAIN_HOURS (0.3: fairseq-train's --stop-time-hours),
# MAX_UPDATE (1091: the 8k model's updates), THREADS (2).
# The corpus has 43,460 distinct tokenized word types (train, both languages), so 32k merges come close
# to one unit per word: the joint dictionary has the size printed at the end (benchmarks/README.md).
set -euo pipefail
out=${1:?usage: prepare_32k.sh OUT_DIR}
here=$(cd "$(dirname "$0")" && pwd)
merges=${MERGES:-32000}
[ -f "$out/bin/dict.de.txt" ] || "$here/prepare_gettext.sh" "$out" "$merges"
echo "joint dictionary: $(wc -l < "$out/bin/dict.de.txt") entries (+4 specials) from $merges merges"
start=$(date +%s)
# --user-dir: fairseq alone cannot read its own checkpoint back under torch >= 2.6 (weights-only loading),
# so a second run, which resumes from checkpoint_last.pt, needs the plugin's loader; the model is fairseq's fconv
OMP_NUM_THREADS=${THREADS:-2} fairseq-train "$out/bin" --user-dir "$here/../fconv_plugin" --arch fconv_iwslt_de_en --optimizer nag --lr 0.25 \
    --clip-norm 0.1 --dropout 0.2 --criterion label_smoothed_cross_entropy --label-smoothing 0.1 \
    --max-tokens 4000 --lr-scheduler fixed --force-anneal 200 --stop-time-hours "${TRAIN_HOURS:-0.3}" \
    --max-update "${MAX_UPDATE:-1091}" --save-dir "$out/ck_fconv" --no-epoch-checkpoints --seed 1 \
    --no-progress-bar --log-interval 50 > "$out/train_fconv.log" 2>&1
echo "trained in $(( $(date +%s) - start )) s: $(grep -o 'num_updates [0-9]*' "$out/train_fconv.log" | tail -1)," \
     "$(grep -o 'valid on .valid. subset.*ppl [0-9.]*' "$out/train_fconv.log" | tail -1 | grep -o 'ppl [0-9.]*')"
