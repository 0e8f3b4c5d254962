"""The fixtures that tests/unit and tests/integration share (those of the end-to-end tests alone are in
tests/integration/conftest.py); they reach the tests by name, built with tests/helpers.py's functions (no test
module imports another)."""

import pytest

from helpers import (
    BPECODES,
    dict_bytes,
    mini_fconv_ext_for_search,
    old_fconv_state,
    save_checkpoint,
    save_old,
    words_dictionary,
    write_tar,
)


# --------------------------------------------------------------------------- an exported model


@pytest.fixture(scope="module")
def search_model():
    """MINI_FCONV_EXT with strongly perturbed weights and a likely EOS (hypotheses of many lengths)."""
    model, src_dict, tgt_dict = mini_fconv_ext_for_search(24, seed=4, eos_bias=1.5)
    return model.eval(), src_dict, tgt_dict


@pytest.fixture(scope="module")
def onnx_export(search_model, tmp_path_factory):
    """(checkpoint, OUTDIR) of search_model exported to ONNX once for the module."""
    from fconv_plugin.serving.export import export

    root = tmp_path_factory.mktemp("onnx_export")
    checkpoint = save_checkpoint(root / "ckpt", *search_model)
    out = root / "out"
    export(str(checkpoint), str(out), "onnx")
    return checkpoint, out


# --------------------------------------------------------------------------- a published model archive


@pytest.fixture(scope="module")
def wmt_archive(tmp_path_factory):
    """(archive path, extracted directory) of a conv.wmt14.en-fr-like archive."""
    root = tmp_path_factory.mktemp("wmt")
    src, tgt = words_dictionary(), words_dictionary(extra=3)
    save_old(old_fconv_state(src, tgt), root / "model.pt")
    files = {
        "model.pt": (root / "model.pt").read_bytes(),
        "dict.en.txt": dict_bytes(src),
        "dict.fr.txt": dict_bytes(tgt),
        "bpecodes": BPECODES,
    }
    path = root / "wmt14.v2.en-fr.fconv-py.tar.bz2"
    write_tar(path, "wmt14.en-fr.fconv-py", files)
    extracted = root / "extracted"
    extracted.mkdir()
    for name, data in files.items():
        (extracted / name).write_bytes(data)
    return path, extracted
