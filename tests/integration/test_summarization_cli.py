"""Summarization end to end on a slice of the real debian-descriptions corpus: examples/summarization's
prepare.sh, fairseq-train with validation ROUGE choosing the best checkpoint, fairseq-generate with headline
bounds, fconv-ext-rouge."""

import json
import os
import re
import subprocess

import pytest

from helpers import BIN, DEBIAN_DESCRIPTIONS, REPO, needs_debian_descriptions


@pytest.mark.slow
@needs_debian_descriptions
def test_train_with_validation_rouge_and_score(tmp_path):
    """A slice of the real corpus through prepare.sh, fairseq-train with validation ROUGE as
    the best-checkpoint metric, fairseq-generate with headline bounds, fconv-ext-rouge."""
    raw = tmp_path / "raw"
    raw.mkdir()
    for split, n in (("train", 400), ("valid", 30), ("test", 30)):
        for side in ("long", "short"):
            with open(os.path.join(DEBIAN_DESCRIPTIONS, f"{split}.{side}"), encoding="utf-8") as f:
                lines = [" ".join(next(f).split()[:60]) for _ in range(n)]  # short sources: a fast test
            (raw / f"{split}.{side}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    env = dict(
        os.environ,
        PATH=BIN + os.pathsep + os.environ["PATH"],
        SUMM_BPE_MERGES="500",
        SUMM_THREADS="1",
        OMP_NUM_THREADS="1",
    )
    subprocess.run(
        ["bash", os.path.join(REPO, "examples/summarization/prepare.sh"), str(raw), str(tmp_path)],
        check=True,
        env=env,
        capture_output=True,
    )
    train = subprocess.run(
        [
            f"{BIN}/fairseq-train",
            str(tmp_path / "bin"),
            "--user-dir",
            "fconv_plugin",
            "--task",
            "fconv_translation",
            "--arch",
            "fconv_ext_tiny",
            "--no-eval-bleu",
            "--eval-rouge",
            "--eval-bleu-args",
            '{"beam": 1, "max_len_a": 0, "max_len_b": 12}',
            "--eval-bleu-detok-args",
            '{"target_lang": "en"}',
            "--best-checkpoint-metric",
            "rougeL",
            "--maximize-best-checkpoint-metric",
            "--optimizer",
            "adam",
            "--lr",
            "0.005",
            "--max-tokens",
            "3000",
            "--max-epoch",
            "3",
            "--required-batch-size-multiple",
            "1",
            "--save-dir",
            str(tmp_path / "ck"),
            "--no-epoch-checkpoints",
            "--log-format",
            "json",
            "--seed",
            "1",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    valid = [
        json.loads(line.split("|")[-1])
        for line in (train.stdout + train.stderr).splitlines()
        if '"valid_rougeL"' in line
    ]
    assert len(valid) == 3
    for stats in valid:
        for t in ("rouge1", "rouge2", "rougeL"):
            assert 0.0 <= float(stats[f"valid_{t}"]) <= 100.0
    assert float(valid[-1]["valid_best_rougeL"]) == max(float(s["valid_rougeL"]) for s in valid)

    gen = subprocess.run(
        [
            f"{BIN}/fairseq-generate",
            str(tmp_path / "bin"),
            "--user-dir",
            "fconv_plugin",
            "--path",
            str(tmp_path / "ck/checkpoint_best.pt"),
            "--beam",
            "5",
            "--max-len-a",
            "0",
            "--max-len-b",
            "12",
            "--batch-size",
            "16",
            "--remove-bpe",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    hyps = sorted((int(m.group(1)), m.group(2)) for m in re.finditer(r"^H-(\d+)\t\S+\t(.*)$", gen.stdout, re.M))
    assert len(hyps) == 30 and all(len(h.split()) <= 12 for _, h in hyps)
    (tmp_path / "test.hyp").write_text("\n".join(h for _, h in hyps) + "\n")
    scored = subprocess.run(
        [f"{BIN}/fconv-ext-rouge", "--ref", str(raw / "test.short"), "--hyp", str(tmp_path / "test.hyp")],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert re.search(r"rouge1 \d+\.\d\d / rouge2 \d+\.\d\d / rougeL \d+\.\d\d", scored.stdout)
