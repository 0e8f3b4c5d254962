"""fconv_ext_lm (fconv_plugin/models/fconv_ext_lm.py) through fairseq's CLIs on a slice of the Debian
descriptions: fairseq-train, fairseq-eval-lm and LM generation; a fairseq fconv_lm checkpoint converted by
fconv-ext-convert evaluates and generates the same."""

import math
import os
import re

import pytest
import torch

from helpers import BIN, DEBIAN_DESCRIPTIONS, REPO, hypotheses
from helpers import run as run_tool


TRAIN = [
    "--task",
    "language_modeling",
    "--tokens-per-sample",
    "64",
    "--sample-break-mode",
    "none",
    "--optimizer",
    "adam",
    "--lr",
    "0.002",
    "--max-tokens",
    "1024",
    "--max-update",
    "40",
    "--no-progress-bar",
    "--seed",
    "1",
    "--no-epoch-checkpoints",
]
ADAPTIVE = ["--criterion", "adaptive_loss", "--ddp-backend", "legacy_ddp", "--adaptive-softmax-cutoff", "50,150"]


def run(cmd):
    """run_tool from the repository root (``--user-dir fconv_plugin`` is relative)."""
    return run_tool(cmd, cwd=REPO)


def perplexity(output):
    match = re.search(r"Loss \(base 2\): ([\d.]+), Perplexity: ([\d.]+|inf|nan)", output)
    assert match, output[-2000:]
    return float(match.group(2))


@pytest.fixture(scope="module")
def lm_data(tmp_path_factory):
    src = DEBIAN_DESCRIPTIONS
    if not os.path.isfile(os.path.join(src, "train.short")):
        pytest.skip("../shared/data/debian-descriptions is not beside the repository")
    root = tmp_path_factory.mktemp("lm")
    with open(os.path.join(src, "train.short"), encoding="utf-8") as f:
        train = [line for i, line in enumerate(f, 1) if i % 50 == 0][:800]  # spread over the file
    for split, lines in [("train", train)] + [(s, None) for s in ("valid", "test")]:
        if lines is None:
            with open(os.path.join(src, f"{split}.short"), encoding="utf-8") as f:
                lines = [next(f) for _ in range(40 if split == "valid" else 20)]
        (root / f"{split}.txt").write_text("".join(lines), encoding="utf-8")
    run(
        [
            f"{BIN}/fairseq-preprocess",
            "--only-source",
            "--trainpref",
            str(root / "train.txt"),
            "--validpref",
            str(root / "valid.txt"),
            "--testpref",
            str(root / "test.txt"),
            "--destdir",
            str(root / "bin"),
            "--thresholdsrc",
            "2",
            "--workers",
            "1",
        ]
    )
    return root / "bin"


def valid_losses(log):
    return [float(m) for m in re.findall(r"valid on 'valid' subset \| loss ([\d.]+)", log)]


def generate_lm(data, checkpoint):
    """LM generation continuing 3-token prefixes of the test blocks.  Greedy: fairseq's
    beam search with --prefix-size and beam > 1 fails its own max-length assertion
    (-inf hypotheses never finish), for fconv_lm too."""
    out = run(
        [
            f"{BIN}/fairseq-generate",
            str(data),
            "--task",
            "language_modeling",
            "--user-dir",
            "fconv_plugin",
            "--path",
            str(checkpoint),
            "--gen-subset",
            "test",
            "--sample-break-mode",
            "none",
            "--tokens-per-sample",
            "16",
            "--prefix-size",
            "3",
            "--beam",
            "1",
            "--max-len-b",
            "12",
            "--batch-size",
            "8",
        ]
    )
    return {i: (score, text) for i, (text, score) in hypotheses(out).items()}


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra",
    [["--criterion", "cross_entropy"], ADAPTIVE + ["--decoder-learned-pos"]],
    ids=["full-softmax", "adaptive-softmax+positions"],
)
def test_train_eval_lm_and_generate(lm_data, tmp_path, extra):
    save = tmp_path / "ckpt"
    log = run(
        [
            f"{BIN}/fairseq-train",
            str(lm_data),
            "--user-dir",
            "fconv_plugin",
            "--arch",
            "fconv_ext_lm_tiny",
            *TRAIN,
            *extra,
            "--save-dir",
            str(save),
        ]
    )
    assert "FConvExtLanguageModel" in log
    assert ("AdaptiveSoftmax(" in log) == ("adaptive_loss" in extra)
    losses = valid_losses(log)
    assert len(losses) >= 5 and min(losses[1:]) < losses[0]  # it learns

    vocab = sum(1 for _ in open(lm_data / "dict.txt", encoding="utf-8")) + 4
    out = run(
        [
            f"{BIN}/fairseq-eval-lm",
            str(lm_data),
            "--user-dir",
            "fconv_plugin",
            "--path",
            str(save / "checkpoint_best.pt"),
            "--tokens-per-sample",
            "64",
            "--max-tokens",
            "1024",
            "--gen-subset",
            "test",
        ]
    )
    ppl = perplexity(out)
    print(f"{extra}: test perplexity {ppl}, valid losses {losses}")
    assert math.isfinite(ppl) and 1 < ppl < vocab  # better than a uniform guess

    hyps = generate_lm(lm_data, save / "checkpoint_best.pt")
    assert len(hyps) == 10  # 154 test tokens in blocks of 16: every block continued
    assert all(math.isfinite(score) for score, _ in hyps.values())
    assert any(text.strip() for _, text in hyps.values())


@pytest.mark.slow
def test_fairseq_fconv_lm_checkpoint_converted_evaluates_the_same(lm_data, tmp_path):
    """fairseq-train --arch fconv_lm (adaptive softmax), fconv-ext-convert, then
    fairseq-eval-lm and LM generation give the same numbers for both checkpoints."""
    save = tmp_path / "fconv_lm"
    # --user-dir: the plugin's batching keeps the 4 valid blocks that fairseq's would drop
    run(
        [
            f"{BIN}/fairseq-train",
            str(lm_data),
            "--user-dir",
            "fconv_plugin",
            "--arch",
            "fconv_lm",
            "--decoder-embed-dim",
            "32",
            "--decoder-layers",
            "[(32, 4)] + [(16, 1, 0), (16, 4, 0), (32, 1, 3)]",
            *TRAIN,
            *ADAPTIVE,
            "--max-update",
            "15",
            "--save-dir",
            str(save),
        ]
    )
    converted = tmp_path / "converted.pt"
    out = run([f"{BIN}/fconv-ext-convert", str(save / "checkpoint_best.pt"), str(converted)])
    assert "wrote" in out
    assert torch.load(converted, weights_only=False)["cfg"]["model"]["_name"] == "fconv_ext_lm"

    results = []
    for checkpoint in (save / "checkpoint_best.pt", converted):
        out = run(
            [
                f"{BIN}/fairseq-eval-lm",
                str(lm_data),
                "--user-dir",
                "fconv_plugin",
                "--path",
                str(checkpoint),
                "--tokens-per-sample",
                "64",
                "--max-tokens",
                "1024",
                "--gen-subset",
                "test",
            ]
        )
        results.append((perplexity(out), generate_lm(lm_data, checkpoint)))
    (ppl_ref, hyps_ref), (ppl_ext, hyps_ext) = results
    assert math.isfinite(ppl_ref) and abs(ppl_ref - ppl_ext) <= 1e-3 * ppl_ref
    assert sorted(hyps_ref) == sorted(hyps_ext) and len(hyps_ref) == 10
    for i in hyps_ref:
        assert hyps_ref[i][1] == hyps_ext[i][1]
        assert abs(hyps_ref[i][0] - hyps_ext[i][0]) < 1e-3
