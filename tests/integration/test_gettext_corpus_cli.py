"""--tokenizer moses_protected (fconv_plugin/data/tokenizer.py) in a model trained by fairseq-train on the
gettext slice tokenized the corpus's way: the hub interface and fairseq-interactive keep placeholders whole."""

import pytest

from helpers import BIN, MESSAGES_DE, USER_DIR, run


def _hub(protected_tiny, tokenizer):
    from fconv_plugin.models import FConvExtModel

    save, data, codes = protected_tiny
    return FConvExtModel.from_pretrained(
        str(save),
        checkpoint_file="checkpoint_last.pt",
        data_name_or_path=str(data),
        source_lang="en",
        target_lang="de",
        tokenizer=tokenizer,
        bpe="subword_nmt",
        bpe_codes=str(codes),
    )


@pytest.mark.slow
def test_hub_keeps_placeholders_whole_with_moses_protected(protected_tiny):
    hub, plain = _hub(protected_tiny, "moses_protected"), _hub(protected_tiny, "moses")
    assert (hub.tokenizer.cfg.source_lang, hub.tokenizer.cfg.target_lang) == ("en", "de")  # the task's languages
    # on the way in: %s is one token, one dictionary entry (not <unk>); fairseq's moses gives % and s
    assert hub.tokenize("Cannot open file %s").split()[-1] == "%s"
    ids = hub.encode("Cannot open file %s").tolist()
    assert ids[-2] == hub.src_dict.index("%s") != hub.src_dict.unk() and ids[-1] == hub.src_dict.eos()
    assert plain.tokenize("Cannot open file %s").split()[-2:] == ["%", "s"]
    # on the way out: whatever ids the model writes come back as the text (quotes closed up)
    for text in MESSAGES_DE:
        assert hub.src_dict.unk() not in hub.encode(text).tolist()
        assert hub.decode(hub.encode(text)) == text
    assert plain.decode(plain.encode(MESSAGES_DE[0])) == "Datei »% s « kann nicht geöffnet werden"
    # translations of raw text: placeholders whole (this tiny model writes little else)
    sources = ["Cannot open file %s", "%s: invalid option -- '%c'", "Could not read %s: %s"]
    for out in hub.translate(sources, beam=5):
        assert "%s" in out and "% s" not in out and "» " not in out and " «" not in out, out


@pytest.mark.slow
def test_fairseq_interactive_with_moses_protected(protected_tiny):
    save, data, codes = protected_tiny
    sources = ["Cannot open file %s", "Invalid value %1$s for {0} in C++", "Could not read %s: %s"]
    out = run(
        [
            f"{BIN}/fairseq-interactive",
            str(data),
            "--user-dir",
            USER_DIR,
            "--path",
            str(save / "checkpoint_last.pt"),
            "--source-lang",
            "en",
            "--target-lang",
            "de",
            "--beam",
            "5",
            "--tokenizer",
            "moses_protected",
            "--bpe",
            "subword_nmt",
            "--bpe-codes",
            str(codes),
        ],
        stdin="\n".join(sources) + "\n",
    )
    detok = {int(line.split("\t")[0][2:]): line.split("\t")[2] for line in out.splitlines() if line.startswith("D-")}
    assert sorted(detok) == [0, 1, 2]
    for text in detok.values():
        assert "%s" in text and "% s" not in text, text
    # the same translations as the hub interface gives (same tokenizer, BPE, beam)
    assert [detok[i] for i in range(3)] == _hub(protected_tiny, "moses_protected").translate(sources, beam=5)
