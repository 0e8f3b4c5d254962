"""fconv-ext-convert on an extracted published archive (fconv_plugin/convert/archive.py): fairseq-generate
and the hub interface translate with the converted directory as fairseq does with the original."""

import pytest

from helpers import BIN, REPO, hypotheses, run
from fconv_plugin import hub
from fconv_plugin.models import FConvExtModel


@pytest.mark.slow
def test_cli_converts_an_extracted_archive_for_fairseq_generate_and_the_hub(wmt_archive, tmp_path):
    from fairseq.models.fconv import FConvModel

    _, extracted = wmt_archive
    out = tmp_path / "converted"
    log = run([f"{BIN}/fconv-ext-convert", str(extracted), str(out)])
    assert "model.pt" in log and hub.is_converted_directory(str(out))
    for lang, text in [
        ("en", "the house is small\nHello world !\na big cat\n"),
        ("fr", "la maison est petite\nBonjour le monde !\nun grand chat\n"),
    ]:
        (tmp_path / f"test.{lang}").write_text(text)
    run(
        [
            f"{BIN}/fairseq-preprocess",
            "--source-lang",
            "en",
            "--target-lang",
            "fr",
            "--srcdict",
            str(out / "dict.en.txt"),
            "--tgtdict",
            str(out / "dict.fr.txt"),
            "--testpref",
            str(tmp_path / "test"),
            "--destdir",
            str(tmp_path / "bin"),
            "--workers",
            "1",
        ]
    )
    common = [str(tmp_path / "bin"), "--beam", "5", "--batch-size", "1", "--user-dir", "fconv_plugin"]
    ours = hypotheses(run([f"{BIN}/fairseq-generate", *common, "--path", str(out / "model.pt")], cwd=REPO))
    theirs = hypotheses(run([f"{BIN}/fairseq-generate", *common, "--path", str(extracted / "model.pt")], cwd=REPO))
    assert len(ours) == 3 and {k: v[0] for k, v in ours.items()} == {k: v[0] for k, v in theirs.items()}
    for k in ours:
        assert ours[k][1] == pytest.approx(theirs[k][1], abs=1e-3)

    hub_ = FConvExtModel.from_pretrained(str(out), tokenizer="moses", bpe="subword_nmt")
    reference = FConvModel.from_pretrained(str(extracted), tokenizer="moses", bpe="subword_nmt")
    assert hub_.translate("the house is small", beam=5) == reference.translate("the house is small", beam=5)
