"""The benchmark harness's parts on small inputs: the FLOP model (benchmarks/bench_flops.py) and the report
(benchmarks/bench_report.py).  ``bench.py --smoke`` end to end: tests/integration/test_benchmark_smoke.py."""

import os
import sys

from helpers import REPO, build_twins

sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import bench_flops  # noqa: E402
import bench_report  # noqa: E402


def test_flop_model_counts_fconv_and_its_conversion_alike():
    ref, ext, _, _ = build_twins("fconv_iwslt_de_en")
    assert bench_flops.is_conv(ref) and bench_flops.is_conv(ext)
    assert bench_flops.conv_arch(ref) == bench_flops.conv_arch(ext)
    for n_src, n_tgt, src_len in [(70, 50, 10), (7, 0, 7), (0, 35, 7)]:
        counts = [bench_flops.forward_flops(model, n_src, n_tgt, src_len) for model in (ref, ext)]
        assert counts[0] == counts[1] > 0


def test_flop_model_by_hand():
    # E = 8, one conv layer of 4 channels (8 outputs: GLU), k = 3, attention, out_embed 6, V = 67
    ref, ext, _, tgt_dict = build_twins(
        "fconv",
        encoder_embed_dim=8,
        decoder_embed_dim=8,
        decoder_out_embed_dim=6,
        encoder_layers="[(4, 3)]",
        decoder_layers="[(4, 3)]",
    )
    V, S = len(tgt_dict), 5
    per_source_token = 2 * (8 * 4 + 3 * 4 * 8 + 4 * 8)  # fc1, conv, fc2
    per_target_token = 2 * (8 * 4 + 3 * 4 * 8 + 2 * 4 * 8 + 2 * 8 * S + 4 * 6 + 6 * V)  # ... attention, fc2, fc3
    for model in (ref, ext):
        assert bench_flops.forward_flops(model, 10, 0, S) == 10 * per_source_token
        assert bench_flops.forward_flops(model, 0, 3, S) == 3 * per_target_token


def _child_result(seconds, sha, sentences=4, bleu=20.0):
    return {
        "seconds": seconds,
        "sentences": sentences,
        "tokens": 5 * sentences,
        "distinct_hypotheses": sentences,
        "hyp_sha1": sha,
        "flops": 1e6,
        "peak_rss_mb": 100.0,
        "bleu": bleu,
        "generator": "G",
        "params": 10,
    }


def test_report_ratios_and_hypothesis_comparisons():
    runs = {
        "fconv": [_child_result(2.0, "a"), _child_result(4.0, "a")],
        "fconv_ext": [_child_result(1.0, "a")],
        "fconv_ext_seqgen": [_child_result(1.5, "b")],
    }
    entry = bench_report.summarize_generation(runs)
    assert entry["fconv"]["seconds"] == 3.0  # the median
    assert entry["fconv_ext"]["ratio_sentences_per_s"] == 3.0
    assert entry["fconv_ext"]["ratio_vs_fconv_ext_seqgen"] == 1.5
    assert entry["identical_hypotheses"] is True and entry["identical_hypotheses_seqgen"] is False
    assert "fconv_ext_fp16" not in entry and "identical_hypotheses_fp16" not in entry
    report = {
        "machine": {"cpu": "x", "cpus": 1, "torch": "t", "fairseq": "f"},
        "date": "d",
        "threads": 1,
        "reps": 2,
        "command": "c",
        "generation": {"beam5_batch64": entry},
        "training": {},
    }
    bench_report.add_efficiency(report, rate=1e6)
    assert entry["fconv"]["efficiency"] == 1 / 3.0
    text = bench_report.markdown(report)
    assert "| beam5_batch64 | fconv_ext_seqgen |" in text and "| beam5_batch64 | 1.50 | 1.00 | 1.50x | False |" in text


def test_report_opt_ins_against_fconv_ext_and_the_ensemble_pair():
    def result(seconds, hyps, bleu, detok_bleu):
        return dict(_child_result(seconds, str(hyps), sentences=len(hyps), bleu=bleu), detok_bleu=detok_bleu, hyps=hyps)

    exact = {"0": [4, 5, 2], "1": [6, 2], "2": [7, 7, 2], "3": [8, 2]}
    runs = {
        "fconv": [result(4.0, exact, 20.0, 22.0)],
        "fconv_ext": [result(2.0, exact, 20.0, 22.0)],
        # one sentence of four differs: 75% identical; BLEU -0.5 tokenized, -0.25 detokenized
        "fconv_ext_shortlist_int8": [result(0.5, dict(exact, **{"2": [7, 2]}), 19.5, 21.75)],
        "fconv_ext_ensemble2": [result(3.0, exact, 21.0, 23.0)],
        "fconv_ext_ensemble2_seqgen": [result(6.0, exact, 21.0, 23.0)],
    }
    entry = bench_report.summarize_generation(runs)
    opt_in = entry["fconv_ext_shortlist_int8"]
    assert opt_in["ratio_sentences_per_s"] == 8.0 and opt_in["ratio_vs_fconv_ext"] == 4.0
    assert opt_in["bleu_delta"] == -0.5 and opt_in["detok_bleu_delta"] == -0.25
    assert opt_in["share_identical_to_fconv_ext"] == 0.75 and opt_in["same_hypotheses_as_fconv_ext"] is False
    assert entry["identical_hypotheses_ensemble2"] is True
    assert entry["fconv_ext_ensemble2"]["ratio_vs_fconv_ext_ensemble2_seqgen"] == 2.0
    report = {
        "machine": {
            "cpu": "x",
            "cpus": 1,
            "torch": "t",
            "fairseq": "f",
            "cpu_flags": ["avx2"],
            "torch_cpu_capability": "AVX2",
            "isa_environment": {"ATEN_CPU_CAPABILITY": "avx2"},
        },
        "date": "d",
        "threads": 1,
        "reps": 1,
        "command": "c",
        "generation": {"beam5_batch64": entry},
        "training": {},
        "ensemble": ["a.pt", "b.pt"],
    }
    text = bench_report.markdown(report)
    assert (
        "| beam5_batch64 | fconv_ext_shortlist_int8 | 8.00x | 4.00x | 125.0 | 21.75 | -0.25 | -0.50 | 75.0% | 100 |"
        in text
    )
    assert "| beam5_batch64 | G | 3.00 | 6.00 | 2.00x | True | 23.00 | 100 |" in text
    assert "ISA-limiting environment: ATEN_CPU_CAPABILITY=avx2" in text and "Training:" not in text
