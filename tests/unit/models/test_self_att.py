"""fconv_ext_self_att (Fan et al. 2018): parity with fairseq's fconv_self_att through the
converter, real incremental decoding, padding masks, presets, model fusion.  Through fairseq-train and
fairseq-generate: tests/integration/test_self_att_cli.py."""

import argparse

import pytest
import torch
from fairseq.sequence_generator import SequenceGenerator
from omegaconf import OmegaConf

from helpers import (
    StubTask,
    make_dictionary,
    random_batch,
    SELF_ATT_BASE_SMALL as BASE_SMALL,
    SELF_ATT_WP_SMALL as WP_SMALL,
    fairseq_wp_fusion,
)
from fconv_plugin.convert import convert_checkpoint
from fconv_plugin.models.fconv_ext_self_att import FConvExtSelfAttConfig, FConvExtSelfAttModel

torch.set_num_threads(1)

# small configs with the features of each fairseq preset
CONFIGS = {
    "base": ("fconv_self_att", BASE_SMALL),
    "wp": ("fconv_self_att_wp", WP_SMALL),  # 4 downsampled gated heads, input projections
    # everything at once: encoder self-attention, multi-head encoder attention, self-attention in some layers
    "mixed": (
        "fconv_self_att",
        dict(
            BASE_SMALL,
            encoder_attention="[False, True, True]",
            encoder_attention_nheads=2,
            multihead_attention_nheads=2,
            project_input="True",
            self_attention="[True, False, True]",
            multihead_self_attention_nheads=3,
            gated_attention="True",
        ),
    ),
    "wp_no_gate": (
        "fconv_self_att_wp",
        dict(
            WP_SMALL,
            gated_attention="False",
            multihead_self_attention_nheads=2,
            decoder_attention="[True, False, True, False]",
        ),
    ),
}
TOL = 2e-5  # max |log-prob difference| allowed against fairseq


def fairseq_args(arch, **overrides):
    from fairseq.models import ARCH_CONFIG_REGISTRY

    args = argparse.Namespace(arch=arch, max_source_positions=64, max_target_positions=64, **overrides)
    ARCH_CONFIG_REGISTRY[arch](args)
    return args


def build_ext(converted, src_dict, tgt_dict):
    conf = OmegaConf.merge(
        OmegaConf.structured(FConvExtSelfAttConfig),
        {k: v for k, v in converted["cfg"]["model"].items() if k != "_name"},
    )
    model = FConvExtSelfAttModel.build_model(conf, StubTask(src_dict, tgt_dict))
    model.load_state_dict(converted["model"], strict=True)
    return model


def perturb_(model, noise, seed):
    """Non-zero biases, g != ||v|| in fairseq's weight-normed attention layers, LayerNorm != identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(noise * torch.randn(p.shape, generator=g))


def build_twins(name, seed=0, noise=0.05, vocab=50):
    from fairseq.models.fconv_self_att import FConvModelSelfAtt

    arch, overrides = CONFIGS[name]
    torch.manual_seed(seed)
    src_dict, tgt_dict = make_dictionary(vocab), make_dictionary(vocab + 5)
    args = fairseq_args(arch, **overrides)
    ref = FConvModelSelfAtt.build_model(args, StubTask(src_dict, tgt_dict))
    perturb_(ref, noise, seed)
    converted = convert_checkpoint({"cfg": {"model": args}, "model": ref.state_dict()})
    ext = build_ext(converted, src_dict, tgt_dict)
    return ref.eval(), ext.eval(), src_dict, tgt_dict


def inputs(src_dict, tgt_dict, src_lengths=(9, 9, 9), tgt_len=11, seed=3):
    src = random_batch(src_dict, list(src_lengths), seed=seed)
    tgt = random_batch(tgt_dict, [tgt_len] * len(src_lengths), seed=seed + 1, left_pad=False)
    prev = torch.cat([torch.full((len(src_lengths), 1), tgt_dict.eos()), tgt[:, :-1]], dim=1)  # BOS = EOS
    return src, src.ne(src_dict.pad()).sum(1), prev


def lprobs(model, src, src_lengths, prev):
    return model.get_normalized_probs(model(src, src_lengths, prev), log_probs=True)


def incremental_lprobs(model, src, src_lengths, prev, reorder=None):
    """Step-by-step decoding with incremental state; ``reorder`` (a permutation) is applied
    to the encoder output, the state and the inputs after every step, as beam search does."""
    encoder_out = model.encoder(src, src_lengths)
    state, steps, order = {}, [], torch.arange(src.size(0))
    for t in range(prev.size(1)):
        out = model.decoder(prev[order, : t + 1], encoder_out, incremental_state=state)
        step = model.get_normalized_probs(out, log_probs=True)  # B x 1 x V in the current order
        steps.append(step[torch.argsort(order)])  # back to the original order
        if reorder is not None:
            order = order[reorder]
            encoder_out = model.encoder.reorder_encoder_out(encoder_out, reorder)
            model.decoder.reorder_incremental_state_scripting(state, reorder)
    return torch.cat(steps, dim=1)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_parity_with_fairseq_without_padding(name):
    ref, ext, src_dict, tgt_dict = build_twins(name)
    src, src_lengths, prev = inputs(src_dict, tgt_dict)
    with torch.no_grad():
        expected = lprobs(ref, src, src_lengths, prev)
        full = lprobs(ext, src, src_lengths, prev)
        cached = incremental_lprobs(ext, src, src_lengths, prev)
    diff, diff_cached = (full - expected).abs().max().item(), (cached - expected).abs().max().item()
    print(f"{name}: full max|diff| {diff:.2e}, cached max|diff| {diff_cached:.2e}")
    assert diff <= TOL and diff_cached <= TOL
    assert expected.std() > 0.05  # not a constant model


def test_converter_gives_weight_norm_with_fairseq_weights():
    ref, ext, _, _ = build_twins("wp")
    w = ref.decoder.fc3.weight
    ext_fc3 = ext.decoder.fc3
    assert torch.allclose(ext_fc3.parametrizations.weight.original0.squeeze(1), w.norm(dim=1))
    assert torch.allclose(ext_fc3.weight, w, atol=1e-6)
    # fairseq's own weight-normed attention layers keep their g and v
    head = ref.decoder.selfattention[0].attention[1]
    assert torch.equal(
        ext.decoder.self_attention[0].attention.groups[1].k_proj[0].parametrizations.weight.original0,
        head.in_proj_k[1][0].weight_g,
    )


@pytest.mark.parametrize("name", ["wp", "mixed"])
def test_cached_decoding_equals_full_under_beam_reordering(name):
    _, ext, src_dict, tgt_dict = build_twins(name, seed=2)
    src, src_lengths, prev = inputs(src_dict, tgt_dict, src_lengths=(9, 4, 7, 2), tgt_len=13)  # padded
    with torch.no_grad():
        full = lprobs(ext, src, src_lengths, prev)
        cached = incremental_lprobs(ext, src, src_lengths, prev, reorder=torch.tensor([2, 0, 3, 1]))
    assert (cached - full).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", ["base", "mixed", "wp"])
def test_padded_equals_unpadded_per_sentence(name):
    ref, ext, src_dict, tgt_dict = build_twins(name, seed=4)
    lengths = (10, 3, 6)
    src, src_lengths, prev = inputs(src_dict, tgt_dict, src_lengths=lengths)
    with torch.no_grad():
        batch = lprobs(ext, src, src_lengths, prev)
        ref_batch = lprobs(ref, src, src_lengths, prev)
        for i, n in enumerate(lengths):
            one = src[i : i + 1, -n:]  # the sentence without its left padding
            alone = lprobs(ext, one, src_lengths[i : i + 1], prev[i : i + 1])
            assert (batch[i] - alone[0]).abs().max().item() <= 1e-5
            if n < max(lengths):  # fairseq attends to the padding: its output depends on it
                assert (ref_batch[i] - lprobs(ref, one, src_lengths[i : i + 1], prev[i : i + 1])[0]).abs().max() > 1e-3


def test_beam_search_hypotheses_match_fairseq():
    ref, ext, src_dict, tgt_dict = build_twins("wp", seed=5)
    src, src_lengths, _ = inputs(src_dict, tgt_dict, src_lengths=(8, 8))
    sample = {"net_input": {"src_tokens": src, "src_lengths": src_lengths}}
    results = []
    for model in (ref, ext):
        model.make_generation_fast_(need_attn=False)
        gen = SequenceGenerator([model], tgt_dict, beam_size=4, min_len=15, max_len_b=15)
        with torch.no_grad():
            results.append(gen.forward(sample))
    for hyps_ref, hyps_ext in zip(*results):
        for a, b in zip(hyps_ref, hyps_ext):
            assert a["tokens"].tolist() == b["tokens"].tolist()
            assert abs(a["score"].item() - b["score"].item()) < 1e-4


def test_presets_equal_fairseq():
    from fairseq.models import ARCH_CONFIG_REGISTRY

    fields = [f for f in FConvExtSelfAttConfig.__dataclass_fields__ if not f.startswith("max_") and f != "_name"]
    defaults = FConvExtSelfAttConfig()
    for theirs, ours in [("fconv_self_att", "fconv_ext_self_att"), ("fconv_self_att_wp", "fconv_ext_self_att_wp")]:
        a, b = argparse.Namespace(), argparse.Namespace()
        ARCH_CONFIG_REGISTRY[theirs](a)
        ARCH_CONFIG_REGISTRY[ours](b)
        for f in fields:
            # --arch fconv_ext_self_att itself takes the dataclass defaults
            value = getattr(b, f, getattr(defaults, f))
            assert value == getattr(a, f), (ours, f)
    for f in fields:  # and the dataclass defaults are fconv_self_att's
        a = argparse.Namespace()
        ARCH_CONFIG_REGISTRY["fconv_self_att"](a)
        assert getattr(defaults, f) == getattr(a, f), f


def _save_fairseq_checkpoint(path, args, model):
    torch.save({"cfg": {"model": args}, "model": model.state_dict()}, path)


def test_fusion_parity_and_frozen_pretrained(tmp_path):
    """Model fusion: fairseq's fusion model and ours (pretrained checkpoint given as a fairseq
    fconv_self_att checkpoint, converted on load) agree; the pretrained part is frozen."""
    from fairseq.models.fconv_self_att import FConvModelSelfAtt

    torch.manual_seed(0)
    src_dict, tgt_dict = make_dictionary(40), make_dictionary(45)
    task = StubTask(src_dict, tgt_dict)
    pre_args = fairseq_args("fconv_self_att", **BASE_SMALL)
    pretrained = FConvModelSelfAtt.build_model(pre_args, task)
    perturb_(pretrained, 0.05, 1)
    pre_path = tmp_path / "pretrained_checkpoint.pt"
    _save_fairseq_checkpoint(pre_path, pre_args, pretrained)

    args = fairseq_args("fconv_self_att_wp", **WP_SMALL, pretrained="True", pretrained_checkpoint=str(pre_path))
    encoder, decoder, ref = fairseq_wp_fusion(src_dict, tgt_dict, pretrained)  # fairseq's fusion model
    perturb_(encoder, 0.05, 2)
    perturb_(decoder, 0.05, 3)  # includes the pretrained decoder's (shared) weights: save them again
    _save_fairseq_checkpoint(pre_path, pre_args, pretrained)
    ref.eval()

    converted = convert_checkpoint({"cfg": {"model": args}, "model": ref.state_dict()})
    assert converted["cfg"]["model"]["pretrained"] == "True"
    ext = build_ext(converted, src_dict, tgt_dict).eval()
    src, src_lengths, prev = inputs(src_dict, tgt_dict)
    with torch.no_grad():
        expected = lprobs(ref, src, src_lengths, prev)
        diff = (lprobs(ext, src, src_lengths, prev) - expected).abs().max().item()
        diff_cached = (
            (incremental_lprobs(ext, src, src_lengths, prev, reorder=torch.tensor([1, 2, 0])) - expected)
            .abs()
            .max()
            .item()
        )
    print(f"fusion: full max|diff| {diff:.2e}, cached max|diff| {diff_cached:.2e}")
    assert diff <= TOL and diff_cached <= TOL

    frozen = [n for n, p in ext.named_parameters() if not p.requires_grad]
    assert frozen and all(".pretrained." in n for n in frozen)
    assert all(p.requires_grad for n, p in ext.named_parameters() if ".pretrained." not in n)
    # training moves only the fusion model's own parameters
    before = {n: p.detach().clone() for n, p in ext.named_parameters()}
    ext.train()
    opt = torch.optim.SGD([p for p in ext.parameters() if p.requires_grad], lr=0.1)
    lprobs(ext, src, src_lengths, prev)[..., 4].sum().backward()
    opt.step()
    changed = {n for n, p in ext.named_parameters() if not torch.equal(p, before[n])}
    assert changed and not any(".pretrained." in n for n in changed)


def test_spec_strings_are_not_evaluated():
    from fconv_plugin.modules import LayerSpecError

    src_dict = make_dictionary(20)
    for field_name, value in [("self_attention", "__import__('os').system('true')"), ("project_input", "[True]")]:
        conf = OmegaConf.merge(
            OmegaConf.structured(FConvExtSelfAttConfig),
            {field_name: value, "max_source_positions": 8, "max_target_positions": 8},
        )
        with pytest.raises(LayerSpecError, match=field_name.replace("_", "-")):
            FConvExtSelfAttModel.build_model(conf, StubTask(src_dict, src_dict))
