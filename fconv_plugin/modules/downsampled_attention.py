"""Gated multi-head attention with downsampled heads (Fan et al. 2018, "Hierarchical Neural
Story Generation", section 4.2 "Gated multi-scale self-attention").

* :class:`DownsampledMultiHeadAttention` -- scaled dot-product attention with ``H`` heads of
  ``E / H`` channels.  Options, as fairseq's ``DownsampledMultiHeadAttention``:

  - ``project_input``: queries, keys and values go through learned projections first;
  - ``gated``: each projection is a small gated network (:func:`GatedLinear`) instead of one
    linear layer;
  - ``downsample``: head ``h`` (0-based) attends only to every ``(h + 1)``-th key position
    (0, h + 1, 2(h + 1), ...): one head per time scale ("multi-scale"); each head then has
    its own projections and output layer.

  Causal self-attention (``causal=True``) lets position ``t`` see keys at positions ``< t``
  only, plus a "null" key with score 0 and value 0 (fairseq's ``scalar_bias``) so that
  position 0, which sees no key, attends to nothing.  Padded key positions are masked.

  Incremental decoding is real: in causal mode the projected keys/values of past steps are
  cached per head group in typed incremental state (one new step per call), and with
  ``static_kv`` (attention over the encoder output) the projected encoder keys/values are
  computed once and reused; :meth:`reorder_incremental_state` reorders both for beam search.

* :class:`GatedSelfAttention` -- the decoder's (and optionally the encoder's) self-attention
  block: linear maps from the conv width to the attention width, causal multi-head
  attention, then ``LayerNorm(attention + x)``.

Heads are organised in *groups* of heads that share a key stride: without downsampling one
group holds all ``H`` heads (one projection ``E -> E`` split into heads); with downsampling
there are ``H`` groups of one head each (stride ``h + 1``, projections ``E -> E / H``).
"""

from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from fairseq.incremental_decoding_utils import with_incremental_state
from torch import Tensor

from .convolution import IncrementalState
from .weight_norm import Linear


def GatedLinear(in_features: int, out_features: int) -> nn.Sequential:
    """A 3-layer gated projection ``in -> 4 out -GLU-> 2 out -> 2 out -GLU-> out -> out``
    (weight-normalised linear layers, GLU between them), as fairseq's ``GatedLinear``."""
    return nn.Sequential(
        Linear(in_features, out_features * 4),
        nn.GLU(),  # 4 out -> 2 out
        Linear(out_features * 2, out_features * 2),
        nn.GLU(),  # 2 out -> out
        Linear(out_features, out_features),
    )


def _projection(in_features: int, out_features: int, gated: bool) -> nn.Module:
    return GatedLinear(in_features, out_features) if gated else Linear(in_features, out_features)


class HeadGroup(nn.Module):
    """``num_heads`` heads of ``head_dim`` channels that see every ``stride``-th key.

    Holds the query/key/value projections ``E -> num_heads * head_dim`` (none without
    ``project_input``) and, for a downsampled head, its own output layer."""

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        head_dim: int,
        stride: int,
        project_input: bool,
        gated: bool,
        own_output: bool,
    ):
        super().__init__()
        self.num_heads = num_heads
        self.stride = stride
        width = num_heads * head_dim
        if project_input:
            self.q_proj = _projection(embed_dim, width, gated)
            self.k_proj = _projection(embed_dim, width, gated)
            self.v_proj = _projection(embed_dim, width, gated)
        else:
            self.q_proj = self.k_proj = self.v_proj = None
        self.out_proj = Linear(width, width) if own_output else None

    def project(self, proj: Optional[nn.Module], x: Tensor) -> Tensor:
        return x if proj is None else proj(x)


@with_incremental_state
class DownsampledMultiHeadAttention(nn.Module):
    """Multi-head attention, optionally gated and downsampled (see the module docstring).

    Inputs and outputs are batch-major: query ``B x T x E``, key/value ``B x S x E``,
    output ``B x T x out_channels``.
    """

    def __init__(
        self,
        out_channels: int,
        embed_dim: int,
        num_heads: int,
        project_input: bool = True,
        gated: bool = False,
        downsample: bool = False,
    ):
        super().__init__()
        if num_heads < 1 or embed_dim % num_heads != 0:
            raise ValueError(f"attention width {embed_dim} is not divisible by {num_heads} heads")
        head_dim = embed_dim // num_heads
        if downsample and not project_input and num_heads > 1:
            # each downsampled head needs its own E -> E/H projection
            raise ValueError("downsampled multi-head attention needs project_input (or one head)")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        # scaled dot-product attention: scores q.k / sqrt(head_dim)
        self.scaling = head_dim**-0.5
        if downsample:
            self.groups = nn.ModuleList(
                HeadGroup(embed_dim, 1, head_dim, h + 1, project_input, gated, own_output=True)
                for h in range(num_heads)
            )
        else:
            self.groups = nn.ModuleList(
                [HeadGroup(embed_dim, num_heads, head_dim, 1, project_input, gated, own_output=False)]
            )
        self.out_proj = Linear(embed_dim, out_channels)

    def forward(
        self,
        query: Tensor,  # B x T x E
        key: Tensor,  # B x S x E
        value: Tensor,  # B x S x E
        key_padding_mask: Optional[Tensor] = None,  # B x S, True at padding
        causal: bool = False,
        incremental_state: Optional[IncrementalState] = None,
        static_kv: bool = False,
    ) -> Tuple[Tensor, Tensor]:
        """Returns the output (``B x T x out_channels``) and the first group's attention
        weights averaged over its heads (``B x T x S'``, S' = keys that group sees, plus a
        leading null-key column in causal mode).

        ``causal``: self-attention; query t sees keys at positions < t and the null key.
        With ``incremental_state`` and ``causal``, query/key/value are the newest step
        only (``B x 1 x E``); with ``static_kv`` the keys/values are the same every step
        (the encoder output) and are projected once.
        """
        if incremental_state is not None and causal:
            return self._causal_step(query, key, value, incremental_state)
        contexts, weights = [], None
        for index, group in enumerate(self.groups):
            q = group.project(group.q_proj, query) * self.scaling  # B x T x W
            k, v = None, None
            if incremental_state is not None and static_kv:
                k, v = self._get_cached(incremental_state, index)
            if k is None:
                k = group.project(group.k_proj, key[:, :: group.stride])  # B x S' x W
                v = group.project(group.v_proj, value[:, :: group.stride])  # B x S' x W
                if incremental_state is not None and static_kv:
                    self._set_cached(incremental_state, index, k, v)
            mask = None  # broadcast to B x heads x T x S'
            if key_padding_mask is not None:
                mask = key_padding_mask[:, :: group.stride].unsqueeze(1).unsqueeze(2)  # B x 1 x 1 x S'
            if causal:
                key_positions = torch.arange(0, key.size(1), group.stride, device=query.device)  # S'
                query_positions = torch.arange(query.size(1), device=query.device)  # T
                future = key_positions.unsqueeze(0) >= query_positions.unsqueeze(1)  # T x S'
                mask = future if mask is None else (mask | future)
            context, attn = _attend(q, k, v, group.num_heads, mask, null_key=causal)
            contexts.append(context)
            if weights is None:
                weights = attn.mean(dim=1)  # B x T x S': average over the group's heads
        return self._output(contexts), weights

    def _causal_step(
        self, query: Tensor, key: Tensor, value: Tensor, incremental_state: IncrementalState
    ) -> Tuple[Tensor, Tensor]:
        """One decoding step of causal self-attention.  The query at step ``t`` attends to
        the cached keys of steps ``< t`` (and the null key); afterwards this step's key and
        value join each group's cache if ``t`` is a multiple of the group's stride."""
        bsz = query.size(0)
        step = None  # t = number of cached keys of the first group (stride 1)
        contexts, weights = [], None
        for index, group in enumerate(self.groups):
            k, v = self._get_cached(incremental_state, index)
            if k is None:  # step 0: nothing cached yet
                width = group.num_heads * (self.embed_dim // self.num_heads)
                k = v = query.new_zeros(bsz, 0, width)  # B x 0 x W
            if step is None:
                step = k.size(1)
            q = group.project(group.q_proj, query[:, -1:]) * self.scaling  # B x 1 x W
            context, attn = _attend(q, k, v, group.num_heads, None, null_key=True)
            contexts.append(context)
            if weights is None:
                weights = attn.mean(dim=1)  # B x 1 x (1 + t)
            if step % group.stride == 0:
                new_k = group.project(group.k_proj, key[:, -1:])  # B x 1 x W
                new_v = group.project(group.v_proj, value[:, -1:])  # B x 1 x W
                self._set_cached(incremental_state, index, torch.cat([k, new_k], 1), torch.cat([v, new_v], 1))
        return self._output(contexts), weights

    def _output(self, contexts: List[Tensor]) -> Tensor:
        """Per-head outputs (downsampled heads: their own layer), concatenated over the
        groups (B x T x E), projected to the output width."""
        outputs = [
            context if group.out_proj is None else group.out_proj(context)
            for group, context in zip(self.groups, contexts)
        ]
        return self.out_proj(torch.cat(outputs, dim=-1))

    # -- incremental state: the projected keys and values of each head group ----------
    def _get_cached(self, incremental_state: IncrementalState, index: int):
        state = self.get_incremental_state(incremental_state, "kv")
        if state is None or state.get(f"k{index}") is None:
            return None, None
        return state[f"k{index}"], state[f"v{index}"]

    def _set_cached(self, incremental_state: IncrementalState, index: int, k: Tensor, v: Tensor) -> None:
        state = self.get_incremental_state(incremental_state, "kv") or {}
        state[f"k{index}"] = k  # B x S' x W
        state[f"v{index}"] = v
        self.set_incremental_state(incremental_state, "kv", state)

    def reorder_incremental_state(self, incremental_state: IncrementalState, new_order: Tensor) -> None:
        state = self.get_incremental_state(incremental_state, "kv")
        if state is None:
            return
        reordered = {
            name: None if cached is None else cached.index_select(0, new_order) for name, cached in state.items()
        }
        self.set_incremental_state(incremental_state, "kv", reordered)


def _attend(
    q: Tensor,  # B x T x W, already scaled
    k: Tensor,  # B x S x W
    v: Tensor,  # B x S x W
    num_heads: int,
    mask: Optional[Tensor],  # True = masked; broadcastable to B x heads x T x S
    null_key: bool,
) -> Tuple[Tensor, Tensor]:
    """Softmax attention of every head; returns the context (B x T x W) and the weights
    (B x heads x T x S, with a leading null-key column when ``null_key``)."""
    bsz, tgt_len, width = q.shape
    src_len = k.size(1)
    head_dim = width // num_heads
    q = q.view(bsz, tgt_len, num_heads, head_dim).transpose(1, 2)  # B x heads x T x d
    k = k.view(bsz, src_len, num_heads, head_dim).transpose(1, 2)  # B x heads x S x d
    v = v.view(bsz, src_len, num_heads, head_dim).transpose(1, 2)  # B x heads x S x d
    scores = torch.matmul(q, k.transpose(2, 3)).float()  # B x heads x T x S (float32 softmax)
    if mask is not None:
        scores = scores.masked_fill(mask, float("-inf"))
    if null_key:
        # the null key ("scalar bias"): score 0, value 0, placed first as fairseq does
        scores = torch.cat([scores.new_zeros(bsz, num_heads, tgt_len, 1), scores], dim=-1)
    attn = F.softmax(scores, dim=-1).type_as(q)  # B x heads x T x (1 +) S
    key_attn = attn[..., 1:] if null_key else attn  # the null key's value is 0
    context = torch.matmul(key_attn, v)  # B x heads x T x d
    context = context.transpose(1, 2).reshape(bsz, tgt_len, width)  # B x T x W (heads concatenated)
    return context, attn


class GatedSelfAttention(nn.Module):
    """Self-attention block of fconv_self_att (fairseq's ``SelfAttention``):
    ``LayerNorm(x + MHA(W_q x, W_k x, W_v x))`` with causal multi-head attention over the
    layer's own (conv + GLU) outputs; ``x`` is ``B x T x C``, the attention ``E`` wide."""

    def __init__(
        self,
        channels: int,
        embed_dim: int,
        num_heads: int,
        project_input: bool = False,
        gated: bool = False,
        downsample: bool = False,
    ):
        super().__init__()
        self.in_proj_q = Linear(channels, embed_dim)
        self.in_proj_k = Linear(channels, embed_dim)
        self.in_proj_v = Linear(channels, embed_dim)
        self.attention = DownsampledMultiHeadAttention(
            channels, embed_dim, num_heads, project_input=project_input, gated=gated, downsample=downsample
        )
        self.layer_norm = nn.LayerNorm(channels)

    def forward(
        self,
        x: Tensor,  # B x T x C (B x 1 x C when decoding incrementally)
        key_padding_mask: Optional[Tensor] = None,  # B x T, True at padding
        incremental_state: Optional[IncrementalState] = None,
    ) -> Tensor:
        out, _ = self.attention(
            self.in_proj_q(x),
            self.in_proj_k(x),
            self.in_proj_v(x),
            key_padding_mask=key_padding_mask,
            causal=True,
            incremental_state=incremental_state,
        )
        return self.layer_norm(out + x)  # B x T x C
