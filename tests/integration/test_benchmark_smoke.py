"""The benchmark harness (benchmarks/bench*.py): ``bench.py --smoke`` end to end: every side runs, the
sides that decode the same model give the same hypotheses and BLEU, times and ratios are positive and
finite.  No speed claims.  The FLOP model and the report on small inputs: tests/unit/test_benchmark_harness.py."""

import json
import math
import os
import subprocess
import sys

import pytest

from helpers import REPO

GENERATION_SIDES = {
    "fconv": "SequenceGenerator",
    "fconv_ext": "FConvBeamSearch",
    "fconv_ext_seqgen": "SequenceGenerator",
    "fconv_ext_bf16": "FConvBeamSearch",
}
FP32_SIDES = ("fconv", "fconv_ext", "fconv_ext_seqgen")  # the same model in float32: same hypotheses, BLEU


@pytest.mark.slow
def test_benchmark_smoke(tmp_path, shared_gettext):
    out = tmp_path / "smoke"
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "benchmarks", "bench.py"), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_smoke_report(json.loads((tmp_path / "smoke.json").read_text()), (tmp_path / "smoke.md").read_text())


def assert_smoke_report(report, text, test_sentences=40):
    """What --smoke's OUT.json and OUT.md must show (``test_sentences``: the smoke data's test set)."""
    assert report["complete"] and report["matmul_gflops"] > 0
    assert set(report["generation"]) == {"beam5_batch64", "beam1_batch64", "beam5_batch1"}
    for config, entry in report["generation"].items():
        sides = {name: side for name, side in entry.items() if isinstance(side, dict)}
        assert {name: side["generator"] for name, side in sides.items()} == GENERATION_SIDES, config
        # the same model decoded three ways: same hypotheses and BLEU; and hypotheses worth comparing
        assert entry["identical_hypotheses"] and entry["identical_hypotheses_seqgen"], config
        fconv = sides["fconv"]
        assert fconv["sentences"] == (10 if config == "beam5_batch1" else test_sentences)
        assert fconv["tokens"] >= 3 * fconv["sentences"] and fconv["distinct_hypotheses"] >= fconv["sentences"] // 2
        for name in FP32_SIDES:
            assert sides[name]["sentences"] == fconv["sentences"] and sides[name]["bleu"] == fconv["bleu"], (
                config,
                name,
            )
            assert sides[name]["detok_bleu"] == fconv["detok_bleu"] and 0 < fconv["detok_bleu"] <= 100, (config, name)
            # the FLOP model recognised the model (fconv's and fconv_ext's layouts both)
            assert 0 < sides[name]["efficiency"] < math.inf, (config, name)
        assert sides["fconv_ext_bf16"]["efficiency"] is None  # not float32: no FLOP floor claimed
        bf16 = sides["fconv_ext_bf16"]  # not exact, but close: about as long, about as good
        assert abs(bf16["tokens"] / fconv["tokens"] - 1) <= 0.2 and abs(bf16["bleu"] - fconv["bleu"]) <= 2, config
        for name, side in sides.items():
            for key in ("seconds", "ratio_sentences_per_s", "peak_rss_mb"):
                assert 0 < side[key] and math.isfinite(side[key]), (config, name, key)
        assert 0 < entry["fconv_ext"]["ratio_vs_fconv_ext_seqgen"] < math.inf
    training = report["training"]["checkpoint"]
    for name in ("fconv", "fconv_ext"):
        assert 0 < training[name]["words_per_s"] < math.inf and 0 < training[name]["efficiency"] < math.inf, name
        assert len(training[name]["first_losses"]) == 3 and all(
            math.isfinite(x) for x in training[name]["first_losses"]
        )
    assert "| beam5_batch64 | fconv_ext_seqgen | SequenceGenerator |" in text
    assert "What FConvBeamSearch buys" in text
