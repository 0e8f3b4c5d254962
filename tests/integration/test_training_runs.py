"""Training runs through fairseq's trainer: a run killed mid-epoch resumes to exactly the
uninterrupted result.  Data-parallel training (torchrun) is tested in test_torchrun.py."""

import os
import re
import signal
import subprocess
import time

import pytest
import torch

from helpers import BIN, USER_DIR, run

pytestmark = pytest.mark.slow
TINY = [
    "--arch",
    "fconv_ext_tiny",
    "--user-dir",
    USER_DIR,
    "--optimizer",
    "adam",
    "--lr",
    "0.001",
    "--max-tokens",
    "1000",
    "--no-progress-bar",
    "--log-interval",
    "1",
    "--seed",
    "3",
]


def weights(path):
    return torch.load(path, weights_only=True)["model"]


def assert_same_weights(a, b, atol):
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= atol, f"max |difference| {worst:.2e} > {atol}"


def losses_by_update(log):
    return {int(u): float(loss) for loss, u in re.findall(r"train_inner .*?loss=([\d.]+),.*?num_updates=(\d+)", log)}


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(data_bin, tmp_path):
    common = [
        str(data_bin),
        *TINY,
        "--criterion",
        "label_smoothed_cross_entropy",
        "--label-smoothing",
        "0.1",
        "--max-update",
        "30",
        "--save-interval-updates",
        "3",
        "--disable-validation",
        "--cpu",
    ]
    full = run([f"{BIN}/fairseq-train", *common, "--save-dir", str(tmp_path / "full")])

    save = tmp_path / "killed"
    cmd = [f"{BIN}/fairseq-train", *common, "--save-dir", str(save)]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ, OMP_NUM_THREADS="1")
    )  # same threads as run()
    deadline = time.time() + 300
    # kill once update 6 is saved: fairseq writes checkpoint_1_6.pt atomically, then copies it to
    # checkpoint_last.pt (not atomically; a kill during that copy damages checkpoint_last.pt, which
    # the resume would then refuse). Wait for the copy to be complete: newer than checkpoint_1_6.pt
    # and as long (the copy truncates first); the next save is 3 updates away.
    update_ckpt, last = save / "checkpoint_1_6.pt", save / "checkpoint_last.pt"

    def saved_at_6():
        try:
            return (
                last.stat().st_mtime >= update_ckpt.stat().st_mtime
                and last.stat().st_size == update_ckpt.stat().st_size
            )
        except FileNotFoundError:
            return False

    while not saved_at_6() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (save / "checkpoint_last.pt").exists() or weights(save / "checkpoint_last.pt")  # readable
    resumed = run(cmd)
    assert "Loaded checkpoint" in resumed and "@ 6 updates" in resumed  # it resumed mid-epoch
    assert_same_weights(weights(tmp_path / "full" / "checkpoint_last.pt"), weights(save / "checkpoint_last.pt"), atol=0)
    after = losses_by_update(resumed)
    assert after and all(losses_by_update(full)[u] == loss for u, loss in after.items())


def test_resume_from_an_epoch_checkpoint_equals_uninterrupted(data_bin, tmp_path):
    # fconv_translation makes the batches of every epoch the way an uninterrupted run does
    # (fairseq's translation task rebuilds them with another seed on resume: 2.4e-2 apart here)
    common = [
        str(data_bin),
        *TINY,
        "--task",
        "fconv_translation",
        "--no-eval-bleu",
        "--criterion",
        "label_smoothed_cross_entropy",
        "--label-smoothing",
        "0.1",
        "--disable-validation",
        "--cpu",
    ]
    run([f"{BIN}/fairseq-train", *common, "--max-epoch", "3", "--save-dir", str(tmp_path / "full")])
    run([f"{BIN}/fairseq-train", *common, "--max-epoch", "2", "--save-dir", str(tmp_path / "parts")])
    # a fresh directory holding only the epoch-2 checkpoint, resumed with --restore-file
    (tmp_path / "resumed").mkdir()
    resumed = run(
        [
            f"{BIN}/fairseq-train",
            *common,
            "--max-epoch",
            "3",
            "--save-dir",
            str(tmp_path / "resumed"),
            "--restore-file",
            str(tmp_path / "parts" / "checkpoint2.pt"),
        ]
    )
    assert "checkpoint2.pt (epoch 3 @" in resumed  # loaded the end of epoch 2, continues with epoch 3
    assert_same_weights(
        weights(tmp_path / "full" / "checkpoint3.pt"), weights(tmp_path / "resumed" / "checkpoint3.pt"), atol=0
    )
