"""The stack of gated conv blocks that every ConvS2S model is made of.

One block (paper, sections 3.2 and 3.4; Dauphin et al. 2017):

    h = gate(conv(dropout(x)))          gate = GLU: [A; B] -> A * sigmoid(B), 2C -> C
    h = after_conv(layer, h)            what the model adds here: multi-step attention
                                        (fconv_ext's decoder), self-attention (Fan et al.
                                        2018), or nothing (the encoders, the language model)
    x = (h + residual) * sqrt(0.5)      residual = the output ``N`` layers back (1 = the
                                        previous one, 0 = none), projected when widths differ

The encoder's stack is non-causal (:class:`~.convolution.SameConv1d`) and zeroes padded
frames before every convolution; the decoder's is causal
(:class:`~.convolution.CausalConv1d`) and, given an ``incremental_state``, computes the
newest frame only, each convolution keeping its own window of past frames.

Parameter names: ``<owner>.stack.convolutions.<i>`` and ``<owner>.stack.projections.<i>``.
Checkpoints written before the stack existed have them one level up
(``<owner>.convolutions.<i>``); :meth:`ConvStack.upgrade_state_dict_named` moves them, so
fairseq's checkpoint loading reads both.
"""

import math
from typing import Callable, Dict, List, Optional, Sequence

import torch.nn as nn
import torch.nn.functional as F
from fairseq.modules import FairseqDropout
from torch import Tensor

from .convolution import ConvDecoderLayer, ConvEncoderLayer, IncrementalState
from .layer_spec import ConvLayerSpec
from .weight_norm import Linear

#: Residual connections (and attention outputs) are multiplied by sqrt(0.5) so that the sum
#: of two unit-variance terms keeps unit variance (paper, section 3.4).
SQRT_HALF = math.sqrt(0.5)

#: The gate of a conv block: ``2C`` channels in, ``C`` out.
Gate = Callable[[Tensor], Tensor]

#: Called after each block's gate with ``(layer index, h)``; returns the new ``h``.
AfterConv = Callable[[int, Tensor], Tensor]


def glu(x: Tensor) -> Tensor:
    """The paper's gated linear unit ``GLU([A; B]) = A * sigmoid(B)`` over the last dim."""
    return F.glu(x, dim=-1)


class ConvStack(nn.Module):
    """``len(layers)`` gated conv blocks with residual connections.

    ``in_channels``: width of the input (the model's ``fc1`` output); ``out_channels``
    (attribute): width of the output, the last layer's.  ``causal``: decoder blocks.
    """

    def __init__(
        self,
        in_channels: int,
        layers: Sequence[ConvLayerSpec],
        dropout: float,
        causal: bool,
        gate: Gate = glu,
        module_name: Optional[str] = None,
    ):
        super().__init__()
        self.causal = causal
        self.gate = gate
        self.dropout_module = FairseqDropout(dropout, module_name=module_name or self.__class__.__name__)
        make_conv = ConvDecoderLayer if causal else ConvEncoderLayer
        self.convolutions = nn.ModuleList()
        self.projections = nn.ModuleList()  # None where the residual has the block's width
        self.residuals: List[int] = []
        widths = [in_channels]  # widths[i]: input width of layer i (= output of layer i - 1)
        for layer in layers:
            out_channels, kernel_width, residual, dilation = layer
            residual_width = out_channels if residual == 0 else widths[-residual]
            self.projections.append(Linear(residual_width, out_channels) if residual_width != out_channels else None)
            # 2C outputs: the gate halves them
            self.convolutions.append(make_conv(widths[-1], out_channels * 2, kernel_width, dropout, dilation))
            self.residuals.append(residual)
            widths.append(out_channels)
        self.out_channels = widths[-1]

    def forward(
        self,
        x: Tensor,  # B x T x C_in
        padding_mask: Optional[Tensor] = None,  # B x T, True at padding (encoder only)
        incremental_state: Optional[IncrementalState] = None,  # decoder only
        after_conv: Optional[AfterConv] = None,
    ) -> Tensor:
        """Returns ``B x T x out_channels`` (``T = 1`` in an incremental step)."""
        outputs = [x]  # outputs[-n]: the output n layers back (outputs[0] is the input)
        for layer, (conv, proj, back) in enumerate(zip(self.convolutions, self.projections, self.residuals)):
            residual = None
            if back > 0:
                residual = outputs[-back] if proj is None else proj(outputs[-back])
            if padding_mask is not None:  # padded frames enter every conv as zeros
                x = x.masked_fill(padding_mask.unsqueeze(-1), 0)
            x = self.dropout_module(x)
            if self.causal:
                x = conv(x, incremental_state)  # B x T x 2C
            else:
                x = conv(x)  # B x T x 2C
            x = self.gate(x)  # B x T x C
            if after_conv is not None:
                x = after_conv(layer, x)
            if residual is not None:
                x = (x + residual) * SQRT_HALF
            outputs.append(x)
        return x

    def upgrade_state_dict_named(self, state_dict: Dict[str, Tensor], name: str) -> None:
        """Move ``<owner>.convolutions.*`` / ``<owner>.projections.*`` (checkpoints written
        before the stack existed) to ``<owner>.stack.*``; ``name`` is ``<owner>.stack``."""
        owner = name[: -len("stack")]  # "encoder." / "decoder." / "" (with its dot)
        for old_key in [k for k in state_dict if k.startswith((owner + "convolutions.", owner + "projections."))]:
            state_dict[name + "." + old_key[len(owner) :]] = state_dict.pop(old_key)
