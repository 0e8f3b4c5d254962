"""``fconv-ext-translate OUTDIR``: source lines on stdin, one translation a line on stdout, same order.

    fconv-ext-translate exported/ --beam 5 < input.en > output.de

Empty lines give empty lines.  With ``--nbest N`` (N > 1) each input line gives N lines
``<line number> ||| <translation> ||| <score>`` (Moses/Marian n-best format, line numbers from 0).
Warnings (truncated sentences) and errors go to stderr; a model that cannot be used exits with status 2
and a message that says what to do.
"""

import argparse
import logging
import sys
from typing import List

from .artifact import ArtifactError
from .translator import Translator


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="fconv-ext-translate",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("outdir", help="the directory fconv-ext-export wrote")
    p.add_argument("--beam", type=int, default=5, help="beam size (default 5)")
    p.add_argument("--nbest", type=int, default=1, help="translations per line (default 1)")
    p.add_argument("--batch-size", type=int, default=64, help="sentences per batch (default 64)")
    p.add_argument("--max-len-a", type=float, default=0.0, help="max length = a * source length + b (default a=0)")
    p.add_argument("--max-len-b", type=int, default=200, help="(default b=200), at most the model's positions - 1")
    p.add_argument("--lenpen", type=float, default=1.0, help="score / length ** lenpen (default 1)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: the runtime's)")
    p.add_argument(
        "--chunk",
        type=int,
        default=0,
        help="lines read before translating (default 16 batches); outputs follow each chunk",
    )
    return p.parse_args(argv)


def _write(translator: Translator, lines: List[str], args, first: int, out) -> None:
    if args.nbest == 1:
        for text in translator.translate(
            lines,
            beam=args.beam,
            batch_size=args.batch_size,
            max_len_a=args.max_len_a,
            max_len_b=args.max_len_b,
            lenpen=args.lenpen,
        ):
            out.write(text + "\n")
    else:
        results = translator.translate_nbest(
            lines,
            beam=args.beam,
            nbest=args.nbest,
            batch_size=args.batch_size,
            max_len_a=args.max_len_a,
            max_len_b=args.max_len_b,
            lenpen=args.lenpen,
        )
        for number, hypotheses in enumerate(results, start=first):
            for h in hypotheses or [None]:
                out.write(f"{number} ||| {h.text if h else ''} ||| {h.score if h else 0.0:.4f}\n")
    out.flush()


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        format="fconv-ext-translate: %(levelname)s: %(message)s", level=logging.WARNING, stream=sys.stderr
    )
    try:
        translator = Translator(args.outdir, threads=args.threads)
    except ArtifactError as err:
        print(f"fconv-ext-translate: error: {err}", file=sys.stderr)
        return 2
    chunk = args.chunk or 16 * args.batch_size
    stdin = (line.rstrip("\n").rstrip("\r") for line in sys.stdin)
    lines: List[str] = []
    first = 0
    for line in stdin:
        lines.append(line)
        if len(lines) == chunk:
            _write(translator, lines, args, first, sys.stdout)
            first, lines = first + len(lines), []
    if lines:
        _write(translator, lines, args, first, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
