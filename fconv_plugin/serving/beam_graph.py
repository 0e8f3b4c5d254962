"""One step of fairseq's beam search as a pure-tensor module, for export with the decoder step.

:class:`BeamStep` wraps :class:`~fconv_plugin.serving.step.DecoderStep` and adds what fairseq's
``SequenceGenerator`` (``search.BeamSearch``) does with the step's log-probabilities, so that an
exported graph returns the next tokens themselves and the loop around it (``fconv_runtime``)
is a few lines of numpy any runtime can drive:

    BeamStep(tokens, position, keys, values, source_mask, length_scale,
             scores, bias, origin, ignore, *windows)
        -> tokens, scores, origin, ignore, eos_mask, eos_scores, eos_beams, *new_windows

Inputs (``B`` sentences, ``K`` beams, ``V`` words, ``S`` source positions):

* ``tokens`` ``B x K`` int64: the newest token of each hypothesis (EOS, i.e. BOS, at step 0);
  ``position``: ``1`` int64, the prefix length (``step + 1``);
* ``keys``, ``values``, ``source_mask``, ``length_scale``: the encoder's outputs (:class:`SourceEncoder`);
* ``scores`` ``B x K`` float32: each hypothesis' cumulative log-probability.  At step 0 the ``K``
  beams of a sentence are one hypothesis: the host passes ``0`` for beam 0 and ``-inf`` for the
  others, which makes the top-``2K`` over ``K x V`` below fairseq's top-``2K`` over beam 0's ``V``;
* ``bias`` ``V`` float32: added to every hypothesis' log-probabilities before the search: ``-inf``
  at pad, at EOS before ``min_len``, everywhere but EOS at ``max_len`` (the host's rules, fairseq's
  ``lprobs[:, pad] = -inf`` etc.; adding ``0`` or ``-inf`` gives fairseq's numbers exactly);
* ``origin`` ``B x K`` int64: the beam each hypothesis continues (the previous step's ``origin``
  output; ``0..K-1`` at step 0): the windows, which the previous step returned in its own row order,
  are reordered by it first (fairseq's ``reorder_incremental_state``);
* ``ignore`` ``B x K`` bool: fairseq's ``cands_to_ignore`` (all False at step 0);
* ``windows``: the decoder state, one tensor per causal convolution with ``k > 1`` (zeros at step 0).

Outputs:

* ``tokens``, ``scores``, ``origin``, ``ignore`` ``B x K``: the ``K`` continuing hypotheses, chosen as
  fairseq chooses them: the best ``2K`` candidates over ``K x V``; those among the first ``K`` that
  end in EOS finish a hypothesis; the best ``K`` others continue (EOS candidates and ignored slots
  rank last: they become ``ignore``-d slots);
* ``eos_mask``, ``eos_scores``, ``eos_beams`` ``B x K``: the candidates among the first ``K`` that end
  in EOS (finite score, not ignored), their cumulative scores and the beams they end;
* ``new_windows``: the decoder state after this step, in this step's row order (the next step
  reorders it by the ``origin`` output).

The host keeps the token histories (reordered by ``origin``), finalizes EOS candidates with
fairseq's length normalisation, and drops finished sentences (``fconv_runtime``).

:class:`ShortlistBeamStep` is the same over a vocabulary shortlist: one more input after ``ignore``,
``words`` (the ``C`` words the batch is scored over); ``bias`` then has ``C`` entries.
"""

from typing import Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from .int8 import vocabulary_rows
from .step import DecoderStep


class BeamStep(nn.Module):
    """:class:`DecoderStep` plus one step of fairseq's beam search (module docstring)."""

    def __init__(self, step: DecoderStep, eos: int):
        super().__init__()
        self.step = step
        self.eos = eos
        self.vocabulary = step.vocabulary

    def forward(
        self,
        tokens: Tensor,
        position: Tensor,
        keys: Tensor,
        values: Tensor,
        source_mask: Tensor,
        length_scale: Tensor,
        scores: Tensor,
        bias: Tensor,
        origin: Tensor,
        ignore: Tensor,
        *windows: Tensor,
    ) -> Tuple[Tensor, ...]:
        windows = self._reordered(windows, origin)
        log_probs, _, new_windows = self.step(tokens, position, windows, keys, values, source_mask, length_scale)
        return (*self._search(log_probs, scores, bias, ignore, None), *new_windows)

    @staticmethod
    def _reordered(windows: Tuple[Tensor, ...], origin: Tensor) -> Tuple[Tensor, ...]:
        """The previous step's windows in the order of the hypotheses they continue."""
        sentences, beams = origin.shape
        rows = (origin + torch.arange(sentences, device=origin.device).unsqueeze(1) * beams).reshape(-1)  # B*K
        return tuple(
            w.reshape(sentences * beams, w.size(2), w.size(3))
            .index_select(0, rows)  # B*K x (k-1)d x C
            .reshape(sentences, beams, w.size(2), w.size(3))  # B x K x (k-1)d x C
            for w in windows
        )

    def _search(
        self, log_probs: Tensor, scores: Tensor, bias: Tensor, ignore: Tensor, words: Optional[Tensor]
    ) -> Tuple[Tensor, ...]:
        """fairseq's BeamSearch.step and candidate selection on ``B x K x V`` log-probabilities (``V``:
        the columns scored; ``words``: the word of each column, None when the columns are the words)."""
        sentences, beams, columns = log_probs.shape
        candidates = 2 * beams
        totals = (log_probs + bias) + scores.unsqueeze(-1)  # B x K x V
        cand_scores, flat = torch.topk(totals.reshape(sentences, -1), candidates)  # B x 2K over K*V
        cand_beams = torch.div(flat, columns, rounding_mode="floor")  # B x 2K
        cand_tokens = flat - cand_beams * columns  # B x 2K
        if words is not None:
            cand_tokens = words[cand_tokens]  # B x 2K: columns -> words

        # the first K candidates that end in EOS (finite, slot not ignored) finish hypotheses
        eos = cand_tokens.eq(self.eos) & cand_scores.ne(float("-inf"))  # B x 2K
        eos_first = eos[:, :beams] & ~ignore  # B x K

        # the best K others continue: rank = position, EOS and ignored slots after all the rest
        ranked_last = torch.cat([eos_first | ignore, eos[:, beams:]], dim=1)  # B x 2K
        rank = ranked_last.long() * candidates + torch.arange(candidates, device=log_probs.device)  # B x 2K
        new_rank, active = torch.topk(rank, beams, dim=1, largest=False)  # B x K
        next_tokens = torch.gather(cand_tokens, 1, active)
        next_scores = torch.gather(cand_scores, 1, active)
        next_origin = torch.gather(cand_beams, 1, active)
        next_ignore = new_rank.ge(candidates)
        return (
            next_tokens,
            next_scores,
            next_origin,
            next_ignore,
            eos_first,
            cand_scores[:, :beams],
            cand_beams[:, :beams],
        )


class ShortlistBeamStep(BeamStep):
    """:class:`BeamStep` over a vocabulary shortlist: one more input after ``ignore``, ``words`` (``C``
    int64, sorted, the special symbols first so that each keeps its id as its column), the words the
    batch is scored over; ``bias`` is then ``C`` long (one entry per column), and the output tokens are
    words.  The rows of ``fc3`` are gathered inside the graph."""

    def forward(
        self,
        tokens: Tensor,
        position: Tensor,
        keys: Tensor,
        values: Tensor,
        source_mask: Tensor,
        length_scale: Tensor,
        scores: Tensor,
        bias: Tensor,
        origin: Tensor,
        ignore: Tensor,
        words: Tensor,
        *windows: Tensor,
    ) -> Tuple[Tensor, ...]:
        windows = self._reordered(windows, origin)
        vocabulary = vocabulary_rows(self.step, words)  # fc3's rows: C x out_embed_dim, C[, C]
        log_probs, _, new_windows = self.step(
            tokens, position, windows, keys, values, source_mask, length_scale, **vocabulary
        )
        return (*self._search(log_probs, scores, bias, ignore, words), *new_windows)


#: the names of BeamStep's inputs and outputs (windows: window_<i>, new_window_<i>)
STEP_INPUTS = (
    "tokens",
    "position",
    "keys",
    "values",
    "source_mask",
    "length_scale",
    "scores",
    "bias",
    "origin",
    "ignore",
)
STEP_OUTPUTS = ("next_tokens", "next_scores", "next_origin", "next_ignore", "eos_mask", "eos_scores", "eos_beams")
ENCODER_INPUTS = ("src_tokens",)
ENCODER_OUTPUTS = ("keys", "values", "source_mask", "length_scale")
