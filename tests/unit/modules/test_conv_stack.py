"""The shared conv stack (fconv_plugin/modules/conv_stack.py) and dilated convolutions, in
all three models: cached == full decoding under beam reordering, padded == unpadded,
finite gradients, the receptive field, old checkpoints, the gate hook."""

import pytest
import torch
import torch.nn.functional as F

from helpers import (
    assert_padded_batch_equals_each_sentence_alone,
    make_dictionary,
    random_batch,
)
from fconv_plugin.models import FConvExtLanguageModel, FConvExtModel, FConvExtSelfAttModel, build_model_from_config
from fconv_plugin.modules import ConvStack, parse_layers
from fconv_plugin.modules.convolution import CausalConv1d, SameConv1d

DILATED_ENCODER = "[(16, 3, 1, 1), (16, 3, 1, 2), (24, 2, 1, 4), (24, 3, 2, 2)]"
DILATED_DECODER = "[(16, 3, 1, 2), (24, 4, 1, 3), (24, 1, 0, 5), (16, 2, 1, 4)]"

CONFIGS = {
    "fconv_ext": {
        "_name": "fconv_ext",
        "dropout": 0.1,
        "encoder_embed_dim": 16,
        "decoder_embed_dim": 16,
        "encoder_layers": DILATED_ENCODER,
        "decoder_layers": DILATED_DECODER,
        "decoder_out_embed_dim": 12,
        "decoder_attention": "[True, False, True, True]",
        "max_source_positions": 64,
        "max_target_positions": 64,
    },
    "fconv_ext_self_att": {
        "_name": "fconv_ext_self_att",
        "dropout": 0.1,
        "encoder_embed_dim": 16,
        "decoder_embed_dim": 16,
        "encoder_layers": DILATED_ENCODER,
        "decoder_layers": DILATED_DECODER,
        "decoder_out_embed_dim": 12,
        "decoder_attention": "True",
        "self_attention": "[True, False, True, False]",
        "encoder_attention": "[False, True, False, False]",
        "multihead_self_attention_nheads": 2,
        "project_input": "True",
        "gated_attention": "True",
        "downsample": "True",
        "max_source_positions": 64,
        "max_target_positions": 64,
    },
    "fconv_ext_lm": {
        "_name": "fconv_ext_lm",
        "dropout": 0.1,
        "decoder_embed_dim": 16,
        "decoder_layers": DILATED_DECODER,
        "decoder_learned_pos": True,
        "tokens_per_sample": 64,
        "max_target_positions": 64,
        "criterion": "cross_entropy",
    },
}


def build(name, seed=0):
    torch.manual_seed(seed)
    src_dict, tgt_dict = make_dictionary(40), make_dictionary(45)
    model = build_model_from_config(CONFIGS[name], src_dict, tgt_dict if name != "fconv_ext_lm" else None)
    with torch.no_grad():  # non-trivial biases and gains
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    dictionary = tgt_dict if name != "fconv_ext_lm" else src_dict
    return model.eval(), src_dict, dictionary


def decoder_inputs(model, src_dict, tgt_dict, rows=4, length=12):
    prev = random_batch(tgt_dict, [length] * rows, seed=2, left_pad=False)
    prev[:, 0] = tgt_dict.eos()
    if isinstance(model, FConvExtLanguageModel):
        return prev, None
    src = random_batch(src_dict, [9, 5, 2, 7][:rows], seed=1)
    return prev, model.encoder(src)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_dilated_cached_decoding_equals_full_under_beam_reordering(name):
    """Step-by-step decoding with each conv's (k - 1) * d window, the rows reordered as beam
    search does halfway, equals the full forward over the reordered prefixes."""
    model, src_dict, tgt_dict = build(name)
    order = torch.tensor([2, 0, 0, 3])  # rows swap and one is duplicated, as beams are
    with torch.no_grad():
        prev, enc = decoder_inputs(model, src_dict, tgt_dict)
        reorder_at = 7
        full_prev = prev.clone()
        full_prev[:, :reorder_at] = prev[order, :reorder_at]
        full_enc = None if enc is None else model.encoder.reorder_encoder_out(enc, order)
        full, _ = model.decoder(full_prev, full_enc)

        state, steps = {}, []
        step_enc = enc
        for t in range(prev.size(1)):
            if t == reorder_at:
                model.decoder.reorder_incremental_state_scripting(state, order)
                step_enc = None if enc is None else model.encoder.reorder_encoder_out(enc, order)
                steps = [s[order] for s in steps]
            tokens = full_prev[:, : t + 1] if t >= reorder_at else prev[:, : t + 1]
            out, _ = model.decoder(tokens, step_enc, incremental_state=state)
            steps.append(out)
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)


@pytest.mark.parametrize("name", ["fconv_ext", "fconv_ext_self_att"])
def test_dilated_padded_batch_equals_each_sentence_alone(name):
    assert_padded_batch_equals_each_sentence_alone(*build(name, seed=3))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_dilated_gradients_are_finite_and_reach_every_layer(name):
    model, src_dict, tgt_dict = build(name, seed=4)
    model.train()
    prev, _ = decoder_inputs(model, src_dict, tgt_dict)
    if isinstance(model, FConvExtLanguageModel):
        out, _ = model(prev)
    else:
        out, _ = model(random_batch(src_dict, [9, 5, 2, 7], seed=1), None, prev)
    F.log_softmax(out, -1).mean().backward()
    for param_name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), param_name
        if ".stack.convolutions." in param_name:
            assert p.grad.abs().sum() > 0, param_name


@pytest.mark.parametrize("k,d", [(3, 2), (4, 3), (2, 5), (5, 1)])
def test_dilated_convolutions_compute_conv1d(k, d):
    """Both convolutions against torch's own conv1d with the same padding and dilation."""
    torch.manual_seed(0)
    x = torch.randn(3, 11, 6)  # B x T x C
    causal, same = CausalConv1d(6, 8, k, dilation=d), SameConv1d(6, 8, k, dilation=d)
    reference_causal = F.conv1d(F.pad(x.transpose(1, 2), ((k - 1) * d, 0)), causal.weight, causal.bias, dilation=d)
    assert torch.allclose(causal(x), reference_causal.transpose(1, 2), atol=1e-6)
    padded = F.pad(x.transpose(1, 2), ((k - 1) // 2 * d, k // 2 * d))
    reference_same = F.conv1d(padded, same.weight, same.bias, dilation=d)
    assert torch.allclose(same(x), reference_same.transpose(1, 2), atol=1e-6)


def test_dilated_causal_receptive_field():
    """Output t of a causal layer with kernel k and dilation d depends on inputs
    t - (k - 1) d, t - (k - 2) d, ..., t and on nothing else; a stack adds the fields up."""
    torch.manual_seed(0)
    k, d, t = 3, 4, 12
    conv = CausalConv1d(2, 2, k, dilation=d)
    x = torch.randn(1, 16, 2, requires_grad=True)
    conv(x)[0, t].sum().backward()
    seen = x.grad[0].abs().sum(-1).nonzero().flatten().tolist()
    assert seen == [t - 2 * d, t - d, t]

    stack = ConvStack(2, parse_layers("[(2, 3, 1, 1), (2, 3, 1, 2), (2, 3, 1, 4)]"), dropout=0.0, causal=True)
    x = torch.randn(1, 20, 2, requires_grad=True)
    stack(x)[0, 19].sum().backward()
    seen = x.grad[0].abs().sum(-1).nonzero().flatten()
    assert seen.min().item() == 19 - (2 * 1 + 2 * 2 + 2 * 4) and seen.max().item() == 19


def test_dilation_one_is_the_undilated_model():
    """Writing the default dilation out changes nothing: same parameters, same outputs, bit for bit."""
    outputs = []
    for spec in ("[(16, 3), (24, 2, 1), (24, 3, 2)]", "[(16, 3, 1, 1), (24, 2, 1, 1), (24, 3, 2, 1)]"):
        torch.manual_seed(0)
        cfg = {**CONFIGS["fconv_ext"], "encoder_layers": spec, "decoder_layers": spec, "decoder_attention": "True"}
        model = build_model_from_config(cfg, make_dictionary(40), make_dictionary(45)).eval()
        src = random_batch(make_dictionary(40), [6, 3], seed=1)
        prev = random_batch(make_dictionary(45), [5, 5], seed=2, left_pad=False)
        with torch.no_grad():
            outputs.append(model(src, None, prev)[0])
    assert torch.equal(outputs[0], outputs[1])


def test_checkpoints_from_before_the_stack_load_unchanged():
    """State dicts with the conv parameters one level up (``encoder.convolutions.N``, written
    before the shared stack) load through fairseq's upgrade path and give the same outputs."""
    model, src_dict, tgt_dict = build("fconv_ext", seed=5)
    old_layout = {k.replace(".stack.", "."): v for k, v in model.state_dict().items()}
    assert "encoder.convolutions.0.bias" in old_layout and "decoder.projections.1.bias" in old_layout
    fresh, _, _ = build("fconv_ext", seed=6)
    fresh.load_state_dict(old_layout, strict=True)  # FairseqModel.load_state_dict upgrades first
    src = random_batch(src_dict, [6, 3], seed=1)
    prev = random_batch(tgt_dict, [5, 5], seed=2, left_pad=False)
    with torch.no_grad():
        assert torch.equal(fresh(src, None, prev)[0], model(src, None, prev)[0])


@pytest.mark.parametrize(
    "cls,name",
    [
        (FConvExtModel, "fconv_ext"),
        (FConvExtSelfAttModel, "fconv_ext_self_att"),
        (FConvExtLanguageModel, "fconv_ext_lm"),
    ],
)
def test_gate_hook_reaches_every_model(cls, name, monkeypatch):
    """``gate_for`` (what user_dir/ teaches) sets the gate of every conv block of each model."""

    def gtu(x):
        a, b = x.chunk(2, dim=-1)
        return torch.tanh(a) * torch.sigmoid(b)

    before = build(name)[0]
    monkeypatch.setattr(cls, "gate_for", classmethod(lambda c, cfg: gtu))
    model, src_dict, tgt_dict = build(name)
    stacks = [m for m in model.modules() if isinstance(m, ConvStack)]
    assert len(stacks) == (1 if name == "fconv_ext_lm" else 2)
    assert all(stack.gate is gtu for stack in stacks)
    with torch.no_grad():
        prev, _ = decoder_inputs(model, src_dict, tgt_dict)
        if name == "fconv_ext_lm":
            assert not torch.allclose(model(prev)[0], before(prev)[0])
        else:
            src = random_batch(src_dict, [9, 5, 2, 7], seed=1)
            assert not torch.allclose(model(src, None, prev)[0], before(src, None, prev)[0])
