"""make demo-risk's pieces that run without training: the fine-tuning wrapper's refusals and log
parsing (examples/gettext/risk_train.py), and --lenpen rescoring of fairseq-generate's n-best
(examples/gettext/lenpen_rerank.py)."""

import importlib.util
import json
import os

import pytest

from helpers import REPO


def load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "examples", "gettext", name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_risk_train_refuses_options_it_sets_and_a_missing_checkpoint(tmp_path, capsys):
    risk_train = load("risk_train")
    common = [
        "--updates",
        "5",
        "--save-dir",
        str(tmp_path / "ck"),
        "--log",
        str(tmp_path / "log"),
        "--record",
        str(tmp_path / "r.json"),
    ]
    ck = tmp_path / "checkpoint_last.pt"
    ck.write_bytes(b"")
    assert risk_train.main(common + ["--restore", str(ck), "--", "data", "--max-update", "9"]) == 2
    assert "--max-update" in capsys.readouterr().err
    assert risk_train.main(common + ["--restore", str(tmp_path / "none.pt"), "--", "data"]) == 2
    assert "make demo" in capsys.readouterr().err


def test_stats_log_keeps_the_last_expected_bleu(tmp_path):
    log = load("risk_train").StatsLog(str(tmp_path / "train.log"))
    for n, bleu in ((1, "17.07"), (2, "22.72")):
        stats = {"loss": "2.5", "risk": "0.8", "expected_bleu": bleu, "wpb": "990", "num_updates": str(n)}
        log.write(f"2026-12-02 07:00:00 | INFO | train_inner | {json.dumps(stats)}\n")
    log.write("2026-12-02 07:00:01 | INFO | fairseq_cli.train | done training in 53.0 seconds\n")
    log.close()
    assert log.expected_bleu == pytest.approx(22.72)
    assert (tmp_path / "train.log").read_text().count("\n") == 3


def test_lenpen_rescoring_picks_what_fairseq_ranks_first(tmp_path):
    rerank = load("lenpen_rerank")
    # sentence 0: a short hypothesis (2 tokens with EOS, sum -2.0) and a long one (5 tokens, sum -3.5);
    # lenpen 1: -1.0 vs -0.7 (long wins); lenpen 0: -2.0 vs -3.5 (short wins)
    gen = tmp_path / "gen.log"
    gen.write_text(
        "S-0\tsrc\n"
        "H-0\t-1.0\tkurz\nD-0\t-1.0\tkurz\nP-0\t-1.0 -1.0\n"
        "H-0\t-0.7\tein langer Satz hier\nD-0\t-0.7\tein langer Satz hier\nP-0\t-0.5 -1.0 -1.0 -0.5 -0.5\n"
        "H-1\t-0.1\tja\nD-1\t-0.1\tja\nP-1\t-0.1 -0.1\n"
    )
    nbest = rerank.read_nbest(str(gen))
    assert sorted(nbest) == [0, 1] and len(nbest[0]) == 2
    assert rerank.choose(nbest, 1.0) == ["ein langer Satz hier", "ja"]
    assert rerank.choose(nbest, 0.0) == ["kurz", "ja"]
    scores = rerank.score(["ein langer Satz hier", "ja"], ["ein langer Satz hier", "ja"])
    assert scores["bleu"] == pytest.approx(100.0) and scores["ratio"] == pytest.approx(1.0)
