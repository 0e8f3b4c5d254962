"""fconv_ext computes exactly what fairseq's fconv computes (converted weights)."""

import pytest
import torch
from fairseq.sequence_generator import SequenceGenerator

from helpers import build_twins, random_batch

# (arch, max abs difference allowed on log-probabilities): the parity bounds
PRESETS = [
    ("fconv_iwslt_de_en", 1e-5),
    ("fconv_wmt_en_ro", 1e-4),
    ("fconv_wmt_en_de", 1e-4),
    ("fconv_wmt_en_fr", 1e-4),
]


def _inputs(src_dict, tgt_dict):
    src = random_batch(src_dict, [9, 6, 3], seed=3)  # left-padded: exercises the masks
    src_lengths = src.ne(src_dict.pad()).sum(1)
    tgt = random_batch(tgt_dict, [7, 7, 7], seed=4, left_pad=False)
    prev = torch.cat([torch.full((3, 1), tgt_dict.eos()), tgt[:, :-1]], dim=1)  # BOS = EOS
    return src, src_lengths, prev


def _lprobs(model, src, src_lengths, prev):
    net_output = model(src, src_lengths, prev)
    return model.get_normalized_probs(net_output, log_probs=True)


def _incremental_lprobs(model, src, src_lengths, prev):
    encoder_out = model.encoder(src, src_lengths)
    state = {}
    steps = []
    for t in range(prev.size(1)):
        out = model.decoder(prev[:, : t + 1], encoder_out, incremental_state=state)
        steps.append(model.get_normalized_probs(out, log_probs=True))
    return torch.cat(steps, dim=1)


@pytest.mark.parametrize("arch,tol", PRESETS)
def test_full_and_incremental_forward_match_fconv(arch, tol):
    ref, ext, src_dict, tgt_dict = build_twins(arch)
    src, src_lengths, prev = _inputs(src_dict, tgt_dict)
    with torch.no_grad():
        expected = _lprobs(ref, src, src_lengths, prev)
        full = _lprobs(ext, src, src_lengths, prev)
        incremental = _incremental_lprobs(ext, src, src_lengths, prev)
        ref_incremental = _incremental_lprobs(ref, src, src_lengths, prev)
    diff_full = (full - expected).abs().max().item()
    diff_inc = (incremental - ref_incremental).abs().max().item()
    print(f"{arch}: full max|diff| {diff_full:.2e}, incremental max|diff| {diff_inc:.2e}")
    assert diff_full <= tol
    assert diff_inc <= tol
    # and the model is not trivially constant: log-probs vary across the vocabulary
    assert expected.std() > 0.01


@pytest.mark.parametrize("arch", ["fconv_iwslt_de_en", "fconv_wmt_en_de"])
def test_beam_search_hypotheses_match_fconv(arch):
    ref, ext, src_dict, tgt_dict = build_twins(arch, seed=5)
    src, src_lengths, _ = _inputs(src_dict, tgt_dict)
    sample = {"net_input": {"src_tokens": src, "src_lengths": src_lengths}}
    results = []
    for model in (ref, ext):
        # what fairseq-generate does before decoding (fconv: BeamableMM; fconv_ext: fold weight norm)
        model.make_generation_fast_(beamable_mm_beam_size=5, need_attn=False)
        gen = SequenceGenerator([model], tgt_dict, beam_size=5, max_len_b=12)
        with torch.no_grad():
            results.append(gen.forward(sample))
    for hyps_ref, hyps_ext in zip(*results):
        assert len(hyps_ref) == len(hyps_ext) == 5
        for a, b in zip(hyps_ref, hyps_ext):
            assert a["tokens"].tolist() == b["tokens"].tolist()
            assert abs(a["score"].item() - b["score"].item()) < 1e-4


def test_custom_specs_residuals_and_attention_subset_match_fconv():
    ref, ext, src_dict, tgt_dict = build_twins(
        "fconv",
        encoder_embed_dim=24,
        encoder_layers="[(16, 3)] * 2 + [(32, 2, 2)] + [(32, 5, 0)] + [(16, 4, 3)]",
        decoder_embed_dim=24,
        decoder_layers="[(16, 3), (32, 2), (32, 1, 2), (16, 4, 0)]",
        decoder_out_embed_dim=24,
        decoder_attention="[True, False, False, True]",
        share_input_output_embed=True,
    )
    src, src_lengths, prev = _inputs(src_dict, tgt_dict)
    with torch.no_grad():
        diff = (_lprobs(ext, src, src_lengths, prev) - _lprobs(ref, src, src_lengths, prev)).abs().max()
        diff_inc = (
            (_incremental_lprobs(ext, src, src_lengths, prev) - _incremental_lprobs(ref, src, src_lengths, prev))
            .abs()
            .max()
        )
    assert diff <= 1e-5 and diff_inc <= 1e-5


def test_gradients_match_fconv():
    """Training parity: same loss gradient for every parameter (weight norm g and v)."""
    ref, ext, src_dict, tgt_dict = build_twins("fconv_iwslt_de_en", dropout=0.0)
    ref.train()
    ext.train()
    src, src_lengths, prev = _inputs(src_dict, tgt_dict)
    for model in (ref, ext):
        _lprobs(model, src, src_lengths, prev).logsumexp(-1).sum().backward()  # any scalar of the outputs
        (_lprobs(model, src, src_lengths, prev)[..., 5]).sum().backward()
    g_ref = {n: p.grad for n, p in ref.named_parameters()}
    g_ext = {n: p.grad for n, p in ext.named_parameters()}
    for name in (
        "encoder.fc1.bias",
        "encoder.embed_tokens.weight",
        "decoder.fc3.bias",
        "decoder.attention.0.in_projection.bias",
    ):
        assert torch.allclose(g_ext[name], g_ref[name], atol=1e-5), name
    # convolution weight-norm gain: fconv g is 1 x 1 x out, fconv_ext g is out x 1 x 1
    assert torch.allclose(
        g_ext["encoder.stack.convolutions.0.parametrizations.weight.original0"].flatten(),
        g_ref["encoder.convolutions.0.weight_g"].flatten(),
        atol=1e-5,
    )
    assert torch.allclose(
        g_ext["decoder.stack.convolutions.1.parametrizations.weight.original1"],
        g_ref["decoder.convolutions.1.weight_v"].permute(2, 1, 0),
        atol=1e-5,
    )
