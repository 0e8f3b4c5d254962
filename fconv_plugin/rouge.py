"""ROUGE-1/2/L for summaries, computed with Google's ``rouge-score`` (a maintained
reimplementation of ROUGE-1.5.5; no hand-written ROUGE here), and the lead baseline.

    fconv-ext-rouge --ref test.short --hyp test.hyp              # F1, the Gigaword convention
    fconv-ext-rouge --ref test.short --lead-of test.long          # the first 8 source words
    fconv-ext-rouge --ref r0 r1 r2 r3 --hyp h --truncate-bytes 75 --measure recall   # DUC-2004 style

Scores are per-summary ROUGE averaged over the test set, x 100, with Porter stemming
(ROUGE-1.5.5's ``-m``) unless ``--no-stemmer``.  rouge-score lower-cases and keeps only
[a-z0-9] tokens.  With several reference files each summary is scored against its best
reference (rouge-score's ``score_multi``), not with ROUGE-1.5.5's jackknifing, so multi-
reference numbers are close to, not identical with, published DUC numbers.
"""

import argparse
import json
import sys
from typing import Dict, List, Sequence

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
MEASURES = {"f1": "fmeasure", "recall": "recall", "precision": "precision"}


def build_scorer(stemmer: bool = True):
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=stemmer)


def sentence_rouge(scorer, hypothesis: str, references: Sequence[str]) -> Dict[str, Dict[str, float]]:
    """``{rouge_type: {"fmeasure", "recall", "precision"}}`` (x 100) of one summary."""
    if len(references) == 1:
        scores = scorer.score(references[0], hypothesis)  # rouge-score's order: target, prediction
    else:
        scores = scorer.score_multi(list(references), hypothesis)
    return {t: {m: 100.0 * getattr(scores[t], m) for m in MEASURES.values()} for t in ROUGE_TYPES}


def corpus_rouge(
    hypotheses: Sequence[str], references: Sequence[Sequence[str]], stemmer: bool = True
) -> Dict[str, Dict[str, float]]:
    """The per-summary scores averaged over the corpus.  ``references[i]`` holds the
    reference(s) of ``hypotheses[i]``."""
    if len(hypotheses) != len(references):
        raise ValueError(
            f"{len(hypotheses)} summaries but {len(references)} references: the files must be aligned by line"
        )
    if not hypotheses:
        raise ValueError("no summaries to score")
    scorer = build_scorer(stemmer)
    total = {t: {m: 0.0 for m in MEASURES.values()} for t in ROUGE_TYPES}
    for hyp, refs in zip(hypotheses, references):
        for t, values in sentence_rouge(scorer, hyp, refs).items():
            for m, v in values.items():
                total[t][m] += v
    return {t: {m: v / len(hypotheses) for m, v in values.items()} for t, values in total.items()}


def lead(text: str, words: int = 8) -> str:
    """The lead baseline: the first ``words`` words of the source."""
    return " ".join(text.split()[:words])


def truncate_bytes(text: str, limit: int) -> str:
    """The first ``limit`` bytes (DUC-2004's 75-byte rule, ROUGE-1.5.5 ``-b``), cut at a
    character boundary."""
    return text.encode("utf-8")[:limit].decode("utf-8", errors="ignore")


def _read_lines(path: str) -> List[str]:
    with open(path, encoding="utf-8", errors="replace") as f:
        return [line.rstrip("\n") for line in f]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="fconv-ext-rouge", description="ROUGE-1/2/L (rouge-score) of summaries, or of the lead baseline."
    )
    parser.add_argument("--ref", nargs="+", required=True, help="reference file(s), one summary per line")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--hyp", help="system summaries, one per line, aligned with --ref")
    which.add_argument("--lead-of", metavar="SOURCE", help="score the lead baseline of this source file instead")
    parser.add_argument("--lead-words", type=int, default=8, help="words in the lead baseline (default: %(default)s)")
    parser.add_argument(
        "--measure", choices=sorted(MEASURES), default="f1", help="what to report (default: %(default)s)"
    )
    parser.add_argument(
        "--truncate-bytes", type=int, default=None, help="cut summaries to this many bytes first (DUC-2004: 75)"
    )
    parser.add_argument("--no-stemmer", action="store_true", help="no Porter stemming")
    parser.add_argument("--json", action="store_true", help="print all measures as JSON")
    args = parser.parse_args(argv)

    hyps = (
        [lead(line, args.lead_words) for line in _read_lines(args.lead_of)] if args.lead_of else _read_lines(args.hyp)
    )
    if args.truncate_bytes is not None:
        hyps = [truncate_bytes(h, args.truncate_bytes) for h in hyps]
    ref_files = [_read_lines(path) for path in args.ref]
    for path, lines in zip(args.ref, ref_files):
        if len(lines) != len(hyps):
            print(
                f"fconv-ext-rouge: {path} has {len(lines)} lines but there are {len(hyps)} summaries; "
                "the files must be aligned by line (did generation skip or reorder sentences? sort "
                "fairseq-generate's H- lines by id)",
                file=sys.stderr,
            )
            return 2
    scores = corpus_rouge(hyps, list(zip(*ref_files)), stemmer=not args.no_stemmer)
    if args.json:
        print(json.dumps(scores, indent=1))
    else:
        measure = MEASURES[args.measure]
        print(
            f"ROUGE {args.measure} (rouge-score, {len(hyps)} summaries, stemmer {'off' if args.no_stemmer else 'on'}): "
            + " / ".join(f"{t} {scores[t][measure]:.2f}" for t in ROUGE_TYPES)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
