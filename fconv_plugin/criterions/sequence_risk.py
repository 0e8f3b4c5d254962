"""``sequence_risk``: expected-risk minimisation over candidate translations
(Edunov et al. 2018, "Classical Structured Prediction Losses for Sequence to Sequence
Learning", eq. 4), combined with token-level label-smoothed cross entropy.

For each source ``x`` with reference ``t`` the current model proposes a candidate set
``U(x)`` (beam search n-best, or sampling).  Each candidate ``u`` has a cost
``cost(t, u) = 1 - sentenceBLEU(u, t) / 100`` (sacrebleu, on the detokenized text the
task scores; ``--risk-cost rougeL`` uses ROUGE-L F1 instead, for summaries) and a model
score ``s(u) = log p(u | x)`` (sum of token log-probs).  The
risk is the expected cost under the model renormalised over the candidate set:

    R(x) = sum_{u in U(x)} cost(t, u) * exp(s(u)) / sum_{u' in U(x)} exp(s(u'))

and the objective, per sentence, is ``alpha * TokLS(x, t) + (1 - alpha) * R(x)``.
Meant for fine-tuning a model trained with ``label_smoothed_cross_entropy``:

    fairseq-train DATA --user-dir fconv_plugin --task fconv_translation --arch ... \\
        --criterion sequence_risk --restore-file checkpoints/checkpoint_best.pt \\
        --reset-optimizer --reset-dataloader --reset-meters ...
"""

import math
from dataclasses import dataclass, field
from typing import List, Tuple

import torch
from fairseq import metrics, utils
from fairseq.data import data_utils
from fairseq.criterions import register_criterion
from fairseq.dataclass import ChoiceEnum
from fairseq.criterions.label_smoothed_cross_entropy import (
    LabelSmoothedCrossEntropyCriterion,
    LabelSmoothedCrossEntropyCriterionConfig,
)
from torch import Tensor

from .fused_label_smoothed_cross_entropy import (
    ChunkBuffer,
    fused_target_log_probs,
    fused_token_loss,
    unsupported_reason,
)


RISK_COSTS = ["bleu", "rougeL"]


@dataclass
class SequenceRiskConfig(LabelSmoothedCrossEntropyCriterionConfig):
    risk_alpha: float = field(
        default=0.3,
        metadata={
            "help": "weight of the token-level label-smoothed loss; the risk gets 1 - alpha "
            "(1 = plain label_smoothed_cross_entropy, 0 = risk only)"
        },
    )
    risk_candidates: int = field(default=8, metadata={"help": "candidates per source (the n-best size)"})
    risk_beam: int = field(default=8, metadata={"help": "beam size used to generate candidates (>= --risk-candidates)"})
    risk_sampling: bool = field(
        default=False, metadata={"help": "sample candidates instead of taking the beam's n-best"}
    )
    risk_max_len_a: float = field(
        default=1.2,
        metadata={
            "help": "candidates are at most this times the source length + --risk-max-len-b tokens (headlines: 0)"
        },
    )
    risk_max_len_b: int = field(
        default=10,
        metadata={
            "help": "see --risk-max-len-a (headlines: 30). Memory grows with candidates x their length x "
            "vocabulary: with a large vocabulary also lower --max-tokens"
        },
    )
    risk_cost: ChoiceEnum(RISK_COSTS) = field(
        default="bleu",
        metadata={
            "help": "the cost of a candidate: 1 - sentence BLEU (sacrebleu, translation) or 1 - ROUGE-L F1 "
            "(rouge-score with Porter stemming, summaries), both on the detokenized text the task scores"
        },
    )


def expected_risk(scores: Tensor, costs: Tensor, mask: Tensor) -> Tensor:
    """Per-sentence expected cost under the model renormalised over its candidates.

    scores: B x K sequence log-probabilities; costs: B x K; mask: B x K, True for real
    candidates (sentences may have fewer than K).  Returns B risks."""
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores.float(), dim=-1)  # B x K, renormalised over U(x)
    return (probs * costs.masked_fill(~mask, 0.0)).sum(dim=-1)


@register_criterion("sequence_risk", dataclass=SequenceRiskConfig)
class SequenceRiskCriterion(LabelSmoothedCrossEntropyCriterion):
    #: score fconv_ext candidates through fc3 chunk by chunk; False: through the full logits, as
    #: other models are (the same numbers; for comparisons: examples/gettext/risk_profile.py --logits)
    fused_candidates: bool = True

    def __init__(
        self,
        task,
        sentence_avg,
        label_smoothing,
        ignore_prefix_size=0,
        report_accuracy=False,
        risk_alpha=0.3,
        risk_candidates=8,
        risk_beam=8,
        risk_sampling=False,
        risk_max_len_a=1.2,
        risk_max_len_b=10,
        risk_cost="bleu",
    ):
        super().__init__(task, sentence_avg, label_smoothing, ignore_prefix_size, report_accuracy)
        if not (0.0 <= risk_alpha <= 1.0):
            raise ValueError(f"--risk-alpha must be in [0, 1], got {risk_alpha}")
        if risk_candidates < 1 or risk_beam < risk_candidates:
            raise ValueError("--risk-candidates must be >= 1 and --risk-beam >= --risk-candidates")
        if risk_alpha < 1.0 and not (hasattr(task, "build_candidate_generator") and hasattr(task, "sentence_costs")):
            raise ValueError(
                f"--criterion sequence_risk needs a task that generates candidates and scores them with "
                f"sentence BLEU or ROUGE-L; task {type(task).__name__} does not. Use --task fconv_translation "
                "(with --user-dir fconv_plugin)."
            )
        if str(risk_cost) not in RISK_COSTS:
            raise ValueError(f"--risk-cost must be one of {', '.join(RISK_COSTS)}, got {risk_cost!r}")
        self.alpha = risk_alpha
        self.n_candidates, self.beam, self.sampling = risk_candidates, risk_beam, risk_sampling
        self.max_len_a, self.max_len_b, self.cost = risk_max_len_a, risk_max_len_b, str(risk_cost)
        self._generator = None
        self.chunk_buffer = ChunkBuffer()  # the fused token-level loss's chunk memory, kept between updates

    def forward(self, model, sample, reduce=True):
        tok_loss, nll_loss = self.token_loss(model, sample, reduce)
        nsentences = sample["target"].size(0)
        sample_size = nsentences if self.sentence_avg else sample["ntokens"]
        logging_output = {
            "nll_loss": nll_loss.data,
            "tok_loss": tok_loss.data,
            "ntokens": sample["ntokens"],
            "nsentences": nsentences,
            "sample_size": sample_size,
        }
        loss = tok_loss
        # validation (eval mode) reports the token-level loss only: the task's BLEU measures the
        # sequence-level quality there, and generating candidates would double validation time
        if self.alpha < 1.0 and model.training:
            risks = self.sentence_risks(model, sample)  # B
            # fairseq divides the loss by sample_size: scale the summed risk so that it
            # contributes (1 - alpha) * mean risk per sentence
            risk_sum = risks.sum()
            loss = self.alpha * tok_loss + (1.0 - self.alpha) * risk_sum * (sample_size / nsentences)
            logging_output["risk"] = risk_sum.data
            logging_output[f"_risk_{self.cost}"] = nsentences  # which metric the risk's cost is
        logging_output["loss"] = loss.data
        return loss, sample_size, logging_output

    def token_loss(self, model, sample, reduce=True) -> Tuple[Tensor, Tensor]:
        """The token-level label-smoothed loss and nll_loss.  On fconv_ext models it is the
        fused output layer + loss (no B x T x V tensor, fused_label_smoothed_cross_entropy's
        numbers); other models, and reduce=False, take fairseq's path through the logits."""
        if reduce and unsupported_reason(model) is None:
            tok_loss, nll_loss, _, _, _ = fused_token_loss(
                model,
                sample,
                self.eps,
                self.padding_idx,
                self.ignore_prefix_size,
                count_correct=False,
                buffer=self.chunk_buffer,
            )
            return tok_loss, nll_loss
        net_output = model(**sample["net_input"])
        return self.compute_loss(model, net_output, sample, reduce=reduce)

    # -- candidates -----------------------------------------------------------------
    def generate_candidates(self, model, sample) -> List[List[Tensor]]:
        """Up to K candidate token sequences (each ending with EOS) per source, from the
        current model in eval mode, without gradients."""
        core = model
        while hasattr(core, "module"):  # fairseq wraps DDP wrappers in a ModuleProxyWrapper
            core = core.module
        was_training = core.training  # (building a SequenceGenerator switches to eval mode)
        if self._generator is None or self._generator.model.models[0] is not core:
            self._generator = self.task.build_candidate_generator(
                core,
                beam=self.beam,
                nbest=self.n_candidates,
                sampling=self.sampling,
                max_len_a=self.max_len_a,
                max_len_b=self.max_len_b,
            )
        core.eval()
        try:
            with torch.no_grad():
                hypos = self._generator.generate([core], {"net_input": sample["net_input"]})
        finally:
            core.train(was_training)
        return [[h["tokens"] for h in nbest[: self.n_candidates]] for nbest in hypos]

    def candidate_scores(self, model, sample, candidates: List[List[Tensor]]) -> Tuple[Tensor, Tensor]:
        """Sequence log-probabilities (B x K, with gradient) of the candidates, and the mask."""
        pad, eos = self.padding_idx, self.task.target_dictionary.eos()
        B, K = len(candidates), max(len(c) for c in candidates)
        flat_cands = [cand for cands in candidates for cand in cands]
        # R x T, right-padded; the decoder input is the same shifted right behind BOS (= EOS)
        target = data_utils.collate_tokens(flat_cands, pad, eos, left_pad=False)
        prev = data_utils.collate_tokens(flat_cands, pad, eos, left_pad=False, move_eos_to_beginning=True)
        src_index = target.new_tensor([i for i, cands in enumerate(candidates) for _ in cands])
        net_input = {
            "src_tokens": sample["net_input"]["src_tokens"].index_select(0, src_index),
            "src_lengths": sample["net_input"]["src_lengths"].index_select(0, src_index),
            "prev_output_tokens": prev,
        }
        if self.fused_candidates and unsupported_reason(model) is None:
            # fconv_ext: chunk by chunk through fc3, no R x T x V logits kept for the backward pass
            token_lp = fused_target_log_probs(model, net_input, target, pad, buffer=self.chunk_buffer)  # R x T
        else:
            logits = model(**net_input)[0].float()  # R x T x V
            # log p(token) = logit(token) - logsumexp(logits): no second R x T x V tensor
            token_lp = logits.gather(-1, target.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)  # R x T
        seq_lp = token_lp.masked_fill(target.eq(pad), 0.0).sum(-1)  # R
        # candidate j of sentence i goes to slot i * K + j of the B x K grid
        slots = torch.tensor(
            [i * K + j for i, cands in enumerate(candidates) for j in range(len(cands))], device=seq_lp.device
        )
        scores = seq_lp.new_full((B * K,), float("-inf")).index_put((slots,), seq_lp).view(B, K)
        mask = torch.zeros(B * K, dtype=torch.bool, device=seq_lp.device).index_fill(0, slots, True).view(B, K)
        return scores, mask

    def sentence_risks(self, model, sample) -> Tensor:
        candidates = self.generate_candidates(model, sample)
        scores, mask = self.candidate_scores(model, sample, candidates)
        costs = torch.zeros_like(scores, dtype=torch.float)
        for i, cands in enumerate(candidates):
            costs[i, : len(cands)] = torch.tensor(self.task.sentence_costs(cands, sample["target"][i], self.cost))
        return expected_risk(scores, costs, mask)

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        super().reduce_metrics(logging_outputs)
        sample_size = sum(log.get("sample_size", 0) for log in logging_outputs)
        nsentences = sum(log.get("nsentences", 0) for log in logging_outputs)
        tok = sum(log.get("tok_loss", 0) for log in logging_outputs)
        metrics.log_scalar("tok_loss", tok / max(sample_size, 1) / math.log(2), sample_size, round=3)
        if any("risk" in log for log in logging_outputs):
            risk = utils.item(sum(log.get("risk", 0) for log in logging_outputs))
            metrics.log_scalar("risk", risk / max(nsentences, 1), nsentences, round=4)
            # expected_bleu (or expected_rougeL) = 100 x (1 - risk): the metric the cost is made of
            metric = "rougeL" if any(log.get("_risk_rougeL", 0) for log in logging_outputs) else "bleu"
            metrics.log_scalar(f"expected_{metric}", 100.0 * (1.0 - risk / max(nsentences, 1)), nsentences, round=2)
