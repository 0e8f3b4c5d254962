"""fconv_ext_self_att (fconv_plugin/models/fconv_ext_self_att.py) through fairseq-train and
fairseq-generate, model fusion included."""

import pytest
import torch

from helpers import BIN, REPO
from helpers import run as run_tool


@pytest.mark.slow
def test_train_and_generate_tiny_preset(tmp_path):
    """fairseq-train --user-dir fconv_plugin --arch fconv_ext_self_att_tiny a few updates on a
    tiny binarized corpus, then fairseq-generate decodes every test sentence."""

    def run(*cmd):
        return run_tool(list(cmd), cwd=REPO)

    g = torch.Generator().manual_seed(0)
    words = [f"w{i}" for i in range(30)]
    for split, n in [("train", 200), ("valid", 20), ("test", 13)]:
        with open(tmp_path / f"{split}.src", "w") as fs, open(tmp_path / f"{split}.tgt", "w") as ft:
            for _ in range(n):
                ids = torch.randint(0, 30, (int(torch.randint(3, 9, (1,), generator=g)),), generator=g).tolist()
                fs.write(" ".join(words[i] for i in ids) + "\n")
                ft.write(" ".join(words[i] for i in reversed(ids)) + "\n")
    data = tmp_path / "bin"
    run(
        f"{BIN}/fairseq-preprocess",
        "--source-lang",
        "src",
        "--target-lang",
        "tgt",
        "--joined-dictionary",
        "--trainpref",
        str(tmp_path / "train"),
        "--validpref",
        str(tmp_path / "valid"),
        "--testpref",
        str(tmp_path / "test"),
        "--destdir",
        str(data),
        "--workers",
        "1",
    )
    save = tmp_path / "ck"
    log = run(
        f"{BIN}/fairseq-train",
        str(data),
        "--user-dir",
        "fconv_plugin",
        "--arch",
        "fconv_ext_self_att_tiny",
        "--optimizer",
        "adam",
        "--lr",
        "0.002",
        "--max-tokens",
        "800",
        "--max-update",
        "6",
        "--no-progress-bar",
        "--save-dir",
        str(save),
        "--no-epoch-checkpoints",
        "--seed",
        "1",
    )
    assert "FConvExtSelfAttModel" in log and (save / "checkpoint_last.pt").exists()
    out = run(
        f"{BIN}/fairseq-generate",
        str(data),
        "--user-dir",
        "fconv_plugin",
        "--path",
        str(save / "checkpoint_last.pt"),
        "--beam",
        "3",
        "--batch-size",
        "5",
        "--max-len-b",
        "12",
    )
    hyps = [line for line in out.splitlines() if line.startswith("H-")]
    assert len(hyps) == 13

    # model fusion with the model just trained (frozen), then generation from the fusion checkpoint
    fusion = tmp_path / "fusion"
    log = run(
        f"{BIN}/fairseq-train",
        str(data),
        "--user-dir",
        "fconv_plugin",
        "--arch",
        "fconv_ext_self_att_tiny",
        "--pretrained",
        "True",
        "--pretrained-checkpoint",
        str(save / "checkpoint_last.pt"),
        "--optimizer",
        "adam",
        "--lr",
        "0.002",
        "--max-tokens",
        "800",
        "--max-update",
        "3",
        "--no-progress-bar",
        "--save-dir",
        str(fusion),
        "--no-epoch-checkpoints",
        "--seed",
        "1",
    )
    assert "fusion: loading the pretrained model" in log
    state = torch.load(fusion / "checkpoint_last.pt", weights_only=True)
    pretrained = torch.load(save / "checkpoint_last.pt", weights_only=True)["model"]
    # the pretrained weights are frozen: unchanged inside the fusion checkpoint
    assert torch.equal(state["model"]["decoder.pretrained.fc2.bias"], pretrained["decoder.fc2.bias"])
    out = run(
        f"{BIN}/fairseq-generate",
        str(data),
        "--user-dir",
        "fconv_plugin",
        "--path",
        str(fusion / "checkpoint_last.pt"),
        "--beam",
        "3",
        "--batch-size",
        "5",
        "--max-len-b",
        "12",
    )
    assert len([line for line in out.splitlines() if line.startswith("H-")]) == 13
