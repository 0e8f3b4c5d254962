"""Decoding with a vocabulary shortlist through fairseq's tools: fairseq-generate (model override and task
flag), fairseq-interactive and the hub interface, on fconv_ext_tiny trained by fairseq-train and the
shortlist fconv-ext-shortlist built from its training data."""

import pytest

from helpers import BIN, N_TEST, USER_DIR, generate, hypotheses, run


@pytest.mark.slow
def test_every_way_of_selecting_a_shortlist_decodes_with_it(
    data_bin, fconv_ext_tiny_run, fconv_ext_tiny_generated, slice_shortlist, tmp_path
):
    """fairseq-generate with the model override and with the task flag (same hypotheses, --print-alignment
    and --nbest included), fairseq-interactive and the hub interface, on the tiny trained model and the
    shortlist built from its training data."""
    from fconv_plugin.models import FConvExtModel

    shortlist, _ = slice_shortlist
    checkpoint = fconv_ext_tiny_run / "checkpoint_best.pt"
    override = generate(
        data_bin,
        checkpoint,
        "--print-alignment",
        "--nbest",
        "2",
        "--model-overrides",
        repr({"model": {"shortlist": str(shortlist)}}),
        cwd=tmp_path,
    )
    flag = generate(
        data_bin,
        checkpoint,
        "--print-alignment",
        "--nbest",
        "2",
        "--task",
        "fconv_translation",
        "--shortlist-file",
        str(shortlist),
        cwd=tmp_path,
    )
    for out in (override, flag):
        assert "vocabulary shortlist" in out and "decoding with FConvBeamSearch" in out
        assert sum(line.startswith("A-") for line in out.splitlines()) == 2 * N_TEST
    lines = lambda out: sorted(line for line in out.splitlines() if line[:2] in ("H-", "P-", "A-"))  # noqa: E731
    assert lines(override) == lines(flag)
    # the shortlist keeps the exact output here (measured: 37 of 37 first hypotheses identical)
    exact = hypotheses(fconv_ext_tiny_generated)
    first = {}
    for line in override.splitlines():  # with --nbest 2 the first H- line of a sentence is its best
        if line.startswith("H-"):
            ident, _, text = line.split("\t")
            first.setdefault(int(ident[2:]), text)
    same = sum(first[i] == exact[i][0] for i in exact)
    assert len(first) == N_TEST and same >= 0.9 * N_TEST, same

    source = (data_bin.parent / "test.en").read_text(encoding="utf-8").splitlines()[:3]  # BPE'd sentences
    interactive = run(
        [
            f"{BIN}/fairseq-interactive",
            str(data_bin),
            "--user-dir",
            USER_DIR,
            "--path",
            str(checkpoint),
            "--source-lang",
            "en",
            "--target-lang",
            "de",
            "--beam",
            "5",
            "--model-overrides",
            repr({"model": {"shortlist": str(shortlist)}}),
        ],
        stdin="\n".join(source) + "\n",
    )
    assert "vocabulary shortlist" in interactive
    assert sum(line.startswith("H-") for line in interactive.splitlines()) == len(source)

    hub = FConvExtModel.from_pretrained(
        str(fconv_ext_tiny_run),
        checkpoint_file="checkpoint_best.pt",
        data_name_or_path=str(data_bin),
        source_lang="en",
        target_lang="de",
        model={"shortlist": str(shortlist)},
    )
    assert hub.models[0].shortlist_path == str(shortlist)
    assert hub.translate("cannot open file") != ""
