"""fairseq's beam search around an exported step graph, in numpy.

The step graph (``fconv_plugin.serving.beam_graph.BeamStep``) picks each step's ``K`` continuing
hypotheses and its EOS candidates itself; what is left for the host, and written here once for every
runtime (a :class:`Backend` runs the two graphs), is what fairseq's ``SequenceGenerator`` does
around ``search.BeamSearch``:

* the additive vocabulary bias of each step: ``-inf`` at pad always, at EOS before ``min_len``, at
  everything but EOS at ``max_len`` (``min(max_len_a * S + max_len_b, max_target_positions - 1)``,
  ``S`` the padded source length of the batch, as in fairseq);
* the token histories, reordered by the beams each step continues;
* finishing hypotheses: an EOS candidate's score divided by ``length ** lenpen`` (``length`` counts
  the EOS), at most ``K`` per sentence; a sentence is done with ``K`` finished hypotheses (or at
  ``max_len``) and leaves the batch;
* the n-best of each sentence, best score first.
"""

from typing import List, Optional, Protocol, Sequence, Tuple

import numpy as np

from .artifact import EOS, PAD

#: one finished hypothesis: (normalised score, tokens without the final EOS)
Hypothesis = Tuple[float, List[int]]


class Backend(Protocol):
    """Runs the exported graphs on numpy arrays (``fconv_runtime.backends``)."""

    #: per decoder window: (frames, channels)
    window_shapes: Sequence[Tuple[int, int]]
    vocabulary: int

    def encode(self, src_tokens: np.ndarray) -> List[np.ndarray]:
        """``B x S`` int64 -> keys, values, source_mask, length_scale."""

    def step(self, inputs: List[np.ndarray]) -> List[np.ndarray]:
        """BeamStep's inputs (windows last) -> its outputs (new windows last)."""


def max_length(source_length: int, max_len_a: float, max_len_b: int, max_target_positions: int) -> int:
    """fairseq's ``min(int(max_len_a * src_len + max_len_b), max_len - 1)`` (max_len: the decoder's positions)."""
    return min(int(max_len_a * source_length + max_len_b), max_target_positions - 1)


def beam_search(
    backend: Backend,
    src_tokens: np.ndarray,
    beam: int,
    max_target_positions: int,
    max_len_a: float = 0.0,
    max_len_b: int = 200,
    lenpen: float = 1.0,
    min_len: int = 1,
    words: Optional[np.ndarray] = None,
) -> List[List[Hypothesis]]:
    """Every sentence's finished hypotheses (at most ``beam``), best first.  ``src_tokens``: ``B x S``
    int64, left-padded with pad, each sentence ending in EOS (fairseq's source batch).  ``words``: for a
    step graph over a shortlist, the batch's words (sorted, the specials first: each keeps its id as its
    column); the bias then has one entry per word."""
    sentences, source_length = src_tokens.shape
    k = beam
    vocabulary = backend.vocabulary if words is None else len(words)
    if not 1 <= k <= (vocabulary - 2) // 2:
        raise ValueError(f"beam {k} must be between 1 and {(vocabulary - 2) // 2} for a vocabulary of {vocabulary}")
    max_len = max_length(source_length, max_len_a, max_len_b, max_target_positions)
    keys, values, source_mask, length_scale = backend.encode(np.ascontiguousarray(src_tokens, dtype=np.int64))

    tokens = np.full((sentences, k), EOS, dtype=np.int64)  # the newest token of each hypothesis (BOS = EOS)
    scores = np.zeros((sentences, k), dtype=np.float32)
    scores[:, 1:] = -np.inf  # step 0: the k beams are one hypothesis, beam 0's
    origin = np.tile(np.arange(k, dtype=np.int64), (sentences, 1))  # B x K
    ignore = np.zeros((sentences, k), dtype=bool)
    windows = [
        np.zeros((sentences, k, frames, channels), dtype=np.float32) for frames, channels in backend.window_shapes
    ]
    history = np.zeros((sentences, k, 0), dtype=np.int64)  # B x K x t: tokens after BOS
    alive = np.arange(sentences)  # the sentence of each batch row
    finalized: List[List[Hypothesis]] = [[] for _ in range(sentences)]

    pad_bias = np.zeros(vocabulary, dtype=np.float32)
    pad_bias[PAD] = -np.inf
    for step in range(max_len + 1):  # one extra step for the final EOS
        bias = pad_bias.copy()
        if step >= max_len:  # only EOS is left
            bias[:] = -np.inf
            bias[EOS] = 0.0
        if step < min_len:
            bias[EOS] = -np.inf
        position = np.array([step + 1], dtype=np.int64)
        inputs = [tokens, position, keys, values, source_mask, length_scale, scores, bias, origin, ignore]
        outputs = backend.step(inputs + ([] if words is None else [words]) + windows)
        next_tokens, next_scores, next_origin, next_ignore, eos_mask, eos_scores, eos_beams = outputs[:7]
        windows = list(outputs[7:])

        # finish the hypotheses of the EOS candidates, in fairseq's order (sentence, then rank)
        done = np.zeros(len(alive), dtype=bool)
        rows, ranks = np.nonzero(eos_mask)
        if rows.size:
            length_norm = np.float32((step + 1) ** lenpen)
            for row, rank in zip(rows.tolist(), ranks.tolist()):
                sentence = alive[row]
                if len(finalized[sentence]) < k:
                    hypothesis = history[row, eos_beams[row, rank]].tolist()
                    finalized[sentence].append((float(np.float32(eos_scores[row, rank]) / length_norm), hypothesis))
            for row in np.unique(rows).tolist():
                done[row] = len(finalized[alive[row]]) == k or step == max_len
        if done.all():
            break

        history = np.concatenate(
            [np.take_along_axis(history, next_origin[:, :, None], axis=1), next_tokens[:, :, None]], axis=2
        )  # B x K x (t + 1)
        tokens, scores, origin, ignore = next_tokens, next_scores, next_origin, next_ignore
        if done.any():  # drop finished sentences from the batch
            keep = ~done
            alive, history = alive[keep], history[keep]
            tokens, scores, origin, ignore = tokens[keep], scores[keep], origin[keep], ignore[keep]
            keys, values, source_mask, length_scale = keys[keep], values[keep], source_mask[keep], length_scale[keep]
            windows = [w[keep] for w in windows]

    for hypotheses in finalized:  # best first; equal scores keep the order they finished in
        hypotheses.sort(key=lambda h: -h[0])
    return finalized
