"""The user_dir template: a variant registered from outside the package wires its gate through the config
(fairseq-train and fairseq-generate with it: tests/integration/test_user_dir_cli.py)."""

import sys

import torch

from helpers import REPO, make_dictionary


def test_gate_is_wired_through_the_config():
    sys.path.insert(0, REPO)
    from omegaconf import OmegaConf

    from user_dir.gated_conv import FConvGatedConfig, FConvGatedModel, gtu

    class Task:
        source_dictionary = target_dictionary = make_dictionary(20)

    base = {
        "encoder_layers": "[(8, 3)]",
        "decoder_layers": "[(8, 3)]",
        "encoder_embed_dim": 8,
        "decoder_embed_dim": 8,
        "decoder_out_embed_dim": 8,
        "max_source_positions": 16,
        "max_target_positions": 16,
    }
    outputs = {}
    for gate in ("glu", "gtu"):
        torch.manual_seed(0)
        cfg = OmegaConf.merge(OmegaConf.structured(FConvGatedConfig), {**base, "gate": gate})
        model = FConvGatedModel.build_model(cfg, Task()).eval()
        src = torch.tensor([[5, 6, 7, 2]])
        outputs[gate] = model(src, None, torch.tensor([[2, 8, 9]]))[0]
    assert model.encoder.stack.gate is gtu and model.decoder.stack.gate is gtu
    assert not torch.allclose(outputs["glu"], outputs["gtu"])  # same weights, other gate
