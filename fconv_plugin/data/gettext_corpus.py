"""Build a parallel corpus from the machine's own gettext catalogs.

Every Debian/Ubuntu package that is translated ships ``.mo`` catalogs under
``/usr/share/locale/<lang>/LC_MESSAGES/``: pairs of an English message (``msgid``) and
its human translation (``msgstr``).  Collected over all catalogs of a language they
make a real, if domain-specific (software messages), parallel corpus that needs no
download:

    fconv-ext-gettext-corpus --lang de --out data/gettext-en-de
    # -> data/gettext-en-de/{train,valid,test}.{en,de}

The recipe is the one that built ``shared/data/gettext-en-de``: read every catalog,
take the first plural form, fold whitespace, keep pairs whose English side has
``--min-words`` to ``--max-words`` words, keep the first translation of each English
string (catalogs in name order), then split by ``sha1(english) mod 100``: below 3 test,
below 5 valid, else train -- so a sentence lands in the same split on every machine.

Tokenization for training (``--tokenize LANG``, and ``--detokenize LANG`` for the way back;
both filter stdin to stdout) is sacremoses' Moses tokenizer with these messages' own tokens kept whole: printf/Python
format placeholders (``%s``, ``%1$s``, ``%.*s``, ``%lu``, ``%%``, ``%(name)s``, ``{0}``),
``C++``, identifiers with underscores (``GID_MAX``), paths (``/usr/bin``, ``%s/%s``) and usage
placeholders (``<file>``) (``PROTECTED_PATTERNS``).  Plain sacremoses writes ``%s`` as ``% s`` and ``C++`` as
``C + +``, and its detokenizer never joins them again (``»% s «``).  On the way back, German
quotes are closed up as German writes them (``» %s «`` -> ``»%s«``, ``„ x “`` -> ``„x“``),
which the Moses detokenizer does not do.
"""

import argparse
import glob
import gettext
import hashlib
import os
import re
import sys
from typing import Callable, Dict, Iterable, Iterator, List, Tuple

DEFAULT_LOCALE_DIR = "/usr/share/locale"


#: Regular expressions for tokens the tokenizer must not split (sacremoses ``protected_patterns``).
PROTECTED_PATTERNS: List[str] = [
    # C printf: %[argnum$][flags][width][.precision][length]conversion; no space flag, so "50% of" stays text
    r"%(?:\d+\$)?[-+#0']*(?:\d+|\*)?(?:\.(?:\d+|\*))?(?:hh|h|ll|l|L|q|j|z|Z|t)?[diouxXeEfFgGaAcspnm%]",
    # Python %-formatting with a name: %(name)s
    r"%\([A-Za-z_][A-Za-z0-9_]*\)[-+#0]*\d*(?:\.\d+)?[diouxXeEfFgGcrsa]",
    # str.format / brace placeholders: {}, {0}, {name}
    r"\{[A-Za-z_0-9]*\}",
    # the language's name, not "C" followed by two plus signs
    r"(?<![\w+])C\+\+(?!\+)",
    # URLs: https://www.python.org/peps/pep-0263.html
    r"[A-Za-z][A-Za-z0-9+.-]*://[^\s\"'»«“”<>]*[^\s\"'»«“”<>.,;:)]",
    # identifiers and options with underscores: GID_MAX, sql_drop, __init__
    r"\w*[A-Za-z0-9]_\w*",
    # paths and ratios: /usr/bin, %s/%s, kB/s, <n>/<m> (Moses splits at every slash)
    r"[\w%*$.<>-]*/[\w%*$.<>/-]*[\w%*$<>]",
    # angle-bracket placeholders of usage messages: <file>, <n>
    r"<[A-Za-z][\w-]*>",
]

#: Quotes that German closes up against the quoted text: opening -> closing.
_CLOSE_UP_QUOTES = {"de": ("»„", "«“")}


class NoCatalogsError(RuntimeError):
    pass


def catalog_paths(lang: str, locale_dir: str = DEFAULT_LOCALE_DIR) -> List[str]:
    return sorted(glob.glob(os.path.join(locale_dir, lang, "LC_MESSAGES", "*.mo")))


def read_catalog(path: str) -> Iterator[Tuple[str, str]]:
    """(English, translation) pairs of one ``.mo`` file, in the file's order.

    Uses the standard library's ``gettext`` reader; context prefixes (``ctx\\x04``) are
    dropped and plural entries give their first form."""
    with open(path, "rb") as f:
        catalog = gettext.GNUTranslations(f)._catalog  # msgid -> msgstr, (msgid, n) -> plural n
    for key, value in catalog.items():
        if isinstance(key, tuple):
            if key[1] != 0:
                continue
            key = key[0]
        if not key:  # the header entry
            continue
        key = key.split("\x04", 1)[-1]
        yield key, value


def fold(text: str) -> str:
    return " ".join(text.split())


def build_pairs(paths: List[str], min_words: int = 2, max_words: int = 80) -> Dict[str, str]:
    pairs: Dict[str, str] = {}
    for path in paths:
        try:
            entries = list(read_catalog(path))
        except (OSError, UnicodeDecodeError) as err:
            print(f"warning: skipping unreadable catalog {path}: {err}", file=sys.stderr)
            continue
        for english, translation in entries:
            english, translation = fold(english), fold(translation)
            if not translation or english in pairs:
                continue
            if min_words <= len(english.split()) <= max_words:
                pairs[english] = translation
    return pairs


def split_of(english: str) -> str:
    bucket = int(hashlib.sha1(english.encode("utf-8")).hexdigest(), 16) % 100
    return "test" if bucket < 3 else "valid" if bucket < 5 else "train"


def write_corpus(pairs: Dict[str, str], out_dir: str, lang: str) -> Dict[str, int]:
    os.makedirs(out_dir, exist_ok=True)
    splits: Dict[str, List[Tuple[str, str]]] = {"train": [], "valid": [], "test": []}
    for english, translation in pairs.items():
        splits[split_of(english)].append((english, translation))
    for split, rows in splits.items():
        with open(os.path.join(out_dir, f"{split}.en"), "w", encoding="utf-8") as src, open(
            os.path.join(out_dir, f"{split}.{lang}"), "w", encoding="utf-8"
        ) as tgt:
            for english, translation in rows:
                src.write(english + "\n")
                tgt.write(translation + "\n")
    return {split: len(rows) for split, rows in splits.items()}


def tokenizer(lang: str, protect: bool = True) -> Callable[[str], str]:
    """One line -> Moses tokens joined by spaces, XML characters escaped (``&apos;`` ...) as
    fairseq's ``--tokenizer moses`` does; with ``protect``, ``PROTECTED_PATTERNS`` stay whole."""
    from sacremoses import MosesTokenizer

    tok = MosesTokenizer(lang=lang)
    patterns = PROTECTED_PATTERNS if protect else None

    def run(line: str) -> str:
        return tok.tokenize(line, escape=True, return_str=True, protected_patterns=patterns)

    return run


def detokenizer(lang: str) -> Callable[[str], str]:
    """Tokens (XML-escaped) -> text: sacremoses' detokenizer, then the language's quotes closed up."""
    from sacremoses import MosesDetokenizer

    detok = MosesDetokenizer(lang=lang)
    opening, closing = _CLOSE_UP_QUOTES.get(lang, ("", ""))
    after_open = re.compile(f"([{re.escape(opening)}]) ") if opening else None
    before_close = re.compile(f" ([{re.escape(closing)}])") if closing else None

    def run(line: str) -> str:
        out = detok.detokenize(line.split(), unescape=True)
        if after_open is not None:
            out = before_close.sub(r"\1", after_open.sub(r"\1", out))
        return out

    return run


def tokenize_corpus(
    raw_dir: str, out_dir: str, lang: str, protect: bool = True, splits: Iterable[str] = ("train", "valid", "test")
) -> None:
    """``raw_dir/{split}.{en,lang}`` -> the same files in ``out_dir``, tokenized."""
    os.makedirs(out_dir, exist_ok=True)
    for side in ("en", lang):
        run = tokenizer(side, protect)
        for split in splits:
            with open(os.path.join(raw_dir, f"{split}.{side}"), encoding="utf-8") as src, open(
                os.path.join(out_dir, f"{split}.{side}"), "w", encoding="utf-8"
            ) as out:
                out.writelines(run(line.rstrip("\n")) + "\n" for line in src)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fconv-ext-gettext-corpus", description=__doc__.split("\n\n")[0])
    parser.add_argument("--lang", default="de", help="target language code (a directory under --locale-dir)")
    parser.add_argument(
        "--locale-dir", default=DEFAULT_LOCALE_DIR, help="where the <lang>/LC_MESSAGES/*.mo catalogs are"
    )
    parser.add_argument("--out", help="output directory for {train,valid,test}.{en,LANG}")
    parser.add_argument(
        "--tokenize",
        default=None,
        metavar="LANG",
        help="instead: tokenize stdin (text in language LANG) to stdout, placeholders and C++ kept whole",
    )
    parser.add_argument(
        "--no-protect",
        action="store_true",
        help="with --tokenize: plain sacremoses, placeholders split (for comparison)",
    )
    parser.add_argument(
        "--detokenize",
        default=None,
        metavar="LANG",
        help="instead: detokenize stdin (tokens of language LANG) to stdout",
    )
    parser.add_argument("--min-words", type=int, default=2, help="shortest English message kept (words)")
    parser.add_argument("--max-words", type=int, default=80, help="longest English message kept (words)")
    parser.add_argument("--min-pairs", type=int, default=1000, help="fail if fewer pairs than this are found")
    args = parser.parse_args(argv)
    if args.tokenize or args.detokenize:
        run = tokenizer(args.tokenize, not args.no_protect) if args.tokenize else detokenizer(args.detokenize)
        for line in sys.stdin:
            sys.stdout.write(run(line.rstrip("\n")) + "\n")
        return 0
    if not args.out:
        parser.error("--out is required")

    paths = catalog_paths(args.lang, args.locale_dir)
    if not paths:
        print(
            f"fconv-ext-gettext-corpus: error: no gettext catalogs for language {args.lang!r} under "
            f"{os.path.join(args.locale_dir, args.lang, 'LC_MESSAGES')}. Install translated packages "
            "(or language packs), pick another --lang (see ls /usr/share/locale), or use a downloadable "
            "recipe from examples/ (IWSLT'14, WMT).",
            file=sys.stderr,
        )
        return 2
    pairs = build_pairs(paths, args.min_words, args.max_words)
    if len(pairs) < args.min_pairs:
        print(
            f"fconv-ext-gettext-corpus: error: only {len(pairs)} sentence pairs in {len(paths)} catalogs for "
            f"{args.lang!r} (need --min-pairs {args.min_pairs}); too few to train on. Use a downloadable recipe "
            "from examples/ instead.",
            file=sys.stderr,
        )
        return 2
    counts = write_corpus(pairs, args.out, args.lang)
    print(
        f"gettext corpus en-{args.lang}: {len(paths)} catalogs, {len(pairs)} pairs "
        f"(train {counts['train']}, valid {counts['valid']}, test {counts['test']}) -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
