#!/usr/bin/env bash
# int8 and shortlist against exact decoding on the model `make demo` trains (or CHECKPOINT): detokenized
# sacreBLEU and chrF on the demo's test set, and fairseq-generate's own time, one thread.
#   usage: benchmarks/int8_demo_model.sh   [DEMO_DIR=work/demo-en-de CHECKPOINT=... OUT=/tmp/int8-demo]
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PATH=$PWD/.venv/bin:$PATH
D=${DEMO_DIR:-work/demo-en-de}; CK=${CHECKPOINT:-$D/checkpoints/checkpoint_last.pt}; O=${OUT:-/tmp/int8-demo}
mkdir -p "$O"
lscpu | grep "Model name" > $O/machine.txt
if [ ! -f $O/shortlist.npz ]; then
  /usr/bin/time -f "%e s" fconv-ext-shortlist $D/bin -s en -t de --out $O/shortlist.npz > $O/shortlist.log 2>&1
fi
for v in exact int8 shortlist shortlist_int8; do
  case $v in
    exact) ov="{}";;
    int8) ov="{'model': {'inference_dtype': 'int8'}}";;
    shortlist) ov="{'model': {'shortlist': '$O/shortlist.npz'}}";;
    shortlist_int8) ov="{'model': {'shortlist': '$O/shortlist.npz', 'inference_dtype': 'int8'}}";;
  esac
  fairseq-generate $D/bin --user-dir fconv_plugin --path $CK --beam 5 --batch-size 64 \
    --required-batch-size-multiple 1 --remove-bpe --model-overrides "$ov" > $O/$v.log 2> $O/$v.err
  grep '^H-' $O/$v.log | sed 's/^H-//' | sort -n -k1,1 | cut -f3 \
    | python fconv_plugin/data/gettext_corpus.py --detokenize de > $O/$v.hyp
  sacrebleu $D/raw/test.de -i $O/$v.hyp -m bleu chrf -w 2 > $O/$v.bleu.json
  echo "$v $(grep -h 'Translated' $O/$v.err | sed 's/.*Translated/Translated/') $(tr -d '\n' < $O/$v.bleu.json | sed 's/  */ /g' | grep -o '"score": [0-9.]*' | tr '\n' ' ')"
done
