"""fconv_ext_lm: the gated convolutional language model computes what fairseq's fconv_lm
computes (weights converted by fconv-ext-convert), decodes incrementally, carries
fconv_lm's presets.  Through fairseq's CLIs: tests/integration/test_lm_cli.py."""

import argparse

import pytest
import torch
from fairseq.criterions.adaptive_loss import AdaptiveLoss
from fairseq.models import ARCH_CONFIG_REGISTRY
from omegaconf import OmegaConf

from helpers import StubTask, make_dictionary
from fconv_plugin.convert import ConversionError, convert_checkpoint
from fconv_plugin.models import build_model_from_config
from fconv_plugin.models.fconv_ext_lm import FConvExtLanguageModel, FConvExtLMConfig, parse_cutoff
from fconv_plugin.modules import LayerSpecError, safe_literal

torch.set_num_threads(1)

#: every residual form: previous layer, none (0), 3 back (the GBW bottleneck block), a
#: projection where the widths differ, kernel widths 1..6
BOTTLENECK_LAYERS = "[(32, 5)] + [(16, 1, 0), (16, 5, 0), (48, 1, 3)] * 2 + [(24, 4), (24, 6), (24, 1)]"
TOL = 1e-5  # max abs difference allowed on log-probabilities


def fconv_lm_args(**overrides) -> argparse.Namespace:
    args = argparse.Namespace(
        **{"arch": "fconv_lm", "criterion": "cross_entropy", "tokens_per_sample": 64, **overrides}
    )
    ARCH_CONFIG_REGISTRY["fconv_lm"](args)
    return args


def build_lm_twins(
    criterion="cross_entropy", cutoff=None, layers=BOTTLENECK_LAYERS, vocab=90, noise=0.05, seed=0, **overrides
):
    """fairseq's fconv_lm with perturbed weights (non-zero biases, g != ||v||) and its
    fconv_ext_lm twin through the converter; both in eval mode."""
    from fairseq.models.fconv_lm import FConvLanguageModel

    torch.manual_seed(seed)
    dictionary = make_dictionary(vocab)
    args = fconv_lm_args(
        criterion=criterion, adaptive_softmax_cutoff=cutoff, decoder_embed_dim=24, decoder_layers=layers, **overrides
    )
    ref = FConvLanguageModel.build_model(args, StubTask(dictionary, dictionary))
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(noise * torch.randn_like(p))
    converted = convert_checkpoint({"cfg": {"model": args}, "model": ref.state_dict()})
    ext = build_model_from_config(converted["cfg"]["model"], dictionary)
    ext.load_state_dict(converted["model"], strict=True)
    return ref.eval(), ext.eval(), dictionary, converted


def lm_batch(dictionary, lengths, seed=1):
    """B x T right-padded token ids, as fairseq's language_modeling batches are."""
    g = torch.Generator().manual_seed(seed)
    out = torch.full((len(lengths), max(lengths)), dictionary.pad(), dtype=torch.long)
    for i, n in enumerate(lengths):
        out[i, :n] = torch.randint(dictionary.nspecial, len(dictionary), (n,), generator=g)
    return out


def lprobs(model, tokens):
    return model.get_normalized_probs(model(tokens), log_probs=True)


def incremental_lprobs(model, tokens):
    state = {}
    steps = [
        model.get_normalized_probs(model.decoder(tokens[:, : t + 1], incremental_state=state), log_probs=True)
        for t in range(tokens.size(1))
    ]
    return torch.cat(steps, dim=1)


@pytest.mark.parametrize("criterion,cutoff", [("cross_entropy", None), ("adaptive_loss", "20,50")])
def test_log_probs_match_fconv_lm(criterion, cutoff):
    ref, ext, dictionary, _ = build_lm_twins(criterion, cutoff)
    assert (ext.decoder.adaptive_softmax is not None) == (cutoff is not None)
    tokens = lm_batch(dictionary, [13, 13, 9])
    with torch.no_grad():
        expected, full = lprobs(ref, tokens), lprobs(ext, tokens)
        ref_inc, ext_inc = incremental_lprobs(ref, tokens), incremental_lprobs(ext, tokens)
    diff_full = (full - expected).abs().max().item()
    diff_inc = (ext_inc - ref_inc).abs().max().item()
    diff_cached = (ext_inc - full).abs().max().item()
    print(f"{criterion}: full {diff_full:.2e}, incremental {diff_inc:.2e}, cached vs full {diff_cached:.2e}")
    assert diff_full <= TOL and diff_inc <= TOL and diff_cached <= TOL
    assert expected.shape == (3, 13, len(dictionary))
    assert expected.std() > 0.01  # not a constant model
    assert torch.allclose(expected.exp().sum(-1), torch.ones(3, 13), atol=1e-4)  # a distribution


def test_cutoff_without_adaptive_loss_is_a_full_softmax_as_in_fconv_lm():
    """fconv_lm ignores --adaptive-softmax-cutoff unless the criterion is adaptive_loss."""
    ref, ext, dictionary, converted = build_lm_twins("cross_entropy", "20,50")
    assert ref.decoder.adaptive_softmax is None and ext.decoder.adaptive_softmax is None
    assert converted["cfg"]["model"]["adaptive_softmax_cutoff"] is None
    tokens = lm_batch(dictionary, [8, 8])
    with torch.no_grad():
        assert (lprobs(ext, tokens) - lprobs(ref, tokens)).abs().max() <= TOL


def test_training_gradients_match_fconv_lm_with_adaptive_loss():
    """Same adaptive-loss gradient for every parameter kind (weight norm g and v of the
    convolutions, linear layers, embeddings, adaptive softmax head and tails)."""
    ref, ext, dictionary, _ = build_lm_twins("adaptive_loss", "20,50", dropout=0.0)
    tokens = lm_batch(dictionary, [11, 11, 11], seed=2)
    sample = {
        "net_input": {"src_tokens": tokens[:, :-1], "src_lengths": torch.full((3,), 10)},
        "target": tokens[:, 1:].contiguous(),
        "ntokens": 30,
    }
    losses = []
    for model in (ref, ext):
        model.train()
        loss, _, _ = AdaptiveLoss(StubTask(dictionary, dictionary), sentence_avg=False)(model, sample)
        loss.backward()
        losses.append(loss.item())
    assert abs(losses[0] - losses[1]) <= 1e-4 * abs(losses[0])
    g_ref = {n: p.grad for n, p in ref.named_parameters()}
    g_ext = {n: p.grad for n, p in ext.named_parameters()}
    same_names = [
        "decoder.embed_tokens.weight",
        "decoder.fc1.bias",
        "decoder.fc1.weight_g",
        "decoder.projections.3.weight_v",
        "decoder.adaptive_softmax.head.weight",
        "decoder.adaptive_softmax.tail.0.0.weight",
        "decoder.adaptive_softmax.tail.1.2.weight",
    ]
    for name in same_names:
        ext_name = (
            name.replace("weight_g", "parametrizations.weight.original0")
            .replace("weight_v", "parametrizations.weight.original1")
            .replace("decoder.projections.", "decoder.stack.projections.")
        )
        assert torch.allclose(g_ext[ext_name], g_ref[name], atol=1e-5), name
    # convolutions: fconv's ConvTBC g is 1 x 1 x out and v is k x in x out; ours Conv1d out x in x k
    for i in (0, 2, 8):
        prefix, ext_prefix = f"decoder.convolutions.{i}.", f"decoder.stack.convolutions.{i}."
        assert torch.allclose(
            g_ext[ext_prefix + "parametrizations.weight.original0"].flatten(),
            g_ref[prefix + "weight_g"].flatten(),
            atol=1e-5,
        )
        assert torch.allclose(
            g_ext[ext_prefix + "parametrizations.weight.original1"],
            g_ref[prefix + "weight_v"].permute(2, 1, 0),
            atol=1e-5,
        )


def build_ext(**cfg):
    """An fconv_ext_lm built from its own config (no fairseq twin)."""
    conf = OmegaConf.merge(
        OmegaConf.structured(FConvExtLMConfig),
        {
            "criterion": "cross_entropy",
            "tokens_per_sample": 32,
            "max_target_positions": None,
            "decoder_embed_dim": 16,
            "decoder_layers": "[(16, 4), (24, 3), (16, 2, 0)]",
            **cfg,
        },
    )
    dictionary = make_dictionary(50)
    return FConvExtLanguageModel.build_model(conf, StubTask(dictionary, dictionary)), dictionary


@pytest.mark.parametrize(
    "learned_pos,criterion,cutoff",
    [(True, "cross_entropy", None), (True, "adaptive_loss", "10,30"), (False, "adaptive_loss", "10")],
)
def test_cached_decoding_equals_full_decoding_with_beam_reordering(learned_pos, criterion, cutoff):
    """The incremental decoder (each conv's window in incremental_state) gives the full
    forward's log-probs, also after beam search reorders the batch mid-sentence."""
    torch.manual_seed(3)
    model, dictionary = build_ext(decoder_learned_pos=learned_pos, criterion=criterion, adaptive_softmax_cutoff=cutoff)
    model.eval()
    assert (model.decoder.embed_positions is not None) == learned_pos
    tokens = lm_batch(dictionary, [10, 10, 10, 10], seed=4)
    order = torch.tensor([2, 0, 0, 3])  # beam search: hypotheses copied and dropped
    with torch.no_grad():
        state, steps = {}, []
        for t in range(tokens.size(1)):
            if t == 5:
                model.decoder.reorder_incremental_state_scripting(state, order)
                tokens = torch.cat([tokens[order, :5], tokens[:, 5:]], dim=1)
            out = model.decoder(tokens[:, : t + 1], incremental_state=state)
            steps.append(model.get_normalized_probs(out, log_probs=True))
        cached = torch.cat(steps, dim=1)
        full = lprobs(model, tokens)
        # the rows before the reorder belong to the old order
        full_before = lprobs(model, lm_batch(dictionary, [10, 10, 10, 10], seed=4))[:, :5]
    assert (cached[:, 5:] - full[:, 5:]).abs().max() <= TOL
    assert (cached[:, :5] - full_before).abs().max() <= TOL


def test_folded_inference_model_equals_training_model():
    torch.manual_seed(0)
    model, dictionary = build_ext(criterion="adaptive_loss", adaptive_softmax_cutoff="10,30")
    model.eval()
    tokens = lm_batch(dictionary, [9, 6])
    with torch.no_grad():
        before = lprobs(model, tokens)
        model.make_generation_fast_()
        after, cached = lprobs(model, tokens), incremental_lprobs(model, tokens)
    assert (after - before).abs().max() <= 1e-6 and (cached - before).abs().max() <= TOL


def test_learned_positions_bound_the_length():
    model, dictionary = build_ext(decoder_learned_pos=True, tokens_per_sample=8)
    assert model.max_positions() == 8
    with pytest.raises(ValueError, match="longer than the model's 8 positions"):
        model(lm_batch(dictionary, [9]))
    model, _ = build_ext()  # no positions: any length, as fconv_lm
    assert model.max_positions() == float("inf")
    model(lm_batch(dictionary, [40]))


def test_preset_hyperparameters_match_fairseq():
    fields = ["dropout", "decoder_embed_dim", "decoder_layers", "adaptive_softmax_cutoff", "adaptive_softmax_dropout"]

    def same(a, b):
        if isinstance(a, str) and isinstance(b, str):  # same layers/cutoffs, maybe written differently
            return safe_literal(a) == safe_literal(b)
        return a == b

    for name in ["dauphin_wikitext103", "dauphin_gbw"]:
        ours, theirs = argparse.Namespace(), argparse.Namespace()
        ARCH_CONFIG_REGISTRY[f"fconv_ext_lm_{name}"](ours)
        ARCH_CONFIG_REGISTRY[f"fconv_lm_{name}"](theirs)
        for f in fields:
            assert same(getattr(ours, f), getattr(theirs, f)), (name, f)
        assert theirs.decoder_attention == "False" and ours.decoder_learned_pos is False
    # --arch fconv_ext_lm takes the dataclass defaults: fairseq's base fconv_lm
    theirs = argparse.Namespace()
    ARCH_CONFIG_REGISTRY["fconv_lm"](theirs)
    defaults = FConvExtLMConfig()
    for f in fields:
        assert same(getattr(defaults, f), getattr(theirs, f)), ("fconv_ext_lm", f)
    layers = safe_literal(FConvExtLMConfig.decoder_layers)
    assert layers == [(1268, 4)] * 13


def test_converter_refuses_what_it_cannot_convert():
    from fairseq.models.fconv_lm import FConvLanguageModel

    dictionary = make_dictionary(40)
    args = fconv_lm_args(decoder_embed_dim=8, decoder_layers="[(8, 3)] * 2")
    state = FConvLanguageModel.build_model(args, StubTask(dictionary, dictionary)).state_dict()
    bad = argparse.Namespace(**{**vars(args), "decoder_attention": "True"})
    with pytest.raises(ConversionError, match="attention"):
        convert_checkpoint({"cfg": {"model": bad}, "model": state})
    bad = argparse.Namespace(**{**vars(args), "decoder_layers": "[(8, 3)] * 3"})
    with pytest.raises(ConversionError, match="do not match"):
        convert_checkpoint({"cfg": {"model": bad}, "model": state})
    bad = argparse.Namespace(**{**vars(args), "decoder_layers": "__import__('os').system('true')"})
    with pytest.raises(ConversionError, match="not accepted"):
        convert_checkpoint({"cfg": {"model": bad}, "model": state})


def test_cutoff_parsing_and_errors():
    assert parse_cutoff("10000,20000,200000") == [10000, 20000, 200000]
    assert parse_cutoff("[5, 9]") == [5, 9] and parse_cutoff("7") == [7] and parse_cutoff(None) is None
    for bad in ("20,10", "0,5", "__import__('os')", "1.5"):
        with pytest.raises(LayerSpecError, match="adaptive-softmax-cutoff"):
            parse_cutoff(bad)
    with pytest.raises(ValueError, match="larger than the vocabulary"):
        build_ext(criterion="adaptive_loss", adaptive_softmax_cutoff="10000,20000")
    model, _ = build_ext(criterion="cross_entropy", adaptive_softmax_cutoff="10000,20000")  # ignored, as fconv_lm
    assert model.decoder.adaptive_softmax is None
