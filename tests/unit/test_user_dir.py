"""The user_dir template: a variant registered from outside the package trains and generates."""

import os
import re
import sys

import pytest
import torch

from helpers import BIN, N_TEST, REPO, hypotheses, make_dictionary, run


def test_gate_is_wired_through_the_config():
    sys.path.insert(0, REPO)
    from omegaconf import OmegaConf

    from user_dir.gated_conv import FConvGatedConfig, FConvGatedModel, gtu

    class Task:
        source_dictionary = target_dictionary = make_dictionary(20)

    base = {"encoder_layers": "[(8, 3)]", "decoder_layers": "[(8, 3)]", "encoder_embed_dim": 8,
            "decoder_embed_dim": 8, "decoder_out_embed_dim": 8, "max_source_positions": 16, "max_target_positions": 16}
    outputs = {}
    for gate in ("glu", "gtu"):
        torch.manual_seed(0)
        cfg = OmegaConf.merge(OmegaConf.structured(FConvGatedConfig), {**base, "gate": gate})
        model = FConvGatedModel.build_model(cfg, Task()).eval()
        src = torch.tensor([[5, 6, 7, 2]])
        outputs[gate] = model(src, None, torch.tensor([[2, 8, 9]]))[0]
    assert model.encoder.stack.gate is gtu and model.decoder.stack.gate is gtu
    assert not torch.allclose(outputs["glu"], outputs["gtu"])  # same weights, other gate


@pytest.mark.slow
def test_train_and_generate_with_the_template(data_bin, tmp_path):
    save = tmp_path / "gated"
    log = run([f"{BIN}/fairseq-train", str(data_bin), "--user-dir", os.path.join(REPO, "user_dir"),
               "--arch", "fconv_ext_gated_tiny", "--optimizer", "adam", "--lr", "0.002", "--max-tokens", "3000",
               "--max-epoch", "1", "--no-progress-bar", "--save-dir", str(save), "--no-epoch-checkpoints"])
    assert "FConvGatedModel" in log and re.search(r"'gate': '?gtu", log)
    out = run([f"{BIN}/fairseq-generate", str(data_bin), "--user-dir", os.path.join(REPO, "user_dir"),
               "--path", str(save / "checkpoint_best.pt"), "--beam", "3", "--batch-size", "16"])
    assert sorted(hypotheses(out)) == list(range(N_TEST))
