"""The user_dir template through fairseq's tools: fairseq-train and fairseq-generate with
--user-dir user_dir train and decode its gated variant."""

import os
import re

import pytest

from helpers import BIN, N_TEST, REPO, hypotheses, run


@pytest.mark.slow
def test_train_and_generate_with_the_template(data_bin, tmp_path):
    save = tmp_path / "gated"
    log = run(
        [
            f"{BIN}/fairseq-train",
            str(data_bin),
            "--user-dir",
            os.path.join(REPO, "user_dir"),
            "--arch",
            "fconv_ext_gated_tiny",
            "--optimizer",
            "adam",
            "--lr",
            "0.002",
            "--max-tokens",
            "3000",
            "--max-epoch",
            "1",
            "--no-progress-bar",
            "--save-dir",
            str(save),
            "--no-epoch-checkpoints",
        ]
    )
    assert "FConvGatedModel" in log and re.search(r"'gate': '?gtu", log)
    out = run(
        [
            f"{BIN}/fairseq-generate",
            str(data_bin),
            "--user-dir",
            os.path.join(REPO, "user_dir"),
            "--path",
            str(save / "checkpoint_best.pt"),
            "--beam",
            "3",
            "--batch-size",
            "16",
        ]
    )
    assert sorted(hypotheses(out)) == list(range(N_TEST))
