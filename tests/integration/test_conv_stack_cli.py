"""Dilated convolutions (fconv_plugin/modules/conv_stack.py) through fairseq's command-line tools."""

import re

import pytest
import torch

from helpers import BIN, N_TEST, REPO, hypotheses, run


@pytest.mark.slow
def test_fairseq_train_and_generate_with_dilated_layers(data_bin, tmp_path):
    """A dilated spec end to end: fairseq-train takes it from the command line, the loss falls,
    the checkpoint keeps the spec, and fairseq-generate decodes every test sentence."""
    spec = "[(32, 3, 1, 1), (32, 3, 1, 2), (32, 3, 1, 4)]"
    save = tmp_path / "dilated"
    log = run(
        [
            f"{BIN}/fairseq-train",
            str(data_bin),
            "--user-dir",
            "fconv_plugin",
            "--arch",
            "fconv_ext_tiny",
            "--encoder-layers",
            spec,
            "--decoder-layers",
            spec,
            "--optimizer",
            "adam",
            "--lr",
            "0.003",
            "--max-tokens",
            "3000",
            "--max-epoch",
            "2",
            "--no-progress-bar",
            "--log-interval",
            "1",
            "--seed",
            "1",
            "--save-dir",
            str(save),
            "--no-epoch-checkpoints",
        ],
        cwd=REPO,
    )
    losses = [float(m) for m in re.findall(r"\| train \| epoch \d+ \| loss ([\d.]+)", log)]
    assert len(losses) == 2 and losses[1] < losses[0] - 0.5, losses
    state = torch.load(save / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    assert state["cfg"]["model"]["decoder_layers"] == spec
    out = run(
        [
            f"{BIN}/fairseq-generate",
            str(data_bin),
            "--user-dir",
            "fconv_plugin",
            "--path",
            str(save / "checkpoint_last.pt"),
            "--beam",
            "3",
            "--batch-size",
            "16",
        ],
        cwd=REPO,
    )
    assert sorted(hypotheses(out)) == list(range(N_TEST))
