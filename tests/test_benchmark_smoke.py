"""The benchmark harness in smoke mode (CI): both sides run, hypotheses identical; no speed claims."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, SHARED_DATA

pytestmark = pytest.mark.slow


def test_benchmark_smoke(tmp_path):
    if not os.path.isdir(os.path.join(SHARED_DATA, "gettext-en-de")):
        pytest.skip("../shared/data/gettext-en-de is not beside the repository")
    out = tmp_path / "smoke"
    proc = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "bench.py"), "--smoke", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "smoke.json").read_text())
    assert set(report["generation"]) == {"beam5_batch64", "beam1_batch64", "beam5_batch1"}
    for name, entry in report["generation"].items():
        assert entry["identical_hypotheses"], name
        assert entry["fconv"]["sentences"] == entry["fconv_ext"]["sentences"] > 0
    assert report["training"]["checkpoint"]["fconv_ext"]["words_per_s"] > 0
    assert report["generation"]["beam5_batch64"]["fconv_ext"]["generator"] == "FConvBeamSearch"
    assert report["generation"]["beam5_batch64"]["fconv"]["generator"] == "SequenceGenerator"
    assert report["generation"]["beam5_batch64"]["fconv_ext_bf16"]["bleu"] >= 0
    assert "| beam5_batch64 |" in (tmp_path / "smoke.md").read_text()
