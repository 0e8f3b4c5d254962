"""``fconv-ext-shortlist``: build a lexical shortlist file from a parallel corpus.

    fconv-ext-shortlist DATA_BIN --source-lang en --target-lang de --out DATA_BIN/shortlist.en-de.npz

reads the binarized ``--subset`` (default ``train``) of ``DATA_BIN`` with fairseq's
``data_utils.load_indexed_dataset`` and the dictionaries ``DATA_BIN/dict.{lang}.txt`` (or, with
``--text-source``/``--text-target``, a raw tokenized + BPE'd parallel text encoded with those
dictionaries), word-aligns the token-id sentences with eflomal (Östling & Tiedemann 2016: a Bayesian
HMM-with-fertility aligner sampled by MCMC; what OPUS-MT and Bergamot build their shortlists with), in both
directions, and keeps the links of the chosen ``--symmetrization``.  From the link counts c(s, t) it
estimates p(t|s) = c(s, t) / sum_t' c(s, t') and writes, for every source token, its ``--n-best`` targets by
p(t|s), plus the target tokens' frequencies (the ``--n-frequent`` most frequent are always candidates) and
the dictionaries' fingerprints, in the format of :mod:`fconv_plugin.serving.shortlist`.

eflomal samples at random (it has no seed option), so two builds can differ in rare ties of the ranking.
Why eflomal and the defaults: ``docs/shortlists.md``.
"""

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib.metadata import version
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

logger = logging.getLogger("fconv_plugin.cli.shortlist")

#: eflomal.Aligner keyword arguments --aligner-options may set (its documented constructor options).
ALIGNER_OPTIONS = (
    "model",
    "score_model",
    "n_iterations",
    "n_samplers",
    "rel_iterations",
    "null_prior",
    "source_prefix_len",
    "source_suffix_len",
    "target_prefix_len",
    "target_suffix_len",
)
SYMMETRIZATIONS = ("union", "intersection", "forward", "reverse")


# --------------------------------------------------------------------------- reading the corpus
def split_prefix(data_bin: str, subset: str, src: str, tgt: str, lang: str) -> str:
    """The binarized file prefix fairseq-preprocess wrote for ``subset`` and ``lang`` (either direction)."""
    for a, b in ((src, tgt), (tgt, src)):
        prefix = os.path.join(data_bin, f"{subset}.{a}-{b}.{lang}")
        if os.path.isfile(prefix + ".idx"):
            return prefix
    raise FileNotFoundError(
        f"no binarized {subset!r} split for {src}-{tgt} in {data_bin!r} (looked for "
        f"{subset}.{src}-{tgt}.{lang}.idx and {subset}.{tgt}-{src}.{lang}.idx); run "
        "fairseq-preprocess first, or pass --text-source/--text-target"
    )


def read_binarized(
    data_bin: str, subset: str, src: str, tgt: str, src_dict, tgt_dict
) -> Tuple[List[np.ndarray], List[np.ndarray]]:
    """Token-id sentences (EOS removed) of a binarized split, source and target."""
    from fairseq.data import data_utils
    from tqdm import tqdm

    sides = []
    for lang, dictionary in ((src, src_dict), (tgt, tgt_dict)):
        prefix = split_prefix(data_bin, subset, src, tgt, lang)
        dataset = data_utils.load_indexed_dataset(prefix, dictionary)
        if dataset is None:
            raise FileNotFoundError(f"fairseq could not load the indexed dataset {prefix!r}")
        sents = []
        for i in tqdm(
            range(len(dataset)), desc=f"reading {subset}.{lang}", unit="sent", file=sys.stderr, mininterval=2
        ):
            ids = dataset[i].numpy()
            sents.append(ids[:-1] if len(ids) and ids[-1] == dictionary.eos() else ids)
        sides.append(sents)
    if len(sides[0]) != len(sides[1]):
        raise ValueError(f"{subset}: {len(sides[0])} source but {len(sides[1])} target sentences")
    return sides[0], sides[1]


def read_text(src_path: str, tgt_path: str, src_dict, tgt_dict) -> Tuple[List[np.ndarray], List[np.ndarray]]:
    """Token-id sentences of a raw parallel text (tokenized and BPE'd like the model's data), one sentence
    a line, encoded with the dictionaries (unknown pieces become UNK, which has no shortlist entry)."""
    sides = []
    for path, dictionary in ((src_path, src_dict), (tgt_path, tgt_dict)):
        with open(path, encoding="utf-8") as f:
            sides.append([dictionary.encode_line(line, add_if_not_exist=False, append_eos=False).numpy() for line in f])
    if len(sides[0]) != len(sides[1]):
        raise ValueError(f"{src_path} has {len(sides[0])} lines but {tgt_path} has {len(sides[1])}")
    return sides[0], sides[1]


# --------------------------------------------------------------------------- aligning
def align(
    src_sents: Sequence[np.ndarray],
    tgt_sents: Sequence[np.ndarray],
    aligner_options: Optional[Dict] = None,
    quiet: bool = True,
) -> Tuple[List[str], List[str]]:
    """eflomal's forward and reverse links for each sentence pair: lines of ``i-j`` (source position i,
    target position j).  Pairs with an empty side get empty lines (eflomal is not given them)."""
    try:
        import eflomal
    except ImportError as e:
        raise SystemExit(
            "fconv-ext-shortlist needs the eflomal aligner: pip install 'fconv-ext[shortlist]' "
            f"(or pip install eflomal) ({e})"
        ) from e

    keep = [i for i, (s, t) in enumerate(zip(src_sents, tgt_sents)) if len(s) and len(t)]
    src_lines = [" ".join(map(str, src_sents[i].tolist())) for i in keep]
    tgt_lines = [" ".join(map(str, tgt_sents[i].tolist())) for i in keep]
    fwd, rev = [""] * len(src_sents), [""] * len(src_sents)
    if not keep:
        return fwd, rev
    with tempfile.TemporaryDirectory(prefix="fconv-ext-shortlist-") as tmp:
        fwd_path, rev_path = os.path.join(tmp, "fwd"), os.path.join(tmp, "rev")
        eflomal.Aligner(**(aligner_options or {})).align(
            src_lines, tgt_lines, links_filename_fwd=fwd_path, links_filename_rev=rev_path, quiet=quiet
        )
        for path, out in ((fwd_path, fwd), (rev_path, rev)):
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
            if len(lines) != len(keep):
                raise RuntimeError(f"eflomal wrote {len(lines)} link lines for {len(keep)} sentence pairs")
            for i, line in zip(keep, lines):
                out[i] = line
    return fwd, rev


def parse_links(line: str) -> set:
    """``"0-1 2-2"`` -> {(0, 1), (2, 2)}."""
    return {tuple(map(int, link.split("-"))) for link in line.split()}


def symmetrize(fwd: str, rev: str, how: str) -> set:
    """The (source position, target position) links kept of one sentence pair's forward/reverse links."""
    if how == "forward":
        return parse_links(fwd)
    if how == "reverse":
        return parse_links(rev)
    if how == "union":
        return parse_links(fwd) | parse_links(rev)
    if how == "intersection":
        return parse_links(fwd) & parse_links(rev)
    raise ValueError(f"unknown symmetrization {how!r}; choose one of {', '.join(SYMMETRIZATIONS)}")


# --------------------------------------------------------------------------- the table
def link_pairs(src_sents, tgt_sents, links: Sequence[set]) -> Tuple[np.ndarray, np.ndarray]:
    """Token ids (source, target) of every link, as two int64 arrays."""
    from tqdm import tqdm

    s_ids, t_ids = [], []
    for s, t, pairs in tqdm(
        zip(src_sents, tgt_sents, links),
        total=len(links),
        desc="counting links",
        unit="sent",
        file=sys.stderr,
        mininterval=2,
    ):
        if pairs:
            ij = np.array(sorted(pairs), dtype=np.int64)  # n_links x 2 positions
            s_ids.append(np.asarray(s, dtype=np.int64)[ij[:, 0]])
            t_ids.append(np.asarray(t, dtype=np.int64)[ij[:, 1]])
    if not s_ids:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(s_ids), np.concatenate(t_ids)


def best_targets(
    src_ids: np.ndarray, tgt_ids: np.ndarray, n_src: int, n_tgt: int, n_best: int, src_nspecial: int
) -> Tuple[np.ndarray, np.ndarray]:
    """For every source token, its ``n_best`` target tokens by p(t|s) = c(s,t) / c(s) from the link pairs
    (ties: lower target id first), and those probabilities.  ``n_src x n_best`` int32 ids (-1: none) and
    float32 probabilities (0: none).  Special source tokens (id < src_nspecial) get no entry."""
    table = np.full((n_src, n_best), -1, dtype=np.int32)
    probs = np.zeros((n_src, n_best), dtype=np.float32)
    pair_keys, counts = np.unique(src_ids * n_tgt + tgt_ids, return_counts=True)  # sorted by (s, t)
    s, t = pair_keys // n_tgt, pair_keys % n_tgt
    per_source = np.bincount(s, weights=counts, minlength=n_src)
    order = np.lexsort((t, -counts, s))  # by source, then count descending, then target ascending
    s, t, counts = s[order], t[order], counts[order]
    starts = np.searchsorted(s, s, side="left")
    rank = np.arange(len(s)) - starts  # position of each pair within its source token's ranking
    keep = (rank < n_best) & (s >= src_nspecial)
    table[s[keep], rank[keep]] = t[keep]
    probs[s[keep], rank[keep]] = counts[keep] / per_source[s[keep]]
    return table, probs


def build(
    src_sents,
    tgt_sents,
    src_dict,
    tgt_dict,
    n_best: int,
    symmetrization: str = "union",
    aligner_options: Optional[Dict] = None,
    quiet: bool = True,
):
    """(best_targets, best_probs, target_counts, stats) for a parallel corpus of token-id sentences."""
    t0 = time.time()
    fwd, rev = align(src_sents, tgt_sents, aligner_options, quiet=quiet)
    t_align = time.time() - t0
    logger.info("eflomal aligned %d sentence pairs in %.1f s", len(src_sents), t_align)
    links = [symmetrize(f, r, symmetrization) for f, r in zip(fwd, rev)]
    s_ids, t_ids = link_pairs(src_sents, tgt_sents, links)
    table, probs = best_targets(s_ids, t_ids, len(src_dict), len(tgt_dict), n_best, src_dict.nspecial)
    all_tgt = np.concatenate([np.asarray(t, dtype=np.int64) for t in tgt_sents] or [np.zeros(0, np.int64)])
    target_counts = np.bincount(all_tgt, minlength=len(tgt_dict)).astype(np.int64)
    stats = {
        "sentences": len(src_sents),
        "links": int(len(s_ids)),
        "align_seconds": round(t_align, 1),
        "source_tokens_with_entry": int((table[:, 0] >= 0).sum()),
    }
    return table, probs, target_counts, stats


# --------------------------------------------------------------------------- what a shortlist covers
def coverage_table(
    path: str,
    src_sents,
    tgt_sents,
    src_dict,
    tgt_dict,
    n_bests: Sequence[int],
    n_frequents: Sequence[int],
    batch_size: int = 64,
) -> List[Dict]:
    """For each (n_best, n_frequent): the mean candidate-set size of a single sentence and of a batch, and
    the share (%) of the reference target tokens (EOS excluded) inside their sentence's and their batch's
    set.  Batches are ``batch_size`` consecutive sentences in fairseq's order (source length, then target
    length, then index), as fairseq-generate --batch-size forms them."""
    import torch

    from fconv_plugin.serving.shortlist import Shortlist

    def padded(sents):  # len(sents) x (longest + 1), left-padded, EOS-terminated like fairseq's batches
        out = torch.full((len(sents), max(len(x) for x in sents) + 1), src_dict.pad(), dtype=torch.long)
        for i, x in enumerate(sents):
            out[i, out.size(1) - len(x) - 1 :] = torch.as_tensor(np.append(x, src_dict.eos()))
        return out

    order = sorted(range(len(src_sents)), key=lambda i: (len(src_sents[i]), len(tgt_sents[i]), i))
    batches = [order[k : k + batch_size] for k in range(0, len(order), batch_size)]
    refs = [torch.as_tensor(np.asarray(t, dtype=np.int64)) for t in tgt_sents]
    n_refs = sum(len(r) for r in refs)
    rows = []
    for n_best in n_bests:
        for n_frequent in n_frequents:
            sl = Shortlist.load(path, src_dict, tgt_dict, n_best=n_best, n_frequent=n_frequent)
            sent_sizes, sent_hits = [], 0
            for x, r in zip(src_sents, refs):
                cands = sl.candidates(padded([x]))
                sent_sizes.append(len(cands))
                sent_hits += int(torch.isin(r, cands).sum())
            batch_sizes, batch_hits = [], 0
            for b in batches:
                cands = sl.candidates(padded([src_sents[i] for i in b]))
                batch_sizes.append(len(cands))
                batch_hits += sum(int(torch.isin(refs[i], cands).sum()) for i in b)
            rows.append(
                {
                    "n_best": n_best,
                    "n_frequent": n_frequent,
                    "sentence_size": float(np.mean(sent_sizes)),
                    "batch_size": float(np.mean(batch_sizes)),
                    "sentence_coverage": 100.0 * sent_hits / max(1, n_refs),
                    "batch_coverage": 100.0 * batch_hits / max(1, n_refs),
                }
            )
    return rows


def format_coverage(rows: List[Dict], vocab: int, batch_size: int) -> str:
    """The coverage rows as a markdown table."""
    lines = [
        f"| N (best per source token) | M (frequent) | candidates / sentence | candidates / batch of "
        f"{batch_size} | reference tokens covered, sentence set (%) | ... batch set (%) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n_best']} | {r['n_frequent']} | {r['sentence_size']:.0f} | {r['batch_size']:.0f} "
            f"({100 * r['batch_size'] / vocab:.0f}% of {vocab}) | {r['sentence_coverage']:.1f} | "
            f"{r['batch_coverage']:.1f} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- command line
def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fconv-ext-shortlist",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "data_bin",
        metavar="DATA_BIN",
        help="fairseq-preprocess'd data directory (dictionaries, "
        "and the binarized --subset unless --text-source/--text-target are given)",
    )
    p.add_argument("--source-lang", "-s", required=True, help="source language suffix (dict.SRC.txt)")
    p.add_argument("--target-lang", "-t", required=True, help="target language suffix (dict.TGT.txt)")
    p.add_argument("--out", "-o", required=True, help="the shortlist file to write (.npz)")
    p.add_argument(
        "--n-best",
        type=int,
        default=100,
        help="targets kept per source token, by p(t|s) (the authors' -topnalign); decoding may use fewer",
    )
    p.add_argument(
        "--n-frequent",
        type=int,
        default=500,
        help="most frequent target tokens that are always "
        "candidates (the authors' -nmostcommon); decoding may choose another value",
    )
    p.add_argument("--subset", default="train", help="binarized split to align")
    p.add_argument(
        "--text-source",
        help="raw parallel text, source side (tokenized and BPE'd as the model's data), instead of the binarized split",
    )
    p.add_argument("--text-target", help="raw parallel text, target side (with --text-source)")
    p.add_argument(
        "--symmetrization",
        choices=SYMMETRIZATIONS,
        default="union",
        help="which of eflomal's forward (source->target) and reverse links are counted",
    )
    p.add_argument(
        "--aligner-options",
        default="{}",
        help="JSON object of eflomal.Aligner options, e.g. "
        '\'{"model": 3, "n_samplers": 3, "rel_iterations": 1.0}\' '
        f"(allowed: {', '.join(ALIGNER_OPTIONS)})",
    )
    p.add_argument("--verbose-aligner", action="store_true", help="show eflomal's own progress output")
    p.add_argument(
        "--coverage",
        metavar="SUBSET",
        help="after building, print a markdown table of candidate-set "
        "sizes and of the share of SUBSET's reference target tokens they hold (e.g. test)",
    )
    p.add_argument(
        "--coverage-n-best",
        default="10,20,50,100",
        help="comma-separated N values for --coverage (values above --n-best are skipped)",
    )
    p.add_argument("--coverage-n-frequent", default="100,250,500", help="comma-separated M values for --coverage")
    p.add_argument("--coverage-batch-size", type=int, default=64, help="sentences per batch for --coverage")
    p.add_argument(
        "--no-build",
        action="store_true",
        help="with --coverage: report on the existing --out file instead of building it",
    )
    return p


def parse_aligner_options(text: str) -> Dict:
    """--aligner-options as a dict of known eflomal.Aligner keyword arguments (JSON, never evaluated)."""
    try:
        options = json.loads(text)
    except json.JSONDecodeError as e:
        raise SystemExit(f"fconv-ext-shortlist: --aligner-options is not valid JSON ({e}): {text!r}")
    if not isinstance(options, dict):
        raise SystemExit(f"fconv-ext-shortlist: --aligner-options must be a JSON object, got {text!r}")
    unknown = sorted(set(options) - set(ALIGNER_OPTIONS))
    if unknown:
        raise SystemExit(
            f"fconv-ext-shortlist: unknown --aligner-options {unknown}; allowed: {', '.join(ALIGNER_OPTIONS)}"
        )
    if isinstance(options.get("n_iterations"), list):
        options["n_iterations"] = tuple(options["n_iterations"])
    return options


def main(argv=None):
    from fairseq.data import Dictionary

    args = get_parser().parse_args(argv)
    # a no-op where fairseq's import already configured logging (INFO to stderr); never replaces handlers
    logging.basicConfig(
        format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", level=logging.INFO, stream=sys.stderr
    )
    if args.n_best < 1 or args.n_frequent < 0:
        raise SystemExit("fconv-ext-shortlist: --n-best must be >= 1 and --n-frequent >= 0")
    if (args.text_source is None) != (args.text_target is None):
        raise SystemExit("fconv-ext-shortlist: give both --text-source and --text-target, or neither")
    aligner_options = parse_aligner_options(args.aligner_options)
    dicts = []
    for lang in (args.source_lang, args.target_lang):
        path = os.path.join(args.data_bin, f"dict.{lang}.txt")
        if not os.path.isfile(path):
            raise SystemExit(
                f"fconv-ext-shortlist: no dictionary {path}; DATA_BIN must be the "
                "fairseq-preprocess'd directory the model was trained on"
            )
        dicts.append(Dictionary.load(path))
    src_dict, tgt_dict = dicts
    if args.no_build:
        if not args.coverage:
            raise SystemExit("fconv-ext-shortlist: --no-build is for --coverage on an existing --out file")
    else:
        build_file(args, src_dict, tgt_dict, aligner_options)
    if args.coverage:
        report_coverage(args, src_dict, tgt_dict)


def build_file(args, src_dict, tgt_dict, aligner_options: Dict) -> None:
    """Read the corpus, align, write ``args.out``."""
    from fconv_plugin import __version__
    from fconv_plugin.serving import shortlist

    start = time.time()
    try:
        if args.text_source:
            src_sents, tgt_sents = read_text(args.text_source, args.text_target, src_dict, tgt_dict)
            corpus = {
                "text_source": os.path.abspath(args.text_source),
                "text_target": os.path.abspath(args.text_target),
            }
        else:
            src_sents, tgt_sents = read_binarized(
                args.data_bin, args.subset, args.source_lang, args.target_lang, src_dict, tgt_dict
            )
            corpus = {"data_bin": os.path.abspath(args.data_bin), "subset": args.subset}
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"fconv-ext-shortlist: {e}")
    logger.info("aligning %d sentence pairs with eflomal (%s links)", len(src_sents), args.symmetrization)
    table, probs, counts, stats = build(
        src_sents,
        tgt_sents,
        src_dict,
        tgt_dict,
        args.n_best,
        args.symmetrization,
        aligner_options,
        quiet=not args.verbose_aligner,
    )
    header = {
        "source": shortlist.dictionary_record(src_dict, args.source_lang),
        "target": shortlist.dictionary_record(tgt_dict, args.target_lang),
        "n_best": args.n_best,
        "n_frequent": args.n_frequent,
        "aligner": {
            "name": "eflomal",
            "version": version("eflomal"),
            "options": aligner_options,
            "symmetrization": args.symmetrization,
        },
        "corpus": corpus,
        "stats": dict(stats, build_seconds=round(time.time() - start, 1)),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "fconv_ext_version": __version__,
    }
    shortlist.save(args.out, table, probs, counts, header)
    logger.info(
        "wrote %s: %d source tokens with entries, n_best %d, n_frequent %d, %.1f s in all",
        args.out,
        stats["source_tokens_with_entry"],
        args.n_best,
        args.n_frequent,
        time.time() - start,
    )


def report_coverage(args, src_dict, tgt_dict) -> None:
    """Print the --coverage table for ``args.out`` on the binarized ``args.coverage`` split."""
    from fconv_plugin.serving.shortlist import Shortlist, ShortlistError

    try:
        built = Shortlist.load(args.out, src_dict, tgt_dict).metadata["n_best"]
        src_sents, tgt_sents = read_binarized(
            args.data_bin, args.coverage, args.source_lang, args.target_lang, src_dict, tgt_dict
        )
        n_bests = [int(v) for v in args.coverage_n_best.split(",") if int(v) <= built]
        n_frequents = [int(v) for v in args.coverage_n_frequent.split(",")]
        rows = coverage_table(
            args.out, src_sents, tgt_sents, src_dict, tgt_dict, n_bests, n_frequents, args.coverage_batch_size
        )
    except (ShortlistError, FileNotFoundError, ValueError) as e:
        raise SystemExit(f"fconv-ext-shortlist: {e}")
    print(
        f"{args.coverage} split of {args.data_bin}: {len(src_sents)} sentences, "
        f"{sum(len(t) for t in tgt_sents)} reference tokens; shortlist {args.out}"
    )
    print(format_coverage(rows, len(tgt_dict), args.coverage_batch_size))


if __name__ == "__main__":
    main()
