"""sequence_risk: the risk and its gradient match a direct computation; alpha = 1 is
exactly label-smoothed cross entropy; the BLEU and ROUGE-L costs are the metrics' own
sentence scores; a task without candidates is refused."""

import pytest
import torch
from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion
from omegaconf import OmegaConf

from helpers import make_dictionary, random_batch
from fconv_plugin.models import build_model_from_config
from fconv_plugin.criterions import SequenceRiskCriterion, expected_risk
from fconv_plugin.tasks import FConvTranslationConfig, FConvTranslationTask

TINY = {
    "_name": "fconv_ext",
    "encoder_embed_dim": 16,
    "encoder_layers": "[(16, 3)] * 2",
    "decoder_embed_dim": 16,
    "decoder_layers": "[(16, 3)] * 2",
    "decoder_out_embed_dim": 16,
    "dropout": 0.0,
    "max_source_positions": 64,
    "max_target_positions": 64,
}


def make_task():
    d = make_dictionary(30)
    cfg = OmegaConf.merge(
        OmegaConf.structured(FConvTranslationConfig),
        {
            "data": "",
            "train_subset": "train",
            "dataset_impl": None,
            "required_seq_len_multiple": 1,
            "eval_bleu_detok": "space",
            "source_lang": "en",
            "target_lang": "de",
        },
    )
    task = FConvTranslationTask(cfg, d, d)
    task.tokenizer = task._build_detokenizer()
    return task


def make_sample(task, seed=0):
    d = task.target_dictionary
    src = random_batch(d, [6, 4, 5], seed=seed)
    tgt = random_batch(d, [5, 3, 4], seed=seed + 1, left_pad=False)
    prev = torch.cat([torch.full((3, 1), d.eos()), tgt[:, :-1]], 1).masked_fill(
        torch.cat([torch.zeros(3, 1, dtype=torch.bool), tgt[:, :-1].eq(d.pad())], 1), d.pad()
    )
    return {
        "net_input": {"src_tokens": src, "src_lengths": src.ne(d.pad()).sum(1), "prev_output_tokens": prev},
        "target": tgt,
        "ntokens": int(tgt.ne(d.pad()).sum()),
        "id": torch.arange(3),
    }


def make_model(task, seed=0):
    torch.manual_seed(seed)
    return build_model_from_config(TINY, task.source_dictionary, task.target_dictionary)


def test_expected_risk_and_its_gradient_match_a_direct_computation():
    scores = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, -1.0, 0.0]], requires_grad=True)
    costs = torch.tensor([[0.2, 0.9, 0.5], [1.0, 0.1, 7.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])  # second sentence: 2 candidates
    risk = expected_risk(scores, costs, mask)
    p0 = torch.softmax(torch.tensor([-1.0, -2.0, -0.5]), 0)
    p1 = torch.softmax(torch.tensor([-3.0, -1.0]), 0)
    expected = torch.stack([(p0 * costs[0]).sum(), (p1 * costs[1, :2]).sum()])
    assert torch.allclose(risk, expected)
    risk.sum().backward()
    # d R / d s_j = p_j (cost_j - R)
    assert torch.allclose(scores.grad[0], p0 * (costs[0] - expected[0]), atol=1e-6)
    assert torch.allclose(scores.grad[1, :2], p1 * (costs[1, :2] - expected[1]), atol=1e-6)
    assert scores.grad[1, 2] == 0


def test_candidate_scores_are_sequence_log_probabilities():
    task = make_task()
    model = make_model(task).train()
    sample = make_sample(task)
    crit = SequenceRiskCriterion(task, False, 0.1, risk_alpha=0.5, risk_candidates=2, risk_beam=2)
    d = task.target_dictionary
    cands = [
        [torch.tensor([5, 6, d.eos()]), torch.tensor([7, d.eos()])],
        [torch.tensor([8, 9, 10, d.eos()])],
        [torch.tensor([d.eos()]), torch.tensor([11, 12, 13, 14, d.eos()])],
    ]
    scores, mask = crit.candidate_scores(model, sample, cands)
    assert mask.tolist() == [[True, True], [True, False], [True, True]]
    for i, cs in enumerate(cands):
        for j, c in enumerate(cs):
            src = sample["net_input"]["src_tokens"][i : i + 1]
            prev = torch.cat([torch.tensor([d.eos()]), c[:-1]]).unsqueeze(0)
            out = model(src, None, prev)
            lp = model.get_normalized_probs(out, log_probs=True)[0].gather(-1, c.unsqueeze(-1)).sum()
            assert torch.allclose(scores[i, j], lp, atol=1e-5), (i, j)


def test_alpha_one_is_label_smoothed_cross_entropy():
    task = make_task()
    sample = make_sample(task, seed=3)
    results = []
    for crit in (
        SequenceRiskCriterion(task, False, 0.1, risk_alpha=1.0),
        LabelSmoothedCrossEntropyCriterion(task, False, 0.1),
    ):
        model = make_model(task, seed=4).train()
        loss, sample_size, log = crit(model, sample)
        loss.backward()
        results.append((loss.detach(), sample_size, [p.grad.clone() for p in model.parameters()]))
    (l1, s1, g1), (l2, s2, g2) = results
    # fconv_ext's token-level loss is the fused output layer + loss
    # (tests/unit/criterions/test_fused_criterion.py): the same numbers up to float32 rounding
    torch.testing.assert_close(l1, l2, rtol=1e-5, atol=1e-5)
    assert s1 == s2
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_risk_loss_end_to_end_on_a_batch():
    task = make_task()
    model = make_model(task, seed=5).train()
    sample = make_sample(task, seed=6)
    crit = SequenceRiskCriterion(task, False, 0.1, risk_alpha=0.0, risk_candidates=3, risk_beam=3, risk_max_len_b=6)
    # a random model's candidates all have sentence BLEU 0, hence equal costs and a zero
    # gradient; give candidates of different lengths different costs instead
    task.sentence_costs = lambda hyps, ref, metric: [min(1.0, 0.15 * h.numel()) for h in hyps]
    loss, sample_size, log = crit(model, sample)
    # risk only: loss = mean risk per sentence * sample_size, and a risk is an expected 1 - BLEU/100
    assert 0.0 <= log["risk"].item() / 3 <= 1.0
    assert torch.allclose(loss, log["risk"] * sample_size / 3)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert model.training  # candidate generation put it back into training mode


def test_task_without_candidates_is_refused():
    class PlainTask:
        target_dictionary = make_dictionary(10)

    with pytest.raises(ValueError, match="--task fconv_translation"):
        SequenceRiskCriterion(PlainTask(), False, 0.1, risk_alpha=0.5)


def test_sentence_cost_is_one_minus_sentence_bleu_on_detokenized_text():
    task = make_task()
    d = task.target_dictionary
    ref = torch.tensor([d.index(w) for w in ["w5", "w6", "w7", "w8", "w9"]] + [d.eos()])
    other = torch.tensor([d.index(w) for w in ["w10", "w11", "w12"]] + [d.eos()])
    costs = task.sentence_costs([ref, other, ref[:3]], ref)
    assert costs[0] == pytest.approx(0.0) and costs[1] == pytest.approx(1.0)
    assert 0.0 < costs[2] < 1.0


def test_sentence_cost_rouge_l_is_one_minus_rouge_score_f1():
    from rouge_score import rouge_scorer

    task = make_task()
    d = task.target_dictionary

    def words(ws):
        return torch.tensor([d.index(w) for w in ws] + [d.eos()])

    ref = words(["w5", "w6", "w7", "w8", "w9"])
    hyps = [ref, words(["w10", "w11"]), words(["w5", "w7", "w9", "w12"])]
    costs = task.sentence_costs(hyps, ref, "rougeL")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    expected = [
        1.0 - scorer.score("w5 w6 w7 w8 w9", h)["rougeL"].fmeasure
        for h in ["w5 w6 w7 w8 w9", "w10 w11", "w5 w7 w9 w12"]
    ]
    assert costs == pytest.approx(expected)
    assert costs[0] == pytest.approx(0.0) and costs[1] == pytest.approx(1.0) and 0.0 < costs[2] < 1.0
    with pytest.raises(ValueError, match="bleu or rougeL"):
        task.sentence_costs(hyps, ref, "meteor")


def test_risk_cost_and_candidate_length_bound_reach_the_task():
    task = make_task()
    model = make_model(task, seed=7).train()
    sample = make_sample(task, seed=8)
    crit = SequenceRiskCriterion(
        task,
        False,
        0.1,
        risk_alpha=0.5,
        risk_candidates=2,
        risk_beam=2,
        risk_max_len_a=0.0,
        risk_max_len_b=2,
        risk_cost="rougeL",
    )
    seen = []

    def costs(hyps, ref, metric):
        seen.append((metric, [h.numel() for h in hyps]))
        return [0.5] * len(hyps)

    task.sentence_costs = costs
    _, _, log = crit(model, sample)
    assert [metric for metric, _ in seen] == ["rougeL"] * 3
    # headline bound: at most max_len_b tokens + EOS whatever the source length (6, 4, 5 tokens)
    assert max(n for _, lengths in seen for n in lengths) <= 3
    from fairseq import metrics

    with metrics.aggregate() as agg:
        SequenceRiskCriterion.reduce_metrics([log])
    assert agg.get_smoothed_values()["expected_rougeL"] == pytest.approx(50.0)
    assert "expected_bleu" not in agg.get_smoothed_values()


def test_unknown_risk_cost_is_refused():
    with pytest.raises(ValueError, match="--risk-cost must be one of bleu, rougeL"):
        SequenceRiskCriterion(make_task(), False, 0.1, risk_alpha=0.5, risk_cost="meteor")
