"""The paper's summarization data (section 5.3): Gigaword headline generation for training
and testing, DUC-2004 task 1 for testing only.

    fconv-ext-prepare-summarization gigaword --out data/gigaword [--archives DIR]
    fconv-ext-prepare-summarization duc2004 --out data/duc2004 --duc-dir sumdata/DUC2004

Both write raw text, one example per line, aligned by line, the layout
``examples/summarization/prepare.sh`` takes (``{split}.long`` = article, ``{split}.short``
= headline):

* ``gigaword``: Rush et al. (2015)'s Gigaword pairs (first sentence of an article ->
  its headline; 3.8M train / 189k dev / 1951 test), as repackaged by microsoft/unilm
  ("org_data", the same data as harvardnlp/sent-summary).  The archive ``org_data.zip`` is
  downloaded from Google Drive into ``--archives`` unless already there; Drive sometimes
  answers big downloads with a confirmation page, in which case download it by hand (a browser
  or ``gdown``) and put it there.  The text is already tokenized and lower-cased, digits are
  ``#`` and rare words ``UNK`` (train/dev say ``<unk>``; it is made ``UNK`` as in test), so
  run prepare.sh with ``SUMM_TOKENIZE=none``.  Validation keeps the first ``--valid-size``
  dev pairs (the full dev set takes hours to decode on a CPU).
* ``duc2004``: DUC-2004 task 1 (500 news articles, 4 reference headlines each, scored
  with ROUGE recall after cutting summaries to 75 bytes).  NIST licenses it, so there is no
  download: ``--duc-dir`` is a directory holding ``input.txt`` and ``task1_ref0.txt`` ..
  ``task1_ref3.txt`` (the layout of harvardnlp/sent-summary's ``sumdata/DUC2004``).  Writes
  ``test.long`` and ``test.short.0`` .. ``test.short.3``.
"""

import argparse
import os
import sys
from typing import Dict, Iterable, List, Optional, Tuple

from .prepare_translation import PrepareError, fetch, log, read_lines

GIGAWORD_ARCHIVES = {"org_data.zip": "https://drive.google.com/uc?export=download&id=1USoQ8lJgN8kAWnUnRrupMGrPMLlDVqlV"}
GIGAWORD_SPLITS = {"train": "train", "valid": "dev", "test": "test"}  # ours -> org_data's name
DUC_REFERENCES = 4

# What the paper reports (ConvS2S, 6 + 6 layers of 256 units), for the README and the log.
PAPER_GIGAWORD_F1 = (35.88, 17.48, 33.29)
PAPER_DUC2004_RECALL = (30.44, 10.84, 26.90)


def _write(path: str, lines: Iterable[str]) -> int:
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(line + "\n")
            n += 1
    return n


def _pairs(src_path: str, tgt_path: str, replace_unk: bool) -> List[Tuple[str, str]]:
    sources, targets = list(read_lines(src_path)), list(read_lines(tgt_path))
    if len(sources) != len(targets):
        raise PrepareError(
            f"{src_path} has {len(sources)} lines but {tgt_path} has {len(targets)}; is the archive complete?"
        )
    pairs = []
    for src, tgt in zip(sources, targets):
        src, tgt = " ".join(src.split()), " ".join(tgt.split())
        if replace_unk:
            src, tgt = src.replace("<unk>", "UNK"), tgt.replace("<unk>", "UNK")
        if src and tgt:  # a handful of pairs have an empty side: nothing to learn from them
            pairs.append((src, tgt))
    return pairs


def prepare_gigaword(out: str, archive_dir: Optional[str] = None, valid_size: int = 2000) -> Dict[str, int]:
    archive_dir = archive_dir or os.path.join(out, "orig")
    fetch(GIGAWORD_ARCHIVES, archive_dir)
    os.makedirs(out, exist_ok=True)
    counts = {}
    for split, name in GIGAWORD_SPLITS.items():
        base = os.path.join(archive_dir, "org_data", name)
        pairs = _pairs(base + ".src.txt", base + ".tgt.txt", replace_unk=(split != "test"))
        if split == "valid" and valid_size > 0:
            pairs = pairs[:valid_size]
        counts[split] = _write(os.path.join(out, f"{split}.long"), (src for src, _ in pairs))
        _write(os.path.join(out, f"{split}.short"), (tgt for _, tgt in pairs))
        log(f"{split}: {counts[split]} pairs")
    return counts


def prepare_duc2004(out: str, duc_dir: str) -> Dict[str, int]:
    if not os.path.isdir(duc_dir):
        raise PrepareError(
            f"--duc-dir {duc_dir} is not a directory. DUC-2004 is licensed by NIST "
            "(https://duc.nist.gov/data.html); point --duc-dir at the directory with "
            "input.txt and task1_ref0.txt .. task1_ref3.txt"
        )
    sources = [" ".join(line.split()) for line in read_lines(os.path.join(duc_dir, "input.txt"))]
    os.makedirs(out, exist_ok=True)
    _write(os.path.join(out, "test.long"), sources)
    for k in range(DUC_REFERENCES):
        refs = [" ".join(line.split()) for line in read_lines(os.path.join(duc_dir, f"task1_ref{k}.txt"))]
        if len(refs) != len(sources):
            raise PrepareError(f"task1_ref{k}.txt has {len(refs)} lines but input.txt has {len(sources)}")
        _write(os.path.join(out, f"test.short.{k}"), refs)
    log(f"test: {len(sources)} articles, {DUC_REFERENCES} references each")
    return {"test": len(sources)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fconv-ext-prepare-summarization", description=__doc__.split("\n\n")[0])
    parser.add_argument("corpus", choices=["gigaword", "duc2004"])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--archives", default=None, help="where archives are downloaded/looked for (default OUT/orig)")
    parser.add_argument(
        "--valid-size",
        type=int,
        default=2000,
        help="gigaword: dev pairs kept for validation, 0 = all (default: %(default)s)",
    )
    parser.add_argument("--duc-dir", default=None, help="duc2004: directory with input.txt and task1_ref0..3.txt")
    args = parser.parse_args(argv)
    try:
        if args.corpus == "gigaword":
            prepare_gigaword(args.out, args.archives, args.valid_size)
            log(
                f"done; next: SUMM_TOKENIZE=none examples/summarization/prepare.sh {args.out} OUT_DIR "
                f"(paper, ROUGE-1/2/L F1: {PAPER_GIGAWORD_F1})"
            )
        else:
            if not args.duc_dir:
                parser.error("duc2004 needs --duc-dir (the data is licensed by NIST; there is no download)")
            prepare_duc2004(args.out, args.duc_dir)
            log(
                f"done; score with fconv-ext-rouge --truncate-bytes 75 --measure recall "
                f"(paper, ROUGE-1/2/L recall: {PAPER_DUC2004_RECALL})"
            )
    except PrepareError as e:
        print(f"fconv-ext-prepare-summarization: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
