"""Summarization: the apt-index corpus builder, the Gigaword/DUC recipe (offline, on fake
archives laid out like the real ones), ROUGE scoring and the lead baseline.  The end-to-end run with
validation ROUGE: tests/integration/test_summarization_cli.py."""

import gzip
import json
import os
import zipfile

import lz4.frame
import pytest

from helpers import DEBIAN_DESCRIPTIONS, needs_debian_descriptions
from fconv_plugin import rouge
from fconv_plugin.data import apt_corpus, prepare_summarization


# Two stanzas of a Translation-en index as apt stores it (continuation lines start with a
# space, " ." separates paragraphs), plus a duplicate long description and a too-short one.
STANZAS = """Package: 2geom
Description-md5: 1
Description-en: robust computational geometry framework -- shared library
 2Geom is a C++ 2D geometry library geared towards robust processing of
 computational geometry data associated with vector graphics.
 .
 This package contains the   shared library.

Package: 2geom-dev
Description-md5: 2
Description-en: robust computational geometry framework -- development library
 2Geom is a C++ 2D geometry library geared towards robust processing of
 computational geometry data associated with vector graphics.
 .
 This package contains the development files.

Package: twin
Description-md5: 3
Description-en: an identical long description is kept once
 2Geom is a C++ 2D geometry library geared towards robust processing of
 computational geometry data associated with vector graphics.
 .
 This package contains the   shared library.

Package: tiny
Description-md5: 4
Description-en: too short to summarize
 Just five words here.
"""


def test_apt_index_parsed_folded_deduplicated(tmp_path):
    lists = tmp_path / "lists"
    lists.mkdir()
    first, second = STANZAS.split("\n\nPackage: twin")
    with lz4.frame.open(lists / "deb.debian.org_debian_dists_bookworm_main_i18n_Translation-en.lz4", "wb") as f:
        f.write(first.encode())
    with gzip.open(
        lists / "security.debian.org_debian-security_dists_bookworm-security_main_i18n_Translation-en.gz", "wb"
    ) as f:
        f.write(("Package: twin" + second).encode())
    (lists / "deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages").write_text("Package: x\n")
    indexes = apt_corpus.find_translation_indexes(str(lists))
    assert [os.path.basename(p) for p in indexes] == [
        "deb.debian.org_debian_dists_bookworm_main_i18n_Translation-en.lz4",
        "security.debian.org_debian-security_dists_bookworm-security_main_i18n_Translation-en.gz",
    ]

    corpus = apt_corpus.build_corpus(apt_corpus.read_index(p) for p in indexes)
    pairs = [pair for split in apt_corpus.SPLITS for pair in corpus[split]]
    assert sorted(short for _, short in pairs) == [
        "robust computational geometry framework -- development library",
        "robust computational geometry framework -- shared library",
    ]  # twin (duplicate) and tiny dropped
    shared = dict((short, long) for long, short in pairs)["robust computational geometry framework -- shared library"]
    assert shared == (
        "2Geom is a C++ 2D geometry library geared towards robust processing of computational "
        "geometry data associated with vector graphics. This package contains the shared library."
    )
    # same first 8 words -> same split, so sibling packages never straddle train and test
    assert len({apt_corpus.split_of(long) for long, _ in pairs}) == 1

    out = tmp_path / "corpus"
    assert apt_corpus.main([str(out), "--lists-dir", str(lists)]) == 0
    written = sum(len((out / f"{s}.short").read_text().splitlines()) for s in apt_corpus.SPLITS)
    assert written == 2


@needs_debian_descriptions
def test_split_rule_reproduces_the_fixed_corpus():
    """The hash split of the builder puts every line of ../shared/data/debian-descriptions in
    the split it is in: the recipe makes the same kind of corpus, not a look-alike."""
    for split in apt_corpus.SPLITS:
        with open(os.path.join(DEBIAN_DESCRIPTIONS, f"{split}.long"), encoding="utf-8") as f:
            wrong = [i for i, line in enumerate(f) if apt_corpus.split_of(line) != split]
        assert wrong == [], f"{len(wrong)} lines of {split}.long hash to another split"


def test_missing_apt_index_says_how_to_fetch_it(tmp_path, capsys):
    assert apt_corpus.main([str(tmp_path / "out"), "--lists-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no Translation-en index" in err and "apt-get -o Acquire::Languages=en update" in err
    assert not (tmp_path / "out").exists()


def test_rouge_matches_rouge_score_and_lead_baseline(tmp_path, capsys):
    from rouge_score import rouge_scorer

    hyps = ["the cats are sitting on the mat", "library for geometry", ""]
    refs = ["a cat sat on the mat", "robust geometry library", "python bindings"]
    scores = rouge.corpus_rouge(hyps, [[r] for r in refs])
    direct = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    for t in rouge.ROUGE_TYPES:
        expected = 100 * sum(direct.score(r, h)[t].fmeasure for h, r in zip(hyps, refs)) / 3
        assert scores[t]["fmeasure"] == pytest.approx(expected)
    # stemming: "cats"/"cat" and "sitting"/"sat" -> rouge1 counts cat, on, the, mat
    assert scores["rouge1"]["fmeasure"] > 0

    assert (
        rouge.lead("one two three four five six seven eight nine ten", 8) == "one two three four five six seven eight"
    )
    (tmp_path / "src").write_text("robust geometry library for C++ and more words here\nnothing\n")
    (tmp_path / "ref").write_text("robust geometry library\nsomething else\n")
    assert rouge.main(["--ref", str(tmp_path / "ref"), "--lead-of", str(tmp_path / "src"), "--json"]) == 0
    lead_scores = json.loads(capsys.readouterr().out)
    assert lead_scores["rouge1"]["recall"] == pytest.approx(50.0)  # 3/3 then 0/2 reference words

    (tmp_path / "short").write_text("one line only\n")
    assert rouge.main(["--ref", str(tmp_path / "ref"), "--hyp", str(tmp_path / "short")]) == 2
    assert "aligned by line" in capsys.readouterr().err


def test_rouge_multi_reference_and_75_bytes():
    refs = ["police arrest suspect", "suspect held by police in city"]
    one = rouge.corpus_rouge(["police hold suspect"], [refs[:1]])["rouge1"]["recall"]
    best = rouge.corpus_rouge(["police hold suspect"], [refs])["rouge1"]["recall"]
    assert best >= one
    assert rouge.truncate_bytes("é" * 40, 75) == "é" * 37  # cut on a character boundary
    assert len(rouge.truncate_bytes("a" * 100, 75)) == 75


def _fake_gigaword(archive_dir):
    articles = [
        "australia 's current account deficit shrunk by a record #.## billion dollars",
        "at least two people were killed in a suicide bomb attack",
    ]
    titles = ["australian current account deficit narrows sharply", "at least two dead in southern philippines blast"]
    os.makedirs(archive_dir)
    with zipfile.ZipFile(os.path.join(archive_dir, "org_data.zip"), "w") as z:
        for name, n in (("train", 6), ("dev", 4), ("test", 2)):
            unk = "UNK" if name == "test" else "<unk>"
            z.writestr(f"org_data/{name}.src.txt", "\n".join(f"{articles[i % 2]} {unk}" for i in range(n)) + "\n")
            z.writestr(f"org_data/{name}.tgt.txt", "\n".join(titles[i % 2] for i in range(n)) + "\n")


def test_gigaword_recipe_on_a_fake_archive(tmp_path):
    _fake_gigaword(str(tmp_path / "orig"))
    out = tmp_path / "giga"
    assert (
        prepare_summarization.main(
            ["gigaword", "--out", str(out), "--archives", str(tmp_path / "orig"), "--valid-size", "3"]
        )
        == 0
    )
    assert len((out / "train.long").read_text().splitlines()) == 6
    assert len((out / "valid.short").read_text().splitlines()) == 3
    train = (out / "train.long").read_text()
    assert "<unk>" not in train and "UNK" in train
    assert (out / "test.long").read_text().splitlines()[0].endswith("#.## billion dollars UNK")


def test_duc2004_recipe_and_missing_data(tmp_path, capsys):
    duc = tmp_path / "DUC2004"
    duc.mkdir()
    (duc / "input.txt").write_text("first article sentence\nsecond article sentence\n")
    for k in range(4):
        (duc / f"task1_ref{k}.txt").write_text(f"headline one ref {k}\nheadline two ref {k}\n")
    out = tmp_path / "duc"
    assert prepare_summarization.main(["duc2004", "--out", str(out), "--duc-dir", str(duc)]) == 0
    assert (out / "test.short.3").read_text().splitlines()[1] == "headline two ref 3"
    assert prepare_summarization.main(["duc2004", "--out", str(out), "--duc-dir", str(tmp_path / "nope")]) == 2
    assert "licensed by NIST" in capsys.readouterr().err


def test_summarization_preset_is_the_papers_model():
    import argparse

    from fairseq.models import ARCH_CONFIG_REGISTRY

    args = argparse.Namespace()
    ARCH_CONFIG_REGISTRY["fconv_ext_summarization"](args)
    assert args.encoder_layers == args.decoder_layers == "[(256, 3)] * 6"
    assert args.encoder_embed_dim == args.decoder_embed_dim == args.decoder_out_embed_dim == 256
