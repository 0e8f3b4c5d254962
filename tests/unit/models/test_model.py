"""fconv_ext on its own: cached decoding, padding, gradient scaling, positions."""

import math

import pytest
import torch
from fairseq.sequence_generator import SequenceGenerator

from helpers import (
    assert_padded_batch_equals_each_sentence_alone,
    make_dictionary,
    random_batch,
    small_fconv_ext as small_model,
    SMALL_FCONV_EXT as SMALL,
)
from fconv_plugin.models import build_model_from_config


def test_cached_decoding_equals_full_decoding():
    model, src_dict, tgt_dict = small_model()
    src = random_batch(src_dict, [8, 5, 2], seed=1)
    prev = random_batch(tgt_dict, [10, 10, 10], seed=2, left_pad=False)
    prev[:, 0] = tgt_dict.eos()
    with torch.no_grad():
        enc = model.encoder(src)
        full, full_attn = model.decoder(prev, enc)
        state, steps, attns = {}, [], []
        for t in range(prev.size(1)):
            out, attn = model.decoder(prev[:, : t + 1], enc, incremental_state=state)
            steps.append(out)
            attns.append(attn)
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)
    # the averaged attention (for --print-alignment) too; each row is a distribution
    assert torch.allclose(torch.cat(attns, 1), full_attn, atol=1e-6)
    assert torch.allclose(full_attn.sum(-1), torch.ones(3, 10), atol=1e-5)


def test_beams_share_the_encoder_output():
    """reorder_encoder_out keeps one encoder row per sentence while the beams of a sentence
    stay together (what beam search asks for), and falls back to one row per decoder row
    otherwise; either way the decoder sees exactly what a plain row-by-row copy gives."""
    model, src_dict, tgt_dict = small_model(seed=4)
    src = random_batch(src_dict, [7, 3, 5], seed=7)
    prev = random_batch(tgt_dict, [6] * 12, seed=8, left_pad=False)
    prev[:, 0] = tgt_dict.eos()

    def plain(enc, order):  # the row-by-row reference: every decoder row its own copy
        keys, values = enc["encoder_out"]
        mask = enc["encoder_padding_mask"]
        return {"encoder_out": (keys[order], values[order]), "encoder_padding_mask": mask[order]}

    with torch.no_grad():
        enc = model.encoder(src)
        expand = torch.arange(3).repeat_interleave(4)  # 3 sentences x beam 4
        shared = model.encoder.reorder_encoder_out(enc, expand)
        assert shared["beams"] == 4 and shared["encoder_out"][0].size(0) == 3  # nothing copied
        reference = plain(enc, expand)
        assert torch.allclose(model.decoder(prev, shared)[0], model.decoder(prev, reference)[0], atol=1e-6)

        # a beam-search step that drops sentence 1 and shuffles beams inside sentences 0 and 2
        step = torch.tensor([1, 0, 3, 3, 10, 8, 8, 9])
        shared2 = model.encoder.reorder_encoder_out(shared, step)
        assert shared2["beams"] == 4 and shared2["encoder_out"][0].size(0) == 2
        reference2 = plain(reference, step)
        assert torch.allclose(model.decoder(prev[:8], shared2)[0], model.decoder(prev[:8], reference2)[0], atol=1e-6)

        # an order that mixes sentences inside a group: one row per decoder row
        mixed = torch.tensor([0, 4, 8, 1, 5, 9, 2, 6])
        shared3 = model.encoder.reorder_encoder_out(shared, mixed)
        assert shared3["beams"] == 1 and shared3["encoder_out"][0].size(0) == 8
        reference3 = plain(reference, mixed)
        assert torch.allclose(model.decoder(prev[:8], shared3)[0], model.decoder(prev[:8], reference3)[0], atol=1e-6)


def test_padded_batch_equals_each_sentence_alone():
    assert_padded_batch_equals_each_sentence_alone(*small_model(seed=3))


def test_encoder_gradient_scaled_by_one_over_2n():
    """Gradient reaching the encoder output is the unscaled one times exactly 1/(2N)."""
    model, src_dict, tgt_dict = small_model(seed=4, dropout=0.0)
    model.train()
    n_attention = 3  # SMALL selects 3 of 4 decoder layers
    assert model.encoder.grad_scale == pytest.approx(1.0 / (2 * n_attention))
    src = random_batch(src_dict, [7, 7], seed=7)
    prev = random_batch(tgt_dict, [5, 5], seed=8, left_pad=False)

    def fc2_bias_grad(scale):
        model.zero_grad()
        model.encoder.grad_scale = scale
        out, _ = model(src, None, prev)
        out.logsumexp(-1).sum().backward()
        # fc2's output reaches the decoder only through the scaled path (keys and values)
        return model.encoder.fc2.bias.grad.clone()

    unscaled = fc2_bias_grad(1.0)
    scaled = fc2_bias_grad(1.0 / (2 * n_attention))
    assert unscaled.abs().max() > 0
    assert torch.allclose(scaled, unscaled / (2 * n_attention), rtol=1e-5, atol=1e-8)


def _beam(model, tgt_dict, src, beam):
    gen = SequenceGenerator([model], tgt_dict, beam_size=beam, max_len_b=10)
    sample = {"net_input": {"src_tokens": src, "src_lengths": src.ne(1).sum(1)}}
    with torch.no_grad():
        return [[h["tokens"].tolist() for h in hyps] for hyps in gen.forward(sample)]


def test_beam_size_changed_between_calls():
    """docs/upstream-problems.md, problem 5: fconv's BeamableMM keeps the load-time beam size; here any
    beam size, in any order, gives the hypotheses a fresh model gives."""
    model, src_dict, tgt_dict = small_model(seed=9)
    model.make_generation_fast_(beamable_mm_beam_size=5, need_attn=False)
    src = random_batch(src_dict, [6, 6, 4, 3], seed=10)
    first = {beam: _beam(model, tgt_dict, src, beam) for beam in (5, 2, 4, 1)}
    fresh, _, _ = small_model(seed=9)
    for beam in (1, 4, 2, 5):
        assert _beam(fresh, tgt_dict, src, beam) == first[beam]


def test_folded_inference_model_equals_training_model():
    model, src_dict, tgt_dict = small_model(seed=11)
    src = random_batch(src_dict, [5, 3], seed=12)
    prev = random_batch(tgt_dict, [4, 4], seed=13, left_pad=False)
    with torch.no_grad():
        before, _ = model(src, None, prev)
        model.make_generation_fast_(need_attn=False)
        after, _ = model(src, None, prev)
    assert torch.allclose(before, after, atol=1e-5)
    with pytest.raises(RuntimeError, match="cannot train"):
        model.train()


def test_bfloat16_inference_is_opt_in_and_close_to_float32():
    fp32, src_dict, tgt_dict = small_model(seed=11)
    bf16, _, _ = small_model(seed=11, inference_dtype="bfloat16")
    src = random_batch(src_dict, [7, 3, 5], seed=12)
    prev = random_batch(tgt_dict, [6, 6, 6], seed=13, left_pad=False)
    with torch.no_grad():
        fp32.make_generation_fast_(need_attn=False)
        bf16.make_generation_fast_(need_attn=False)
        assert {p.dtype for p in fp32.parameters()} == {torch.float32}
        assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
        expected = fp32.get_normalized_probs(fp32(src, None, prev), log_probs=True)
        actual = bf16.get_normalized_probs(bf16(src, None, prev), log_probs=True)
        # cached decoding in bfloat16 gives the full forward's log-probabilities
        state, cached = {}, []
        enc = bf16.encoder(src)
        for t in range(prev.size(1)):
            logits, _ = bf16.decoder(prev[:, : t + 1], enc, incremental_state=state)
            cached.append(bf16.get_normalized_probs((logits, None), log_probs=True))
    assert actual.dtype == torch.float32  # log-softmax in float32
    assert 0 < (actual - expected).abs().max() < 0.1  # not exact, but close
    assert (actual.argmax(-1) == expected.argmax(-1)).float().mean() > 0.9
    cached = torch.cat(cached, dim=1)  # the same computation up to bfloat16 rounding (one product vs per-tap sums)
    assert (cached - actual).abs().max() < 0.1
    assert (cached.argmax(-1) == actual.argmax(-1)).float().mean() > 0.9
    with pytest.raises(ValueError, match="inference-dtype"):
        small_model(inference_dtype="float8")


@pytest.mark.parametrize("channels", [16, 512])  # conv_tbc below 512 input channels, one product above
@pytest.mark.parametrize("k,pad_left,pad_right", [(3, 1, 1), (3, 2, 0), (4, 1, 2), (4, 3, 0), (1, 0, 0), (5, 4, 0)])
def test_both_convolution_paths_compute_the_same_convolution(channels, k, pad_left, pad_right):
    from fconv_plugin.modules.convolution import _conv_unfolded, conv_time_major

    torch.manual_seed(k)
    x = torch.randn(3, 7, channels, dtype=torch.float64)
    weight, bias = torch.randn(6, channels, k, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    reference = torch.nn.functional.conv1d(
        torch.nn.functional.pad(x.transpose(1, 2), (pad_left, pad_right)), weight, bias
    ).transpose(1, 2)
    for conv in (conv_time_major, _conv_unfolded):
        assert torch.allclose(conv(x, weight, bias, pad_left, pad_right), reference, atol=1e-10)


def test_max_positions_is_what_the_model_accepts():
    model, src_dict, tgt_dict = small_model(max_source_positions=8, max_target_positions=6)
    assert model.max_positions() == (8, 6)
    with torch.no_grad():
        model.encoder(random_batch(src_dict, [8], seed=1))  # exactly the limit works
        model.decoder(random_batch(tgt_dict, [6], seed=2, left_pad=False), model.encoder(random_batch(src_dict, [3])))
        with pytest.raises(ValueError, match="longer than the model's 8 positions"):
            model.encoder(random_batch(src_dict, [9], seed=1))


def test_preset_hyperparameters_match_fairseq():
    from fairseq.models import ARCH_CONFIG_REGISTRY
    import argparse

    fields = [
        "encoder_embed_dim",
        "encoder_layers",
        "decoder_embed_dim",
        "decoder_layers",
        "decoder_out_embed_dim",
        "decoder_attention",
        "dropout",
        "share_input_output_embed",
    ]
    for name in ["iwslt_de_en", "wmt_en_ro", "wmt_en_de", "wmt_en_fr"]:
        ours, theirs = argparse.Namespace(), argparse.Namespace()
        ARCH_CONFIG_REGISTRY[f"fconv_ext_{name}"](ours)
        ARCH_CONFIG_REGISTRY[f"fconv_{name}"](theirs)
        for f in fields:
            a, b = getattr(ours, f), getattr(theirs, f)
            if isinstance(a, str):  # same layers, maybe written differently
                from fconv_plugin.modules import safe_literal

                a, b = safe_literal(a), safe_literal(b)
            assert a == b, (name, f)


def test_initialisation_follows_the_paper():
    torch.manual_seed(0)
    dropout = 0.2
    model = build_model_from_config(
        {**SMALL, "dropout": dropout, "encoder_layers": "[(256, 3)]", "encoder_embed_dim": 128},
        make_dictionary(2000),
        make_dictionary(50),
    )
    conv = model.encoder.stack.convolutions[0]
    v = conv.parametrizations.weight.original1
    # v ~ N(0, 4 (1 - p) / (k * in)), g = ||v|| so that w == v at init
    assert v.std().item() == pytest.approx(math.sqrt(4 * (1 - dropout) / (3 * 256)), rel=0.05)
    assert torch.allclose(conv.weight, v, atol=1e-6)
    fc1 = model.encoder.fc1.parametrizations.weight.original1
    assert fc1.std().item() == pytest.approx(math.sqrt((1 - dropout) / 128), rel=0.05)
    emb = model.encoder.embed_tokens.weight
    assert emb.std().item() == pytest.approx(0.1, rel=0.05)
    assert emb[1].abs().sum() == 0  # padding row
    assert model.encoder.fc1.bias.abs().sum() == 0


def test_retain_dropout_keeps_dropout_at_inference():
    """Dropout goes through FairseqDropout, so fairseq's --retain-dropout works."""
    model, src_dict, tgt_dict = small_model(seed=14, dropout=0.3)
    model.make_generation_fast_(need_attn=False, retain_dropout=True)
    src = random_batch(src_dict, [5, 3], seed=15)
    prev = random_batch(tgt_dict, [4, 4], seed=16, left_pad=False)
    with torch.no_grad():
        a, _ = model(src, None, prev)
        b, _ = model(src, None, prev)
    assert not torch.allclose(a, b)


def test_pretrained_embeddings_are_loaded(tmp_path):
    src_dict = make_dictionary(20)
    path = tmp_path / "emb.txt"
    vec = [0.5 * (i + 1) for i in range(16)]
    path.write_text("2 16\n" + "w3 " + " ".join(map(str, vec)) + "\nnot_in_dict " + " ".join(["1"] * 16) + "\n")
    model = build_model_from_config({**SMALL, "encoder_embed_path": str(path)}, src_dict, make_dictionary(20))
    row = model.encoder.embed_tokens.weight[src_dict.index("w3")]
    assert torch.allclose(row, torch.tensor(vec))
