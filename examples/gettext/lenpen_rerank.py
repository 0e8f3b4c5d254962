"""Score fairseq-generate's n-best output at several length penalties, without decoding again.

    fairseq-generate ... --beam 5 --nbest 5 --remove-bpe > gen.log
    python examples/gettext/lenpen_rerank.py --generate gen.log --ref raw/test.de --lang de \\
        --lenpen 0.6 0.8 1.0 1.2 1.4 1.6 --json scores.json

fairseq's beam search collects its finished hypotheses by their summed log-probability; ``--lenpen``
only ranks the finished ones (score = sum of token log-probs / length ** lenpen, length counting the
EOS). With ``--nbest`` equal to ``--beam`` every finished hypothesis is printed, its ``P-`` line holds
its token log-probs, and choosing the best one again with another length penalty gives the translation
that ``fairseq-generate --lenpen`` would have printed. Each hypothesis is detokenized as the demo does
(``gettext_corpus.detokenizer``) and the corpus scored with sacreBLEU (BLEU and chrF).
"""

import argparse
import json
import os
import sys
from collections import defaultdict
from typing import Dict, List, Sequence, Tuple

import sacrebleu

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from fconv_plugin.data.gettext_corpus import detokenizer  # noqa: E402

# one hypothesis: (tokenized text, token log-probs including the EOS)
Hypothesis = Tuple[str, List[float]]


def read_nbest(path: str) -> Dict[int, List[Hypothesis]]:
    """The H-/P- line pairs of fairseq-generate's output, per sentence id, in the printed order."""
    nbest: Dict[int, List[Hypothesis]] = defaultdict(list)
    pending: Dict[int, str] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("H-"):
                head, _score, text = (line.rstrip("\n").split("\t") + [""])[:3]
                pending[int(head[2:])] = text
            elif line.startswith("P-"):
                head, scores = line.rstrip("\n").split("\t")
                sid = int(head[2:])
                nbest[sid].append((pending.pop(sid), [float(s) for s in scores.split()]))
    return nbest


def choose(nbest: Dict[int, List[Hypothesis]], lenpen: float) -> List[str]:
    """Per sentence id, in id order, the hypothesis fairseq ranks first with this length penalty."""
    return [max(nbest[sid], key=lambda h: sum(h[1]) / len(h[1]) ** lenpen)[0] for sid in sorted(nbest)]


def score(hyps: Sequence[str], refs: Sequence[str]) -> dict:
    bleu = sacrebleu.corpus_bleu(list(hyps), [list(refs)])
    chrf = sacrebleu.corpus_chrf(list(hyps), [list(refs)])
    return {
        "bleu": round(bleu.score, 2),
        "chrf": round(chrf.score, 2),
        "bp": round(bleu.bp, 3),
        "ratio": round(bleu.sys_len / max(1, bleu.ref_len), 3),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generate", required=True, help="fairseq-generate output with --nbest = --beam")
    parser.add_argument("--ref", required=True, help="raw references, one per line, in sentence-id order")
    parser.add_argument("--lang", default="de", help="target language (detokenizer)")
    parser.add_argument("--lenpen", type=float, nargs="+", default=[1.0])
    parser.add_argument("--json", default=None, help="write the scores per length penalty here")
    parser.add_argument("--hyp-out", default=None, help="write the detokenized translations of the first --lenpen here")
    args = parser.parse_args(argv)

    with open(args.ref, encoding="utf-8") as f:
        refs = [line.rstrip("\n") for line in f]
    nbest = read_nbest(args.generate)
    if len(nbest) != len(refs):
        print(f"lenpen_rerank: error: {len(nbest)} translated sentences, {len(refs)} references", file=sys.stderr)
        return 2
    detok = detokenizer(args.lang)
    results = []
    for i, lenpen in enumerate(args.lenpen):
        hyps = [detok(h) for h in choose(nbest, lenpen)]
        if i == 0 and args.hyp_out:
            with open(args.hyp_out, "w", encoding="utf-8") as f:
                f.writelines(h + "\n" for h in hyps)
        results.append(dict(lenpen=lenpen, **score(hyps, refs)))
        print(json.dumps(results[-1]), flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
