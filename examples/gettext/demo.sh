#!/usr/bin/env bash
# The main job, with no download: an English-X translation model trained and evaluated on the
# machine's own gettext catalogs (/usr/share/locale/X/LC_MESSAGES/*.mo).
#
#   make demo                                # defaults below
#   DEMO_LANG=fr DEMO_MINUTES=30 make demo   # another language, a longer training budget
#
# Stages: corpus -> sacremoses tokenization (placeholders kept whole) -> subword-nmt BPE ->
# fairseq-preprocess -> fairseq-train --user-dir fconv_plugin for DEMO_MINUTES, with a schedule that
# ends on time (fconv_plugin/cli/demo_plan.py) -> fairseq-generate -> detokenize -> sacrebleu.
set -euo pipefail

LANG_TGT=${DEMO_LANG:-de}
MINUTES=${DEMO_MINUTES:-12}           # training budget (wall clock): the schedule is sized to it
ARCH=${DEMO_ARCH:-fconv_ext_iwslt_de_en}
MERGES=${DEMO_BPE_MERGES:-8000}
WORK=${DEMO_DIR:-work/demo-en-$LANG_TGT}
THREADS=${DEMO_THREADS:-$(nproc)}
# The paper trains with NAG (lr 0.25, momentum 0.99, clip 0.1) for many epochs; for a budget of
# minutes on a CPU, Adam with a short warm-up and a linear decay that ends with the budget gets much
# further (examples/gettext/README.md: the measurements behind these numbers). The schedule
# (--lr-scheduler, --warmup-updates, --max-update) is set by fconv_plugin/cli/demo_plan.py; DEMO_OPTIM
# overrides the rest.
OPTIM=${DEMO_OPTIM:---optimizer adam --adam-betas (0.9,0.98) --lr 0.004 --clip-norm 0.1}
WARMUP=${DEMO_WARMUP:-40}
# fconv_ext and its presets train with the fused output layer + loss (the same loss as fairseq's
# label_smoothed_cross_entropy, more updates in the budget: benchmarks/results/train_sweep.md); other archs
# (fconv_ext_self_att, fconv_ext_lm, fairseq's own) need fairseq's criterion
case "$ARCH" in
  fconv_ext | fconv_ext_iwslt_de_en | fconv_ext_wmt_* | fconv_ext_summarization | fconv_ext_tiny)
    CRITERION=${DEMO_CRITERION:-fused_label_smoothed_cross_entropy} ;;
  *) CRITERION=${DEMO_CRITERION:-label_smoothed_cross_entropy} ;;
esac
# what a longer budget gave on a slow 2-core machine (examples/gettext/README.md)
LONGER="measured on a busy 2-core CPU at ~1,000 words/s: 35.8 BLEU after 532 updates, against 5.9 after 131 in 12 minutes"
REPO=$(cd "$(dirname "$0")/../.." && pwd)
export OMP_NUM_THREADS=$THREADS

stage() { echo; echo "== [$(date +%H:%M:%S)] $*"; }
mkdir -p "$WORK"
cd "$WORK"

stage "1/7 corpus: English-$LANG_TGT pairs from /usr/share/locale/$LANG_TGT/LC_MESSAGES/*.mo"
python "$REPO/fconv_plugin/data/gettext_corpus.py" --lang "$LANG_TGT" --out raw   # = fconv-ext-gettext-corpus

# Moses tokens with the messages' own tokens kept whole (%s, %1$s, C++, GID_MAX, /usr/bin, <file>)
# and XML characters escaped (&apos; ...), as fairseq's --tokenizer moses does at inference
stage "2/7 tokenize with sacremoses (printf placeholders, C++, identifiers and paths kept whole)"
mkdir -p tok
for split in train valid test; do
  for l in en "$LANG_TGT"; do
    python "$REPO/fconv_plugin/data/gettext_corpus.py" --tokenize "$l" < "raw/$split.$l" > "tok/$split.$l" &
  done
  wait
done

stage "3/7 learn and apply a joint BPE of $MERGES merges with subword-nmt"
cat tok/train.en "tok/train.$LANG_TGT" | subword-nmt learn-bpe -s "$MERGES" > tok/codes 2> tok/learn-bpe.log
for split in train valid test; do
  for l in en "$LANG_TGT"; do
    subword-nmt apply-bpe -c tok/codes < "tok/$split.$l" > "tok/$split.bpe.$l"
  done
done

stage "4/7 binarize with fairseq-preprocess"
rm -rf bin
fairseq-preprocess --source-lang en --target-lang "$LANG_TGT" --joined-dictionary \
  --trainpref tok/train.bpe --validpref tok/valid.bpe --testpref tok/test.bpe \
  --destdir bin --workers "$THREADS" > preprocess.log 2>&1
tail -n 2 preprocess.log | sed 's/^.*| INFO | [^|]* | //'

# No validation during training (the last checkpoint is the model): validation time is training time.
stage "5/7 train $ARCH for $MINUTES minutes (fairseq-train --user-dir fconv_plugin; schedule sized to this machine)"
rm -rf checkpoints
python "$REPO/fconv_plugin/cli/demo_plan.py" train --minutes "$MINUTES" --warmup "$WARMUP" \
  --save-dir checkpoints --log train.log --plan plan.json -- \
  bin --user-dir "$REPO/fconv_plugin" --arch "$ARCH" --task fconv_translation --disable-validation \
  $OPTIM --dropout 0.1 --criterion "$CRITERION" --label-smoothing 0.1 \
  --max-tokens 4000 --required-batch-size-multiple 1 --max-epoch 100 --no-epoch-checkpoints --seed 1

stage "6/7 translate the test set (fairseq-generate, beam 5)"
python "$REPO/fconv_plugin/cli/demo_plan.py" generate --out generate.log --total "$(wc -l < raw/test.en)" -- \
  bin --user-dir "$REPO/fconv_plugin" --path checkpoints/checkpoint_last.pt \
  --beam 5 --batch-size 64 --required-batch-size-multiple 1 --remove-bpe
grep '^H-' generate.log | sed 's/^H-//' | sort -n -k1,1 | cut -f3 \
  | python "$REPO/fconv_plugin/data/gettext_corpus.py" --detokenize "$LANG_TGT" > "test.hyp.$LANG_TGT"
echo "decoded $(wc -l < "test.hyp.$LANG_TGT") of $(wc -l < raw/test.en) test sentences"

stage "7/7 score with sacrebleu (detokenized)"
sacrebleu "raw/test.$LANG_TGT" -i "test.hyp.$LANG_TGT" -m bleu -w 2 > bleu.json
tr -d '\n' < bleu.json | sed 's/  */ /g'; echo

echo
echo "== [$(date +%H:%M:%S)] done"
python "$REPO/fconv_plugin/cli/demo_plan.py" summary --plan plan.json --bleu bleu.json --longer "$LONGER"
echo "model:        $PWD/checkpoints/checkpoint_last.pt"
echo "translations: $PWD/test.hyp.$LANG_TGT (references: $PWD/raw/test.$LANG_TGT)"
# --tokenizer moses_protected (fconv_plugin/data/tokenizer.py): the tokenization above, inside fairseq
echo "try it:       echo 'Cannot open file %s' | fairseq-interactive $PWD/bin --user-dir $REPO/fconv_plugin \\"
echo "                --path $PWD/checkpoints/checkpoint_last.pt --source-lang en --target-lang $LANG_TGT --beam 5 \\"
echo "                --tokenizer moses_protected --bpe subword_nmt --bpe-codes $PWD/tok/codes 2>/dev/null | grep '^D-' | cut -f3"
