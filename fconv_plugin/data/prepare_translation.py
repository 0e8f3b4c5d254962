"""Download and prepare the paper's translation corpora, without perl Moses.

    fconv-ext-prepare-translation iwslt14_de_en --out data/iwslt14.tokenized.de-en
    fconv-ext-prepare-translation wmt14_en_de --out data/wmt14_en_de [--archives DIR]

Each recipe follows fairseq's ``examples/translation/prepare-*.sh`` (the corpora the
ConvS2S paper and fairseq's README used): extract the parallel text from the official
archives, normalise/tokenise with sacremoses (Moses' tokenizer, in Python), clean by
length, split off validation data, learn a joint BPE with subword-nmt and apply it.
The output directory holds ``{train,valid,test}.{src,tgt}`` (BPE'd) and ``code``,
ready for ``fairseq-preprocess``.

Archives are downloaded into ``--archives`` (default ``OUT/orig``) unless already there,
so a machine without internet can be given the files by hand.
"""

import argparse
import os
import re
import sys
import tarfile
import urllib.request
import zipfile
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Tuple


@dataclass
class Recipe:
    src: str
    tgt: str
    #: archive file name -> download URL
    archives: Dict[str, str]
    #: training corpora: path prefixes inside the extracted archives (prefix + ".LANG")
    train: List[str]
    #: test set: (source file, target file) inside the extracted archives, plain or SGML/XML
    test: List[Tuple[str, str]]
    #: validation: explicit files, or None to take every ``valid_every``-th training line
    valid: Optional[List[Tuple[str, str]]] = None
    valid_every: int = 100
    bpe_merges: int = 40000
    lowercase: bool = False
    #: maximum tokens per side after BPE, and max length ratio (Moses clean-corpus-n)
    max_len: int = 250
    ratio: float = 1.5
    #: training files in TED "tags" format (IWSLT): drop metadata lines, strip title tags
    tagged_train: bool = False
    #: clean by length on the tokenized text (IWSLT) instead of after BPE (WMT)
    clean_before_bpe: bool = False
    notes: str = ""


WMT14_TEST = "http://statmt.org/wmt14/test-full.tgz"
RECIPES: Dict[str, Recipe] = {
    "iwslt14_de_en": Recipe(
        src="de",
        tgt="en",
        archives={"de-en.tgz": "http://dl.fbaipublicfiles.com/fairseq/data/iwslt14/de-en.tgz"},
        train=["de-en/train.tags.de-en"],
        test=[
            (f"de-en/IWSLT14.{name}.de-en.de.xml", f"de-en/IWSLT14.{name}.de-en.en.xml")
            for name in ("TED.dev2010", "TEDX.dev2012", "TED.tst2010", "TED.tst2011", "TED.tst2012")
        ],
        valid_every=23,
        bpe_merges=10000,
        lowercase=True,
        max_len=175,
        tagged_train=True,
        clean_before_bpe=True,
    ),
    "wmt14_en_de": Recipe(
        src="en",
        tgt="de",
        archives={
            "training-parallel-europarl-v7.tgz": "http://statmt.org/wmt13/training-parallel-europarl-v7.tgz",
            "training-parallel-commoncrawl.tgz": "http://statmt.org/wmt13/training-parallel-commoncrawl.tgz",
            "training-parallel-nc-v9.tgz": "http://statmt.org/wmt14/training-parallel-nc-v9.tgz",
            "test-full.tgz": WMT14_TEST,
        },
        train=["training/europarl-v7.de-en", "commoncrawl.de-en", "training/news-commentary-v9.de-en"],
        test=[("test-full/newstest2014-deen-src.en.sgm", "test-full/newstest2014-deen-ref.de.sgm")],
        bpe_merges=40000,
        notes="news-commentary v9: the data of the ConvS2S paper (fairseq's --icml17)",
    ),
    "wmt14_en_fr": Recipe(
        src="en",
        tgt="fr",
        archives={
            "training-parallel-europarl-v7.tgz": "http://statmt.org/wmt13/training-parallel-europarl-v7.tgz",
            "training-parallel-commoncrawl.tgz": "http://statmt.org/wmt13/training-parallel-commoncrawl.tgz",
            "training-parallel-un.tgz": "http://statmt.org/wmt13/training-parallel-un.tgz",
            "training-parallel-nc-v9.tgz": "http://statmt.org/wmt14/training-parallel-nc-v9.tgz",
            "training-giga-fren.tar": "http://statmt.org/wmt10/training-giga-fren.tar",
            "test-full.tgz": WMT14_TEST,
        },
        train=[
            "training/europarl-v7.fr-en",
            "commoncrawl.fr-en",
            "un/undoc.2000.fr-en",
            "training/news-commentary-v9.fr-en",
            "giga-fren.release2.fixed",
        ],
        test=[("test-full/newstest2014-fren-src.en.sgm", "test-full/newstest2014-fren-ref.fr.sgm")],
        bpe_merges=40000,
        notes="giga-fren.release2.fixed.{en,fr}.gz inside the tar are gunzipped automatically",
    ),
    "wmt16_en_ro": Recipe(
        src="en",
        tgt="ro",
        archives={
            "training-parallel-ep-v8.tgz": "http://data.statmt.org/wmt16/translation-task/training-parallel-ep-v8.tgz",
            "SETIMES2.en-ro.txt.zip": "http://opus.nlpl.eu/download.php?f=SETIMES/v2/moses/en-ro.txt.zip",
            "dev.tgz": "http://data.statmt.org/wmt16/translation-task/dev.tgz",
            "test.tgz": "http://data.statmt.org/wmt16/translation-task/test.tgz",
        },
        train=["training-parallel-ep-v8/europarl-v8.ro-en", "SETIMES.en-ro"],
        valid=[("dev/newsdev2016-enro-src.en.sgm", "dev/newsdev2016-enro-ref.ro.sgm")],
        test=[("test/newstest2016-enro-src.en.sgm", "test/newstest2016-enro-ref.ro.sgm")],
        bpe_merges=40000,
        notes="BPE 40K as in the paper's WMT'16 En-Ro row",
    ),
}


class PrepareError(RuntimeError):
    pass


def log(message: str) -> None:
    print(f"[prepare] {message}", flush=True)


def fetch(archives: Dict[str, str], archive_dir: str) -> None:
    """Download missing archives (file name -> URL), then extract every archive once."""
    os.makedirs(archive_dir, exist_ok=True)
    for name, url in archives.items():
        path = os.path.join(archive_dir, name)
        if not os.path.exists(path):
            log(f"downloading {url}")
            try:
                urllib.request.urlretrieve(url, path + ".part")
            except OSError as err:
                raise PrepareError(
                    f"cannot download {url} ({err}). Download it by hand and put it at {path}, then run again"
                ) from None
            os.replace(path + ".part", path)
        stamp = path + ".extracted"
        if os.path.exists(stamp):
            continue
        log(f"extracting {name}")
        if name.endswith(".zip"):
            with zipfile.ZipFile(path) as z:
                z.extractall(archive_dir)
        else:
            with tarfile.open(path) as t:
                t.extractall(archive_dir, filter="data")
        open(stamp, "w").close()


def read_lines(path: str) -> Iterator[str]:
    import gzip

    if not os.path.exists(path) and os.path.exists(path + ".gz"):
        path = path + ".gz"
    if not os.path.exists(path):
        raise PrepareError(f"expected {path} in the extracted archives; is an archive missing or incomplete?")
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            yield line.rstrip("\n")


_SEG = re.compile(r"<seg id=\"?\d+\"?>\s*(.*?)\s*</seg>")
_TED_META = ("<url>", "<talkid>", "<keywords>", "<speaker>", "<reviewer>", "<translator>")
_TED_STRIP = re.compile(r"</?(title|description)>")


def read_segments(path: str) -> List[str]:
    """Plain text, or the ``<seg>`` contents of an SGML/XML test file."""
    if path.endswith((".sgm", ".xml")):
        return [m.group(1).replace("\u2019", "'") for line in read_lines(path) for m in [_SEG.search(line)] if m]
    return list(read_lines(path))


def read_ted_tags(path: str) -> List[str]:
    """IWSLT ``train.tags`` files: one sentence a line, with metadata lines to drop."""
    return [_TED_STRIP.sub("", line) for line in read_lines(path) if not any(t in line for t in _TED_META)]


def tokenizer(lang: str, lowercase: bool) -> Callable[[str], str]:
    from sacremoses import MosesPunctNormalizer, MosesTokenizer

    norm, tok = MosesPunctNormalizer(lang=lang), MosesTokenizer(lang=lang)

    def run(line: str) -> str:
        out = tok.tokenize(norm.normalize(line), aggressive_dash_splits=True, return_str=True, escape=False)
        return out.lower() if lowercase else out

    return run


def clean(pairs: Iterable[Tuple[str, str]], max_len: int, ratio: float) -> List[Tuple[str, str]]:
    """Moses clean-corpus-n: both sides 1..max_len tokens, length ratio at most ``ratio``."""
    kept = []
    for s, t in pairs:
        ns, nt = len(s.split()), len(t.split())
        if 1 <= ns <= max_len and 1 <= nt <= max_len and max(ns, nt) <= ratio * min(ns, nt):
            kept.append((s, t))
    return kept


def prepare(name: str, out: str, archive_dir: Optional[str] = None, bpe_merges: Optional[int] = None) -> Dict[str, int]:
    from subword_nmt.apply_bpe import BPE
    from subword_nmt.learn_bpe import learn_bpe

    recipe = RECIPES[name]
    archive_dir = archive_dir or os.path.join(out, "orig")
    fetch(recipe.archives, archive_dir)
    tok_src, tok_tgt = tokenizer(recipe.src, recipe.lowercase), tokenizer(recipe.tgt, recipe.lowercase)
    reader = read_ted_tags if recipe.tagged_train else read_segments

    def side_by_side(files: List[Tuple[str, str]], read) -> List[Tuple[str, str]]:
        pairs = []
        for fs, ft in files:
            src, tgt = read(os.path.join(archive_dir, fs)), read(os.path.join(archive_dir, ft))
            if len(src) != len(tgt):
                raise PrepareError(f"{fs} has {len(src)} lines but {ft} has {len(tgt)}: not parallel")
            pairs += [(tok_src(s), tok_tgt(t)) for s, t in zip(src, tgt)]
        return pairs

    log("tokenizing training data (sacremoses)")
    train = side_by_side([(f"{p}.{recipe.src}", f"{p}.{recipe.tgt}") for p in recipe.train], reader)
    if recipe.clean_before_bpe:
        train = clean(train, recipe.max_len, recipe.ratio)
    if recipe.valid is None:
        valid = [p for i, p in enumerate(train, 1) if i % recipe.valid_every == 0]
        train = [p for i, p in enumerate(train, 1) if i % recipe.valid_every != 0]
    else:
        valid = side_by_side(recipe.valid, read_segments)
    test = side_by_side(recipe.test, read_segments)

    os.makedirs(out, exist_ok=True)
    merges = bpe_merges or recipe.bpe_merges
    log(f"learning a joint BPE of {merges} merges (subword-nmt)")
    codes = os.path.join(out, "code")
    joined = [s for s, _ in train] + [t for _, t in train]
    with open(codes, "w", encoding="utf-8") as f:
        learn_bpe(joined, f, merges)
    with open(codes, encoding="utf-8") as f:
        bpe = BPE(f)

    counts = {}
    for split, pairs in (("train", train), ("valid", valid), ("test", test)):
        pairs = [(bpe.process_line(s), bpe.process_line(t)) for s, t in pairs]
        if split != "test" and not recipe.clean_before_bpe:  # the test set is never filtered
            pairs = clean(pairs, recipe.max_len, recipe.ratio)
        counts[split] = len(pairs)
        for side, lang in ((0, recipe.src), (1, recipe.tgt)):
            with open(os.path.join(out, f"{split}.{lang}"), "w", encoding="utf-8") as f:
                f.writelines(p[side] + "\n" for p in pairs)
    log(f"{name}: train {counts['train']}, valid {counts['valid']}, test {counts['test']} pairs -> {out}")
    return counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fconv-ext-prepare-translation", description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", choices=sorted(RECIPES), help="which corpus")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--archives", default=None, help="where the downloaded archives are (default OUT/orig)")
    parser.add_argument("--bpe-merges", type=int, default=None, help="override the recipe's number of BPE merges")
    args = parser.parse_args(argv)
    try:
        prepare(args.recipe, args.out, args.archives, args.bpe_merges)
    except PrepareError as err:
        print(f"fconv-ext-prepare-translation: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
