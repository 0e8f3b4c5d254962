"""Opt-in int8 inference: dynamic int8 quantization of the model's matrix products.

Selected with the model option ``inference_dtype = 'int8'`` (fairseq-generate:
``--model-overrides "{'model': {'inference_dtype': 'int8'}}"``) and applied by
``FConvExtModel.make_generation_fast_`` after weight norm is folded: :func:`quantize_int8_`
replaces

* every ``nn.Linear`` (encoder/decoder ``fc1``/``fc2``, the vocabulary projection ``fc3``,
  the attention projections, the residual projections) by an :class:`Int8Linear`, and
* gives every convolution (:class:`~.convolution.SameConv1d`, :class:`~.convolution.CausalConv1d`)
  an :class:`Int8Conv` child named ``int8``: the convolution as one product of ``k``-frame
  windows (``B x (k*C)``) with the ``out x (k*in)`` weight, used by the decoder's incremental
  step and by full-sequence convolutions (the encoder) alike.

"Dynamic": the weights are int8 once, per output row (symmetric, one float scale per row,
torch's ``default_per_channel_weight_observer``); each product quantizes its float32 input
per call (one scale and zero point over the whole input tensor) and returns float32.  So
embeddings, attention scores and softmax, GLU, the log-softmax and every beam score stay
float32; only the weights of the products and their inputs are 8-bit.

The kernels are torch's own quantized CPU kernels (``torch.ops.quantized.linear_prepack`` /
``linear_dynamic``, what ``torch.ao.nn.quantized.dynamic.Linear`` calls): oneDNN's for the
vocabulary projection, fbgemm's (engine "x86") for the rest (:data:`ENGINES`; docs/int8.md has
the measurements behind the choice, and why not torchao).  CPU only: the quantized kernels have no CUDA implementation.
"""

import contextlib
import warnings
from typing import Iterator, Optional

import torch
import torch.nn as nn
from torch import Tensor
from torch.ao.quantization.observer import default_per_channel_weight_observer

from .convolution import CausalConv1d, SameConv1d, sliding_windows

#: quantized engines in order of preference for products with fewer than :data:`WIDE` output
#: features (every layer but the vocabulary projection): x86 (fbgemm) first.  At the decoding
#: shapes of fconv_iwslt_de_en on this project's AMD EPYC (AVX-512 VNNI), one thread, it took
#: 0.016 ms for 5 x 768 @ 768 x 512 where oneDNN took 0.035, and matched oneDNN from 64 rows up
#: (docs/int8.md).  oneDNN on builds without fbgemm.
ENGINES = ("x86", "fbgemm", "onednn")

#: the same for products with at least :data:`WIDE` output features (the vocabulary projection
#: fc3): oneDNN first, which computed 320 x 256 @ 256 x 8192 (beam 5, batch 64) in 1.5 ms where
#: x86/fbgemm took 2.8 ms, and 1280 rows in 47 vs 78 ms (one thread; docs/int8.md)
WIDE_ENGINES = ("onednn", "x86", "fbgemm")
WIDE = 4096

#: ``reduce_range`` of ``torch.ops.quantized.linear_dynamic``: the activations use 7 of the 8
#: bits, as ``torch.ao.nn.quantized.dynamic.Linear`` does on x86 (its kernels may otherwise
#: saturate 16-bit intermediate sums on CPUs without VNNI)
REDUCE_RANGE = True


def int8_engine(out_features: int = 0) -> str:
    """The quantized engine a product with ``out_features`` outputs is packed for: the first of
    :data:`ENGINES` (from :data:`WIDE` outputs up: :data:`WIDE_ENGINES`) this torch supports."""
    supported = torch.backends.quantized.supported_engines
    preference = WIDE_ENGINES if out_features >= WIDE else ENGINES
    for engine in preference:
        if engine in supported:
            return engine
    raise RuntimeError(f"inference_dtype 'int8' needs one of torch's quantized CPU engines {list(preference)}; "
                       f"this torch build has {supported}: decode with inference_dtype 'float32' instead")


@contextlib.contextmanager
def _quantized_tensors() -> Iterator[None]:
    """Create quantized tensors without torch's deprecation warning: torch >= 2.10 flags their
    creation (``torch.quantize_per_channel``) as deprecated (pytorch issue 184982), and the
    packed weights here are built from them; docs/int8.md says what to move to when they go."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor, torch\.quantize_per_channel",
                                category=UserWarning)
        yield


class Int8Linear(nn.Module):
    """``y = x W^T + b`` with ``W`` in int8 (one scale per output row) and ``x`` quantized to
    8 bits per call; input ``... x in``, output ``... x out`` in float32.

    Keeps the int8 rows and their scales (buffers ``weight_int8``, ``weight_scale``) beside the
    packed weight so that :meth:`select_rows` can build the product over a subset of the rows
    (vocabulary shortlists) without the float weight."""

    def __init__(self, weight: Tensor, bias: Optional[Tensor]):
        super().__init__()
        if weight.device.type != "cpu":
            raise ValueError("inference_dtype 'int8' runs on CPUs only (torch's quantized kernels have no "
                             f"{weight.device.type} implementation): decode on a CPU, or use 'bfloat16' / fairseq's --fp16")
        weight = weight.detach().float()
        self.out_features, self.in_features = weight.shape
        observer = default_per_channel_weight_observer()  # symmetric qint8, one scale per output row
        observer(weight)
        scale, zero_point = observer.calculate_qparams()
        with _quantized_tensors():
            quantized = torch.quantize_per_channel(weight, scale, zero_point, 0, torch.qint8)
        self.register_buffer("weight_int8", quantized.int_repr())  # out x in, int8
        self.register_buffer("weight_scale", scale.float())  # out
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())  # out
        self._pack()

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        return cls(linear.weight, linear.bias)

    def _pack(self) -> None:
        """Pack ``weight_int8`` (out x in) with ``weight_scale`` (out) and ``bias`` for the kernel
        of :func:`int8_engine`, leaving torch's global engine as it was (a packed weight keeps its
        engine: ``linear_dynamic`` runs it whatever the global setting is then)."""
        self.engine = int8_engine(self.out_features)
        previous = torch.backends.quantized.engine
        torch.backends.quantized.engine = self.engine
        try:
            with _quantized_tensors():
                # the exact int8 values back as a quantized tensor: q * s / s rounds to q
                dequantized = self.weight_int8.float() * self.weight_scale.unsqueeze(1)  # out x in
                quantized = torch.quantize_per_channel(dequantized, self.weight_scale.double(),
                                                       torch.zeros_like(self.weight_scale, dtype=torch.long), 0,
                                                       torch.qint8)
                self._packed = torch.ops.quantized.linear_prepack(quantized, self.bias)
        finally:
            torch.backends.quantized.engine = previous

    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.quantized.linear_dynamic(x.float(), self._packed, REDUCE_RANGE)  # ... x out

    def select_rows(self, rows: Tensor) -> "Int8Linear":
        """The product over output rows ``rows`` only (a LongTensor of row indices; a vocabulary
        shortlist): ``x @ W[rows].T + b[rows]``, the same int8 weights, so its outputs equal
        columns ``rows`` of this module's.  Built once per batch: 1500 rows of 256 cost about
        4.5 ms on this project's 2-core CPU (docs/int8.md), most of it the kernel's packing."""
        sub = Int8Linear.__new__(Int8Linear)
        nn.Module.__init__(sub)
        sub.out_features, sub.in_features = rows.numel(), self.in_features
        sub.register_buffer("weight_int8", self.weight_int8.index_select(0, rows))
        sub.register_buffer("weight_scale", self.weight_scale.index_select(0, rows))
        sub.register_buffer("bias", None if self.bias is None else self.bias.index_select(0, rows))
        sub._pack()
        return sub

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, engine={self.engine}"


class Int8Conv(Int8Linear):
    """A convolution as one int8 product: the ``out x in x k`` weight linearized frame-major
    to ``out x (k*in)`` (the layout of :class:`~.convolution.CausalConv1d`'s incremental step).

    ``forward(windows)``: ``B x (k*C)`` windows -> ``B x out`` (one decoding step);
    :meth:`convolve`: a whole ``B x T x C`` sequence -> ``B x T x out``."""

    def __init__(self, conv: nn.Conv1d):
        weight = conv.weight.detach()  # out x in x k
        super().__init__(weight.permute(0, 2, 1).reshape(weight.size(0), -1), conv.bias)  # out x (k*in)
        self.kernel_size, self.dilation = conv.kernel_size[0], conv.dilation[0]

    def convolve(self, x: Tensor, pad_left: int, pad_right: int) -> Tensor:
        """Output ``t`` sees inputs ``t - pad_left .. t + pad_right`` (every ``dilation``-th one);
        input and output ``B x T x C``."""
        k, d = self.kernel_size, self.dilation
        bsz, length, channels = x.shape
        windows = sliding_windows(x, k, pad_left, pad_right, d)  # B x T x C x k (a view)
        windows = windows.transpose(2, 3).reshape(bsz * length, k * channels)  # (B*T) x (k*C), frame-major
        return self(windows).view(bsz, length, -1)  # B x T x out

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, dilation={self.dilation}, " + super().extra_repr()


def quantize_int8_(model: nn.Module) -> int:
    """Quantize ``model`` in place for int8 inference (weight norm must be folded already);
    returns the number of products quantized.  Every ``nn.Linear`` becomes an
    :class:`Int8Linear`; every :class:`SameConv1d` / :class:`CausalConv1d` gets an
    :class:`Int8Conv` child ``int8`` that its forward uses instead of the float weight."""
    from torch.nn.utils import parametrize

    if any(parametrize.is_parametrized(m) for m in model.modules()):
        raise RuntimeError("quantize_int8_ needs plain weights: fold weight norm first (fold_weight_norm_)")
    count = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Linear:  # the plain layer only (subclasses may compute differently)
                setattr(module, name, Int8Linear.from_linear(child))
                count += 1
        if isinstance(module, (SameConv1d, CausalConv1d)) and "int8" not in module._modules:
            module.int8 = Int8Conv(module)
            count += 1
    return count
