"""Beam search for fconv_ext: fairseq's ``SequenceGenerator`` results, less work per step.

fairseq's beam search (``SequenceGenerator._generate`` with ``search.BeamSearch``) makes,
at every step and for every hypothesis, several passes over the whole vocabulary that
do not change which candidates win:

* ``lprobs[lprobs != lprobs] = -inf`` (a NaN check and a masked write, ``B*k x V``);
* ``logits.div_(temperature)`` even when the temperature is 1;
* ``lprobs + scores`` (``B*k x V``) before one ``topk`` over the ``k*V`` continuations
  of each sentence.

At the gettext benchmark's shapes (``B*k`` = 320 rows, ``V`` = 8192) those cost about as
much as the vocabulary projection itself.  :class:`FConvBeamSearch` keeps fairseq's
algorithm step for step (same candidates, same end-of-sentence handling, same length
normalisation, fairseq's own ``finalize_hypos``) and changes only how the candidates
are found:

1. the best ``2k + 1`` tokens of each hypothesis (adding the hypothesis score, a
   constant per row, does not change their order): the row's maxima over blocks of 64
   tokens pick the at most ``2k + 1`` blocks that can hold them, and ``topk`` runs on those;
2. the hypothesis score is added to those ``k * (2k + 1)`` candidates only, and the best
   ``2k`` of each sentence are kept, as fairseq's ``topk`` over ``k*V`` does (the one
   more per hypothesis shows whether the ``2k``-th place is tied);
3. NaN: ``topk`` ranks NaN above everything, so a NaN anywhere in a row shows up among
   that row's candidates; only then is the row cleaned (NaN -> -inf, as fairseq does)
   and searched again.

Results are fairseq's (tests compare tokens and scores with ``SequenceGenerator``), ties
included: where two of a sentence's best candidates have exactly the same score, ``topk``'s
order among them depends on the tensor it runs on, so that sentence's candidates are
found again with fairseq's own ``topk`` over ``k x V``.  Anything this class does not implement
(prefix tokens, constraints, LM fusion, n-gram blocking, ``--match-source-len``,
suppressed tokens, decoders without incremental state, sampling and other search
strategies, vocabularies smaller than ``2k + 1``) is handed to
``SequenceGenerator._generate`` unchanged.

Ensembles (``--path a.pt:b.pt``) take the same path: each model's log-probabilities of
the step are computed as for one model, then combined with ``EnsembleModel.forward_decoder``'s
own arithmetic (``logsumexp`` over the stacked models minus ``log(n)``, attention summed in
model order and divided by ``n``), so tokens and scores are fairseq's bit for bit.

With a vocabulary shortlist (opt-in, the model option ``shortlist``, ``docs/shortlists.md``;
:func:`~fconv_plugin.serving.shortlist.shortlist_for`) each batch's ``C`` candidate words are
found from its source tokens (sorted, the special symbols first, so ``pad``/``unk``/``eos`` keep
their own index as their column); the search then runs over ``R x C`` log-probabilities (``fc3``'s
rows of those words, selected once per batch) and maps the chosen columns back to words.  A model
whose ``fc3`` bias is ``-inf`` outside the shortlist gives the same hypotheses (the scores agree
to float rounding: the log-softmax sums over ``C`` instead of ``V`` terms, the extra ones being
zeros).  Batches that fairseq's generator decodes (prefix tokens, sampling, ...) are decoded over
the whole vocabulary, and that is said once.

Which generator decodes is said once at INFO level on this module's logger:
``decoding with FConvBeamSearch (fconv_ext fast path)``, or ``decoding with fairseq's
SequenceGenerator: <reason>`` when every batch goes to fairseq (sampling, ``--lm-path``, ...;
:mod:`fconv_plugin.fairseq_fixes` says so for models that never get this class), and,
once per generator, the reason when single batches go to fairseq (prefix tokens).

:mod:`fconv_plugin.fairseq_fixes` (entry ``beam_search``) makes fairseq's
``FairseqTask.build_generator`` (every task: translation, fconv_translation, the hub
interface) return this class for fconv_ext models (:class:`FConvBeamSearchWithAlignment`
with ``--print-alignment``), unless ``FCONV_EXT_NO_BEAM_SEARCH=1`` or
``FCONV_EXT_BEAM_SEARCH=fairseq`` is set in the environment.
"""

import logging
import math
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

import torch
from fairseq import search
from fairseq.sequence_generator import SequenceGenerator, SequenceGeneratorWithAlignment
from torch import Tensor

from ..models.fconv_ext import FConvExtDecoder
from .compiled import decoder_step, int8, source_encoder, step_ready
from .int8 import vocabulary_rows
from .shortlist import shortlist_for
from .step import encoder_inputs_from

BLOCK = 64  # tokens per block in the first candidate pass (block maxima are one vectorised pass)
FAST_PATH = "decoding with FConvBeamSearch (fconv_ext fast path)"

logger = logging.getLogger(__name__)
_ANNOUNCED: Set[str] = set()  # messages announce() has logged in this process


def announce(message: str) -> None:
    """Log ``message`` at INFO level once per process: a generator is built for every
    ``translate()`` call of the hub interface, and the choice is worth one line, not one per call."""
    if message not in _ANNOUNCED:
        _ANNOUNCED.add(message)
        logger.info(message)


def fairseq_generator_message(generator: type, reason: str) -> str:
    """The line said when another generator (fairseq's, as a rule) decodes instead of FConvBeamSearch."""
    owner = "fairseq's " if generator.__module__.startswith("fairseq") else ""
    return f"decoding with {owner}{generator.__name__}: {reason}"


def top_tokens(lprobs: Tensor, n: int) -> Tuple[Tensor, Tensor]:
    """``torch.topk(lprobs, n)`` (values sorted, descending) for ``R x V`` rows.

    Any of the row's best ``n`` values lies in a block whose maximum is among the ``n``
    largest block maxima, so ``topk`` only needs to look at those ``n`` blocks (plus the
    tail that does not fill a block)."""
    rows, vocab = lprobs.shape
    blocks = vocab // BLOCK
    if blocks <= n:  # small vocabulary: nothing to save
        return torch.topk(lprobs, n)
    block_max = lprobs[:, : blocks * BLOCK].view(rows, blocks, BLOCK).amax(dim=-1)  # R x blocks
    best_blocks = torch.topk(block_max, n, sorted=False).indices  # R x n
    offsets = torch.arange(BLOCK, device=lprobs.device)
    columns = (best_blocks.unsqueeze(-1) * BLOCK + offsets).view(rows, n * BLOCK)  # R x n*BLOCK
    if vocab > blocks * BLOCK:  # the tail is always a candidate
        tail = torch.arange(blocks * BLOCK, vocab, device=lprobs.device).expand(rows, -1)
        columns = torch.cat([columns, tail], dim=1)
    values, picked = torch.topk(lprobs.gather(1, columns), n)  # R x n
    return values, columns.gather(1, picked)


class FConvBeamSearch(SequenceGenerator):
    """Drop-in ``SequenceGenerator`` (same constructor, same outputs) with a leaner step."""

    def __init__(self, models, tgt_dict, **kwargs):
        super().__init__(models, tgt_dict, **kwargs)
        self._shortlists = [shortlist_for(model) for model in self.model.models]  # checks the files now
        self._generator_reason = self.generator_fallback_reason()
        self._batch_reasons_said: Set[str] = set()
        if self._generator_reason is None:
            announce(FAST_PATH)
        else:
            announce(fairseq_generator_message(SequenceGenerator, self._generator_reason))

    def generator_fallback_reason(self) -> Optional[str]:
        """Why every batch of this generator goes to fairseq's implementation (None: none does
        for a reason of the generator's own; see :meth:`fast_path_unavailable`)."""
        if type(self.search) is not search.BeamSearch:
            name = type(self.search).__name__
            return "sampling" if name == "Sampling" else f"search strategy {name}"
        if not self.model.has_incremental_states():
            return "a model without incremental decoding"
        if self.lm_model is not None:
            return "--lm-path (LM fusion)"
        if self.repeat_ngram_blocker is not None:
            return "--no-repeat-ngram-size"
        if self.match_source_len:
            return "--match-source-len"
        if self.token_indices_to_suppress is not None:
            return "suppressed tokens"
        if self.vocab_size - 1 < 2 * self.beam_size:
            return "vocabulary smaller than 2 * beam + 1"
        return None

    def fast_path_unavailable(self, sample, prefix_tokens, constraints) -> Optional[str]:
        """Why this batch goes to fairseq's implementation (None: it does not)."""
        if self._generator_reason is not None:
            return self._generator_reason
        if prefix_tokens is not None:
            return "prefix tokens"
        if constraints is not None:
            return "constraints"
        if "src_tokens" not in sample["net_input"]:
            return "no src_tokens"
        return None

    def _generate(
        self,
        sample: Dict[str, Dict[str, Tensor]],
        prefix_tokens: Optional[Tensor] = None,
        constraints: Optional[Tensor] = None,
        bos_token: Optional[int] = None,
    ):
        """fairseq's ``SequenceGenerator._generate`` for one batch, in its named steps: start
        (encode, expand to beams), then per output position: score the next token, mask it (pad,
        unknown-word penalty, min/max length), find the 2k candidates of each sentence, finish the
        hypotheses that end in EOS, drop finished sentences, choose the k that continue."""
        reason = self.fast_path_unavailable(sample, prefix_tokens, constraints)
        search = None
        if reason is None:
            search, reason = self._start(sample, bos_token)
        if search is None:
            if reason != self._generator_reason and reason not in self._batch_reasons_said:  # once per generator
                self._batch_reasons_said.add(reason)
                logger.info(
                    f"FConvBeamSearch: batches with {reason} are decoded by fairseq's SequenceGenerator"
                    + (" over the whole vocabulary (no shortlist)" if any(self._shortlists) else "")
                )
            return super()._generate(sample, prefix_tokens, constraints, bos_token)

        for step in range(search.max_len + 1):  # one extra step for the final EOS
            lprobs = self._next_token_scores(search, step)
            cand_scores, cand_indices, cand_beams = self._candidates(
                lprobs, search.scores, step, search.bsz, search.k, search.n_cand
            )
            if search.shortlist is not None:
                cand_indices = search.shortlist[cand_indices]  # B x 2k: shortlist columns -> words
            eos_mask = self._finish_hypotheses(search, step, cand_scores, cand_indices, cand_beams)
            if search.remaining == 0:
                break
            assert step < search.max_len, f"{step} < {search.max_len}"
            self._choose_beams(search, step, cand_scores, cand_indices, cand_beams, eos_mask)
        return self._sorted(search.finalized)

    def _start(self, sample, bos_token: Optional[int]) -> Tuple[Optional["_Search"], Optional[str]]:
        """Encode the batch and set up the search (None and the reason when fairseq's generator
        must decode it instead)."""
        net_input = sample["net_input"]
        src_tokens = net_input["src_tokens"]
        src_lengths = net_input.get("src_lengths")
        if src_lengths is None:
            src_lengths = (src_tokens.ne(self.eos) & src_tokens.ne(self.pad)).long().sum(dim=1)
        bsz, src_len = src_tokens.shape[:2]
        k = self.beam_size
        max_len = min(int(self.max_len_a * src_len + self.max_len_b), self.max_len - 1)
        assert self.min_len <= max_len, "min_len cannot be larger than max_len, please adjust these!"

        models = list(self.model.models)  # one, or the members of an ensemble
        shortlist, reason = self._batch_shortlist(src_tokens)  # None: the whole vocabulary
        if reason is not None:
            return None, reason
        encoder_outs = [self._encode(model, net_input) for model in models]
        device = src_tokens.device
        buffers = _StepBuffers.for_models(
            models, bsz * k, device, columns=None if shortlist is None else shortlist.numel()
        )
        decoders = [
            decoder_for(model, encoder_out, bsz, k, buffers, i, shortlist, self.temperature)
            for i, (model, encoder_out) in enumerate(zip(models, encoder_outs))
        ]
        return _Search(
            bsz,
            k,
            max_len,
            src_lengths,
            device,
            self.pad,
            self.eos if bos_token is None else bos_token,
            decoders,
            buffers,
            shortlist,
        ), None

    @staticmethod
    def _encode(model, net_input) -> Dict:
        """The model's encoder output; for an int8 model ready for its step, the int8 encoder's."""
        if int8(model) and step_ready(model):
            keys, values, mask, _ = source_encoder(model)(net_input["src_tokens"])
            return {"encoder_out": (keys, values), "encoder_padding_mask": mask if bool(mask.any()) else None}
        return model.encoder.forward_torchscript(net_input)

    def _next_token_scores(self, search: "_Search", step: int) -> Tensor:
        """The log-probabilities of every next token (R x V, or R x C over a shortlist: column c is
        word shortlist[c], the specials keeping their own index), masked as fairseq masks them."""
        lprobs, step_attn = self._step_lprobs(search.decoders, search.tokens[:, : step + 1], step, search.buffers)
        lprobs[:, self.pad] = -math.inf  # never select pad
        if self.unk_penalty != 0:
            lprobs[:, self.unk] -= self.unk_penalty
        if step >= search.max_len:  # only EOS is left
            lprobs[:, : self.eos] = -math.inf
            lprobs[:, self.eos + 1 :] = -math.inf
        if step < self.min_len:
            lprobs[:, self.eos] = -math.inf
        if step_attn is not None:
            if search.attn is None:
                search.attn = torch.empty(
                    search.bsz * search.k,
                    step_attn.size(1),
                    search.max_len + 2,
                    dtype=search.scores.dtype,
                    device=search.device,
                )
            search.attn[:, :, step + 1].copy_(step_attn)
        return lprobs

    def _finish_hypotheses(
        self, search: "_Search", step: int, cand_scores: Tensor, cand_indices: Tensor, cand_beams: Tensor
    ) -> Tensor:
        """Candidates among the first k that end in EOS (and are not ignored) finish a hypothesis
        (fairseq's ``finalize_hypos``); sentences with k finished hypotheses leave the batch.
        Returns the EOS mask of the candidates (B x 2k) of the sentences that stay."""
        k = search.k
        cand_bbsz_idx = cand_beams + search.bbsz_offsets  # B x 2k: rows of the candidates
        eos_mask = cand_indices.eq(self.eos) & cand_scores.ne(-math.inf)  # B x 2k
        eos_mask[:, :k][search.cands_to_ignore] = False
        eos_bbsz_idx = torch.masked_select(cand_bbsz_idx[:, :k], mask=eos_mask[:, :k])
        search.batch_idxs = None
        if eos_bbsz_idx.numel() == 0:
            return eos_mask
        eos_scores = torch.masked_select(cand_scores[:, :k], mask=eos_mask[:, :k])
        finalized_sents = self.finalize_hypos(
            step,
            eos_bbsz_idx,
            eos_scores,
            search.tokens,
            search.scores,
            search.finalized,
            search.finished,
            k,
            search.attn,
            search.src_lengths,
            search.max_len,
        )
        search.remaining -= len(finalized_sents)
        if finalized_sents and search.remaining > 0:
            keep = torch.ones(search.bsz, dtype=torch.bool, device=search.device)
            keep[finalized_sents] = False
            search.drop_sentences(torch.arange(search.bsz, device=search.device).masked_select(keep))
            return eos_mask[search.batch_idxs]
        return eos_mask

    def _choose_beams(
        self,
        search: "_Search",
        step: int,
        cand_scores: Tensor,
        cand_indices: Tensor,
        cand_beams: Tensor,
        eos_mask: Tensor,
    ) -> None:
        """The k best candidates that do not end in EOS continue (EOS ones sort last); the token
        histories, scores and attention follow them, and so does the decoders' state at the next step."""
        k, n_cand, bsz = search.k, search.n_cand, search.bsz
        if search.batch_idxs is not None:
            cand_scores, cand_indices = cand_scores[search.batch_idxs], cand_indices[search.batch_idxs]
            cand_beams = cand_beams[search.batch_idxs]
        cand_bbsz_idx = cand_beams + search.bbsz_offsets  # B x 2k
        eos_mask[:, :k] = search.cands_to_ignore | eos_mask[:, :k]
        active_mask = eos_mask.long() * n_cand + search.cand_offsets  # B x 2k: rank, EOS/ignored after the rest
        new_cands_to_ignore, active_hypos = torch.topk(active_mask, k=k, dim=1, largest=False)  # B x k
        search.cands_to_ignore = new_cands_to_ignore.ge(n_cand)
        assert (~search.cands_to_ignore).any(dim=1).all()
        active_bbsz_idx = torch.gather(cand_bbsz_idx, 1, active_hypos).view(-1)  # B*k rows they extend
        # every hypothesis extends itself (always so at beam 1 while no sentence ends): the
        # histories and the decoder state are already in order, nothing to copy
        in_place = torch.equal(active_bbsz_idx, search.row_numbers[: bsz * k])

        tokens, scores, attn = search.tokens, search.scores, search.attn
        if not in_place:
            tokens[:, : step + 1] = tokens[:, : step + 1].index_select(0, active_bbsz_idx)
        tokens.view(bsz, k, -1)[:, :, step + 1] = torch.gather(cand_indices, 1, active_hypos)
        if step > 0 and not in_place:
            scores[:, :step] = scores[:, :step].index_select(0, active_bbsz_idx)
        scores.view(bsz, k, -1)[:, :, step] = torch.gather(cand_scores, 1, active_hypos)
        if attn is not None and not in_place:
            attn[:, :, : step + 2] = attn[:, :, : step + 2].index_select(0, active_bbsz_idx)
        # the decoder state still has the rows of removed sentences: then it is reordered anyway
        if not (in_place and search.batch_idxs is None):
            search.reorder_decoders(active_bbsz_idx)

    @staticmethod
    def _sorted(finalized: List[List[Dict[str, Tensor]]]) -> List[List[Dict[str, Tensor]]]:
        """Each sentence's hypotheses best first, sorted as fairseq sorts them."""
        for sent in range(len(finalized)):
            if len(finalized[sent]) > 1:  # the same float32 scores fairseq sorts, in one tensor
                order = torch.sort(torch.stack([h["score"] for h in finalized[sent]]), descending=True)[1]
                finalized[sent] = [finalized[sent][i] for i in order.tolist()]
        return finalized

    def _batch_shortlist(self, src_tokens: Tensor) -> Tuple[Optional[Tensor], Optional[str]]:
        """The words this batch is searched over: ``(None, None)`` for the whole vocabulary, or the
        batch's vocabulary shortlist (``C`` sorted word ids); the search then runs over ``C``
        columns, not ``V``.  The second element, if not None, is why the batch goes to fairseq's
        generator instead (which decodes over the whole vocabulary)."""
        if all(shortlist is None for shortlist in self._shortlists):
            return None, None
        lists = [None if shortlist is None else shortlist.candidates(src_tokens) for shortlist in self._shortlists]
        words = lists[0]
        if any(other is None or not torch.equal(other, words) for other in lists):
            return None, "an ensemble whose models have different vocabulary shortlists"
        specials = max(self.eos, self.pad, self.unk) + 1
        if words.numel() < specials or not torch.equal(words[:specials], torch.arange(specials, device=words.device)):
            return None, "a vocabulary shortlist without the special symbols first"
        if words.numel() - 1 < 2 * self.beam_size:
            return None, "a vocabulary shortlist smaller than 2 * beam + 1"
        return words, None

    @staticmethod
    def _step_lprobs(
        decoders: Sequence["_Decoder"], tokens: Tensor, step: int, buffers: "_StepBuffers"
    ) -> Tuple[Tensor, Optional[Tensor]]:
        """Log-probabilities of the next token for all models together (R x V, R = rows of
        ``tokens``) and their attention (R x S or None): what fairseq's
        ``EnsembleModel.forward_decoder`` returns, with the same arithmetic.

        One model: its own log-probabilities.  An ensemble: ``logsumexp`` over the models'
        log-probabilities stacked in model order, minus ``log(n)`` (the log of the mean
        probability); the attention of the models that return one, summed in model order
        and divided by ``n``.  With a shortlist: the same over its ``C`` columns."""
        if len(decoders) == 1:
            return decoders[0].log_probs(tokens, step)
        log_probs: List[Tensor] = []
        avg_attn: Optional[Tensor] = None
        for decoder in decoders:
            lprobs, attn = decoder.log_probs(tokens, step)
            log_probs.append(lprobs)
            if attn is not None:  # fairseq: the first model's attention, then add_ the others'
                avg_attn = attn.clone() if avg_attn is None else avg_attn.add_(attn)
        if avg_attn is not None:
            avg_attn.div_(len(decoders))
        return buffers.ensemble_log_probs(log_probs), avg_attn

    def _candidates(self, lprobs: Tensor, scores: Tensor, step: int, bsz: int, k: int, n_cand: int):
        """The 2k best continuations of each sentence: (scores, tokens, beams), each B x 2k,
        scores descending, as fairseq's BeamSearch.step returns them.

        Each hypothesis contributes its 2k + 1 best tokens; the sentence's 2k + 1 best of those
        pools are then its 2k + 1 best continuations over all ``k x V``.  If two of them have the
        same finite score, which one comes first is up to ``topk``'s tie order, which depends on
        the tensor it runs on: such sentences are searched again exactly as fairseq does (one
        ``topk`` over ``k x V``), so that ties come out in fairseq's order too."""
        rows = lprobs.view(bsz, k, -1)[:, 0, :] if step == 0 else lprobs  # step 0: the k beams are one (B x V)
        per_row = n_cand + 1  # one more than needed: it shows a tie at the 2k-th place
        row_scores, row_tokens = top_tokens(rows, per_row)  # rows x 2k+1
        if torch.isnan(row_scores).any():  # fairseq: NaN -> -inf before anything else
            rows = rows.masked_fill(torch.isnan(rows), -math.inf)
            row_scores, row_tokens = top_tokens(rows, per_row)
        if step == 0:
            best, best_tokens, best_beams = row_scores, row_tokens, torch.zeros_like(row_tokens)  # B x 2k+1
        else:
            totals = row_scores + scores[:, step - 1 : step]  # B*k x 2k+1: cumulative score of each continuation
            best, flat = torch.topk(totals.view(bsz, k * per_row), per_row)  # B x 2k+1 over k*(2k+1)
            best_tokens = row_tokens.view(bsz, k * per_row).gather(1, flat)
            best_beams = torch.div(flat, per_row, rounding_mode="trunc")
        cand_scores, cand_tokens, cand_beams = best[:, :n_cand], best_tokens[:, :n_cand], best_beams[:, :n_cand]
        tied = ((best[:, 1:] == best[:, :-1]) & (best[:, 1:] > -math.inf)).any(dim=1)  # B
        if tied.any():
            self._fairseq_candidates(
                rows, scores, step, bsz, k, n_cand, tied.nonzero().squeeze(1), cand_scores, cand_tokens, cand_beams
            )
        return cand_scores, cand_tokens, cand_beams

    @staticmethod
    def _fairseq_candidates(
        rows: Tensor,
        scores: Tensor,
        step: int,
        bsz: int,
        k: int,
        n_cand: int,
        sentences: Tensor,
        cand_scores: Tensor,
        cand_tokens: Tensor,
        cand_beams: Tensor,
    ) -> None:
        """fairseq's BeamSearch.step for ``sentences`` (one ``topk`` over each one's ``k x V``
        continuations), written into their rows of the candidate tensors."""
        vocab = rows.size(-1)
        if step == 0:
            totals = rows.index_select(0, sentences)  # n x V: fairseq's lprobs[:, ::beam_size, :]
        else:
            beam_rows = rows.view(bsz, k, vocab).index_select(0, sentences)  # n x k x V
            last = scores.view(bsz, k, -1).index_select(0, sentences)[:, :, step - 1 : step]  # n x k x 1
            totals = (beam_rows + last).view(sentences.numel(), k * vocab)  # n x k*V
        values, flat = torch.topk(totals, n_cand)  # n x 2k
        cand_scores[sentences] = values
        cand_tokens[sentences] = flat.fmod(vocab)
        cand_beams[sentences] = torch.div(flat, vocab, rounding_mode="trunc")


class _Search:
    """The loop state of one batch's search: token histories, cumulative scores, attention,
    finished hypotheses and the sentences still searched.  Row ``r`` is sentence ``r // k``,
    beam ``r % k``; column ``t`` of ``tokens`` is output position ``t`` (0: BOS)."""

    def __init__(
        self,
        bsz: int,
        k: int,
        max_len: int,
        src_lengths: Tensor,
        device: torch.device,
        pad: int,
        bos: int,
        decoders: List["_Decoder"],
        buffers: "_StepBuffers",
        shortlist: Optional[Tensor],
    ):
        self.bsz, self.k, self.max_len, self.device = bsz, k, max_len, device
        self.n_cand = 2 * k  # candidates per sentence: 2k in case half of them end the sentence
        self.src_lengths = src_lengths
        self.decoders, self.buffers, self.shortlist = decoders, buffers, shortlist
        self.tokens = torch.full((bsz * k, max_len + 2), pad, dtype=torch.long, device=device)
        self.tokens[:, 0] = bos
        self.scores = torch.zeros(bsz * k, max_len + 1, device=device)  # cumulative log-probabilities
        self.attn: Optional[Tensor] = None  # R x S x (max_len + 2), once a decoder returns attention
        self.cands_to_ignore = torch.zeros(bsz, k, dtype=torch.bool, device=device)
        self.finalized: List[List[Dict[str, Tensor]]] = [[] for _ in range(bsz)]
        self.finished = [False] * bsz
        self.remaining = bsz
        self.bbsz_offsets = (torch.arange(bsz, device=device) * k).unsqueeze(1)  # B x 1: first row of each sentence
        self.cand_offsets = torch.arange(self.n_cand, device=device)
        self.row_numbers = torch.arange(bsz * k, device=device)
        self.batch_idxs: Optional[Tensor] = None  # the sentences kept at this step (None: all)

    def drop_sentences(self, batch_idxs: Tensor) -> None:
        """Keep only the sentences ``batch_idxs`` (indices into the current batch)."""
        k = self.k
        self.batch_idxs = batch_idxs
        self.bsz = bsz = batch_idxs.numel()
        self.bbsz_offsets = self.bbsz_offsets[:bsz]
        self.src_lengths, self.cands_to_ignore = self.src_lengths[batch_idxs], self.cands_to_ignore[batch_idxs]
        self.scores = self.scores.view(-1, k * self.scores.size(1))[batch_idxs].view(bsz * k, -1)
        self.tokens = self.tokens.view(-1, k * self.tokens.size(1))[batch_idxs].view(bsz * k, -1)
        if self.attn is not None:
            attn = self.attn
            self.attn = attn.view(-1, k * attn.size(1) * attn.size(2))[batch_idxs].view(bsz * k, attn.size(1), -1)

    def reorder_decoders(self, active_rows: Tensor) -> None:
        """Each decoder's state follows the hypotheses: new row ``i`` continues ``active_rows[i]``
        (rows of the batch before sentences were dropped at this step, if any were)."""
        order = active_rows
        if self.batch_idxs is not None:  # sentences were removed: rows still index the old batch
            shift = self.batch_idxs - torch.arange(self.batch_idxs.numel(), device=self.device)
            order = (order.view(-1, self.k) + shift.unsqueeze(-1) * self.k).view(-1)
        for decoder in self.decoders:
            decoder.reorder(order)


class _Decoder:
    """One model's decoding state for a search: ``log_probs(tokens, step)`` -> (R x V or R x C
    log-probabilities, R x S attention or None), ``reorder(rows)``."""

    def log_probs(self, tokens: Tensor, step: int) -> Tuple[Tensor, Optional[Tensor]]:
        raise NotImplementedError

    def reorder(self, rows: Tensor) -> None:
        raise NotImplementedError


class _IncrementalDecoder(_Decoder):
    """Through fairseq's incremental-decoding interface (``model.decoder(..., incremental_state)``):
    models without a pure-tensor step, a model still training (weight norm live), a temperature."""

    def __init__(
        self,
        model,
        encoder_out,
        bsz: int,
        k: int,
        buffers: "_StepBuffers",
        index: int,
        shortlist: Optional[Tensor],
        temperature: float,
    ):
        self.model, self.buffers, self.index, self.shortlist, self.temperature = (
            model,
            buffers,
            index,
            shortlist,
            temperature,
        )
        expand = torch.arange(bsz, device=buffers.device).repeat_interleave(k)  # B*k: beams of sentence i together
        self.encoder_out = model.encoder.reorder_encoder_out(encoder_out, expand)
        self.incremental_state: Dict[str, Dict[str, Optional[Tensor]]] = {}
        self.vocabulary = None if shortlist is None else _LinearRows(model.decoder.fc3, shortlist)
        # fc3 computed here (into the buffer, over the shortlist) only where output_layer is fc3 itself:
        # a decoder whose output_layer is overridden or wrapped keeps it
        decoder = model.decoder
        self.own_fc3 = (
            "output_layer" not in decoder.__dict__ and getattr(type(decoder), "output_layer", None) is _FC3_OUTPUT_LAYER
        )
        if shortlist is not None and not self.own_fc3:
            raise ValueError(
                f"a vocabulary shortlist needs fconv_ext's own output layer (fc3); "
                f"{type(decoder).__name__}.output_layer is another: decode without the shortlist"
            )

    def log_probs(self, tokens: Tensor, step: int) -> Tuple[Tensor, Optional[Tensor]]:
        """The numbers fairseq's EnsembleModel.forward_decoder computes for one model.  With a
        shortlist (C words): R x C, the log-softmax over those words only, which is what the
        ``-inf`` logits outside them give over the whole vocabulary."""
        model, buffers = self.model, self.buffers
        rows = tokens.size(0)
        logits_out = buffers.logits(rows)  # None: the decoder's forward allocates the logits
        if (logits_out is None and self.vocabulary is None) or not self.own_fc3:
            decoder_out = model.decoder(tokens, encoder_out=self.encoder_out, incremental_state=self.incremental_state)
        else:  # forward's two halves: the features, then fc3 into the buffer, over the shortlist's rows
            features, step_attn = model.decoder.extract_features(tokens, self.encoder_out, self.incremental_state)
            decoder_out = (self._logits(features, logits_out), step_attn)
        logits = decoder_out[0][:, -1:, :]  # R x 1 x V (or C)
        if self.temperature != 1.0:  # x / 1.0 == x: fairseq's division by 1 changes nothing
            logits = logits.div_(self.temperature)
        extra = decoder_out[1] if len(decoder_out) > 1 else None
        lprobs = buffers.log_softmax(logits.reshape(rows, -1), self.index)  # R x V
        if lprobs is None:
            lprobs = model.get_normalized_probs((logits, extra), log_probs=True, sample=None)[:, -1, :]
        attn = extra["attn"] if isinstance(extra, dict) else extra
        if isinstance(attn, (list, tuple)):
            attn = attn[0] if attn else None
        return lprobs, (attn[:, -1, :] if attn is not None else None)

    def _logits(self, features: Tensor, out: Optional[Tensor]) -> Tensor:
        """``fc3(features)`` (R x 1 x V, or over the shortlist R x 1 x C), into ``out`` when given
        (one ``addmm``: what ``F.linear`` computes for a 3-D input)."""
        fc3 = self.model.decoder.fc3 if self.vocabulary is None else self.vocabulary
        if out is None:
            return fc3(features)
        rows, steps, _ = features.shape
        torch.addmm(fc3.bias, features.reshape(rows * steps, -1), fc3.weight.t(), out=out)  # R*T x V (or C)
        return out.view(rows, steps, -1)

    def reorder(self, rows: Tensor) -> None:
        self.model.decoder.reorder_incremental_state_scripting(self.incremental_state, rows)
        self.encoder_out = self.model.encoder.reorder_encoder_out(self.encoder_out, rows)


class _StepDecoder(_Decoder):
    """Through fconv_ext's pure-tensor step (:class:`~fconv_plugin.serving.step.DecoderStep`, eager
    or compiled): the state is one window per convolution, ``B x k x window x C``; the encoder
    output stays one row per sentence."""

    def __init__(
        self,
        step: Callable,
        module,
        encoder_out,
        bsz: int,
        k: int,
        shortlist: Optional[Tensor],
        need_attn: bool,
        buffers: "_StepBuffers",
        index: int,
    ):
        self.step, self.k, self.need_attn = step, k, need_attn
        # copies, not views of the encoder's tensors: a compiled step guards on its inputs' layout
        self.keys, self.values, self.mask, self.scale = (t.clone() for t in encoder_inputs_from(encoder_out))
        self.windows = module.initial_windows(bsz, k, dtype=self.values.dtype, device=self.values.device)
        self.vocabulary = {}
        if shortlist is not None:  # fc3's rows of the batch's words (float32 or int8), selected once per batch
            self.vocabulary = vocabulary_rows(module, shortlist)
        # the eager step writes each step's logits and log-probabilities into the search's buffers
        # (float32 fc3 on a CPU: _StepBuffers); a compiled step plans its own memory
        fc3_weight = self.vocabulary.get("vocabulary_weight", getattr(module.fc3, "weight", None))
        self.buffers = None
        if (
            step is module
            and buffers.enabled
            and type(fc3_weight) in (torch.Tensor, torch.nn.Parameter)
            and fc3_weight.dtype == torch.float32
            and fc3_weight.size(0) == buffers.vocab
        ):
            self.buffers, self.index = buffers, index

    def log_probs(self, tokens: Tensor, step: int) -> Tuple[Tensor, Optional[Tensor]]:
        rows = tokens.size(0)
        newest = tokens[:, -1].view(rows // self.k, self.k)  # B x k
        position = torch.full((1,), step + 1, dtype=torch.long, device=tokens.device)  # prefix length
        lprobs, attn, self.windows = self.step(
            newest,
            position,
            self.windows,
            self.keys,
            self.values,
            self.mask,
            self.scale,
            **self.vocabulary,
            **self._out(rows),
        )
        return lprobs.view(rows, -1), (attn.view(rows, -1) if self.need_attn else None)

    def _out(self, rows: int) -> Dict[str, Tuple[Tensor, Tensor]]:
        if self.buffers is None:
            return {}
        return {"out": (self.buffers.logits(rows), self.buffers.log_probs(rows, self.index))}

    def reorder(self, rows: Tensor) -> None:
        k = self.k
        sentences = rows.numel() // k
        self.windows = tuple(
            w.view(-1, *w.shape[2:]).index_select(0, rows).view(sentences, k, *w.shape[2:]) for w in self.windows
        )
        picked = torch.div(rows.view(sentences, k)[:, 0], k, rounding_mode="floor")  # the sentence of each group
        if sentences != self.keys.size(0) or not torch.equal(picked, torch.arange(sentences, device=picked.device)):
            self.keys, self.values = self.keys.index_select(0, picked), self.values.index_select(0, picked)
            self.mask, self.scale = self.mask.index_select(0, picked), self.scale.index_select(0, picked)


_FC3_OUTPUT_LAYER = FConvExtDecoder.output_layer


class _LinearRows(torch.nn.Module):
    """The rows ``index`` of a linear layer: ``x @ W[index].T + b[index]`` (a copy of those rows)."""

    def __init__(self, linear: torch.nn.Linear, index: Tensor):
        super().__init__()
        self.weight = linear.weight.detach().index_select(0, index)  # C x in
        self.bias = linear.bias.detach().index_select(0, index)  # C

    def forward(self, x: Tensor) -> Tensor:
        return torch.nn.functional.linear(x, self.weight, self.bias)


def decoder_for(
    model,
    encoder_out,
    bsz: int,
    k: int,
    buffers: "_StepBuffers",
    index: int,
    shortlist: Optional[Tensor],
    temperature: float,
) -> _Decoder:
    """The pure-tensor step where the model has one and is ready for inference (weight norm folded,
    plain float products, temperature 1), else fairseq's incremental interface."""
    if temperature == 1.0 and step_ready(model):
        module, step = decoder_step(model)
        return _StepDecoder(step, module, encoder_out, bsz, k, shortlist, module.need_attn, buffers, index)
    if int8(model):
        announce(
            "inference_dtype int8 applies to the decoder step: a model decoded through fairseq's "
            "incremental interface (still training, or with a temperature) decodes in float32"
        )
    return _IncrementalDecoder(model, encoder_out, bsz, k, buffers, index, shortlist, temperature)


class _StepBuffers:
    """The ``rows x V`` tensors of a decoding step (logits; log-probabilities, one per model;
    for an ensemble their combination), allocated once per search and reused at every step,
    on the first rows as the batch shrinks.

    Only on a CPU and in float32: there a fresh 10 MB tensor per step (320 rows x 8192 words)
    is returned to the operating system when freed and page-faulted in again at the next
    step (glibc's trim threshold), about 5 ms per step at beam 5 batch 64 on this project's
    machine.  Elsewhere (CUDA's caching allocator, bfloat16 models) the methods return None
    and the caller computes as usual.  The numbers are the same either way: ``addmm`` is what
    ``F.linear`` calls and ``_log_softmax`` is what ``F.log_softmax(x, dtype=float32)`` calls
    for a float32 ``x``; an ensemble's log-probabilities are written where ``torch.stack``
    would put them (one contiguous ``models x rows x V`` tensor) and combined by the same
    ``torch.logsumexp``."""

    def __init__(self, rows: int, vocab: int, models: int, device: torch.device, enabled: bool):
        self.enabled = enabled
        self.device = device
        self.models = models
        self.vocab = vocab
        if enabled:
            self._logits = torch.empty(rows, vocab, device=device)  # shared: each model's is used up at once
            self._lprobs = torch.empty(models * rows * vocab, device=device)  # viewed as models x rows' x V
            self._average = torch.empty(rows, vocab, device=device) if models > 1 else None

    @classmethod
    def for_models(
        cls, models: Sequence, rows: int, device: torch.device, columns: Optional[int] = None
    ) -> "_StepBuffers":
        """Buffers for these models' decoding on ``device``; ``columns``: the words a step scores
        (a vocabulary shortlist's size; default: the whole vocabulary)."""
        fc3s = [getattr(model.decoder, "fc3", None) for model in models]
        enabled = device.type == "cpu" and all(
            isinstance(fc3, torch.nn.Linear)
            and fc3.bias is not None
            and fc3.weight.dtype == torch.float32
            and getattr(model.decoder, "adaptive_softmax", None) is None
            for model, fc3 in zip(models, fc3s)
        )
        enabled = enabled and len({fc3.out_features for fc3 in fc3s}) == 1
        return cls(rows, (columns or fc3s[0].out_features) if enabled else 0, len(models), device, enabled)

    def logits(self, rows: int) -> Optional[Tensor]:
        return self._logits[:rows] if self.enabled else None

    def log_probs(self, rows: int, model: int) -> Tensor:
        """Model ``model``'s log-probabilities buffer, rows x V, where :meth:`ensemble_log_probs` looks."""
        return self._stacked(rows)[model]

    def _stacked(self, rows: int) -> Tensor:
        """models x rows x V, contiguous (what ``torch.stack`` of the models' rows x V returns)."""
        return self._lprobs[: self.models * rows * self.vocab].view(self.models, rows, self.vocab)

    def log_softmax(self, logits: Tensor, model: int = 0) -> Optional[Tensor]:
        """``F.log_softmax(logits, -1, dtype=float32)`` into model ``model``'s buffer (None: not handled here)."""
        if not self.enabled or logits.dtype != torch.float32:
            return None
        return torch.ops.aten._log_softmax.out(logits, -1, False, out=self._stacked(logits.size(0))[model])

    def ensemble_log_probs(self, log_probs: List[Tensor]) -> Tensor:
        """fairseq's ``torch.logsumexp(torch.stack(log_probs, dim=0), dim=0) - math.log(n)``
        (R x V), without the copy when the models' log-probabilities are already in place."""
        rows = log_probs[0].size(0)
        stacked = self._stacked(rows) if self.enabled else None
        if stacked is None or any(lp.data_ptr() != stacked[i].data_ptr() for i, lp in enumerate(log_probs)):
            return torch.logsumexp(torch.stack(log_probs, dim=0), dim=0) - math.log(len(log_probs))
        average = torch.logsumexp(stacked, dim=0, out=self._average[:rows])  # R x V
        return average.sub_(math.log(len(log_probs)))


class FConvBeamSearchWithAlignment(SequenceGeneratorWithAlignment, FConvBeamSearch):
    """fairseq's ``--print-alignment`` generator on top of :class:`FConvBeamSearch`: its
    ``generate`` calls ``super()._generate``, which this class order resolves to ours."""
