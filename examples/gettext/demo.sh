#!/usr/bin/env bash
# The main job, with no download: an English-X translation model trained and evaluated on the
# machine's own gettext catalogs (/usr/share/locale/X/LC_MESSAGES/*.mo).
#
#   make demo                                # defaults below
#   DEMO_LANG=fr DEMO_MINUTES=30 make demo   # another language, a longer training budget
#
# Stages: corpus -> sacremoses tokenization -> subword-nmt BPE -> fairseq-preprocess ->
# fairseq-train --user-dir fconv_plugin -> fairseq-generate -> detokenize -> sacrebleu.
set -euo pipefail

LANG_TGT=${DEMO_LANG:-de}
MINUTES=${DEMO_MINUTES:-12}           # training budget (wall clock)
ARCH=${DEMO_ARCH:-fconv_ext_iwslt_de_en}
MERGES=${DEMO_BPE_MERGES:-8000}
WORK=${DEMO_DIR:-work/demo-en-$LANG_TGT}
THREADS=${DEMO_THREADS:-$(nproc)}
# The paper trains with NAG (lr 0.25, momentum 0.99, clip 0.1) for many epochs; for a budget of
# minutes on a CPU, Adam with a short warm-up gets much further. Override with DEMO_OPTIM.
OPTIM=${DEMO_OPTIM:---optimizer adam --adam-betas (0.9,0.98) --lr 0.002 --lr-scheduler inverse_sqrt --warmup-updates 200 --clip-norm 0.1}
REPO=$(cd "$(dirname "$0")/../.." && pwd)
export OMP_NUM_THREADS=$THREADS

stage() { echo; echo "== [$(date +%H:%M:%S)] $*"; }
mkdir -p "$WORK"
cd "$WORK"

stage "1/7 corpus: English-$LANG_TGT pairs from /usr/share/locale/$LANG_TGT/LC_MESSAGES/*.mo"
fconv-ext-gettext-corpus --lang "$LANG_TGT" --out raw

# -x escapes XML characters (&apos; ...), as fairseq's --tokenizer moses does at inference
stage "2/7 tokenize with sacremoses"
mkdir -p tok
for split in train valid test; do
  for l in en "$LANG_TGT"; do
    sacremoses -l "$l" -j "$THREADS" tokenize -x < "raw/$split.$l" > "tok/$split.$l"
  done
done

stage "3/7 learn and apply a joint BPE of $MERGES merges with subword-nmt"
cat tok/train.en "tok/train.$LANG_TGT" | subword-nmt learn-bpe -s "$MERGES" > tok/codes
for split in train valid test; do
  for l in en "$LANG_TGT"; do
    subword-nmt apply-bpe -c tok/codes < "tok/$split.$l" > "tok/$split.bpe.$l"
  done
done

stage "4/7 binarize with fairseq-preprocess"
rm -rf bin
fairseq-preprocess --source-lang en --target-lang "$LANG_TGT" --joined-dictionary \
  --trainpref tok/train.bpe --validpref tok/valid.bpe --testpref tok/test.bpe \
  --destdir bin --workers "$THREADS" > preprocess.log
tail -n 2 preprocess.log

stage "5/7 train $ARCH for $MINUTES minutes (fairseq-train --user-dir fconv_plugin)"
STOP=$(python -c "print($MINUTES / 60)")
rm -rf checkpoints
fairseq-train bin --user-dir "$REPO/fconv_plugin" --arch "$ARCH" --task fconv_translation \
  --eval-bleu-args '{"beam": 1}' --best-checkpoint-metric bleu --maximize-best-checkpoint-metric \
  $OPTIM --dropout 0.2 \
  --criterion label_smoothed_cross_entropy --label-smoothing 0.1 \
  --max-tokens 4000 --required-batch-size-multiple 1 \
  --stop-time-hours "$STOP" --max-epoch 100 --save-dir checkpoints --no-epoch-checkpoints \
  --log-format tqdm --log-interval 20 --seed 1 2>&1 | tee train.log

stage "6/7 translate the test set (fairseq-generate, beam 5)"
fairseq-generate bin --user-dir "$REPO/fconv_plugin" --path checkpoints/checkpoint_best.pt \
  --beam 5 --batch-size 64 --required-batch-size-multiple 1 --remove-bpe > generate.log
grep '^H-' generate.log | sed 's/^H-//' | sort -n -k1,1 | cut -f3 \
  | sacremoses -l "$LANG_TGT" detokenize > test.hyp.$LANG_TGT
echo "decoded $(wc -l < test.hyp.$LANG_TGT) of $(wc -l < raw/test.en) test sentences"

stage "7/7 score with sacrebleu (detokenized)"
sacrebleu "raw/test.$LANG_TGT" -i "test.hyp.$LANG_TGT" -m bleu -w 2 | tee bleu.json

echo
echo "model:        $PWD/checkpoints/checkpoint_best.pt"
echo "translations: $PWD/test.hyp.$LANG_TGT (references: $PWD/raw/test.$LANG_TGT)"
echo "try it:       fairseq-interactive $PWD/bin --user-dir $REPO/fconv_plugin --path $PWD/checkpoints/checkpoint_best.pt --beam 5 --source-lang en --target-lang $LANG_TGT --tokenizer moses --bpe subword_nmt --bpe-codes $PWD/tok/codes"
