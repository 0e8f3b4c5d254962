"""A headline-generation corpus from the machine's own apt index: a package's long
description (source) -> its one-line synopsis (target).

    sudo apt-get -o Acquire::Languages=en update     # fetches the Translation-en indexes
    fconv-ext-apt-corpus data/apt-descriptions        # -> {train,valid,test}.{long,short}

Debian and Ubuntu keep the English descriptions in ``/var/lib/apt/lists/*Translation-en*``
(lz4-, gzip- or xz-compressed, or plain), one deb822 stanza per description::

    Package: 2geom
    Description-md5: ...
    Description-en: robust computational geometry framework -- shared library
     2Geom is a C++ 2D geometry library geared towards robust processing of
     ...
     .
     This package contains the shared library.

The corpus is made the way ``../shared/data/debian-descriptions`` (this project's fixed copy,
Debian 12 main) was made: whitespace folded, paragraph separators (" .") dropped, sources of
8 to 400 words, one example per distinct long description, and the split chosen by a hash of
the description's first 8 words (lower-cased), so near-identical descriptions of sibling
packages (-dev, -doc, -data) land in the same split: ``sha1 % 100`` < 3 test, < 5 valid,
else train (a test checks that this reproduces the fixed copy's splits exactly).
"""

import argparse
import bz2
import glob
import gzip
import hashlib
import lzma
import os
import shutil
import subprocess
import sys
from typing import Dict, Iterable, Iterator, List, Tuple

DEFAULT_LISTS_DIR = "/var/lib/apt/lists"
SPLITS = ("train", "valid", "test")
COMPRESSED = (".lz4", ".gz", ".xz", ".bz2")
HOW_TO_FETCH = (
    "fetch it with `sudo apt-get -o Acquire::Languages=en update` (Debian/Ubuntu), or pass "
    "--lists-dir DIR with a copy of such a directory; ../shared/data/debian-descriptions is a "
    "ready-made corpus of this kind"
)


class AptCorpusError(RuntimeError):
    """A problem with the apt index, with what to do about it."""


def find_translation_indexes(lists_dir: str) -> List[str]:
    """Every English description index in ``lists_dir`` (one file per repository component;
    when apt keeps the same index both compressed and plain, the plain one is used)."""
    if not os.path.isdir(lists_dir):
        raise AptCorpusError(f"{lists_dir} is not a directory: {HOW_TO_FETCH}")
    found: Dict[str, str] = {}  # index name without compression suffix -> file
    for path in sorted(glob.glob(os.path.join(lists_dir, "*Translation-en*"))):
        if not os.path.isfile(path):
            continue  # apt's pdiff directories (*.diff/) are not indexes
        base, ext = os.path.splitext(path)
        compressed = ext in COMPRESSED
        if not compressed or base not in found:
            found[base if compressed else path] = path
    if not found:
        raise AptCorpusError(f"no Translation-en index in {lists_dir}: {HOW_TO_FETCH}")
    return sorted(found.values())


def read_index(path: str) -> str:
    """The text of one index, decompressed according to its file name."""
    if path.endswith(".lz4"):
        try:
            import lz4.frame
        except ImportError:
            if shutil.which("apt-helper") is None:
                raise AptCorpusError(f"{path} is lz4-compressed: `pip install lz4` (or install apt-helper)") from None
            return subprocess.run(["apt-helper", "cat-file", path], check=True, capture_output=True).stdout.decode(
                "utf-8"
            )
        with lz4.frame.open(path, "rb") as f:
            data = f.read()
    else:
        opener = {".gz": gzip.open, ".xz": lzma.open, ".bz2": bz2.open}.get(os.path.splitext(path)[1], open)
        with opener(path, "rb") as f:
            data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise AptCorpusError(f"{path} is not UTF-8 text ({e}); is it a complete, undamaged index?") from None


def iter_descriptions(text: str) -> Iterator[Tuple[str, str, List[str]]]:
    """``(package, synopsis, long description lines)`` for every stanza of a deb822 index
    that has a ``Description-en`` (Translation files) or multi-line ``Description`` field."""
    for stanza in text.split("\n\n"):
        package, synopsis, body, in_description = "", None, [], False
        for line in stanza.split("\n"):
            if line.startswith((" ", "\t")):  # continuation of the previous field
                if in_description:
                    body.append(line[1:])
                continue
            name, _, value = line.partition(":")
            in_description = name in ("Description-en", "Description")
            if name == "Package":
                package = value.strip()
            elif in_description:
                synopsis = value.strip()
        if synopsis is not None and body:
            yield package, synopsis, body


def fold_long_description(lines: Iterable[str]) -> str:
    """One line of text: paragraph separators (a lone ".") dropped, whitespace folded."""
    return " ".join(word for line in lines if line.strip() != "." for word in line.split())


def split_of(long_description: str) -> str:
    """``train``/``valid``/``test`` from a hash of the first 8 words, lower-cased."""
    key = " ".join(long_description.split()[:8]).lower()
    bucket = int(hashlib.sha1(key.encode("utf-8")).hexdigest(), 16) % 100
    return "test" if bucket < 3 else "valid" if bucket < 5 else "train"


def build_corpus(texts: Iterable[str], min_words: int = 8, max_words: int = 400) -> Dict[str, List[Tuple[str, str]]]:
    """``{split: [(long, short), ...]}`` from index texts; the first occurrence of each
    distinct long description is kept."""
    corpus: Dict[str, List[Tuple[str, str]]] = {split: [] for split in SPLITS}
    seen = set()
    for text in texts:
        for _package, synopsis, body in iter_descriptions(text):
            long = fold_long_description(body)
            short = " ".join(synopsis.split())
            if not short or not min_words <= len(long.split()) <= max_words or long in seen:
                continue
            seen.add(long)
            corpus[split_of(long)].append((long, short))
    return corpus


def write_corpus(corpus: Dict[str, List[Tuple[str, str]]], out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    for split, pairs in corpus.items():
        with open(os.path.join(out_dir, f"{split}.long"), "w", encoding="utf-8") as f_long, open(
            os.path.join(out_dir, f"{split}.short"), "w", encoding="utf-8"
        ) as f_short:
            for long, short in pairs:
                f_long.write(long + "\n")
                f_short.write(short + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="fconv-ext-apt-corpus",
        description="Build a summarization corpus (long description -> synopsis) from the apt index.",
    )
    parser.add_argument("out", help="output directory for {train,valid,test}.{long,short}")
    parser.add_argument("--lists-dir", default=DEFAULT_LISTS_DIR, help="apt's lists directory (default: %(default)s)")
    parser.add_argument(
        "--min-words", type=int, default=8, help="shortest source kept, in words (default: %(default)s)"
    )
    parser.add_argument(
        "--max-words", type=int, default=400, help="longest source kept, in words (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    try:
        indexes = find_translation_indexes(args.lists_dir)
        corpus = build_corpus((read_index(path) for path in indexes), args.min_words, args.max_words)
    except AptCorpusError as e:
        print(f"fconv-ext-apt-corpus: {e}", file=sys.stderr)
        return 2
    if not any(corpus.values()):
        print(
            f"fconv-ext-apt-corpus: the {len(indexes)} index file(s) in {args.lists_dir} hold no long "
            f"descriptions of {args.min_words} to {args.max_words} words",
            file=sys.stderr,
        )
        return 2
    write_corpus(corpus, args.out)
    counts = ", ".join(f"{split} {len(corpus[split])}" for split in SPLITS)
    print(f"{len(indexes)} index file(s) -> {args.out}: {counts} pairs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
