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
suppressed tokens, ensembles, sampling and other search strategies, vocabularies
smaller than ``2k + 1``) is handed to ``SequenceGenerator._generate`` unchanged.

:mod:`fconv_plugin.fairseq_fixes` (entry ``beam_search``) makes fairseq's
``FairseqTask.build_generator`` (every task: translation, fconv_translation, the hub
interface) return this class for fconv_ext models (:class:`FConvBeamSearchWithAlignment`
with ``--print-alignment``), unless ``FCONV_EXT_NO_BEAM_SEARCH=1`` or
``FCONV_EXT_BEAM_SEARCH=fairseq`` is set in the environment.
"""

import math
from typing import Dict, List, Optional, Tuple

import torch
from fairseq import search
from fairseq.sequence_generator import SequenceGenerator, SequenceGeneratorWithAlignment
from torch import Tensor

BLOCK = 64  # tokens per block in the first candidate pass (block maxima are one vectorised pass)


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

    def fast_path_unavailable(self, sample, prefix_tokens, constraints) -> Optional[str]:
        """Why this batch goes to fairseq's implementation (None: it does not)."""
        if type(self.search) is not search.BeamSearch:
            return f"search strategy {type(self.search).__name__}"
        if self.model.models_size != 1 or not self.model.has_incremental_states():
            return "ensemble or non-incremental decoder"
        if prefix_tokens is not None or constraints is not None:
            return "prefix tokens or constraints"
        if self.lm_model is not None or self.repeat_ngram_blocker is not None:
            return "LM fusion or n-gram blocking"
        if self.match_source_len or self.token_indices_to_suppress is not None:
            return "match-source-len or suppressed tokens"
        if self.vocab_size - 1 < 2 * self.beam_size:
            return "vocabulary smaller than 2 * beam + 1"
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
        if self.fast_path_unavailable(sample, prefix_tokens, constraints) is not None:
            return super()._generate(sample, prefix_tokens, constraints, bos_token)
        net_input = sample["net_input"]
        src_tokens = net_input["src_tokens"]
        src_lengths = net_input.get("src_lengths")
        if src_lengths is None:
            src_lengths = (src_tokens.ne(self.eos) & src_tokens.ne(self.pad)).long().sum(dim=1)
        bsz, src_len = src_tokens.shape[:2]
        k = self.beam_size
        n_cand = 2 * k  # candidates per sentence: 2k in case half of them end the sentence
        device = src_tokens.device
        max_len = min(int(self.max_len_a * src_len + self.max_len_b), self.max_len - 1)
        assert self.min_len <= max_len, "min_len cannot be larger than max_len, please adjust these!"

        model = self.model.single_model
        incremental_states: List[Dict[str, Dict[str, Optional[Tensor]]]] = [{}]
        encoder_outs = self.model.forward_encoder(net_input)
        expand = torch.arange(bsz, device=device).repeat_interleave(k)  # B*k: beams of sentence i together
        encoder_outs = self.model.reorder_encoder_out(encoder_outs, expand)
        buffers = _StepBuffers.for_model(model, bsz * k, device)

        # row r = sentence r // k, beam r % k; column t = output position t (0: BOS)
        tokens = torch.full((bsz * k, max_len + 2), self.pad, dtype=torch.long, device=device)
        tokens[:, 0] = self.eos if bos_token is None else bos_token
        scores = torch.zeros(bsz * k, max_len + 1, device=device)  # cumulative log-probabilities
        attn: Optional[Tensor] = None
        cands_to_ignore = torch.zeros(bsz, k, dtype=torch.bool, device=device)
        finalized: List[List[Dict[str, Tensor]]] = [[] for _ in range(bsz)]
        finished = [False] * bsz
        remaining = bsz
        bbsz_offsets = (torch.arange(bsz, device=device) * k).unsqueeze(1)  # B x 1: first row of each sentence
        cand_offsets = torch.arange(n_cand, device=device)
        row_numbers = torch.arange(bsz * k, device=device)
        reorder_state: Optional[Tensor] = None
        batch_idxs: Optional[Tensor] = None

        for step in range(max_len + 1):  # one extra step for the final EOS
            if reorder_state is not None:
                if batch_idxs is not None:  # sentences were removed: rows still index the old batch
                    shift = batch_idxs - torch.arange(batch_idxs.numel(), device=device)
                    reorder_state.view(-1, k).add_(shift.unsqueeze(-1) * k)
                self.model.reorder_incremental_state(incremental_states, reorder_state)
                encoder_outs = self.model.reorder_encoder_out(encoder_outs, reorder_state)

            lprobs, step_attn = self._next_token_lprobs(model, tokens[:, : step + 1], encoder_outs[0],
                                                        incremental_states[0], buffers)
            lprobs[:, self.pad] = -math.inf  # never select pad
            if self.unk_penalty != 0:
                lprobs[:, self.unk] -= self.unk_penalty
            if step >= max_len:  # only EOS is left
                lprobs[:, : self.eos] = -math.inf
                lprobs[:, self.eos + 1 :] = -math.inf
            if step < self.min_len:
                lprobs[:, self.eos] = -math.inf
            if step_attn is not None:
                if attn is None:
                    attn = torch.empty(bsz * k, step_attn.size(1), max_len + 2, dtype=scores.dtype, device=device)
                attn[:, :, step + 1].copy_(step_attn)

            cand_scores, cand_indices, cand_beams = self._candidates(lprobs, scores, step, bsz, k, n_cand)
            cand_bbsz_idx = cand_beams + bbsz_offsets  # B x 2k: rows of the candidates

            # candidates among the first k that end in EOS (and are not ignored) finish a hypothesis
            eos_mask = cand_indices.eq(self.eos) & cand_scores.ne(-math.inf)  # B x 2k
            eos_mask[:, :k][cands_to_ignore] = False
            eos_bbsz_idx = torch.masked_select(cand_bbsz_idx[:, :k], mask=eos_mask[:, :k])
            finalized_sents: List[int] = []
            if eos_bbsz_idx.numel() > 0:
                eos_scores = torch.masked_select(cand_scores[:, :k], mask=eos_mask[:, :k])
                finalized_sents = self.finalize_hypos(step, eos_bbsz_idx, eos_scores, tokens, scores, finalized,
                                                      finished, k, attn, src_lengths, max_len)
                remaining -= len(finalized_sents)
            if remaining == 0:
                break
            assert step < max_len, f"{step} < {max_len}"

            if finalized_sents:  # drop finished sentences from the batch
                keep = torch.ones(bsz, dtype=torch.bool, device=device)
                keep[finalized_sents] = False
                batch_idxs = torch.arange(bsz, device=device).masked_select(keep)
                bsz = batch_idxs.numel()
                eos_mask, cand_beams = eos_mask[batch_idxs], cand_beams[batch_idxs]
                bbsz_offsets = bbsz_offsets[:bsz]
                cand_bbsz_idx = cand_beams + bbsz_offsets
                cand_scores, cand_indices = cand_scores[batch_idxs], cand_indices[batch_idxs]
                src_lengths, cands_to_ignore = src_lengths[batch_idxs], cands_to_ignore[batch_idxs]
                scores = scores.view(-1, k * scores.size(1))[batch_idxs].view(bsz * k, -1)
                tokens = tokens.view(-1, k * tokens.size(1))[batch_idxs].view(bsz * k, -1)
                if attn is not None:
                    attn = attn.view(-1, k * attn.size(1) * attn.size(2))[batch_idxs].view(bsz * k, attn.size(1), -1)
            else:
                batch_idxs = None

            # the k best candidates that do not end in EOS continue (EOS ones sort last)
            eos_mask[:, :k] = cands_to_ignore | eos_mask[:, :k]
            active_mask = eos_mask.long() * n_cand + cand_offsets  # B x 2k: rank, EOS/ignored after the rest
            new_cands_to_ignore, active_hypos = torch.topk(active_mask, k=k, dim=1, largest=False)  # B x k
            cands_to_ignore = new_cands_to_ignore.ge(n_cand)
            assert (~cands_to_ignore).any(dim=1).all()
            active_bbsz_idx = torch.gather(cand_bbsz_idx, 1, active_hypos).view(-1)  # B*k rows they extend
            # every hypothesis extends itself (always so at beam 1 while no sentence ends): the
            # histories and the decoder state are already in order, nothing to copy
            in_place = torch.equal(active_bbsz_idx, row_numbers[: bsz * k])

            if not in_place:
                tokens[:, : step + 1] = tokens[:, : step + 1].index_select(0, active_bbsz_idx)
            tokens.view(bsz, k, -1)[:, :, step + 1] = torch.gather(cand_indices, 1, active_hypos)
            if step > 0 and not in_place:
                scores[:, :step] = scores[:, :step].index_select(0, active_bbsz_idx)
            scores.view(bsz, k, -1)[:, :, step] = torch.gather(cand_scores, 1, active_hypos)
            if attn is not None and not in_place:
                attn[:, :, : step + 2] = attn[:, :, : step + 2].index_select(0, active_bbsz_idx)
            # the decoder state still has the rows of removed sentences: then it is reordered anyway
            reorder_state = None if in_place and batch_idxs is None else active_bbsz_idx

        for sent in range(len(finalized)):  # best first, sorted as fairseq sorts them
            if len(finalized[sent]) > 1:  # the same float32 scores fairseq sorts, in one tensor
                order = torch.sort(torch.stack([h["score"] for h in finalized[sent]]), descending=True)[1]
                finalized[sent] = [finalized[sent][i] for i in order.tolist()]
        return finalized

    def _next_token_lprobs(self, model, tokens: Tensor, encoder_out, incremental_state,
                           buffers: "_StepBuffers") -> Tuple[Tensor, Optional[Tensor]]:
        """Log-probabilities of the next token (R x V, R = rows of ``tokens``) and the attention
        (R x S or None), the numbers fairseq's EnsembleModel.forward_decoder computes for one model."""
        rows = tokens.size(0)
        logits_out = buffers.logits(rows)  # None: the decoder's forward allocates the logits
        if logits_out is None:
            decoder_out = model.decoder(tokens, encoder_out=encoder_out, incremental_state=incremental_state)
        else:  # forward's two halves, the logits written into the buffer (FConvExtDecoder.output_layer)
            features, step_attn = model.decoder.extract_features(tokens, encoder_out, incremental_state)
            decoder_out = (model.decoder.output_layer(features, out=logits_out), step_attn)
        logits = decoder_out[0][:, -1:, :]  # R x 1 x V
        if self.temperature != 1.0:  # x / 1.0 == x: fairseq's division by 1 changes nothing
            logits = logits.div_(self.temperature)
        extra = decoder_out[1] if len(decoder_out) > 1 else None
        lprobs = buffers.log_softmax(logits.reshape(rows, -1))  # R x V
        if lprobs is None:
            lprobs = model.get_normalized_probs((logits, extra), log_probs=True, sample=None)[:, -1, :]
        attn = extra["attn"] if isinstance(extra, dict) else extra
        if isinstance(attn, (list, tuple)):
            attn = attn[0] if attn else None
        return lprobs, (attn[:, -1, :] if attn is not None else None)

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
            self._fairseq_candidates(rows, scores, step, bsz, k, n_cand, tied.nonzero().squeeze(1),
                                     cand_scores, cand_tokens, cand_beams)
        return cand_scores, cand_tokens, cand_beams

    @staticmethod
    def _fairseq_candidates(rows: Tensor, scores: Tensor, step: int, bsz: int, k: int, n_cand: int, sentences: Tensor,
                            cand_scores: Tensor, cand_tokens: Tensor, cand_beams: Tensor) -> None:
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


class _StepBuffers:
    """The two ``rows x V`` tensors of a decoding step (logits, log-probabilities), allocated
    once per search and reused at every step, on the first rows as the batch shrinks.

    Only on a CPU and in float32: there a fresh 10 MB tensor per step (320 rows x 8192 words)
    is returned to the operating system when freed and page-faulted in again at the next
    step (glibc's trim threshold), about 5 ms per step at beam 5 batch 64 on this project's
    machine.  Elsewhere (CUDA's caching allocator, bfloat16 models) the methods return None
    and the caller computes as usual.  The numbers are the same either way: ``addmm`` is what
    ``F.linear`` calls and ``_log_softmax`` is what ``F.log_softmax(x, dtype=float32)`` calls
    for a float32 ``x``."""

    def __init__(self, rows: int, vocab: int, device: torch.device, enabled: bool):
        self.enabled = enabled
        if enabled:
            self._logits = torch.empty(rows, vocab, device=device)
            self._lprobs = torch.empty(rows, vocab, device=device)

    @classmethod
    def for_model(cls, model, rows: int, device: torch.device) -> "_StepBuffers":
        fc3 = getattr(model.decoder, "fc3", None)
        enabled = (device.type == "cpu" and isinstance(fc3, torch.nn.Linear) and fc3.bias is not None
                   and fc3.weight.dtype == torch.float32
                   and getattr(model.decoder, "adaptive_softmax", None) is None)
        return cls(rows, fc3.out_features if enabled else 0, device, enabled)

    def logits(self, rows: int) -> Optional[Tensor]:
        return self._logits[:rows] if self.enabled else None

    def log_softmax(self, logits: Tensor) -> Optional[Tensor]:
        """``F.log_softmax(logits, -1, dtype=float32)`` into the buffer (None: not handled here)."""
        if not self.enabled or logits.dtype != torch.float32:
            return None
        return torch.ops.aten._log_softmax.out(logits, -1, False, out=self._lprobs[: logits.size(0)])


class FConvBeamSearchWithAlignment(SequenceGeneratorWithAlignment, FConvBeamSearch):
    """fairseq's ``--print-alignment`` generator on top of :class:`FConvBeamSearch`: its
    ``generate`` calls ``super()._generate``, which this class order resolves to ours."""

