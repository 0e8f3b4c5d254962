"""The demo's budget-sized schedule (fconv_plugin/cli/demo_plan.py): planning arithmetic, and a
1-minute budget run end to end with fairseq-train."""

import json
import os
import subprocess
import sys
import time

import pytest

from helpers import REPO

from fconv_plugin.cli import demo_plan

SCRIPT = os.path.join(REPO, "fconv_plugin", "cli", "demo_plan.py")


def line(n, wpb=3000.0, loss=9.5):
    stats = {
        "epoch": 1,
        "update": 0.1,
        "loss": str(loss),
        "wps": "1650",
        "wpb": str(wpb),
        "num_updates": str(n),
        "lr": "0.001",
    }
    return f"2026-12-01 15:00:00 | INFO | train_inner | {json.dumps(stats)}"


def test_parse_line_reads_fairseqs_json_progress():
    update = demo_plan.parse_line(line(7, wpb=3400.5, loss=8.25), now=12.0)
    assert (update.num_updates, update.time, update.words, update.loss, update.wps) == (7, 12.0, 3400.5, 8.25, 1650.0)
    assert demo_plan.parse_line("2026-12-01 | INFO | fairseq.trainer | begin training epoch 1", 1.0) is None
    epoch_summary = line(7).replace("| train_inner |", "| train |")
    assert demo_plan.parse_line(epoch_summary, 1.0) is None


def test_measure_leaves_out_the_first_updates():
    # updates 1-2 slow (start-up), then one every 2 s with 3,000 words: 0.5 updates/s, 1,500 words/s
    updates = [demo_plan.Update(1, 10.0, 3000.0), demo_plan.Update(2, 20.0, 3000.0)]
    updates += [demo_plan.Update(n, 20.0 + 2 * (n - 2), 3000.0) for n in range(3, 12)]
    ups, wps = demo_plan.measure(updates)
    assert ups == pytest.approx(0.5)
    assert wps == pytest.approx(1500.0)
    with pytest.raises(ValueError):
        demo_plan.measure(updates[:1])


def test_plan_fits_the_time_left():
    # 600 s left, 10 s to restart, 0.5 updates/s, 95%: floor(590 * 0.5 * 0.95) = 280 more
    assert demo_plan.plan_updates(20, 0.5, 600.0, 10.0) == 300
    # no time left: still one update, so the schedule's end is after the updates done
    assert demo_plan.plan_updates(20, 0.5, 5.0, 10.0) == 21


def test_replanning_continues_the_learning_rate_where_it_is():
    def fairseq_lr(lr, warmup, total, n):  # polynomial_decay, power 1, end 0, after the warm-up
        return lr * (total - n) / (total - warmup)

    # planned 330, at update 185 the machine turns out slower: 260 in all; and faster: 400
    for new_total in (260, 400):
        lr = demo_plan.decay_from(0.004, 40, 330, 185, new_total)
        assert fairseq_lr(lr, 40, new_total, 185) == pytest.approx(fairseq_lr(0.004, 40, 330, 185))
        assert fairseq_lr(lr, 40, new_total, new_total) == 0
    assert demo_plan.decay_from(0.004, 40, 330, 185, 330) == pytest.approx(0.004)


def test_lr_is_read_and_replaced_among_fairseqs_options():
    args = ["bin", "--arch", "a", "--lr", "0.004", "--dropout", "0.1"]
    assert demo_plan.lr_of(args) == 0.004
    assert demo_plan.with_lr(args, 0.0035) == ["bin", "--arch", "a", "--lr", "0.0035", "--dropout", "0.1"]
    assert demo_plan.lr_of(["--lr=0.5"]) == 0.5 and demo_plan.with_lr(["--lr=0.5"], 0.25) == ["--lr=0.25"]
    assert demo_plan.lr_of(["--lr", "0.1,0.01"]) is None  # one per epoch: no re-planning
    assert demo_plan.lr_of(["bin"]) is None


def test_options_the_plan_owns_are_refused(tmp_path, capsys):
    rc = demo_plan.main(
        [
            "train",
            "--minutes",
            "1",
            "--save-dir",
            str(tmp_path),
            "--log",
            str(tmp_path / "log"),
            "--plan",
            str(tmp_path / "plan.json"),
            "--",
            "data",
            "--max-update",
            "100",
        ]
    )
    assert rc == 2
    assert "--max-update" in capsys.readouterr().err
    assert not (tmp_path / "log").exists()


def test_summary_prints_bleu_updates_and_speed(tmp_path, capsys):
    plan = demo_plan.Plan(
        minutes=12,
        warmup=40,
        measured_updates=20,
        updates_per_second=0.49,
        words_per_second=1650.0,
        planned_updates=330,
        updates_done=330,
        train_seconds=715.0,
    )
    (tmp_path / "plan.json").write_text(json.dumps(demo_plan.asdict(plan)))
    (tmp_path / "bleu.json").write_text(json.dumps({"name": "BLEU", "score": 25.31, "signature": "nrefs:1"}))
    assert (
        demo_plan.main(
            [
                "summary",
                "--plan",
                str(tmp_path / "plan.json"),
                "--bleu",
                str(tmp_path / "bleu.json"),
                "--longer",
                "30.0 BLEU",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "BLEU 25.3" in out and "updates: 330 in 11.9 minutes" in out and "1,650 words/s" in out
    assert "DEMO_MINUTES=30 make demo" in out and "30.0 BLEU" in out


@pytest.mark.slow
def test_one_minute_budget_ends_on_time_with_the_learning_rate_decayed(data_bin, tmp_path):
    """fairseq-train three times (measure; resume with the planned schedule for half the time left; measure
    again, re-plan and resume to the end): the whole training stage ends
    within the minute (plus a little for what cannot be planned: a fairseq start-up slower than the first),
    with the planned updates done and the learning rate decayed to (nearly) 0 at the last one."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        SCRIPT,
        "train",
        "--minutes",
        "1",
        "--warmup",
        "8",
        "--measure-updates",
        "8",
        "--replan-minutes",
        "0.5",  # re-plan halfway, as budgets of 4 minutes and more do
        "--save-dir",
        str(tmp_path / "ck"),
        "--log",
        str(tmp_path / "train.log"),
        "--plan",
        str(tmp_path / "plan.json"),
        "--",
        str(data_bin),
        "--user-dir",
        os.path.join(REPO, "fconv_plugin"),
        "--arch",
        "fconv_ext_tiny",
        "--task",
        "fconv_translation",
        "--disable-validation",
        "--optimizer",
        "adam",
        "--lr",
        "0.004",
        "--max-tokens",
        "500",
        "--max-epoch",
        "1000",
        "--no-epoch-checkpoints",
        "--seed",
        "1",
    ]
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=300)
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert f"~{plan['first_planned_updates']} updates in 1 minute on this machine" in proc.stdout
    assert plan["planned_updates"] > plan["measured_updates"] >= 3
    assert plan["replanned_updates"] == plan["planned_updates"] and "re-planned at update" in proc.stdout
    assert plan["updates_done"] >= 0.9 * plan["planned_updates"]
    assert elapsed <= 60 + 15, f"a 1-minute budget took {elapsed:.0f} s"
    assert os.path.isfile(tmp_path / "ck" / "checkpoint_last.pt")
    # the learning rate of the last logged update: the decay reached (or nearly reached) its end, 0
    lrs = [
        float(json.loads(line.split("| train_inner | ", 1)[1])["lr"])
        for line in (tmp_path / "train.log").read_text().splitlines()
        if "| train_inner | " in line
    ]
    assert len(lrs) == plan["updates_done"]
    if plan["updates_done"] == plan["planned_updates"]:
        assert lrs[-1] == 0
    assert lrs[-1] <= 0.25 * max(lrs)
