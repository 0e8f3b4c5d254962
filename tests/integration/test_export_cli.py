"""fconv-ext-export and fconv-ext-translate end to end: the ONNX export of fconv_ext_tiny trained by
fairseq-train translates like fairseq-generate; the AOTInductor export (gcc compiles it) equals the eager
modules and the ONNX export."""

import math
import subprocess

import numpy as np
import pytest
import torch

from helpers import BIN, N_TEST, REPO, hypotheses
from fconv_plugin.serving.export import export, load_model, quantize_aoti, sample_inputs, serving_modules
from fconv_runtime import Translator


@pytest.mark.slow
def test_exported_tiny_model_translates_like_fairseq_generate(
    data_bin, fconv_ext_tiny_run, fconv_ext_tiny_generated, tmp_path
):
    """fconv-ext-export + fconv-ext-translate on fconv_ext_tiny trained by fairseq-train: the hypotheses of
    the BPE'd test split are fairseq-generate's (beam 5)."""
    out = tmp_path / "onnx"
    subprocess.run(
        [
            f"{BIN}/fconv-ext-export",
            str(fconv_ext_tiny_run / "checkpoint_best.pt"),
            str(out),
            "--format",
            "onnx",
            "--data",
            str(data_bin),
        ],
        check=True,
        capture_output=True,
        cwd=REPO,
    )
    source = (data_bin.parent / "test.en").read_text(encoding="utf-8")
    proc = subprocess.run(
        [f"{BIN}/fconv-ext-translate", str(out), "--beam", "5", "--batch-size", "16"],
        input=source,
        capture_output=True,
        text=True,
        check=True,
    )
    got = proc.stdout.splitlines()
    expected = hypotheses(fconv_ext_tiny_generated)
    assert len(got) == N_TEST == len(expected)
    same = sum(got[i] == expected[i][0] for i in range(N_TEST))
    print(f"identical hypotheses: {same} of {N_TEST}")
    assert same >= 0.99 * N_TEST
    # fairseq-generate prints scores in base 2
    scores = [hyps[0].score / math.log(2) for hyps in Translator(str(out)).translate_nbest(source.splitlines())]
    np.testing.assert_allclose(scores, [expected[i][1] for i in range(N_TEST)], atol=2e-4)


@pytest.mark.slow
def test_aoti_export_equals_onnx_runtime(search_model, onnx_export, tmp_path):
    """The one AOTInductor export of the suite (gcc compiles it): its graphs equal the eager modules and
    its translations equal the ONNX export's."""
    out = tmp_path / "aoti"
    export(str(onnx_export[0]), str(out), "aoti")
    model, _, _, _ = load_model(str(onnx_export[0]))
    encoder, step = serving_modules(model)
    from torch._inductor import aoti_load_package

    step_package = aoti_load_package(str(out / "step.pt2"))
    for sentences, beams, source in [(1, 1, 3), (5, 4, 12)]:
        _, step_inputs = sample_inputs(encoder, step, sentences, beams, source, seed=beams)
        with torch.no_grad():
            expected = step(*step_inputs)
            got = step_package(*step_inputs)
        for e, g in zip(expected, got):
            torch.testing.assert_close(g, e, atol=1e-5, rtol=0)

    _, src_dict, _ = search_model
    words = [src_dict[i] for i in range(src_dict.nspecial, len(src_dict))]
    lines = [" ".join(words[i : i + 3 + i % 5]) for i in range(15)]
    got = Translator(str(out)).translate_nbest(lines, beam=4, nbest=2)
    expected = Translator(str(onnx_export[1])).translate_nbest(lines, beam=4, nbest=2)
    assert [[h.tokens for h in hyps] for hyps in got] == [[h.tokens for h in hyps] for hyps in expected]
    np.testing.assert_allclose(
        [h.score for hyps in got for h in hyps], [h.score for hyps in expected for h in hyps], atol=1e-5
    )


@pytest.mark.slow
def test_aoti_int8_export_equals_the_eager_int8_modules(onnx_export, tmp_path):
    """--format aoti --int8: the int8 modules (Int8Linear: plain aten around torch._int_mm) compile into the
    package; its step gives the eager int8 step's tokens, and scores within 0.05 (inductor's fused
    quantization may round an activation to the neighbouring int8 value)."""
    out = tmp_path / "aoti_int8"
    export(str(onnx_export[0]), str(out), "aoti", int8=True)
    model, _, _, _ = load_model(str(onnx_export[0]))
    encoder, step = serving_modules(model)
    quantize_aoti(encoder, step)
    from torch._inductor import aoti_load_package

    step_package = aoti_load_package(str(out / "step.pt2"))
    for sentences, beams, source in [(1, 1, 3), (5, 4, 12)]:
        _, step_inputs = sample_inputs(encoder, step, sentences, beams, source, seed=beams)
        with torch.no_grad():
            expected = step(*step_inputs)
            got = step_package(*step_inputs)
        assert torch.equal(got[0], expected[0])  # the chosen tokens
        for e, g in zip(expected[1:], got[1:]):
            torch.testing.assert_close(g.float(), e.float(), atol=0.05, rtol=0)
    lines = ["a b c", "d e f g"]
    assert len(Translator(str(out)).translate(lines, beam=4)) == 2
