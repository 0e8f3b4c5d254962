"""Token embeddings and learned absolute positions (paper, section 3.1)."""

import torch
import torch.nn as nn
import torch.nn.functional as F
from fairseq import utils


def Embedding(num_embeddings: int, embedding_dim: int, padding_idx: int) -> nn.Embedding:
    """Token embedding, ``N(0, 0.1)``, the padding row zero."""
    m = nn.Embedding(num_embeddings, embedding_dim, padding_idx=padding_idx)
    nn.init.normal_(m.weight, mean=0.0, std=0.1)
    nn.init.zeros_(m.weight[padding_idx])
    return m


class LearnedPositions(nn.Embedding):
    """Learned embedding of absolute positions ``p = (p_1, ..., p_m)``.

    Positions count real tokens from ``padding_idx + 1`` (so left-padded sources get the
    same positions as unpadded ones) and padding maps to the zero ``padding_idx`` row.
    The table holds exactly ``max_positions`` usable rows: unlike fairseq's ``fconv``,
    whose default table of 1024 rows accepts only 1022 tokens, ``max_positions=1024``
    here means sequences of 1024 tokens work.
    """

    def __init__(self, max_positions: int, embedding_dim: int, padding_idx: int):
        super().__init__(max_positions + padding_idx + 1, embedding_dim, padding_idx)
        self.max_positions = max_positions
        nn.init.normal_(self.weight, mean=0.0, std=0.1)
        nn.init.zeros_(self.weight[padding_idx])

    def forward(self, tokens: torch.Tensor, incremental: bool = False) -> torch.Tensor:
        """tokens: B x T.  With ``incremental`` only the last position is embedded
        (B x 1 x C): decoding step ``t`` sees the whole prefix ``tokens``."""
        length = tokens.size(1)
        if length > self.max_positions:
            raise ValueError(
                f"sequence of {length} tokens is longer than the model's "
                f"{self.max_positions} positions; raise --max-source-positions/"
                "--max-target-positions when training, or skip/truncate long inputs "
                "(--skip-invalid-size-inputs-valid-test, --truncate-source)"
            )
        if incremental:
            # B x 1: every sentence of the batch is at the same step
            positions = tokens.new_full((1, 1), self.padding_idx + length)
        else:
            positions = utils.make_positions(tokens, self.padding_idx)  # B x T
        return F.embedding(positions, self.weight, self.padding_idx)


def embed_prefix(
    prev_output_tokens: torch.Tensor,  # B x T
    embed_tokens: nn.Embedding,
    embed_positions: "LearnedPositions | None",
    incremental: bool,
) -> torch.Tensor:
    """A decoder's input: token embedding + learned position (when the model has positions),
    B x T x E; in an incremental step only the newest position, B x 1 x E (its position is
    the length of the whole prefix)."""
    positions = None if embed_positions is None else embed_positions(prev_output_tokens, incremental=incremental)
    if incremental:
        prev_output_tokens = prev_output_tokens[:, -1:]  # B x 1
    x = embed_tokens(prev_output_tokens)  # B x T x E
    return x if positions is None else x + positions
