"""Multi-step attention, one per selected decoder layer (paper, section 3.3)."""

import math
from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .weight_norm import Linear


def source_length_scale(values: Tensor, padding_mask: Optional[Tensor]) -> Union[float, Tensor]:
    """``s * sqrt(1/s)`` for each sentence, ``s`` = its number of non-pad source tokens.

    The context is a weighted sum over ``s`` vectors; the paper (section 3.4) scales it
    by ``m * sqrt(1/m)`` to undo the variance change of that sum.  fairseq's ``fconv``
    uses the true (unpadded) length, so padded and unpadded batches agree.
    Returns a float (no padding) or a ``B x 1 x 1`` tensor (computed in float32, so that
    a bfloat16 model scales by the same factor).
    """
    s = values.size(1)
    if padding_mask is None:
        return s * math.sqrt(1.0 / s)
    lengths = (s - padding_mask.sum(dim=1, keepdim=True)).float()  # B x 1
    lengths = lengths.unsqueeze(-1)  # B x 1 x 1
    return (lengths * lengths.rsqrt()).to(values.dtype)


class MultiStepAttention(nn.Module):
    """Dot-product attention of decoder state ``h_i`` over the encoder outputs.

    ``d_i = W_d h_i + b_d + g_i`` (``g_i`` = target embedding), scaled by sqrt(0.5);
    ``a_ij = softmax_j(d_i . z_j)`` over encoder outputs ``z_j`` (keys);
    ``c_i = sum_j a_ij (z_j + e_j)`` (values = encoder output + source embedding);
    the context is projected back to the conv width and added to ``h_i`` (times sqrt(0.5)).
    """

    def __init__(self, conv_channels: int, embed_dim: int):
        super().__init__()
        self.in_projection = Linear(conv_channels, embed_dim)  # h_i -> embedding space
        self.out_projection = Linear(embed_dim, conv_channels)  # c_i -> conv width

    def forward(
        self,
        x: Tensor,  # B x T x C (decoder conv output after GLU)
        target_embedding: Tensor,  # B x T x E
        keys: Tensor,  # B x S x E
        values: Tensor,  # B x S x E
        padding_mask: Optional[Tensor],  # B x S, True at padding
        length_scale: Union[float, Tensor],  # from source_length_scale()
        beams: int = 1,  # consecutive rows of x that share one row of keys/values (beam search)
    ) -> Tuple[Tensor, Tensor]:
        residual = x
        query = (self.in_projection(x) + target_embedding) * math.sqrt(0.5)  # B x T x E
        rows, steps, _ = query.shape
        # the beams of a sentence attend over the same source: B x T x E -> B/beams x beams*T x E
        query = query.reshape(rows // beams, beams * steps, -1)
        scores = torch.bmm(query, keys.transpose(1, 2))  # B/beams x beams*T x S
        if padding_mask is not None:
            # -inf in float32 so that fp16 stays finite elsewhere
            scores = scores.float().masked_fill(padding_mask.unsqueeze(1), float("-inf")).type_as(scores)
        attn = F.softmax(scores, dim=-1)  # B/beams x beams*T x S
        context = torch.bmm(attn, values) * length_scale  # B/beams x beams*T x E
        context = context.view(rows, steps, -1)  # B x T x E
        x = (self.out_projection(context) + residual) * math.sqrt(0.5)
        return x, attn.view(rows, steps, -1)  # B x T x S


class AttentionAverage:
    """The attention of a decoder's attention layers averaged over the layers (``B x T x S``,
    what ``--print-alignment`` shows); collected only when ``enabled`` (eval mode with
    ``need_attn``), else :attr:`value` stays None."""

    def __init__(self, num_layers: int, enabled: bool):
        self.num_layers, self.enabled = num_layers, enabled
        self.value: Optional[Tensor] = None

    def add(self, attn: Tensor) -> None:
        if self.enabled:
            attn = attn / self.num_layers
            self.value = attn if self.value is None else self.value + attn
