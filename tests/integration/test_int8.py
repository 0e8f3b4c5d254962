"""The model option inference_dtype 'int8': FConvBeamSearch decodes with the decoder step and the
encoder quantized by torchao (fconv_plugin/serving/int8.py, unit-tested in test_serving_int8.py), the
model itself untouched; how close it stays to float32, and the CLIs."""

import re

import pytest
import torch
import torch.nn as nn

from helpers import generate, hypotheses, random_batch, small_fconv_ext as small_model
from fconv_plugin.serving.beam_search import FConvBeamSearch
from fconv_plugin.serving.compiled import decoder_step, source_encoder
from fconv_plugin.serving.int8 import is_quantized


def sample_for(src_dict, lengths=(7, 3, 9, 5, 2, 8)):
    return {
        "net_input": {
            "src_tokens": random_batch(src_dict, list(lengths), seed=3),
            "src_lengths": torch.tensor(lengths),
        },
        "id": torch.arange(len(lengths)),
    }


def test_int8_quantizes_the_step_and_the_encoder_not_the_model():
    model, _, _ = small_model(seed=3, inference_dtype="int8")
    model.make_generation_fast_(need_attn=False)
    linears = sum(type(m) is nn.Linear for m in model.modules())
    step, _ = decoder_step(model)
    encoder = source_encoder(model)
    # decoder: fc1, 4 convolutions, 2 projections, 3 x 2 attention, fc2, fc3; encoder: fc1, 3 convolutions,
    # 2 projections, fc2
    assert sum(is_quantized(m) for m in step.modules()) == 1 + 4 + 2 + 6 + 2
    assert sum(is_quantized(m) for m in encoder.modules()) == 1 + 3 + 2 + 1
    assert is_quantized(step.fc3)
    # the model keeps its float32 products: fairseq's generators and training see the exact model
    assert sum(type(m) is nn.Linear for m in model.modules()) == linears
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert decoder_step(model)[0] is step and source_encoder(model) is encoder  # built once per model


def test_int8_decoding_stays_close_to_float32():
    fp32, src_dict, tgt_dict = small_model(seed=11)
    int8, _, _ = small_model(seed=11, inference_dtype="int8")
    for model in (fp32, int8):
        model.make_generation_fast_(need_attn=False)
    sample = sample_for(src_dict)
    with torch.no_grad():
        want = FConvBeamSearch([fp32], tgt_dict, beam_size=4, max_len_b=10).generate([fp32], sample)
        got = FConvBeamSearch([int8], tgt_dict, beam_size=4, max_len_b=10).generate([int8], sample)
    scores = [(a[0]["score"] - b[0]["score"]).abs().item() for a, b in zip(got, want)]
    same = sum(a[0]["tokens"].tolist() == b[0]["tokens"].tolist() for a, b in zip(got, want))
    assert 0 < max(scores) < 0.1, scores  # int8 changes the numbers, slightly
    assert same >= 4, same


def test_unknown_dtypes_list_the_choices():
    with pytest.raises(ValueError, match=r"--inference-dtype 'int4': use one of \['bfloat16', 'float32', 'int8'\]"):
        small_model(inference_dtype="int4")


def test_int8_option_leaves_training_untouched_and_inference_cannot_train():
    model, src_dict, tgt_dict = small_model(seed=2, inference_dtype="int8")
    reference, _, _ = small_model(seed=2)
    src = random_batch(src_dict, [5, 4], seed=3)
    prev = random_batch(tgt_dict, [6, 6], seed=4, left_pad=False)
    model.train()
    reference.train()
    torch.manual_seed(9)
    loss = model.get_normalized_probs(model(src, None, prev), log_probs=True).sum()
    torch.manual_seed(9)
    expected = reference.get_normalized_probs(reference(src, None, prev), log_probs=True).sum()
    loss.backward()
    assert torch.equal(loss, expected)  # the option is only read when decoding
    model.eval().make_generation_fast_(need_attn=False)
    with pytest.raises(RuntimeError, match="cannot train"):
        model.train()


def _bleu(output: str) -> float:
    return float(re.search(r"BLEU4? = ([\d.]+)", output).group(1))


@pytest.mark.slow
def test_int8_decodes_from_generate_and_the_hub_close_to_float32(data_bin, fconv_ext_tiny_run, tmp_path):
    checkpoint = fconv_ext_tiny_run / "checkpoint_best.pt"
    fp32 = generate(data_bin, checkpoint, cwd=tmp_path)
    int8 = generate(data_bin, checkpoint, "--model-overrides", "{'model': {'inference_dtype': 'int8'}}", cwd=tmp_path)
    assert "quantized to int8" in int8 and "quantized" not in fp32
    expected, actual = hypotheses(fp32), hypotheses(int8)
    assert actual.keys() == expected.keys() and len(actual) == 37
    same = sum(actual[i][0] == expected[i][0] for i in expected) / len(expected)
    score_change = [abs(actual[i][1] - expected[i][1]) for i in expected]
    assert same >= 0.9, same
    assert 0 < max(score_change) < 0.1 and sum(score_change) / len(score_change) < 0.03, score_change
    assert abs(_bleu(int8) - _bleu(fp32)) <= 1.0, (_bleu(int8), _bleu(fp32))

    from fconv_plugin.models import FConvExtModel

    hub = FConvExtModel.from_pretrained(
        str(fconv_ext_tiny_run),
        checkpoint_file="checkpoint_best.pt",
        data_name_or_path=str(data_bin),
        source_lang="en",
        target_lang="de",
        inference_dtype="int8",
    )
    sentence = data_bin.parent.joinpath("test.en").read_text(encoding="utf-8").splitlines()[0]
    assert isinstance(hub.translate(sentence, beam=5), str) and hub.translate(sentence, beam=5)
    assert is_quantized(decoder_step(hub.models[0])[0].fc3)
