"""Weight-normalised 1-D convolutions over batch-major ``B x T x C`` tensors.

* :class:`SameConv1d`  -- the encoder's convolution: output length == input length
  (odd kernels pad ``k // 2`` on both sides; even kernels pad ``(k - 1) // 2`` left and
  ``k // 2`` right, as fairseq's ``fconv`` does).
* :class:`CausalConv1d` -- the decoder's convolution: pads ``k - 1`` frames on the left
  only, so output ``t`` sees inputs ``t - k + 1 .. t`` (paper, section 3.2).  In
  incremental decoding it keeps its own window of the last ``k - 1`` input frames and
  computes one output frame per step with a single matrix product.

Both take a ``dilation`` ``d`` (default 1): the ``k`` taps are ``d`` frames apart, so a layer
sees ``(k - 1) * d + 1`` frames and every padding above is multiplied by ``d``; the causal
convolution's incremental window then holds the last ``(k - 1) * d`` frames.

Both hold their weight in PyTorch's ``Conv1d`` layout ``out x in x k`` and are built
through :func:`ConvEncoderLayer`/:func:`ConvDecoderLayer`, which apply the paper's
initialisation and weight norm over the output channels.
"""

from typing import Callable, Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from fairseq.incremental_decoding_utils import with_incremental_state
from torch import Tensor
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

from .weight_norm import init_conv_

#: fairseq's incremental decoding state: module key -> name -> tensor
IncrementalState = Dict[str, Dict[str, Optional[Tensor]]]


def conv_time_major(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    pad_left: int,
    pad_right: int,
    tbc_weight: Optional[Tensor] = None,
    dilation: int = 1,
) -> Tensor:
    """1-D convolution of a ``B x T x C`` tensor with a Conv1d weight (``out x in x k``).
    Output ``t`` sees inputs ``t - pad_left .. t + pad_right`` (every ``dilation``-th one).

    Two ways to compute it on CPUs, chosen by what was faster for forward + backward at the shapes
    of fconv_iwslt_de_en / fconv_wmt_en_de (measured: docs/design.md, "Convolution kernels"):

    * ``torch.conv_tbc`` (one matrix product per kernel tap over a time-major ``T x B x C`` copy,
      accumulated in place; the kernel fairseq's ``ConvTBC`` uses) for narrow float32 layers
      (< 512 input channels, k > 1);
    * one matrix product over the unfolded windows otherwise: wider layers, k = 1 (no copy at
      all), and bfloat16 / float16, where conv_tbc would add the taps up in the low precision
      (it costs BLEU) while the single product sums them in float32.

    Dilated layers (``dilation > 1``; conv_tbc has no dilation) go through ``F.conv1d``, and so does
    every layer on CUDA (:func:`conv_path`).

    ``tbc_weight``: the weight already in conv_tbc's ``k x in x out`` layout, if the caller keeps
    one (inference; see :func:`cached_weight_layout`).
    """
    _, in_channels, k = weight.shape
    path = conv_path(x.device.type, x.dtype, in_channels, k, dilation)
    if path == "conv1d":
        return conv_channels_first(x, weight, bias, pad_left, pad_right, dilation)
    if path == "unfold":
        return _conv_unfolded(x, weight, bias, pad_left, pad_right)
    length = x.size(1)
    pad = max(pad_left, pad_right)  # conv_tbc pads both sides by the same amount
    x = x.transpose(0, 1).contiguous()  # T x B x C
    if tbc_weight is None:
        tbc_weight = weight.permute(2, 1, 0).contiguous()  # out x in x k -> k x in x out
    out = torch.conv_tbc(x, tbc_weight, bias, pad)  # (T + 2*pad - k + 1) x B x out
    first = pad - pad_left  # output j starts its window at input j - pad
    return out[first : first + length].transpose(0, 1)  # B x T x out (a view)


def conv_path(device_type: str, dtype: torch.dtype, in_channels: int, k: int, dilation: int = 1) -> str:
    """Which computation :func:`conv_time_major` uses: ``"conv1d"`` (:func:`conv_channels_first`),
    ``"unfold"`` (:func:`_conv_unfolded`) or ``"tbc"`` (``torch.conv_tbc``).

    On CUDA every layer is one ``F.conv1d`` (cuDNN picks its own algorithm for the shape and
    accumulates float16/bfloat16 in float32); ``conv_tbc`` there is one matrix product per tap
    plus a transposed copy on each side, kernel launches that matter at the small per-update
    times of a GPU (docs/design.md, "Convolution kernels").  On CPUs the choices of
    :func:`conv_time_major`."""
    if device_type == "cuda" or (dilation > 1 and k > 1):
        return "conv1d"
    if k == 1 or in_channels >= 512 or dtype in (torch.bfloat16, torch.float16):
        return "unfold"
    return "tbc"


def conv_channels_first(
    x: Tensor, weight: Tensor, bias: Optional[Tensor], pad_left: int, pad_right: int, dilation: int = 1
) -> Tensor:
    """The convolution as ``F.conv1d`` over ``B x C x T``: the CUDA path (cuDNN), and dilated layers
    anywhere.  Input and output ``B x T x C``; output ``t`` sees inputs ``t - pad_left .. t + pad_right``."""
    x = x.transpose(1, 2)  # B x C x T (a view)
    if pad_left == pad_right:
        out = F.conv1d(x, weight, bias, padding=pad_left, dilation=dilation)  # B x out x T
    else:
        out = F.conv1d(F.pad(x, (pad_left, pad_right)), weight, bias, dilation=dilation)  # B x out x T
    return out.transpose(1, 2)  # B x T x out (a view)


def sliding_windows(x: Tensor, k: int, pad_left: int, pad_right: int, dilation: int = 1) -> Tensor:
    """The ``k`` input frames each output frame sees: ``B x T x C`` -> ``B x T' x C x k`` (a view of
    the padded input, ``T' = T + pad_left + pad_right - (k - 1) * dilation``; taps ``dilation`` apart)."""
    if pad_left or pad_right:
        x = F.pad(x, (0, 0, pad_left, pad_right))  # pad the time dimension
    return x.unfold(1, (k - 1) * dilation + 1, 1)[..., ::dilation]  # B x T' x C x k


def _conv_unfolded(x: Tensor, weight: Tensor, bias: Tensor, pad_left: int, pad_right: int) -> Tensor:
    """The same convolution as one matrix product over sliding windows (unfold)."""
    out_channels, in_channels, k = weight.shape
    bsz, length, _ = x.shape
    windows = sliding_windows(x, k, pad_left, pad_right)  # B x T x C x k (a view)
    windows = windows.reshape(bsz * length, in_channels * k)  # (B*T) x (C*k), channel-major like the weight
    out = F.linear(windows, weight.reshape(out_channels, in_channels * k), bias)
    return out.view(bsz, length, out_channels)  # B x T x out


def cached_weight_layout(module: nn.Module, layout: str, make: Callable[[Tensor], Tensor]) -> Optional[Tensor]:
    """``make(module.weight)``, a re-laid-out copy of the weight, computed once and kept while
    the weight is a plain tensor that does not change (inference, after
    :func:`~fconv_plugin.modules.weight_norm.fold_weight_norm_`).  While weight norm is live
    (training) it returns None: the caller computes the layout from the current weight, so
    training stays exact."""
    if parametrize.is_parametrized(module, "weight"):
        return None
    key = (module.weight.data_ptr(), module.weight._version, module.weight.dtype)
    cache = module.__dict__.setdefault("_weight_layouts", {})
    if layout not in cache or cache[layout][0] != key:
        cache[layout] = (key, make(module.weight.detach()).contiguous())
    return cache[layout][1]


class SameConv1d(nn.Conv1d):
    """Non-causal convolution; input and output ``B x T x C``."""

    def forward(self, x: Tensor) -> Tensor:
        k, d = self.kernel_size[0], self.dilation[0]
        # out x in x k -> k x in x out (conv_tbc's layout), kept between calls in inference
        tbc_weight = cached_weight_layout(self, "tbc", lambda w: w.permute(2, 1, 0))
        return conv_time_major(x, self.weight, self.bias, (k - 1) // 2 * d, k // 2 * d, tbc_weight, d)


@with_incremental_state
class CausalConv1d(nn.Conv1d):
    """Causal convolution; input and output ``B x T x C``.

    With an ``incremental_state`` the input is the newest frame only (``B x 1 x C``);
    the window of the previous ``(k - 1) * d`` frames lives in that state under this
    module's own key, and :meth:`reorder_incremental_state` reorders it for beam search.
    """

    def forward(self, x: Tensor, incremental_state: Optional[IncrementalState] = None) -> Tensor:
        k, d = self.kernel_size[0], self.dilation[0]
        if incremental_state is None:
            return conv_time_major(x, self.weight, self.bias, (k - 1) * d, 0, dilation=d)  # t sees t-(k-1)d..t

        bsz = x.size(0)
        if k > 1:
            window = self._get_window(incremental_state)
            if window is None:  # first step: the past is zero padding
                window = x.new_zeros(bsz, (k - 1) * d, x.size(2))
            window = torch.cat([window, x[:, -1:, :]], dim=1)  # B x ((k-1)d + 1) x C
            self._set_window(incremental_state, window[:, 1:, :])
            if d > 1:
                window = window[:, ::d, :]  # B x k x C: the frames the taps see
        else:
            window = x[:, -1:, :]
        # B x k x C -> B x (k*C), one output frame: B x 1 x C'
        out = F.linear(window.reshape(bsz, -1), self._linearized_weight(), self.bias)
        return out.unsqueeze(1)

    def _linearized_weight(self) -> Tensor:
        """The weight as ``out x (k * in)`` matching a ``B x k x C`` window, frame-major.

        Kept between steps once the weight is a plain tensor (inference, see
        :func:`cached_weight_layout`); recomputed while weight norm is live (training)."""

        def linearize(w: Tensor) -> Tensor:
            return w.permute(0, 2, 1).reshape(w.size(0), -1)  # out x in x k -> out x (k*in)

        cached = cached_weight_layout(self, "linearized", linearize)
        return linearize(self.weight) if cached is None else cached

    def reorder_incremental_state(self, incremental_state: IncrementalState, new_order: Tensor):
        window = self._get_window(incremental_state)
        if window is not None:
            self._set_window(incremental_state, window.index_select(0, new_order))

    def _get_window(self, incremental_state: IncrementalState) -> Optional[Tensor]:
        state = self.get_incremental_state(incremental_state, "window")
        return None if state is None else state["window"]

    def _set_window(self, incremental_state: IncrementalState, window: Tensor) -> None:
        self.set_incremental_state(incremental_state, "window", {"window": window})


def ConvEncoderLayer(
    in_channels: int, out_channels: int, kernel_width: int, dropout: float, dilation: int = 1
) -> SameConv1d:
    """Weight-normalised encoder convolution with the paper's init."""
    m = SameConv1d(in_channels, out_channels, kernel_width, dilation=dilation)
    init_conv_(m, kernel_width, in_channels, dropout)
    return weight_norm(m, name="weight", dim=0)


def ConvDecoderLayer(
    in_channels: int, out_channels: int, kernel_width: int, dropout: float, dilation: int = 1
) -> CausalConv1d:
    """Weight-normalised causal decoder convolution with the paper's init."""
    m = CausalConv1d(in_channels, out_channels, kernel_width, dilation=dilation)
    init_conv_(m, kernel_width, in_channels, dropout)
    return weight_norm(m, name="weight", dim=0)
