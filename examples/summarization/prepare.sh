#!/usr/bin/env bash
# Prepare a headline-generation corpus for fairseq: sacremoses tokenization, a joint subword-nmt
# BPE (source and target are both English, so one dictionary serves both sides) and
# fairseq-preprocess --joined-dictionary.
#
#   examples/summarization/prepare.sh RAW OUT
#
# RAW holds {train,valid,test}.{long,short}, one example per line, aligned by line:
#   * ../shared/data/debian-descriptions (this project's fixed copy), or
#   * what `fconv-ext-apt-corpus RAW` builds from the machine's own apt index, or
#   * what `fconv-ext-prepare-summarization gigaword RAW` builds from Gigaword (Rush et al. 2015).
# OUT gets tok/ (tokenized + BPE text, codes) and bin/ (fairseq binaries, languages long -> short).
set -euo pipefail
RAW=${1:?usage: prepare.sh RAW_DIR OUT_DIR}
OUT=${2:?usage: prepare.sh RAW_DIR OUT_DIR}
MERGES=${SUMM_BPE_MERGES:-10000}
TOKENIZE=${SUMM_TOKENIZE:-moses}      # "none" for text that is already tokenized (Gigaword)
THREADS=${SUMM_THREADS:-$(nproc)}

for split in train valid test; do
  for side in long short; do
    if [ ! -s "$RAW/$split.$side" ]; then
      echo "prepare.sh: $RAW/$split.$side is missing or empty; RAW must hold {train,valid,test}.{long,short}" >&2
      exit 2
    fi
  done
done

mkdir -p "$OUT/tok"
# -x escapes XML characters (&apos; ...), as fairseq's --tokenizer moses does at inference
for split in train valid test; do
  for side in long short; do
    if [ "$TOKENIZE" = none ]; then
      cp "$RAW/$split.$side" "$OUT/tok/$split.$side"
    else
      sacremoses -l en -j "$THREADS" tokenize -x < "$RAW/$split.$side" > "$OUT/tok/$split.$side"
    fi
  done
done

cat "$OUT/tok/train.long" "$OUT/tok/train.short" | subword-nmt learn-bpe -s "$MERGES" > "$OUT/tok/codes"
for split in train valid test; do
  for side in long short; do
    subword-nmt apply-bpe -c "$OUT/tok/codes" < "$OUT/tok/$split.$side" > "$OUT/tok/$split.bpe.$side"
  done
done

rm -rf "$OUT/bin"
fairseq-preprocess --source-lang long --target-lang short --joined-dictionary \
  --trainpref "$OUT/tok/train.bpe" --validpref "$OUT/tok/valid.bpe" --testpref "$OUT/tok/test.bpe" \
  --destdir "$OUT/bin" --workers "$THREADS" > "$OUT/preprocess.log"
tail -n 2 "$OUT/preprocess.log"
