#!/usr/bin/env bash
# Tokenize (sacremoses), learn/apply joint BPE (subword-nmt) and binarize (fairseq-preprocess)
# the fixed gettext-en-de corpus in ../shared/data, for benchmarks and parity checks.
#   usage: benchmarks/prepare_gettext.sh OUT_DIR [BPE_MERGES]
set -euo pipefail
out=${1:?usage: prepare_gettext.sh OUT_DIR [BPE_MERGES]}
merges=${2:-8000}
here=$(cd "$(dirname "$0")/.." && pwd)
data=${GETTEXT_DATA:-$here/../shared/data/gettext-en-de}
[ -f "$data/train.en" ] || { echo "no corpus at $data (set GETTEXT_DATA)" >&2; exit 1; }
mkdir -p "$out/tok"
for split in train valid test; do
  for l in en de; do
    sacremoses -l $l -j 2 tokenize -x < "$data/$split.$l" > "$out/tok/$split.$l"
  done
done
cat "$out/tok/train.en" "$out/tok/train.de" | subword-nmt learn-bpe -s "$merges" > "$out/tok/codes"
for split in train valid test; do
  for l in en de; do
    subword-nmt apply-bpe -c "$out/tok/codes" < "$out/tok/$split.$l" > "$out/tok/$split.bpe.$l"
  done
done
fairseq-preprocess --source-lang en --target-lang de --joined-dictionary \
  --trainpref "$out/tok/train.bpe" --validpref "$out/tok/valid.bpe" --testpref "$out/tok/test.bpe" \
  --destdir "$out/bin" --workers 2
