"""The pure-tensor decoder step and encoder (fconv_plugin/serving/step.py) against the model:
the step's log-probabilities are the incremental decoder's, for every preset's layer structure,
with dilation, with padding and with a shortlist's rows of fc3."""

import re

import pytest
import torch
import torch.nn.functional as F

from helpers import make_dictionary, random_batch, small_fconv_ext
from fconv_plugin.models.architectures import PRESETS
from fconv_plugin.models.build import build_model_from_config
from fconv_plugin.serving.step import DecoderStep, SourceEncoder, encoder_inputs_from, unsupported_reason


def shrunk(spec: str, factor: int = 16) -> str:
    """A layer spec with every width divided by ``factor`` (at least 8): the preset's structure
    (kernel widths, width changes, residuals) at a size a unit test can run."""
    return re.sub(r"\((\d+),", lambda m: f"({max(8, int(m.group(1)) // factor)},", spec)


def preset_model(name: str, seed: int = 0):
    from fconv_plugin.models.presets import dataclass_defaults
    from fconv_plugin.models.fconv_ext import FConvExtConfig

    config = {**dataclass_defaults(FConvExtConfig), **PRESETS[name].values}
    for side in ("encoder_layers", "decoder_layers"):
        config[side] = shrunk(config[side])
    for dim in ("encoder_embed_dim", "decoder_embed_dim", "decoder_out_embed_dim"):
        config[dim] = max(8, config[dim] // 16)
    config.update(_name="fconv_ext", max_source_positions=64, max_target_positions=64)
    torch.manual_seed(seed)
    src_dict, tgt_dict = make_dictionary(30), make_dictionary(35)
    model = build_model_from_config(config, src_dict, tgt_dict)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval(), src_dict, tgt_dict


def incremental_log_probs(model, src_tokens, src_lengths, targets):
    """The model's own incremental decoding over ``targets`` (B x T, BOS first): B x T x V."""
    encoder_out = model.encoder(src_tokens, src_lengths)
    state = {}
    steps = []
    for t in range(targets.size(1)):
        logits, _ = model.decoder(targets[:, : t + 1], encoder_out, incremental_state=state)
        steps.append(F.log_softmax(logits[:, -1].float(), dim=-1))
    return torch.stack(steps, dim=1)


def step_log_probs(step, encoder_inputs, targets, beams=1, **vocabulary):
    """The step driven over ``targets`` (B*beams x T, beams of a sentence consecutive): B*beams x T x V."""
    keys, values, mask, scale = encoder_inputs
    sentences = keys.size(0)
    windows = step.initial_windows(sentences, beams)
    steps = []
    for t in range(targets.size(1)):
        tokens = targets[:, t].view(sentences, beams)
        lprobs, _, windows = step(tokens, torch.tensor([t + 1]), windows, keys, values, mask, scale, **vocabulary)
        steps.append(lprobs.reshape(sentences * beams, -1))
    return torch.stack(steps, dim=1)


def prepared(model):
    model.make_generation_fast_(beamable_mm_beam_size=None, need_attn=True)
    return model


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_step_equals_incremental_decoding_for_every_preset(preset):
    model, src_dict, tgt_dict = preset_model(preset)
    prepared(model)
    src_tokens = random_batch(src_dict, [7, 5, 2], seed=3)
    src_lengths = src_tokens.ne(src_dict.pad()).sum(1)
    targets = torch.randint(tgt_dict.nspecial, len(tgt_dict), (3, 6))
    targets[:, 0] = tgt_dict.eos()
    expected = incremental_log_probs(model, src_tokens, src_lengths, targets)
    step = DecoderStep(model)
    got = step_log_probs(step, encoder_inputs_from(model.encoder(src_tokens, src_lengths)), targets)
    assert torch.equal(got, expected)  # the same operations in the same order: bit for bit


def test_step_with_dilation_beams_and_no_padding():
    model, src_dict, tgt_dict = small_fconv_ext(decoder_layers="[(16, 3, 1, 2), (24, 2, 1, 3), (24, 1, 0), (16, 3)]")
    prepared(model)
    src_tokens = random_batch(src_dict, [6, 6], seed=4)  # no padding: the scale is a float
    src_lengths = src_tokens.ne(src_dict.pad()).sum(1)
    beams = 3
    targets = torch.randint(tgt_dict.nspecial, len(tgt_dict), (2 * beams, 9))
    targets[:, 0] = tgt_dict.eos()
    encoder_out = model.encoder(src_tokens, src_lengths)
    expanded = model.encoder.reorder_encoder_out(encoder_out, torch.arange(2).repeat_interleave(beams))
    expected = incremental_log_probs_from(model, expanded, targets)
    step = DecoderStep(model)
    got = step_log_probs(step, encoder_inputs_from(encoder_out), targets, beams=beams)
    assert torch.equal(got, expected)


def incremental_log_probs_from(model, encoder_out, targets):
    state, steps = {}, []
    for t in range(targets.size(1)):
        logits, _ = model.decoder(targets[:, : t + 1], encoder_out, incremental_state=state)
        steps.append(F.log_softmax(logits[:, -1].float(), dim=-1))
    return torch.stack(steps, dim=1)


def test_step_over_vocabulary_rows_is_the_log_softmax_over_those_rows():
    model, src_dict, tgt_dict = small_fconv_ext()
    prepared(model)
    src_tokens = random_batch(src_dict, [5, 3], seed=5)
    src_lengths = src_tokens.ne(src_dict.pad()).sum(1)
    targets = torch.tensor([[2, 7, 9, 11], [2, 5, 5, 30]])
    rows = torch.tensor([0, 1, 2, 3, 5, 7, 9, 11, 30, 40])
    step = DecoderStep(model)
    inputs = encoder_inputs_from(model.encoder(src_tokens, src_lengths))
    got = step_log_probs(
        step, inputs, targets, vocabulary_weight=step.fc3.weight[rows], vocabulary_bias=step.fc3.bias[rows]
    )
    # the same over the whole vocabulary with -inf outside the rows
    step.fc3.bias.data = step.fc3.bias.data.clone()
    mask = torch.full((len(tgt_dict),), float("-inf"))
    mask[rows] = 0
    step.fc3.bias.data += mask
    full = step_log_probs(step, inputs, targets)
    torch.testing.assert_close(got, full[:, :, rows], rtol=0, atol=1e-5)


def test_step_attention_is_the_decoders_average_attention():
    model, src_dict, tgt_dict = small_fconv_ext()
    prepared(model)
    src_tokens = random_batch(src_dict, [5, 3], seed=6)
    src_lengths = src_tokens.ne(src_dict.pad()).sum(1)
    targets = torch.tensor([[2, 7, 9], [2, 5, 5]])
    encoder_out = model.encoder(src_tokens, src_lengths)
    state = {}
    step = DecoderStep(model)
    keys, values, mask, scale = encoder_inputs_from(encoder_out)
    windows = step.initial_windows(2, 1)
    for t in range(3):
        _, attn = model.decoder(targets[:, : t + 1], encoder_out, incremental_state=state)
        _, step_attn, windows = step(targets[:, t : t + 1], torch.tensor([t + 1]), windows, keys, values, mask, scale)
        torch.testing.assert_close(step_attn.view(2, -1), attn[:, -1], rtol=0, atol=1e-6)


def test_source_encoder_computes_the_encoder_output():
    model, src_dict, _ = small_fconv_ext()
    prepared(model)
    src_tokens = random_batch(src_dict, [9, 4, 1], seed=7)
    src_lengths = src_tokens.ne(src_dict.pad()).sum(1)
    keys, values, mask, scale = encoder_inputs_from(model.encoder(src_tokens, src_lengths))
    got = SourceEncoder(model)(src_tokens)
    for a, b in zip(got, (keys, values, mask, scale)):
        if a.dtype == torch.bool:
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_step_of_a_training_model_folds_a_copy():
    model, src_dict, tgt_dict = small_fconv_ext()  # weight norm live
    step = DecoderStep(model)
    assert not any(n.endswith("original0") for n, _ in step.named_parameters())
    assert any("original0" in n for n, _ in model.named_parameters())  # the model keeps training


def test_other_models_are_refused_with_the_supported_ones_named():
    lm = build_model_from_config(
        {
            "_name": "fconv_ext_lm",
            "decoder_embed_dim": 16,
            "decoder_layers": "[(16, 3)] * 2",
            "decoder_out_embed_dim": 16,
            "max_target_positions": 32,
        },
        make_dictionary(20),
        make_dictionary(20),
    )
    reason = unsupported_reason(lm)
    assert "only fconv_ext models" in reason
    with pytest.raises(ValueError, match="fconv_ext_lm and fconv_ext_self_att"):
        DecoderStep(lm)
    assert unsupported_reason(small_fconv_ext()[0]) is None


# --------------------------------------------------------------------------- compiled decoding
def compile_counter(monkeypatch):
    """Counts the graphs torch.compile makes of the step (the backend runs them eagerly: the guards
    and recompilations are dynamo's, whatever the backend)."""
    from fconv_plugin.serving import compiled

    graphs = []

    def backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    torch._dynamo.reset()
    monkeypatch.setitem(compiled.COMPILE_OPTIONS, "backend", backend)
    return graphs


def test_compiled_step_is_compiled_once_for_batches_of_varied_sizes(monkeypatch):
    from fconv_plugin.serving.compiled import decoder_step

    graphs = compile_counter(monkeypatch)
    model, src_dict, tgt_dict = small_fconv_ext()
    prepared(model)
    model.inference_compile = True
    module, run = decoder_step(model)
    assert decoder_step(model)[1] is run  # built once per model
    with torch.no_grad():
        for bsz, beams, length in [(4, 5, 7), (3, 5, 9), (7, 5, 4), (2, 5, 12), (6, 2, 5), (3, 4, 6)]:
            src = random_batch(src_dict, [length] * bsz, seed=bsz)
            inputs = tuple(t.clone() for t in encoder_inputs_from(model.encoder(src)))
            windows = module.initial_windows(bsz, beams)
            for t in range(3):
                tokens = torch.randint(tgt_dict.nspecial, len(tgt_dict), (bsz, beams))
                want = module(tokens, torch.tensor([t + 1]), windows, *inputs)
                got = run(tokens, torch.tensor([t + 1]), windows, *inputs)
                torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-6)
                windows = got[2]
    assert len(graphs) == 1  # batch sizes, beam sizes and source lengths all symbolic
    with torch.no_grad():  # sizes of 1 (one sentence, beam 1, a one-token source) run the same graph
        for bsz, beams, length in [(1, 5, 5), (1, 1, 8), (2, 1, 1), (1, 1, 1)]:
            src = random_batch(src_dict, [length] * bsz, seed=length)
            inputs = tuple(t.clone() for t in encoder_inputs_from(model.encoder(src)))
            windows = module.initial_windows(bsz, beams)
            for t in range(2):
                tokens = torch.randint(tgt_dict.nspecial, len(tgt_dict), (bsz, beams))
                want = module(tokens, torch.tensor([t + 1]), windows, *inputs)
                got = run(tokens, torch.tensor([t + 1]), windows, *inputs)
                torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-6)
                windows = got[2]
    assert len(graphs) == 1


def test_fconv_beam_search_with_the_compiled_step_gives_the_eager_hypotheses(monkeypatch):
    from fairseq.sequence_generator import SequenceGenerator
    from fconv_plugin.serving.beam_search import FConvBeamSearch

    graphs = compile_counter(monkeypatch)
    model, src_dict, tgt_dict = small_fconv_ext()
    prepared(model)
    lengths = [7, 3, 9, 5, 2, 8]
    sample = {
        "net_input": {"src_tokens": random_batch(src_dict, lengths, seed=3), "src_lengths": torch.tensor(lengths)},
        "id": torch.arange(6),
    }
    with torch.no_grad():
        want = SequenceGenerator([model], tgt_dict, beam_size=4, max_len_b=12).generate([model], sample)
        model.inference_compile = True
        got = FConvBeamSearch([model], tgt_dict, beam_size=4, max_len_b=12).generate([model], sample)
    assert graphs  # the compiled step decoded
    for a, b in zip(got, want):
        assert [h["tokens"].tolist() for h in a] == [h["tokens"].tolist() for h in b]
        for x, y in zip(a, b):
            torch.testing.assert_close(x["positional_scores"], y["positional_scores"], rtol=0, atol=1e-5)


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA (the compiled step on a GPU: inductor's Triton kernels)"
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_compiled_step_on_cuda_gives_the_eager_step_hypotheses(dtype):
    from fconv_plugin.serving.beam_search import FConvBeamSearch

    model, src_dict, tgt_dict = small_fconv_ext()
    prepared(model)
    model.to(device="cuda", dtype=dtype)
    lengths = [7, 3, 9, 5, 2, 8]
    sample = {
        "net_input": {
            "src_tokens": random_batch(src_dict, lengths, seed=3).cuda(),
            "src_lengths": torch.tensor(lengths).cuda(),
        },
        "id": torch.arange(6),
    }
    results = []
    for compiled in (False, True):
        model.inference_compile = compiled
        with torch.no_grad():
            results.append(FConvBeamSearch([model], tgt_dict, beam_size=4, max_len_b=12).generate([model], sample))
    same = sum(a[0]["tokens"].tolist() == b[0]["tokens"].tolist() for a, b in zip(*results))
    assert same >= 5, same  # fused kernels may reassociate sums: at most one near-tie may flip


def test_the_step_and_the_encoder_of_one_training_model_leave_it_training():
    model, src_dict, tgt_dict = small_fconv_ext()  # weight norm live
    src = random_batch(src_dict, [5, 3], seed=8)
    before = model.encoder(src)["encoder_out"][0]
    SourceEncoder(model)
    DecoderStep(model)
    assert torch.equal(model.encoder(src)["encoder_out"][0], before)
    folded, _, _ = small_fconv_ext()
    prepared(folded)  # the same weights, weight norm folded: the same step
    targets = torch.tensor([[2, 7, 9], [2, 5, 5]])
    inputs = encoder_inputs_from(folded.encoder(src))
    torch.testing.assert_close(
        step_log_probs(DecoderStep(model), inputs, targets),
        step_log_probs(DecoderStep(folded), inputs, targets),
        rtol=0,
        atol=1e-6,
    )
