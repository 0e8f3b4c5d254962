"""The download-and-prepare recipes, offline, on tiny fake archives laid out like the real ones."""

import io
import tarfile
import zipfile

import pytest

from fconv_plugin.data import prepare_translation as prep

EN = [
    "The house is small .",
    "I like green apples",
    "We went to the old market yesterday",
    "This is a test sentence",
    "Where is the train station ?",
    "He reads a book every week",
]
DE = [
    "Das Haus ist klein .",
    "Ich mag grüne Äpfel",
    "Wir gingen gestern zum alten Markt",
    "Das ist ein Testsatz",
    "Wo ist der Bahnhof ?",
    "Er liest jede Woche ein Buch",
]
RO = [
    "Casa este mică .",
    "Îmi plac merele verzi",
    "Am mers ieri la piața veche",
    "Aceasta este o propoziție de test",
    "Unde este gara ?",
    "El citește o carte în fiecare săptămână",
]


def add(tar, name, text):
    data = text.encode("utf-8")
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def sgm(lines, set_id="test"):
    segs = "\n".join(f'<seg id="{i + 1}">{line}</seg>' for i, line in enumerate(lines))
    return f'<srcset setid="{set_id}">\n<doc docid="d1">\n{segs}\n</doc>\n</srcset>\n'


def test_iwslt14_from_a_fake_archive(tmp_path):
    orig = tmp_path / "orig"
    orig.mkdir()
    train_de = "\n".join(
        ["<url>http://ted.com/x</url>", "<keywords>talks</keywords>", "<title>Ein Titel</title>"] + DE * 10
    )
    train_en = "\n".join(
        ["<url>http://ted.com/x</url>", "<keywords>talks</keywords>", "<title>A title</title>"] + EN * 10
    )
    with tarfile.open(orig / "de-en.tgz", "w:gz") as t:
        add(t, "de-en/train.tags.de-en.de", train_de + "\n")
        add(t, "de-en/train.tags.de-en.en", train_en + "\n")
        for name in ("TED.dev2010", "TEDX.dev2012", "TED.tst2010", "TED.tst2011", "TED.tst2012"):
            add(t, f"de-en/IWSLT14.{name}.de-en.de.xml", sgm(DE[:2]))
            add(t, f"de-en/IWSLT14.{name}.de-en.en.xml", sgm(EN[:2]))
    out = tmp_path / "out"
    assert prep.main(["iwslt14_de_en", "--out", str(out), "--archives", str(orig), "--bpe-merges", "50"]) == 0
    train = (out / "train.de").read_text(encoding="utf-8").splitlines()
    valid = (out / "valid.de").read_text(encoding="utf-8").splitlines()
    assert len(train) + len(valid) == 61 and len(valid) == 61 // 23  # every 23rd line is validation
    assert len((out / "test.en").read_text().splitlines()) == 10  # 5 test files x 2 segments
    assert all(line == line.lower() for line in train)  # the IWSLT recipe lowercases
    assert train[0].replace("@@ ", "") == "ein titel" and "<" not in "".join(train)  # tags stripped
    assert any("@@" in line for line in train)  # BPE applied
    assert (out / "code").read_text().startswith("#version")


def test_wmt16_en_ro_from_fake_archives(tmp_path):
    orig = tmp_path / "orig"
    orig.mkdir()
    with tarfile.open(orig / "training-parallel-ep-v8.tgz", "w:gz") as t:
        add(t, "training-parallel-ep-v8/europarl-v8.ro-en.en", "\n".join(EN * 5) + "\n")
        add(t, "training-parallel-ep-v8/europarl-v8.ro-en.ro", "\n".join(RO * 5) + "\n")
    with zipfile.ZipFile(orig / "SETIMES2.en-ro.txt.zip", "w") as z:
        z.writestr("SETIMES.en-ro.en", "\n".join(EN) + "\n")
        z.writestr("SETIMES.en-ro.ro", "\n".join(RO) + "\n")
    with tarfile.open(orig / "dev.tgz", "w:gz") as t:
        add(t, "dev/newsdev2016-enro-src.en.sgm", sgm(EN[:3]))
        add(t, "dev/newsdev2016-enro-ref.ro.sgm", sgm(RO[:3]))
    with tarfile.open(orig / "test.tgz", "w:gz") as t:
        add(t, "test/newstest2016-enro-src.en.sgm", sgm(EN[3:]))
        add(t, "test/newstest2016-enro-ref.ro.sgm", sgm(RO[3:]))
    counts = prep.prepare("wmt16_en_ro", str(tmp_path / "out"), str(orig), bpe_merges=40)
    # 36 training pairs; cleaning (length ratio <= 1.5 after BPE) may drop some, never dev/test
    assert counts["valid"] == 3 and counts["test"] == 3 and 24 <= counts["train"] <= 36
    for split, n in counts.items():
        for lang in ("en", "ro"):
            assert (tmp_path / "out" / f"{split}.{lang}").read_text(encoding="utf-8").count("\n") == n


def test_missing_file_and_failed_download_are_explained(tmp_path, capsys):
    orig = tmp_path / "orig"
    orig.mkdir()
    with tarfile.open(orig / "de-en.tgz", "w:gz") as t:
        add(t, "de-en/train.tags.de-en.de", "\n".join(DE) + "\n")  # the English side is missing
    with pytest.raises(prep.PrepareError, match="train.tags.de-en.en in the extracted archives"):
        prep.prepare("iwslt14_de_en", str(tmp_path / "out"), str(orig))
    # no network here: the download fails with a message saying where to put the file
    assert prep.main(["wmt14_en_de", "--out", str(tmp_path / "w"), "--archives", str(tmp_path / "none")]) == 2
    assert "put it at" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(prep.RECIPES))
def test_every_recipe_names_its_archives_and_files(name):
    recipe = prep.RECIPES[name]
    assert recipe.archives and recipe.train and recipe.test
    assert all(url.startswith("http") for url in recipe.archives.values())


FR = [
    "La maison est petite .",
    "J'aime les pommes vertes",
    "Nous sommes allés au vieux marché hier",
    "Ceci est une phrase de test",
    "Où est la gare ?",
    "Il lit un livre chaque semaine",
]


def _gz(text):
    import gzip

    return gzip.compress(text.encode("utf-8"))


def add_bytes(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize(
    "name,lang,other,layout",
    [
        (
            "wmt14_en_de",
            "de",
            DE,
            {
                "training-parallel-europarl-v7.tgz": ["training/europarl-v7.de-en"],
                "training-parallel-commoncrawl.tgz": ["commoncrawl.de-en"],
                "training-parallel-nc-v9.tgz": ["training/news-commentary-v9.de-en"],
            },
        ),
        (
            "wmt14_en_fr",
            "fr",
            FR,
            {
                "training-parallel-europarl-v7.tgz": ["training/europarl-v7.fr-en"],
                "training-parallel-commoncrawl.tgz": ["commoncrawl.fr-en"],
                "training-parallel-un.tgz": ["un/undoc.2000.fr-en"],
                "training-parallel-nc-v9.tgz": ["training/news-commentary-v9.fr-en"],
                "training-giga-fren.tar": ["giga-fren.release2.fixed"],  # gzipped members, as in the real tar
            },
        ),
    ],
)
def test_wmt14_from_fake_archives(tmp_path, name, lang, other, layout):
    orig = tmp_path / "orig"
    orig.mkdir()
    for archive, prefixes in layout.items():
        with tarfile.open(orig / archive, "w" if archive.endswith(".tar") else "w:gz") as t:
            for prefix in prefixes:
                for side, lines in (("en", EN), (lang, other)):
                    text = "\n".join(lines * 20) + "\n"
                    if archive.endswith(".tar"):
                        add_bytes(t, f"{prefix}.{side}.gz", _gz(text))
                    else:
                        add(t, f"{prefix}.{side}", text)
    pair = "deen" if lang == "de" else "fren"
    with tarfile.open(orig / "test-full.tgz", "w:gz") as t:
        add(t, f"test-full/newstest2014-{pair}-src.en.sgm", sgm(EN))
        add(t, f"test-full/newstest2014-{pair}-ref.{lang}.sgm", sgm(other))
    counts = prep.prepare(name, str(tmp_path / "out"), str(orig), bpe_merges=60)
    n_train = 120 * len(layout)
    assert counts["test"] == 6
    assert counts["valid"] <= n_train // 100 and 0 < counts["train"] <= n_train - n_train // 100
    assert (tmp_path / "out" / f"test.{lang}").read_text(encoding="utf-8").count("\n") == 6
