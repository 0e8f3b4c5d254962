"""fused_label_smoothed_cross_entropy against fairseq's label_smoothed_cross_entropy: loss,
nll_loss, every parameter gradient and the logged metrics, across chunks, padding, label
smoothing, ignore_prefix_size, report_accuracy, tied embeddings, sequence_risk's token-level
part, models it refuses, autocast.  Also the GPU convolution path (F.conv1d), run on CPU tensors
against the CPU paths.  Training runs with it: tests/integration/test_fused_criterion_training.py."""

import pytest
import torch
import torch.nn.functional as F
from fairseq.criterions.label_smoothed_cross_entropy import (
    LabelSmoothedCrossEntropyCriterion,
    label_smoothed_nll_loss,
)
from fairseq.logging import metrics

from helpers import StubTask, make_dictionary, random_batch
from fconv_plugin.criterions import FusedLabelSmoothedCrossEntropyCriterion, SequenceRiskCriterion
from fconv_plugin.criterions.fused_label_smoothed_cross_entropy import (
    ChunkBuffer,
    FusedLossUnsupported,
    fused_linear_label_smoothed_nll,
    fused_linear_target_log_prob,
)
from fconv_plugin.models import build_model_from_config

TINY = {
    "_name": "fconv_ext",
    "encoder_embed_dim": 16,
    "encoder_layers": "[(16, 3)] * 2",
    "decoder_embed_dim": 16,
    "decoder_layers": "[(16, 3)] * 2",
    "decoder_out_embed_dim": 12,
    "dropout": 0.2,
    "max_source_positions": 64,
    "max_target_positions": 64,
}
TOL = dict(rtol=1e-5, atol=1e-5)


def reference(features, weight, bias, target, eps, pad):
    """fairseq's computation: logits, float32 log-probabilities, label_smoothed_nll_loss."""
    lprobs = torch.log_softmax(F.linear(features, weight, bias).float(), dim=-1)
    loss, nll = label_smoothed_nll_loss(lprobs, target, eps, ignore_index=pad, reduce=True)
    mask = target.ne(pad)
    n_correct = lprobs.argmax(1).masked_select(mask).eq(target.masked_select(mask)).sum()
    return loss, nll, n_correct


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("chunk_rows", [1, 5, 1000])
def test_function_matches_fairseq_loss_and_gradients(eps, with_bias, chunk_rows):
    g = torch.Generator().manual_seed(0)
    N, H, V, pad = 23, 7, 41, 1
    x = torch.randn(N, H, generator=g, requires_grad=True)
    w = torch.randn(V, H, generator=g, requires_grad=True)
    b = torch.randn(V, generator=g, requires_grad=True) if with_bias else None
    target = torch.randint(4, V, (N,), generator=g)
    target[[0, 5, 6, 22]] = pad
    leaves = [x, w] + ([b] if with_bias else [])

    ref_loss, ref_nll, ref_correct = reference(x, w, b, target, eps, pad)
    ref_grads = torch.autograd.grad(ref_loss * 0.7, leaves)  # a non-unit upstream gradient (sequence_risk's alpha)
    loss, nll, n_correct = fused_linear_label_smoothed_nll(x, w, b, target, eps, pad, chunk_rows=chunk_rows)
    grads = torch.autograd.grad(loss * 0.7, leaves)

    torch.testing.assert_close(loss, ref_loss, **TOL)
    torch.testing.assert_close(nll, ref_nll, **TOL)
    assert int(n_correct) == int(ref_correct)
    assert loss.item() > 1.0  # a real loss, not zeros compared with zeros
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, **TOL)
    assert grads[0][[0, 5, 6, 22]].abs().max() == 0  # padding rows get no gradient
    assert not nll.requires_grad and not n_correct.requires_grad


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("chunk_rows,buffer", [(1, False), (5, True), (1000, True)])
def test_target_log_prob_matches_log_softmax_and_its_gradients(with_bias, chunk_rows, buffer):
    """sequence_risk's candidate scores: log p(target) per row, with a different upstream gradient
    per row (a candidate's share of the risk), padding rows 0 with no gradient."""
    g = torch.Generator().manual_seed(1)
    B, T, H, V, pad = 4, 6, 7, 41, 1
    x = torch.randn(B, T, H, generator=g, requires_grad=True)
    w = torch.randn(V, H, generator=g, requires_grad=True)
    b = torch.randn(V, generator=g, requires_grad=True) if with_bias else None
    target = torch.randint(4, V, (B, T), generator=g)
    target[0, 4:] = pad
    target[2, 1:] = pad
    upstream = torch.randn(B, T, generator=g)
    leaves = [x, w] + ([b] if with_bias else [])

    lprobs = torch.log_softmax(F.linear(x, w, b).float(), dim=-1)
    want = lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1).masked_fill(target.eq(pad), 0.0)  # B x T
    want_grads = torch.autograd.grad((want * upstream).sum(), leaves)
    got = fused_linear_target_log_prob(x, w, b, target, pad, chunk_rows, ChunkBuffer() if buffer else None)
    got_grads = torch.autograd.grad((got * upstream).sum(), leaves)

    assert got.shape == (B, T) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, **TOL)
    assert got[target.eq(pad)].abs().max() == 0 and got[target.ne(pad)].max() < 0
    for have, expected in zip(got_grads, want_grads):
        torch.testing.assert_close(have, expected, **TOL)
    assert got_grads[0][target.eq(pad)].abs().max() == 0


def test_sequence_risk_candidate_scores_fused_equal_the_logits_path():
    """The fused candidate scores (no candidates x T x V logits) give the logits path's scores and
    gradients."""
    model, task = make_model()
    model.eval()  # no dropout: both runs see the same network
    sample = make_sample(task)
    d = task.target_dictionary
    cands = [[torch.tensor([5, 6, d.eos()]), torch.tensor([7, d.eos()])], [torch.tensor([8, 9, 10, d.eos()])]]
    cands += [[torch.tensor([11, d.eos()])]] * (sample["target"].size(0) - 2)
    # (alpha 1: the stub task has no candidate generator, and candidate_scores needs none)
    crit = SequenceRiskCriterion(task, False, 0.1, risk_alpha=1.0, risk_candidates=2, risk_beam=2)
    weights = torch.linspace(0.5, 2.0, 2 * len(cands)).view(len(cands), 2)
    results = []
    for fused in (True, False):
        crit.fused_candidates = fused
        model.zero_grad()
        scores, mask = crit.candidate_scores(model, sample, cands)
        scores.masked_fill(~mask, 0.0).mul(weights).sum().backward()
        results.append(
            (scores.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        )
    (fused_scores, fused_grads), (plain_scores, plain_grads) = results
    torch.testing.assert_close(fused_scores, plain_scores, **TOL)
    assert fused_grads.keys() == plain_grads.keys() and any(n.startswith("decoder.fc3.") for n in fused_grads)
    for name, want in plain_grads.items():
        torch.testing.assert_close(fused_grads[name], want, **TOL, msg=name)


def test_function_rows_with_a_vanishing_target_probability():
    """A target whose log-probability is far below float32's smallest normal number (log p = -150):
    its loss comes from the exact log-sum-exp, as fairseq's log_softmax gives it."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 5, generator=g, requires_grad=True)
    w = torch.randn(12, 5, generator=g)
    b = torch.zeros(12)
    target = torch.tensor([4, 5, 6, 7, 8, 9])
    b[5], b[8] = -150.0, -60.0  # rows 1 and 4: p_y ~ e^-150 (recomputed) and e^-60 (z_y - log p_y)
    b = b.requires_grad_(True)
    w.requires_grad_(True)
    ref_loss, ref_nll, _ = reference(x, w, b, target, 0.1, 1)
    ref_grads = torch.autograd.grad(ref_loss, [x, w, b])
    loss, nll, _ = fused_linear_label_smoothed_nll(x, w, b, target, 0.1, 1, chunk_rows=4)
    grads = torch.autograd.grad(loss, [x, w, b])
    assert ref_nll.item() > 200  # the two rows dominate the loss
    torch.testing.assert_close(loss, ref_loss, **TOL)
    torch.testing.assert_close(nll, ref_nll, **TOL)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, **TOL)


def test_function_reuses_a_chunk_buffer_across_calls_and_shapes():
    """One ChunkBuffer through calls of growing and shrinking size, two of them before a single
    backward (nothing of the buffer is needed there): fairseq's numbers every time; the buffer's
    memory is allocated once for the largest chunk."""
    from fconv_plugin.criterions.fused_label_smoothed_cross_entropy import ChunkBuffer

    g = torch.Generator().manual_seed(4)
    w = torch.randn(30, 6, generator=g, requires_grad=True)
    b = torch.randn(30, generator=g, requires_grad=True)
    buffer = ChunkBuffer()
    sizes, pointers = [9, 25, 4], []
    xs = [torch.randn(n, 6, generator=g, requires_grad=True) for n in sizes]
    ts = [torch.randint(4, 30, (n,), generator=g) for n in sizes]
    losses = []
    for x, t in zip(xs, ts):
        loss, nll, n_correct = fused_linear_label_smoothed_nll(x, w, b, t, 0.1, 1, chunk_rows=10, buffer=buffer)
        ref_loss, ref_nll, ref_correct = reference(x, w, b, t, 0.1, 1)
        torch.testing.assert_close(loss, ref_loss, **TOL)
        torch.testing.assert_close(nll, ref_nll, **TOL)
        assert int(n_correct) == int(ref_correct)
        pointers.append(buffer.get(1, 30, x.device).data_ptr())
        losses.append(loss)
    assert pointers[1] == pointers[2]  # grown once (to 10 rows), then reused
    grads = torch.autograd.grad(sum(losses), xs + [w, b])
    ref_grads = torch.autograd.grad(sum(reference(x, w, b, t, 0.1, 1)[0] for x, t in zip(xs, ts)), xs + [w, b])
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, **TOL)
    _, _, uncounted = fused_linear_label_smoothed_nll(xs[0], w, b, ts[0], 0.1, 1, count_correct=False, buffer=buffer)
    assert int(uncounted) == 0  # accuracy is not computed unless asked for (--report-accuracy)


def test_function_without_gradients_and_all_padding():
    x, w, b = torch.randn(6, 4), torch.randn(9, 4), torch.randn(9)
    target = torch.tensor([2, 3, 1, 1, 8, 5])
    with torch.no_grad():  # validation: no gradient work, same numbers
        loss, nll, _ = fused_linear_label_smoothed_nll(x, w, b, target, 0.1, 1, chunk_rows=2)
    ref_loss, ref_nll, _ = reference(x, w, b, target, 0.1, 1)
    torch.testing.assert_close(loss, ref_loss, **TOL)
    torch.testing.assert_close(nll, ref_nll, **TOL)
    x.requires_grad_(True)
    loss, nll, n = fused_linear_label_smoothed_nll(x, w, b, torch.ones(6, dtype=torch.long), 0.1, 1)
    loss.backward()
    assert loss.item() == 0.0 and nll.item() == 0.0 and int(n) == 0 and x.grad.abs().max() == 0


def test_function_in_bfloat16_follows_fairseq_in_bfloat16():
    """The low-precision path (--fp16 on a GPU; bfloat16 here): logits in the model's dtype,
    log-softmax in float32, gradients returned in the parameters' dtypes."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(17, 8, generator=g).bfloat16().requires_grad_(True)
    w = torch.randn(30, 8, generator=g).bfloat16().requires_grad_(True)
    b = torch.randn(30, generator=g).bfloat16().requires_grad_(True)
    target = torch.randint(4, 30, (17,), generator=g)
    ref_loss, _, _ = reference(x, w, b, target, 0.1, 1)
    ref_grads = torch.autograd.grad(ref_loss, [x, w, b])
    loss, _, _ = fused_linear_label_smoothed_nll(x, w, b, target, 0.1, 1, chunk_rows=4)
    grads = torch.autograd.grad(loss, [x, w, b])
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, ref_loss, rtol=1e-4, atol=1e-4)
    for got, want in zip(grads, ref_grads):
        assert got.dtype == want.dtype == torch.bfloat16
        torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)


def test_function_under_autocast_follows_fairseq_under_autocast():
    """--amp: fc3 runs in the autocast dtype (bfloat16 on this CPU, float16 on a GPU), the loss in float32."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(19, 8, generator=g, requires_grad=True)
    w = torch.randn(30, 8, generator=g, requires_grad=True)
    b = torch.randn(30, generator=g, requires_grad=True)
    target = torch.randint(4, 30, (19,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref_loss, _, _ = reference(x, w, b, target, 0.1, 1)
        loss, _, _ = fused_linear_label_smoothed_nll(x, w, b, target, 0.1, 1, chunk_rows=4)
    ref_grads = torch.autograd.grad(ref_loss, [x, w, b])
    grads = torch.autograd.grad(loss, [x, w, b])
    exact, _, _ = reference(x, w, b, target, 0.1, 1)
    assert abs(loss.item() - exact.item()) > 1e-6  # the products did run in bfloat16
    torch.testing.assert_close(loss, ref_loss, rtol=1e-4, atol=1e-4)
    for got, want in zip(grads, ref_grads):
        assert got.dtype == want.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)


# ----------------------------------------------------------------------- the criterion on a model


def make_model(vocab=50, seed=0, **overrides):
    torch.manual_seed(seed)
    src, tgt = make_dictionary(vocab), make_dictionary(vocab + 3)
    model = build_model_from_config({**TINY, **overrides}, src, tgt)
    with torch.no_grad():  # non-zero biases and g != ||v||, so that every gradient is exercised
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.train(), StubTask(src, tgt)


def make_sample(task, seed=1):
    d = task.target_dictionary
    src = random_batch(task.source_dictionary, [7, 4, 6, 2], seed=seed)
    tgt = random_batch(d, [6, 3, 5, 1], seed=seed + 1, left_pad=False)  # right-padded, EOS last
    prev = torch.cat([torch.full((4, 1), d.eos()), tgt[:, :-1]], 1)
    prev = prev.masked_fill(torch.cat([torch.zeros(4, 1, dtype=torch.bool), tgt[:, :-1].eq(d.pad())], 1), d.pad())
    return {
        "net_input": {"src_tokens": src, "src_lengths": src.ne(d.pad()).sum(1), "prev_output_tokens": prev},
        "target": tgt,
        "ntokens": int(tgt.ne(d.pad()).sum()),
        "id": torch.arange(4),
    }


def run_criterion(crit, model, sample, dropout_seed=5):
    model.zero_grad()
    torch.manual_seed(dropout_seed)  # the same dropout masks in both runs
    loss, sample_size, log = crit(model, sample)
    (loss * 1.3).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), sample_size, log, grads


def reduced(crit_class, logs):
    with metrics.aggregate(new_root=True) as agg:
        crit_class.reduce_metrics(logs)
        return dict(agg.get_smoothed_values())


@pytest.mark.parametrize(
    "eps,prefix,accuracy,sentence_avg",
    [(0.1, 0, True, False), (0.0, 0, False, False), (0.1, 1, True, True), (0.0, 2, True, False)],
)
def test_criterion_matches_fairseq(eps, prefix, accuracy, sentence_avg):
    model, task = make_model()
    sample = make_sample(task)
    ref = LabelSmoothedCrossEntropyCriterion(task, sentence_avg, eps, prefix, accuracy)
    fused = FusedLabelSmoothedCrossEntropyCriterion(task, sentence_avg, eps, prefix, accuracy)
    fused.chunk_rows = 4  # several chunks on this small batch
    ref_loss, ref_size, ref_log, ref_grads = run_criterion(ref, model, sample)
    loss, size, log, grads = run_criterion(fused, model, sample)

    assert ref_loss.item() > 1.0
    torch.testing.assert_close(loss, ref_loss, **TOL)
    torch.testing.assert_close(log["nll_loss"], ref_log["nll_loss"], **TOL)
    assert size == ref_size
    assert set(log) == set(ref_log)
    assert {k: v for k, v in log.items() if k not in ("loss", "nll_loss")} == {
        k: v for k, v in ref_log.items() if k not in ("loss", "nll_loss")
    }
    if accuracy:
        assert log["total"] == int(sample["target"][:, prefix:].ne(1).sum())
    assert set(grads) == set(ref_grads) == {n for n, _ in model.named_parameters()}
    for name, want in ref_grads.items():
        assert want.abs().max() > 0 or "bias" in name, name
        torch.testing.assert_close(grads[name], want, **TOL, msg=name)
    # logged metrics: the same names and values (loss and nll_loss in bits, ppl, accuracy)
    want, got = reduced(LabelSmoothedCrossEntropyCriterion, [ref_log]), reduced(type(fused), [log])
    assert got.keys() == want.keys() and ("accuracy" in got) == accuracy
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-5), key


def test_criterion_with_tied_embeddings_and_validation_mode():
    model, task = make_model(share_input_output_embed=True, decoder_out_embed_dim=16)
    sample = make_sample(task, seed=7)
    ref = LabelSmoothedCrossEntropyCriterion(task, False, 0.1)
    fused = FusedLabelSmoothedCrossEntropyCriterion(task, False, 0.1)
    ref_loss, _, _, ref_grads = run_criterion(ref, model, sample)
    loss, _, _, grads = run_criterion(fused, model, sample)
    torch.testing.assert_close(loss, ref_loss, **TOL)
    for name, want in ref_grads.items():
        torch.testing.assert_close(grads[name], want, **TOL, msg=name)
    model.eval()
    with torch.no_grad():
        (a, _, la), (b, _, lb) = ref(model, sample), fused(model, sample)
    torch.testing.assert_close(b, a, **TOL)
    torch.testing.assert_close(lb["nll_loss"], la["nll_loss"], **TOL)
    assert "output_layer" not in model.decoder.__dict__  # the decoder is itself again afterwards
    logits, _ = model(**sample["net_input"])
    assert logits.shape[-1] == len(task.target_dictionary)


def test_reduce_false_is_fairseqs_per_token_loss():
    model, task = make_model()
    sample = make_sample(task)
    torch.manual_seed(3)
    a = LabelSmoothedCrossEntropyCriterion(task, False, 0.1)(model, sample, reduce=False)[0]
    torch.manual_seed(3)
    b = FusedLabelSmoothedCrossEntropyCriterion(task, False, 0.1)(model, sample, reduce=False)[0]
    assert a.numel() == sample["target"].numel()
    torch.testing.assert_close(b, a)


def test_through_a_wrapper_with_module():
    """fairseq's data-parallel wrappers expose the model as ``.module``; the model is called
    through the wrapper (DDP's forward sees the call)."""

    class Wrapper(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module
            self.calls = 0

        def forward(self, *args, **kwargs):
            self.calls += 1
            return self.module(*args, **kwargs)

    model, task = make_model()
    sample = make_sample(task)
    wrapped = Wrapper(model)
    ref_loss, _, _, ref_grads = run_criterion(LabelSmoothedCrossEntropyCriterion(task, False, 0.1), model, sample)
    loss, _, _, grads = run_criterion(FusedLabelSmoothedCrossEntropyCriterion(task, False, 0.1), wrapped, sample)
    assert wrapped.calls == 1
    torch.testing.assert_close(loss, ref_loss, **TOL)
    for name, want in ref_grads.items():
        torch.testing.assert_close(grads["module." + name], want, **TOL, msg=name)


def test_sequence_risk_token_level_part_is_fused(monkeypatch):
    """alpha = 1: sequence_risk is label-smoothed cross entropy, computed by the fused function."""
    from fconv_plugin.criterions import fused_label_smoothed_cross_entropy as fused_module

    model, task = make_model()
    sample = make_sample(task)
    calls = []
    original = fused_module.FusedLinearLabelSmoothedNLL.apply

    def counting_apply(*args):
        calls.append(1)
        return original(*args)

    ref_loss, _, ref_log, ref_grads = run_criterion(LabelSmoothedCrossEntropyCriterion(task, False, 0.1), model, sample)
    monkeypatch.setattr(fused_module.FusedLinearLabelSmoothedNLL, "apply", counting_apply)
    loss, _, log, grads = run_criterion(SequenceRiskCriterion(task, False, 0.1, risk_alpha=1.0), model, sample)
    assert calls == [1]
    torch.testing.assert_close(loss, ref_loss, **TOL)
    torch.testing.assert_close(log["nll_loss"], ref_log["nll_loss"], **TOL)
    for name, want in ref_grads.items():
        torch.testing.assert_close(grads[name], want, **TOL, msg=name)


@pytest.mark.parametrize("eps,prefix", [(0.1, 0), (0.0, 2)])
def test_language_model_with_full_softmax_matches_fairseq(eps, prefix):
    """fconv_ext_lm without an adaptive softmax: fc2 + dropout, then the fused fc3 + loss; the
    same loss, nll_loss and gradients as fairseq's criterion on its logits (dropout on, same masks)."""
    d = make_dictionary(40)
    torch.manual_seed(0)
    lm = build_model_from_config(
        {"_name": "fconv_ext_lm", "decoder_embed_dim": 12, "decoder_layers": "[(16, 3)] * 2", "dropout": 0.2}, d
    ).train()
    with torch.no_grad():
        for p in lm.parameters():
            p.add_(0.05 * torch.randn_like(p))
    task = StubTask(d, d)
    tokens = random_batch(d, [9, 6, 3], seed=4, left_pad=False)  # B x T, right-padded
    target = torch.cat([tokens[:, 1:], torch.full((3, 1), d.pad())], 1)
    target = target.masked_fill(tokens.eq(d.pad()), d.pad())
    sample = {
        "net_input": {"src_tokens": tokens, "src_lengths": tokens.ne(d.pad()).sum(1)},
        "target": target,
        "ntokens": int(target.ne(d.pad()).sum()),
    }
    ref = LabelSmoothedCrossEntropyCriterion(task, False, eps, prefix)
    fused = FusedLabelSmoothedCrossEntropyCriterion(task, False, eps, prefix)
    fused.chunk_rows = 5
    ref_loss, _, ref_log, ref_grads = run_criterion(ref, lm, sample)
    loss, _, log, grads = run_criterion(fused, lm, sample)
    assert ref_loss.item() > 1.0
    torch.testing.assert_close(loss, ref_loss, **TOL)
    torch.testing.assert_close(log["nll_loss"], ref_log["nll_loss"], **TOL)
    assert set(grads) == set(ref_grads)
    for name, want in ref_grads.items():
        torch.testing.assert_close(grads[name], want, **TOL, msg=name)


def test_other_models_are_refused_with_what_to_use():
    src = make_dictionary(30)
    task = StubTask(src, src)
    crit = FusedLabelSmoothedCrossEntropyCriterion(task, False, 0.1)
    sample = make_sample(StubTask(src, make_dictionary(30)))

    lm = build_model_from_config(
        {
            "_name": "fconv_ext_lm",
            "decoder_embed_dim": 8,
            "decoder_layers": "[(8, 2)] * 2",
            "adaptive_softmax_cutoff": "10,20",
            "criterion": "adaptive_loss",
        },
        src,
    )
    assert lm.decoder.adaptive_softmax is not None
    with pytest.raises(FusedLossUnsupported, match="adaptive softmax.*--criterion adaptive_loss"):
        crit(lm, sample)

    self_att = build_model_from_config(
        {
            "_name": "fconv_ext_self_att",
            "encoder_embed_dim": 8,
            "encoder_layers": "[(8, 3)] * 1",
            "decoder_embed_dim": 8,
            "decoder_layers": "[(8, 3)] * 1",
            "decoder_out_embed_dim": 8,
            "max_source_positions": 64,
            "max_target_positions": 64,
        },
        src,
        src,
    )
    with pytest.raises(
        FusedLossUnsupported, match="fconv_ext and fconv_ext_lm models only.*--criterion label_smoothed_cross_entropy"
    ):
        crit(self_att, sample)


# ----------------------------------------------------------------------- the GPU convolution path
# (kept beside the fused loss: both are the training-speed work.)  On CUDA every
# conv layer is one F.conv1d over B x C x T; here that code runs on CPU tensors against the CPU paths.


def test_conv_path_choice():
    from fconv_plugin.modules.convolution import conv_path

    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for channels, k, d in ((256, 3, 1), (1024, 3, 1), (256, 1, 1), (256, 3, 2)):
            assert conv_path("cuda", dtype, channels, k, d) == "conv1d"
    # the CPU keeps its measured choices
    assert conv_path("cpu", torch.float32, 256, 3) == "tbc"
    assert conv_path("cpu", torch.float32, 512, 3) == "unfold"
    assert conv_path("cpu", torch.float32, 256, 1) == "unfold"
    assert conv_path("cpu", torch.bfloat16, 256, 3) == "unfold"
    assert conv_path("cpu", torch.float32, 256, 3, 2) == "conv1d"


@pytest.mark.parametrize(
    "k,d,causal",
    [
        (3, 1, False),
        (4, 1, False),
        (2, 1, True),
        (3, 1, True),
        (5, 1, True),
        (1, 1, False),
        (3, 2, True),
        (3, 3, False),
    ],
)
def test_conv1d_path_equals_cpu_paths_and_direct_sum(k, d, causal):
    from fconv_plugin.modules.convolution import conv_channels_first, conv_time_major

    g = torch.Generator().manual_seed(k * 10 + d)
    B, T, C, C_out = 3, 9, 6, 5
    x = torch.randn(B, T, C, generator=g, requires_grad=True)
    w = torch.randn(C_out, C, k, generator=g, requires_grad=True)
    b = torch.randn(C_out, generator=g, requires_grad=True)
    left, right = ((k - 1) * d, 0) if causal else ((k - 1) // 2 * d, k // 2 * d)
    got = conv_channels_first(x, w, b, left, right, d)
    # direct sum: out[t] = b + sum_j W[:, :, j] x[t - left + j * d]
    want = b.expand(B, T, C_out).clone()
    for t in range(T):
        for j in range(k):
            s = t - left + j * d
            if 0 <= s < T:
                want[:, t] += x[:, s] @ w[:, :, j].t()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    cpu = conv_time_major(x, w, b, left, right, dilation=d)  # conv_tbc / unfold / conv1d on this CPU
    torch.testing.assert_close(got, cpu, rtol=1e-5, atol=1e-5)
    upstream = torch.randn(B, T, C_out, generator=g)
    g1 = torch.autograd.grad((got * upstream).sum(), [x, w, b])
    g2 = torch.autograd.grad((cpu * upstream).sum(), [x, w, b])
    for a, c in zip(g1, g2):
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-5)


def test_model_with_the_cuda_conv_path_on_cpu_equals_the_cpu_paths(monkeypatch):
    """A whole fconv_ext training step (loss and every gradient) with every layer on the CUDA path
    gives the CPU paths' numbers (widths 16 and 24, kernels 2, 3 and 4, one dilated layer)."""
    from fconv_plugin.modules import convolution

    def step(model, sample):
        model.zero_grad()
        torch.manual_seed(5)
        loss, _, _ = LabelSmoothedCrossEntropyCriterion(task, False, 0.1)(model, sample)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    model, task = make_model(encoder_layers="[(16, 3)] * 2 + [(24, 2)]", decoder_layers="[(16, 3), (16, 4, 1, 2)]")
    sample = make_sample(task)
    ref_loss, ref_grads = step(model, sample)
    chosen = []
    real_path = convolution.conv_path

    def cuda_path(device_type, *args):
        chosen.append(real_path("cuda", *args))
        return chosen[-1]

    monkeypatch.setattr(convolution, "conv_path", cuda_path)
    loss, grads = step(model, sample)
    assert chosen == ["conv1d"] * 5  # 3 encoder + 2 decoder layers
    torch.testing.assert_close(loss, ref_loss, **TOL)
    for name, want in ref_grads.items():
        torch.testing.assert_close(grads[name], want, **TOL, msg=name)
