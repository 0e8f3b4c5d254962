#!/usr/bin/env bash
# Headline generation with fconv_ext on a real corpus that needs no download: Debian package
# descriptions -> their one-line synopses (../shared/data/debian-descriptions, or the machine's
# own apt index through fconv-ext-apt-corpus).
#
#   examples/summarization/run.sh                          # defaults below
#   SUMM_UPDATES=4000 SUMM_ARCH=fconv_ext_summarization examples/summarization/run.sh
#
# Stages: corpus -> prepare.sh (sacremoses, subword-nmt, fairseq-preprocess) -> fairseq-train
# --user-dir fconv_plugin (validation ROUGE, best checkpoint by ROUGE-L) -> fairseq-generate
# (beam 5, headline-length bounds) -> detokenize -> fconv-ext-rouge (ROUGE-1/2/L F1, rouge-score),
# next to the lead baseline (the first 8 words of the source).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
RAW=${SUMM_RAW:-}
WORK=${SUMM_DIR:-work/summarization}
ARCH=${SUMM_ARCH:-fconv_ext_summarization}
UPDATES=${SUMM_UPDATES:-1800}
THREADS=${SUMM_THREADS:-$(nproc)}
# Adam with a short warm-up gets much further than the paper's NAG in a CPU budget of minutes.
OPTIM=${SUMM_OPTIM:---optimizer adam --adam-betas (0.9,0.98) --lr 0.002 --lr-scheduler inverse_sqrt --warmup-updates 200 --clip-norm 0.1}
# Headlines: beam 5, at most 30 BPE tokens whatever the source length.
GEN=${SUMM_GEN:---beam 5 --max-len-a 0 --max-len-b 30}
export OMP_NUM_THREADS=$THREADS

stage() { echo; echo "== [$(date +%H:%M:%S)] $*"; }
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)

if [ -z "$RAW" ]; then
  if [ -s "$REPO/../shared/data/debian-descriptions/train.long" ]; then
    RAW="$REPO/../shared/data/debian-descriptions"
  else
    stage "corpus: Debian/Ubuntu package descriptions from the apt index"
    fconv-ext-apt-corpus "$WORK/raw"
    RAW="$WORK/raw"
  fi
fi

if [ ! -s "$WORK/bin/dict.long.txt" ]; then
  stage "prepare $RAW (sacremoses, subword-nmt, fairseq-preprocess)"
  SUMM_THREADS=$THREADS bash "$REPO/examples/summarization/prepare.sh" "$RAW" "$WORK"
fi

stage "train $ARCH for $UPDATES updates (fairseq-train --user-dir fconv_plugin)"
rm -rf "$WORK/checkpoints"
fairseq-train "$WORK/bin" --user-dir "$REPO/fconv_plugin" --task fconv_translation --arch "$ARCH" \
  --no-eval-bleu --eval-rouge --eval-bleu-args '{"beam": 1, "max_len_a": 0, "max_len_b": 30}' \
  --eval-bleu-detok-args '{"target_lang": "en"}' \
  --best-checkpoint-metric rougeL --maximize-best-checkpoint-metric \
  $OPTIM --dropout 0.2 --criterion label_smoothed_cross_entropy --label-smoothing 0.1 \
  --max-tokens 4000 --required-batch-size-multiple 1 --skip-long-examples --max-source-positions 1020 \
  --max-update "$UPDATES" --save-dir "$WORK/checkpoints" --no-epoch-checkpoints \
  --log-format simple --log-interval 100 --seed 1 2>&1 | tee "$WORK/train.log"

stage "summarize the test set (fairseq-generate $GEN)"
fairseq-generate "$WORK/bin" --user-dir "$REPO/fconv_plugin" --path "$WORK/checkpoints/checkpoint_best.pt" \
  $GEN --batch-size 64 --required-batch-size-multiple 1 --remove-bpe > "$WORK/generate.log"
grep '^H-' "$WORK/generate.log" | sed 's/^H-//' | sort -n -k1,1 | cut -f3 \
  | sacremoses -l en detokenize > "$WORK/test.hyp"

stage "ROUGE-1/2/L F1 (rouge-score) on $(wc -l < "$WORK/test.hyp") test summaries"
fconv-ext-rouge --ref "$RAW/test.short" --hyp "$WORK/test.hyp" | tee "$WORK/rouge.txt"
fconv-ext-rouge --ref "$RAW/test.short" --lead-of "$RAW/test.long" --lead-words 8 \
  | sed 's/^/lead baseline (first 8 source words): /' | tee -a "$WORK/rouge.txt"
