"""int8 inference for the serving modules (:class:`~.step.DecoderStep`, :class:`~.step.SourceEncoder`).

Every matrix product of the step and the encoder is an ``nn.Linear`` (the convolutions are products
over ``k`` frames, see step.py), so int8 replaces each one by an :class:`Int8Linear` (the exact modules
are not changed, only swapped):

* weights: int8, symmetric, one float scale per output row, quantized once by torchao
  (``Int8Tensor.from_hp`` with ``PerRow``: ``scale = max |w_row| / 127.5``);
* activations: quantized on the fly at each call, symmetric int8, one scale per row of the input
  (per token: each hypothesis' row in a decoder step, each source position in the encoder), the
  product accumulated in int32 and scaled back to float32 (the scheme CTranslate2 and torchao use,
  with torchao's rounding).

The product is a few plain aten operators around ``torch._int_mm``, so the modules run eagerly,
compile (``torch.compile``) and trace (``torch.export``) like any other.  torchao's own int8 tensor
subclass computes the same numbers, but in eager decoding its per-call dispatch cost more than a
float32 product at decoding's sizes; here the weight is stored transposed, as the product takes it
(benchmarks/results/int8_step.md has both measured).

Everything else stays float32: embeddings, attention scores and softmax, the gates, residual sums,
the log-softmax and every beam score.

    from fconv_plugin.serving.int8 import quantize_int8_, vocabulary_rows
    step, encoder = DecoderStep(model), SourceEncoder(model)
    quantize_int8_(encoder)
    quantize_int8_(step)                           # or: quantize_int8_(step, vocabulary="float32")
    selected = vocabulary_rows(step, rows)         # a shortlist's rows of fc3: step(..., **selected)

``vocabulary`` says what happens to the vocabulary projection ``fc3`` (the widest product): ``"int8"``
quantizes it like the rest, ``"float32"`` leaves it as it is.  :func:`vocabulary_rows` gives the rows a
shortlist selects, in the dtype of ``fc3``, as the step's ``vocabulary_*`` arguments.

This module does not use ``torch.ao.quantization`` nor torch's ``torch.ops.quantized`` kernels.  CPUs
only: a module on another device is refused with a message (on GPUs decode in bfloat16 or float16).
"""

from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor

#: what :func:`quantize_int8_` can do with the vocabulary projection ``fc3``
VOCABULARY_CHOICES = ("int8", "float32")

#: the default: the vocabulary projection in int8 too (the widest product, where int8 gains the most)
DEFAULT_VOCABULARY = "int8"

#: symmetric int8 with torchao's rounding: ``scale = max |x| / 127.5``, values clamped to [-128, 127]
_HALF_RANGE = 127.5
#: the smallest scale, torchao's (an all-zero row would otherwise divide by zero)
_MIN_SCALE = torch.finfo(torch.float32).eps


def _quantize_rows(weight: Tensor) -> Tuple[Tensor, Tensor]:
    """torchao's per-row symmetric int8 of ``weight`` (out x in): int8 values (out x in) and one float32
    scale per row (out)."""
    try:
        from torchao.quantization import Int8Tensor, PerRow
    except ImportError as error:
        raise ImportError(f"int8 serving needs torchao: pip install torchao; importing it failed: {error}") from error
    quantized = Int8Tensor.from_hp(weight.detach().float(), granularity=PerRow())
    return quantized.qdata, quantized.scale.reshape(-1).float()


def int8_linear(x: Tensor, weight: Tensor, weight_scale: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """``F.linear`` in int8: ``y = (q(x) @ W^T) * s_x * s_w + b``, with ``weight`` int8 (out x in) and
    ``weight_scale`` its rows' scales ``s_w`` (out), ``q(x)`` each input row (token) quantized to int8
    with its own scale ``s_x``, the product accumulated in int32 (``torch._int_mm``)."""
    shape = x.shape
    rows = x.reshape(-1, shape[-1])  # R x in
    scale = (rows.abs().amax(-1, keepdim=True) / _HALF_RANGE).clamp_min_(_MIN_SCALE)  # R x 1
    # x * (1 / scale), rounded half to even: torchao's rounding, so the same integers as its int8
    quantized = (rows * scale.reciprocal()).round_().clamp_(-128, 127).to(torch.int8)  # R x in
    accumulated = torch._int_mm(quantized, weight.t())  # R x out, int32
    y = accumulated.float().mul_(scale).mul_(weight_scale)  # R x out: torchao's order of the two scalings
    if bias is not None:
        y = y.add_(bias)
    return y.view(*shape[:-1], weight.size(0))


class Int8Linear(nn.Module):
    """``nn.Linear`` in int8 (:func:`int8_linear`): the weight's rows in int8, one float32 scale per
    row, quantized once by torchao.  Buffers only, no parameters: an int8 module is for inference."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight, scale = _quantize_rows(linear.weight)  # out x in int8, out float32
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight_int8", weight)  # out x in
        self.register_buffer("weight_scale", scale)  # out
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())  # out

    def dequantized_weight(self) -> Tensor:
        """The float32 weight (out x in) the int8 values stand for: each int8 row times its scale."""
        return self.weight_int8.float() * self.weight_scale.unsqueeze(1)  # out x in

    def forward(self, x: Tensor) -> Tensor:
        return int8_linear(x, self.weight_int8, self.weight_scale, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def is_quantized(linear: nn.Module) -> bool:
    """Whether ``linear`` is an :class:`Int8Linear` (what :func:`quantize_int8_` makes of an ``nn.Linear``)."""
    return isinstance(linear, Int8Linear)


def float_weight(linear: nn.Module) -> Tensor:
    """The float32 weight (out x in) of an ``nn.Linear`` or an :class:`Int8Linear` (dequantized)."""
    return linear.dequantized_weight() if is_quantized(linear) else linear.weight


def _check_quantizable(module: nn.Module) -> None:
    """Refuse what this path does not support, with the reason and what to do instead."""
    devices = {t.device.type for t in list(module.parameters()) + list(module.buffers())}
    if devices - {"cpu"}:
        raise ValueError(
            f"int8 serving runs on CPUs only; the module is on {sorted(devices - {'cpu'})}: "
            "decode on a CPU, or decode in bfloat16 / float16 on the GPU"
        )
    dtypes = {p.dtype for p in module.parameters()}
    if dtypes - {torch.float32}:
        raise ValueError(
            f"int8 serving quantizes a float32 module; this one has parameters in {sorted(map(str, dtypes))}"
        )
    if any(is_quantized(m) for m in module.modules()):
        raise ValueError("the module is quantized already (quantize_int8_ was called on it before)")
    if not any(type(m) is nn.Linear for m in module.modules()):
        raise ValueError(
            f"{type(module).__name__} has no nn.Linear to quantize: quantize_int8_ takes a "
            "DecoderStep or a SourceEncoder (fconv_plugin.serving.step)"
        )


def quantize_int8_(module: nn.Module, vocabulary: str = DEFAULT_VOCABULARY) -> int:
    """Replace every ``nn.Linear`` of ``module`` (a :class:`~.step.DecoderStep` or
    :class:`~.step.SourceEncoder`) by an :class:`Int8Linear`, in place; returns the number of products
    quantized.  ``vocabulary``: ``"int8"`` or ``"float32"`` for the decoder's vocabulary projection
    ``fc3`` (the module's child named ``fc3``; the encoder has none).

    The weights are quantized from the module's own float32 weights, deterministically (no
    calibration data); the modules are replaced, not modified, so a model the module shares weights
    with is unchanged."""
    if vocabulary not in VOCABULARY_CHOICES:
        raise ValueError(f"vocabulary must be one of {VOCABULARY_CHOICES}, not {vocabulary!r}")
    _check_quantizable(module)
    replaced = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            # plain nn.Linear only (a subclass may compute something else); fc3 as ``vocabulary`` says
            if type(child) is not nn.Linear or (name == "fc3" and vocabulary == "float32"):
                continue
            setattr(parent, name, Int8Linear(child))
            replaced += 1
    return replaced


def vocabulary_rows(step: nn.Module, rows: Tensor) -> Dict[str, Tensor]:
    """Rows ``rows`` (a LongTensor of vocabulary indices: a shortlist) of the step's vocabulary
    projection ``fc3``, as the keyword arguments of :meth:`~.step.DecoderStep.forward` that score only
    them, selected once per batch: ``vocabulary_weight`` (C x in) and ``vocabulary_bias`` (C); for an
    int8 ``fc3`` its int8 rows and ``vocabulary_scale`` (C), their scales (nothing is requantized:
    the columns of the full int8 product exactly, since each activation row is quantized on its own)."""
    fc3 = step.fc3
    selected = {"vocabulary_weight": (fc3.weight_int8 if is_quantized(fc3) else fc3.weight).index_select(0, rows)}
    if fc3.bias is not None:
        selected["vocabulary_bias"] = fc3.bias.index_select(0, rows)  # C
    if is_quantized(fc3):
        selected["vocabulary_scale"] = fc3.weight_scale.index_select(0, rows)  # C
    return selected
