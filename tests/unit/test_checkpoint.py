"""Checkpoint reading stays weights-only; bad files get clear errors; the converter
refuses what it cannot convert."""

import argparse
import os

import pytest
import torch

from helpers import build_twins, fconv_args
from fconv_plugin.checkpoint import CheckpointError, load_checkpoint_file
from fconv_plugin.convert import ConversionError, convert_checkpoint, main as convert_main


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_carrying_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "cfg": {"x": _RunsCode(str(marker))}}, path)
    with pytest.raises(CheckpointError, match="not plain data"):
        load_checkpoint_file(str(path))
    assert not marker.exists()
    # fairseq's own loader (what fairseq-generate uses) refuses it too with the plugin imported
    from fairseq import checkpoint_utils

    with pytest.raises(CheckpointError, match="not plain data"):
        checkpoint_utils.load_checkpoint_to_cpu(str(path))
    assert not marker.exists()


def test_truncated_and_missing_checkpoints_name_the_file(tmp_path):
    path = tmp_path / "ck.pt"
    torch.save({"model": {"w": torch.randn(1000)}}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="ck.pt.*truncated or corrupt"):
        load_checkpoint_file(str(path))
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint_file(str(tmp_path / "nope.pt"))


def test_fairseq_loader_names_a_damaged_checkpoint_last(tmp_path):
    """What fairseq-train's resume and fairseq-generate call: a damaged copy of
    checkpoint_last.pt gives a message naming it and the way out, not a zip traceback."""
    from fairseq import checkpoint_utils

    good = tmp_path / "checkpoint_1_6.pt"
    torch.save({"model": {"w": torch.randn(1000)}, "optimizer_history": [], "args": None, "cfg": None}, good)
    last = tmp_path / "checkpoint_last.pt"
    last.write_bytes(good.read_bytes()[:3000])  # a copy interrupted by a crash
    with pytest.raises(CheckpointError, match="checkpoint_last.pt.*truncated or corrupt.*--restore-file"):
        checkpoint_utils.load_checkpoint_to_cpu(str(last))
    assert load_checkpoint_file(str(good))["model"]["w"].shape == (1000,)


def test_fconv_checkpoint_with_namespace_loads_weights_only(tmp_path):
    """fairseq's fconv stores an argparse.Namespace (docs/upstream-problems.md, problem 2): readable with
    weights-only loading on, and convertible."""
    ref, _, _, _ = build_twins("fconv_iwslt_de_en")
    args = fconv_args("fconv_iwslt_de_en")
    path = tmp_path / "fconv.pt"
    torch.save({"args": None, "cfg": {"model": args}, "model": ref.state_dict(), "optimizer_history": []}, path)
    state = load_checkpoint_file(str(path))
    assert isinstance(state["cfg"]["model"], argparse.Namespace)
    out = tmp_path / "ext.pt"
    assert convert_main([str(path), str(out)]) == 0
    converted = torch.load(out, weights_only=True)  # no allow-listing needed for ours
    assert converted["cfg"]["model"]["_name"] == "fconv_ext"
    assert converted["cfg"]["model"]["max_source_positions"] == 1022  # fconv's real limit


def test_converter_refuses_other_models_and_code_in_specs(tmp_path, capsys):
    ref, _, _, _ = build_twins("fconv_iwslt_de_en")
    weights = ref.state_dict()
    with pytest.raises(ConversionError, match="arch is 'transformer'"):
        convert_checkpoint({"cfg": {"model": argparse.Namespace(arch="transformer")}, "model": weights})
    evil = fconv_args("fconv_iwslt_de_en")
    evil.encoder_layers = "__import__('os').system('touch %s')" % (tmp_path / "pwned")
    with pytest.raises(ConversionError, match="layer spec is not accepted"):
        convert_checkpoint({"cfg": {"model": evil}, "model": weights})
    assert not (tmp_path / "pwned").exists()
    mismatched = fconv_args("fconv_iwslt_de_en", encoder_layers="[(256, 3)] * 5")
    with pytest.raises(ConversionError, match="do not match"):
        convert_checkpoint({"cfg": {"model": mismatched}, "model": weights})
    # the CLI reports errors in one line and exits 2
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert convert_main([str(bad), str(tmp_path / "out.pt")]) == 2
    assert "fconv-ext-convert: error:" in capsys.readouterr().err


def test_fconv_ext_checkpoint_whose_config_carries_code_is_refused(tmp_path):
    """A crafted fconv_ext checkpoint: its layer spec is code. Loading it the way
    fairseq-generate does builds the model from the stored config, and the spec parser
    refuses it before anything runs."""
    from fairseq import checkpoint_utils
    from fconv_plugin.modules import LayerSpecError

    marker = tmp_path / "pwned"
    _, ext, src_dict, tgt_dict = build_twins("fconv_iwslt_de_en")
    converted = convert_checkpoint(
        {"cfg": {"model": fconv_args("fconv_iwslt_de_en")}, "model": build_twins("fconv_iwslt_de_en")[0].state_dict()}
    )
    converted["cfg"]["model"]["encoder_layers"] = f"__import__('os').system('touch {marker}')"
    converted["cfg"]["task"] = {"_name": "translation", "data": str(tmp_path)}
    src_dict.save(str(tmp_path / "dict.en.txt"))
    tgt_dict.save(str(tmp_path / "dict.de.txt"))
    converted["cfg"]["task"].update({"source_lang": "en", "target_lang": "de"})
    path = tmp_path / "evil_ext.pt"
    torch.save(converted, path)
    with pytest.raises(LayerSpecError, match="--encoder-layers"):
        checkpoint_utils.load_model_ensemble_and_task([str(path)])
    assert not marker.exists()


def test_reading_a_checkpoint_keeps_namespace_allowed_for_fairseq(tmp_path):
    """load_checkpoint_file must not take argparse.Namespace off torch's process-wide allow-list
    (torch's safe_globals context manager does on exit): fairseq's own loader, later in the same
    process (fairseq-generate after a conversion, the benchmark), still reads fconv checkpoints."""
    ref, _, _, _ = build_twins("fconv_iwslt_de_en")
    path = tmp_path / "fconv.pt"
    torch.save(
        {
            "args": None,
            "cfg": {"model": fconv_args("fconv_iwslt_de_en")},
            "model": ref.state_dict(),
            "optimizer_history": [],
        },
        path,
    )
    load_checkpoint_file(str(path))
    assert argparse.Namespace in torch.serialization.get_safe_globals()
    state = torch.load(path, weights_only=True)  # what fairseq's load_checkpoint_to_cpu calls
    assert isinstance(state["cfg"]["model"], argparse.Namespace)
