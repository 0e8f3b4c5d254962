"""The fixtures of the end-to-end tests; they reach the tests by name, built with tests/helpers.py's
functions (no test module imports another).

The expensive ones (a prepared corpus slice, a training run) are session-scoped and only read by the tests,
so each runs once however the tests are selected.  They run fairseq's own command-line tools on a slice of
the real gettext corpus."""

import os
import sys

import pytest

from helpers import BIN, N_TEST, REPO, SHARED_DATA, SHORT_TRAINING, binarized_slice, generate, run


@pytest.fixture(scope="session")
def shared_gettext():
    """The gettext-en-de corpus beside the repository (raw train/valid/test .en/.de); skips without it."""
    path = os.path.join(SHARED_DATA, "gettext-en-de")
    if not os.path.isfile(os.path.join(path, "train.en")):
        pytest.skip("../shared/data/gettext-en-de is not beside the repository")
    return path


@pytest.fixture(scope="session")
def data_bin(shared_gettext, tmp_path_factory):
    """fairseq-preprocess'd slice of the gettext corpus (1500 / 60 / N_TEST sentences), prepared the usual
    way in small: sacremoses tokenization, a joint 500-merge subword-nmt BPE (its codes: ``data_bin.parent
    / "codes"``), a joined dictionary.  Once per session; tests only read it."""
    from sacremoses import MosesTokenizer

    def moses(lang):
        tok = MosesTokenizer(lang=lang)
        return lambda line: tok.tokenize(line, return_str=True, escape=False)

    return binarized_slice(shared_gettext, tmp_path_factory.mktemp("gettext"), moses)


@pytest.fixture(scope="session")
def fconv_ext_tiny_run(data_bin, tmp_path_factory):
    """The save directory of fconv_ext_tiny trained for 2 epochs by fairseq-train, run from the repository
    root with the relative ``--user-dir fconv_plugin`` the README shows, task fconv_translation, validation
    BLEU choosing ``checkpoint_best.pt``; fairseq-train's output is in its ``train.log``.  Once per session;
    tests only read it."""
    save = tmp_path_factory.mktemp("fconv_ext_tiny")
    log = run(
        [
            f"{BIN}/fairseq-train",
            str(data_bin),
            "--user-dir",
            "fconv_plugin",
            "--arch",
            "fconv_ext_tiny",
            "--task",
            "fconv_translation",
            "--eval-bleu-detok",
            "space",
            "--eval-bleu-args",
            '{"beam": 1}',
            "--best-checkpoint-metric",
            "bleu",
            "--maximize-best-checkpoint-metric",
            "--save-dir",
            str(save),
            *SHORT_TRAINING,
        ],
        cwd=REPO,
    )
    (save / "train.log").write_text(log)
    return save


@pytest.fixture(scope="session")
def fconv_ext_tiny_generated(data_bin, fconv_ext_tiny_run, tmp_path_factory):
    """fairseq-generate's output (--print-alignment) for fconv_ext_tiny_run's best checkpoint."""
    return generate(
        data_bin,
        fconv_ext_tiny_run / "checkpoint_best.pt",
        "--print-alignment",
        cwd=tmp_path_factory.mktemp("generate"),
    )


@pytest.fixture(scope="session")
def fconv_ext_tiny_hub(data_bin, fconv_ext_tiny_run):
    """fairseq's hub interface on fconv_ext_tiny_run's best checkpoint, raw text in and out (moses, BPE)."""
    from fconv_plugin.models import FConvExtModel

    return FConvExtModel.from_pretrained(
        str(fconv_ext_tiny_run),
        checkpoint_file="checkpoint_best.pt",
        data_name_or_path=str(data_bin),
        source_lang="en",
        target_lang="de",
        bpe="subword_nmt",
        bpe_codes=str(data_bin.parent / "codes"),
        tokenizer="moses",
    )


@pytest.fixture(scope="session")
def slice_shortlist(data_bin, tmp_path_factory):
    """(file, output) of fconv-ext-shortlist (``python -m fconv_plugin.cli.shortlist``) run on data_bin's 1500
    training sentences: best 5 translations per source word, 50 frequent words, a fifth of eflomal's
    automatic iterations (seconds instead of ~20 s; the same coverage on this slice), and its --coverage
    table for the test split (one batch of all 37 sentences)."""
    out = tmp_path_factory.mktemp("shortlist") / "shortlist.npz"
    log = run(
        [
            sys.executable,
            "-m",
            "fconv_plugin.cli.shortlist",
            str(data_bin),
            "--source-lang",
            "en",
            "--target-lang",
            "de",
            "--out",
            str(out),
            "--n-best",
            "5",
            "--n-frequent",
            "50",
            "--aligner-options",
            '{"rel_iterations": 0.2}',
            "--coverage",
            "test",
            "--coverage-n-best",
            "5",
            "--coverage-n-frequent",
            "50",
            "--coverage-batch-size",
            str(N_TEST),
        ],
        cwd=REPO,
    )
    return out, log


@pytest.fixture(scope="session")
def protected_tiny(shared_gettext, tmp_path_factory):
    """(save dir, data-bin, BPE codes) of fconv_ext_tiny trained on data_bin's slice tokenized the demo's way
    (gettext_corpus.tokenizer: ``%s`` one token), 6 epochs of Adam: ~25 s.  data_bin's model cannot serve
    there: it was trained on plain Moses tokens, so its dictionary has no ``%s`` (``%@@`` is unknown) and it
    writes ``%`` and ``s`` apart whatever the tokenizer."""
    from fconv_plugin.data import gettext_corpus

    def protected(lang):
        tokenize = gettext_corpus.tokenizer(lang)
        return lambda line: tokenize(line.rstrip("\n"))

    root = tmp_path_factory.mktemp("gettext_protected")
    data = binarized_slice(shared_gettext, root, protected)
    save = root / "checkpoints"
    run(
        [
            f"{BIN}/fairseq-train",
            str(data),
            "--user-dir",
            "fconv_plugin",
            "--arch",
            "fconv_ext_tiny",
            "--task",
            "fconv_translation",
            "--disable-validation",
            "--save-dir",
            str(save),
            "--optimizer",
            "adam",
            "--lr",
            "0.005",
            "--max-tokens",
            "3000",
            "--max-epoch",
            "6",
            "--no-progress-bar",
            "--seed",
            "1",
            "--no-epoch-checkpoints",
        ],
        cwd=REPO,
    )
    return save, data, root / "codes"
