"""fconv_ext's decoder as one pure-tensor step, and its encoder as one pure-tensor function.

Beam search calls the decoder once per output position.  Written as a module of plain tensors in
and out, with a fixed-size state, that call can be compiled (``torch.compile``), exported
(``torch.export`` -> ONNX or an AOTInductor package) and quantized (every product is an
``nn.Linear``), and nothing in it depends on fairseq:

    DecoderStep(tokens, position, windows, keys, values, source_mask, length_scale)
        -> log_probs, attention, new_windows

* ``tokens``: ``B x K`` (sentences x beams), the newest token of each hypothesis; ``position``:
  ``1``-element int64 tensor, the length of the prefix (the newest token's position);
* ``windows``: one tensor per causal convolution with ``k > 1``, ``B x K x (k - 1) * d x C_in``: the
  last ``(k - 1) * d`` inputs of that layer (zeros before the first step).  This is the whole
  decoder state: a ConvS2S decoder layer sees a fixed window of the past, so nothing grows with
  the output (a Transformer's cache appends a frame per step).  The new windows are returned;
* ``keys``, ``values``: the encoder output ``z`` and ``z + e``, ``B x S x E``, one row per sentence
  (the ``K`` beams of a sentence attend over the same source);
* ``source_mask``: ``B x S`` bool, True at padding; ``length_scale``: ``B x 1 x 1`` float32, the
  paper's ``s * sqrt(1/s)`` per sentence (:func:`source_length_scale`);
* ``log_probs``: ``B x K x V`` float32 (``V``: the vocabulary, or the rows given as
  ``vocabulary_weight`` / ``vocabulary_bias`` [/ ``vocabulary_scale`` for int8 rows]: a shortlist);
  ``attention``: ``B x K x S``, averaged
  over the attention layers.

Weight norm is folded (the step holds each weight's value, ``g * v / ||v||``, as a plain tensor), and
each causal convolution is the ``nn.Linear`` its incremental step
computes: the ``out x in x k`` weight laid out frame-major as ``out x (k * in)`` and applied to the
window's ``k`` taps.  The operations are the incremental decoder's, in its order, so that in eager
mode the step's log-probabilities are the model's bit for bit (``FConvBeamSearch`` gives the same
hypotheses through either; tests compare both).

:class:`SourceEncoder` is the encoder the same way (``src_tokens -> keys, values, source_mask,
length_scale``), its convolutions ``nn.Linear`` over the ``k`` shifted copies of the input, so
that it exports and quantizes like the step; it computes the model's encoder output to float
rounding (the model's encoder uses ``conv_tbc`` where that is faster).

Only fconv_ext (:class:`~fconv_plugin.models.fconv_ext.FConvExtModel` and its presets) has a step;
:func:`unsupported_reason` says why another model has none.
"""

import math
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..modules import SQRT_HALF
from ..modules.attention import source_length_scale
from .int8 import int8_linear

#: the decoder state: one window of past inputs per causal convolution with k > 1
Windows = Tuple[Tensor, ...]


def unsupported_reason(model: nn.Module) -> Optional[str]:
    """Why ``model`` has no pure-tensor step (None: it has one)."""
    from ..models.fconv_ext import FConvExtDecoder, FConvExtEncoder  # the one family with a step

    encoder, decoder = getattr(model, "encoder", None), getattr(model, "decoder", None)
    if type(encoder) is not FConvExtEncoder or type(decoder) is not FConvExtDecoder:
        return (
            f"{type(model).__name__} has no decoder step: only fconv_ext models (--arch fconv_ext and its "
            "presets) do; fconv_ext_lm and fconv_ext_self_att decode through fairseq's incremental interface"
        )
    return None


def _plain_linear(weight: Tensor, bias: Optional[Tensor]) -> nn.Linear:
    """An ``nn.Linear`` over ``weight`` (``out x in``) and ``bias``, sharing their storage."""
    layer = nn.Linear(weight.size(1), weight.size(0), bias=bias is not None, device="meta")
    layer.weight = nn.Parameter(weight.detach(), requires_grad=False)
    if bias is not None:
        layer.bias = nn.Parameter(bias.detach(), requires_grad=False)
    return layer


def _copy_linear(linear: nn.Linear) -> nn.Linear:
    return _plain_linear(linear.weight, linear.bias)


def _conv_as_linear(conv: nn.Conv1d) -> nn.Linear:
    """A convolution's ``out x in x k`` weight as the ``out x (k * in)`` product over ``k`` frames,
    frame-major (what :class:`~fconv_plugin.modules.CausalConv1d` computes in an incremental step)."""
    weight = conv.weight.detach()
    linearized = weight.permute(0, 2, 1).reshape(weight.size(0), -1).contiguous()  # out x in x k -> out x (k*in)
    return _plain_linear(linearized, conv.bias)


class _Layer(nn.Module):
    """One gated conv block as products: the convolution, the residual's width projection and
    (decoder) the attention's two projections."""

    def __init__(self, conv: nn.Conv1d, projection: Optional[nn.Linear], residual: int, attention=None):
        super().__init__()
        self.kernel_size, self.dilation = conv.kernel_size[0], conv.dilation[0]
        self.in_channels = conv.in_channels
        self.conv = _conv_as_linear(conv)
        self.projection = None if projection is None else _copy_linear(projection)
        self.residual = residual
        self.attention_in = None if attention is None else _copy_linear(attention.in_projection)
        self.attention_out = None if attention is None else _copy_linear(attention.out_projection)

    @property
    def window(self) -> int:
        """Past input frames the layer keeps: ``(k - 1) * d``."""
        return (self.kernel_size - 1) * self.dilation


class _Side(nn.Module):
    """What the step and the encoder take from their side of the model: the gate, the token and
    position embeddings, ``fc1``, the conv blocks as products (with ``attention`` per layer on the
    decoder side) and ``fc2``."""

    def __init__(self, owner: nn.Module):
        super().__init__()
        self.gate = owner.stack.gate
        self.padding_idx = owner.embed_tokens.padding_idx
        self.embed_tokens = nn.Parameter(owner.embed_tokens.weight.detach(), requires_grad=False)  # V x E
        self.embed_positions = nn.Parameter(owner.embed_positions.weight.detach(), requires_grad=False)  # P x E
        self.max_positions = owner.embed_positions.max_positions
        self.fc1 = _copy_linear(owner.fc1)
        attention = getattr(owner, "attention", None) or [None] * len(owner.stack.convolutions)
        self.layers = nn.ModuleList(
            _Layer(conv, projection, residual, attend)
            for conv, projection, residual, attend in zip(
                owner.stack.convolutions, owner.stack.projections, owner.stack.residuals, attention
            )
        )
        self.fc2 = _copy_linear(owner.fc2)


def _side_of(model: nn.Module, side: str) -> nn.Module:
    """The model's ``"encoder"`` or ``"decoder"`` (refusing other models).  Its weights are read, not
    changed: while weight norm is live, reading ``.weight`` computes ``g * v / ||v||``, the value
    folding would store, so a model still training keeps training."""
    reason = unsupported_reason(model)
    if reason is not None:
        raise ValueError(reason)
    return getattr(model, side)


class DecoderStep(_Side):
    """fconv_ext's decoder for one output position of ``B x K`` hypotheses (module docstring)."""

    def __init__(self, model: nn.Module, need_attn: bool = True):
        decoder = _side_of(model, "decoder")
        super().__init__(decoder)
        self.need_attn = need_attn
        self.num_attention_layers = decoder.num_attention_layers
        self.fc3 = _copy_linear(decoder.fc3)
        self.vocabulary = decoder.fc3.out_features

    def initial_windows(self, sentences: int, beams: int, dtype=torch.float32, device=None) -> Windows:
        """The state before the first step: zeros (the causal convolutions' left padding)."""
        return tuple(
            torch.zeros(sentences, beams, layer.window, layer.in_channels, dtype=dtype, device=device)
            for layer in self.layers
            if layer.window > 0
        )

    def forward(
        self,
        tokens: Tensor,  # B x K
        position: Tensor,  # 1, int64: length of the prefix, the newest token included
        windows: Windows,  # per layer with k > 1: B x K x (k-1)d x C_in
        keys: Tensor,  # B x S x E
        values: Tensor,  # B x S x E
        source_mask: Tensor,  # B x S, True at padding
        length_scale: Tensor,  # B x 1 x 1
        vocabulary_weight: Optional[Tensor] = None,  # C x out_embed_dim: rows of fc3 (a shortlist)
        vocabulary_bias: Optional[Tensor] = None,  # C
        vocabulary_scale: Optional[Tensor] = None,  # C: the rows' scales when they are int8 (serving.int8)
        out: Optional[Tuple[Tensor, Tensor]] = None,  # eager only: (logits, log_probs) buffers, B*K x V each
    ) -> Tuple[Tensor, Tensor, Windows]:
        """``out``: buffers the eager caller keeps for the whole search, so that the two ``B*K x V``
        tensors of every step are not allocated anew (on a CPU a fresh tensor of that size is
        page-faulted in at every step); the same numbers (``addmm`` is what ``F.linear`` computes,
        ``_log_softmax`` what ``F.log_softmax`` does).  Ignored when compiled or exported."""
        # Every tensor stays B x K x ... (no reshape merges sentences and beams), so that a compiled
        # or exported step has one symbolic size per dimension.
        # embedding of the newest token + its position (padding_idx + prefix length, as
        # LearnedPositions counts positions)
        x = F.embedding(tokens, self.embed_tokens, self.padding_idx)  # B x K x E
        x = x + F.embedding(position + self.padding_idx, self.embed_positions, self.padding_idx)  # + 1 x E
        target_embedding = x  # g: used in every attention query
        x = self.fc1(x)  # B x K x C

        new_windows: List[Tensor] = []
        attention_sum: Optional[Tensor] = None
        outputs = [x]  # outputs[-n]: the output n layers back
        state = iter(windows)
        for layer in self.layers:
            residual = None
            if layer.residual > 0:
                back = outputs[-layer.residual]
                residual = back if layer.projection is None else layer.projection(back)
            if layer.window > 0:
                window = torch.cat([next(state), x.unsqueeze(2)], dim=2)  # B x K x ((k-1)d + 1) x C_in
                new_window = window[:, :, 1:]  # B x K x (k-1)d x C_in (a view)
                if torch.compiler.is_compiling():  # the same strides at every step: a compiled step guards on them
                    new_window = new_window.clone(memory_format=torch.contiguous_format)
                new_windows.append(new_window)
                if layer.dilation > 1:
                    window = window[:, :, :: layer.dilation]  # B x K x k x C_in: the frames the taps see
                x = window.flatten(2)  # B x K x (k*C_in), frame-major like the linearized weight
            x = layer.conv(x)  # B x K x 2C
            x = self.gate(x)  # B x K x C
            if layer.attention_in is not None:
                x, attn = self._attend(layer, x, target_embedding, keys, values, source_mask, length_scale)
                if self.need_attn:
                    attn = attn / self.num_attention_layers
                    attention_sum = attn if attention_sum is None else attention_sum + attn
            if residual is not None:
                x = (x + residual) * SQRT_HALF  # paper, section 3.4
            outputs.append(x)

        x = self.fc2(x)  # B x K x out_embed_dim
        if vocabulary_weight is None:  # the whole vocabulary: fc3 itself
            weight, bias = (self.fc3.weight, self.fc3.bias) if type(self.fc3) is nn.Linear else (None, None)
        else:  # a shortlist's rows of fc3
            weight, bias = (vocabulary_weight, vocabulary_bias) if vocabulary_scale is None else (None, None)
        if out is not None and weight is not None and not torch.compiler.is_compiling():
            log_probs = self._log_probs_into(out, x, weight, bias)  # B x K x V
        else:
            if weight is not None:
                logits = F.linear(x, weight, bias)  # B x K x V (or C: a shortlist's rows)
            elif vocabulary_weight is None:
                logits = self.fc3(x)  # B x K x V: a replaced fc3 (int8)
            else:
                logits = int8_linear(x, vocabulary_weight, vocabulary_scale, vocabulary_bias)  # B x K x C
            log_probs = F.log_softmax(logits, dim=-1, dtype=torch.float32)  # B x K x V
        if attention_sum is None:
            attention_sum = keys.new_zeros(tokens.size(0), tokens.size(1), keys.size(1))  # B x K x S
        return log_probs, attention_sum, tuple(new_windows)

    @staticmethod
    def _log_probs_into(out: Tuple[Tensor, Tensor], x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        sentences, beams, _ = x.shape
        rows = sentences * beams
        logits = torch.addmm(bias, x.reshape(rows, -1), weight.t(), out=out[0])  # R x V
        log_probs = torch.ops.aten._log_softmax.out(logits, -1, False, out=out[1])  # R x V
        return log_probs.view(sentences, beams, -1)  # B x K x V

    @staticmethod
    def _attend(
        layer: _Layer,
        x: Tensor,
        target_embedding: Tensor,
        keys: Tensor,
        values: Tensor,
        source_mask: Tensor,
        length_scale: Tensor,
    ) -> Tuple[Tensor, Tensor]:
        """Multi-step attention (paper, section 3.3; :class:`~fconv_plugin.modules.MultiStepAttention`):
        ``d = (W h + b + g) * sqrt(0.5)``, ``a = softmax(d . z)``, ``c = sum a (z + e) * s sqrt(1/s)``.
        The K beams of a sentence attend over its one row of keys and values."""
        residual = x
        query = (layer.attention_in(x) + target_embedding) * math.sqrt(0.5)  # B x K x E
        scores = torch.bmm(query, keys.transpose(1, 2))  # B x K x S
        scores = scores.float().masked_fill(source_mask.unsqueeze(1), float("-inf")).type_as(scores)
        attn = F.softmax(scores, dim=-1)  # B x K x S
        context = torch.bmm(attn, values) * length_scale  # B x K x E
        x = (layer.attention_out(context) + residual) * math.sqrt(0.5)
        return x, attn


class SourceEncoder(_Side):
    """fconv_ext's encoder as tensors in and out: ``src_tokens`` (``B x S``, left-padded) ->
    ``keys`` (``z``), ``values`` (``z + e``), ``source_mask`` (``B x S``, True at padding) and
    ``length_scale`` (``B x 1 x 1``), the inputs :class:`DecoderStep` takes."""

    def __init__(self, model: nn.Module):
        super().__init__(_side_of(model, "encoder"))

    def forward(self, src_tokens: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        source_mask = src_tokens.eq(self.padding_idx)  # B x S
        keep = (~source_mask).long()
        positions = torch.cumsum(keep, dim=1) * keep + self.padding_idx  # B x S: fairseq's make_positions
        x = F.embedding(src_tokens, self.embed_tokens, self.padding_idx)
        x = x + F.embedding(positions, self.embed_positions, self.padding_idx)  # B x S x E
        input_embedding = x  # e: element embedding + position
        x = self.fc1(x)  # B x S x C
        padding = source_mask.unsqueeze(-1)  # B x S x 1

        outputs = [x]
        for layer in self.layers:
            residual = None
            if layer.residual > 0:
                back = outputs[-layer.residual]
                residual = back if layer.projection is None else layer.projection(back)
            x = x.masked_fill(padding, 0)  # padded frames enter every conv as zeros
            x = layer.conv(self._taps(x, layer.kernel_size, layer.dilation))  # B x S x 2C
            x = self.gate(x)  # B x S x C
            if residual is not None:
                x = (x + residual) * SQRT_HALF
            outputs.append(x)

        x = self.fc2(x).masked_fill(padding, 0)  # B x S x E: keys z
        values = (x + input_embedding) * SQRT_HALF  # z + e
        lengths = (src_tokens.size(1) - source_mask.sum(dim=1, keepdim=True)).float().unsqueeze(-1)  # B x 1 x 1
        length_scale = lengths * lengths.rsqrt()  # s * sqrt(1/s) (paper, section 3.4)
        return x, values, source_mask, length_scale

    @staticmethod
    def _taps(x: Tensor, k: int, d: int) -> Tensor:
        """The ``k`` frames each output sees, side by side: ``B x S x C`` -> ``B x S x (k * C)``,
        frame-major, with the encoder's ``(k - 1) // 2 * d`` left and ``k // 2 * d`` right zero padding."""
        if k == 1:
            return x
        length = x.size(1)
        padded = F.pad(x, (0, 0, (k - 1) // 2 * d, k // 2 * d))  # B x (S + (k-1)d) x C
        return torch.cat([padded[:, j * d : j * d + length] for j in range(k)], dim=-1)  # B x S x k*C


def encoder_inputs_from(encoder_out, beams: int = 1) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """The step's encoder inputs from the model's own encoder output (``FConvExtEncoder.forward``):
    ``keys, values, source_mask, length_scale`` with the numbers the model's incremental decoder
    uses (the length scale a Python float when no sentence is padded, as there)."""
    keys, values = encoder_out["encoder_out"]  # B x S x E each
    mask = encoder_out["encoder_padding_mask"]  # B x S or None
    scale = source_length_scale(values, mask)
    if mask is None:
        mask = torch.zeros(keys.shape[:2], dtype=torch.bool, device=keys.device)
    if not torch.is_tensor(scale):
        scale = torch.full((keys.size(0), 1, 1), scale, dtype=values.dtype, device=keys.device)
    return keys, values, mask, scale
