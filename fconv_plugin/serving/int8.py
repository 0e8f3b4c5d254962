"""int8 inference for the serving modules (:class:`~.step.DecoderStep`, :class:`~.step.SourceEncoder`)
with torchao.

Every matrix product of the step and the encoder is an ``nn.Linear`` (the convolutions are products
over ``k`` frames, see step.py), so quantizing them is one call to ``torchao.quantization.quantize_``
with ``Int8DynamicActivationInt8WeightConfig``:

* weights: int8, symmetric, one float scale per output row, computed once here;
* activations: quantized on the fly at each call, symmetric int8, one scale per row of the input
  (per token: each hypothesis' row in a decoder step, each source position in the encoder), the
  product accumulated in int32 and scaled back to float32 (the scheme CTranslate2 and torchao use).

Everything else stays float32: embeddings, attention scores and softmax, the gates, residual sums,
the log-softmax and every beam score.

    from fconv_plugin.serving.int8 import quantize_int8_, vocabulary_rows
    step, encoder = DecoderStep(model), SourceEncoder(model)
    quantize_int8_(encoder)
    quantize_int8_(step)                           # or: quantize_int8_(step, vocabulary="float32")
    weight, bias = vocabulary_rows(step, rows)     # a shortlist's rows of fc3, float32 either way

``vocabulary`` says what happens to the vocabulary projection ``fc3`` (the widest product): ``"int8"``
quantizes it like the rest, ``"float32"`` leaves it as it is.  :func:`vocabulary_rows` gives the rows a
shortlist selects, for the step's ``vocabulary_weight`` / ``vocabulary_bias`` arguments, from either: by
default float32 rows (an int8 ``fc3``'s rows dequantized), so that with a shortlist the vocabulary
product runs in float32; docs/int8.md has the measurements behind both defaults.

Speed: in eager mode each torchao int8 product pays a fixed cost per call (its tensor subclass's
Python-level dispatch, the per-token scales, a sum over the weight's columns on CPUs with VNNI), more than
a float32 product of a few rows costs, so the eager int8 step is not faster than the eager float32 one at
decoding's sizes.  Compiled (``torch.compile(step, dynamic=True, fullgraph=True)``, faster still with
inductor's ``options={"freezing": True}``, which treats the weights as constants) it is; docs/int8.md
has the measurements.

This module uses torchao only: not ``torch.ao.quantization`` and not torch's ``torch.ops.quantized``
kernels.  CPUs only: a module on another device is refused with a message (this path is measured and
tested on CPUs; on GPUs decode in bfloat16 or float16 instead).
"""

from typing import Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor

#: what :func:`quantize_int8_` can do with the vocabulary projection ``fc3``
VOCABULARY_CHOICES = ("int8", "float32")

#: the default: the vocabulary projection in int8 too (without a shortlist its int8 product was the faster;
#: with one, :func:`vocabulary_rows` gives float32 rows; docs/int8.md)
DEFAULT_VOCABULARY = "int8"


def _torchao_config():
    """torchao's int8 dynamic-activation / int8-weight configuration (per-row weight scales,
    per-token activation scales), imported here so that the error names the missing package."""
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, PerRow
    except ImportError as error:
        raise ImportError("int8 serving needs torchao: pip install torchao; "
                          f"importing it failed: {error}") from error
    # set_inductor_config=False: torchao would otherwise change torch._inductor's process-wide settings
    # (GPU autotuning options) as a side effect of quantizing
    return Int8DynamicActivationInt8WeightConfig(granularity=PerRow(), set_inductor_config=False)


def is_quantized_weight(tensor: Tensor) -> bool:
    """Whether ``tensor`` is a torchao int8 tensor (what :func:`quantize_int8_` makes of a weight)."""
    from torchao.quantization import Int8Tensor

    return isinstance(tensor, Int8Tensor)


def is_quantized(linear: nn.Module) -> bool:
    """Whether ``linear``'s weight is quantized (:func:`is_quantized_weight`)."""
    return is_quantized_weight(getattr(linear, "weight", None))


def _check_quantizable(module: nn.Module) -> None:
    """Refuse what this path does not support, with the reason and what to do instead."""
    devices = {p.device.type for p in module.parameters()}
    if devices - {"cpu"}:
        raise ValueError(f"int8 serving runs on CPUs only; the module is on {sorted(devices - {'cpu'})}: "
                         "decode on a CPU, or decode in bfloat16 / float16 on the GPU")
    dtypes = {p.dtype for p in module.parameters() if not is_quantized_weight(p)}
    if dtypes - {torch.float32}:
        raise ValueError(f"int8 serving quantizes a float32 module; this one has parameters in {sorted(map(str, dtypes))}")
    if any(is_quantized(m) for m in module.modules()):
        raise ValueError("the module is quantized already (quantize_int8_ was called on it before)")
    if not any(type(m) is nn.Linear for m in module.modules()):
        raise ValueError(f"{type(module).__name__} has no nn.Linear to quantize: quantize_int8_ takes a "
                         "DecoderStep or a SourceEncoder (fconv_plugin.serving.step)")


def quantize_int8_(module: nn.Module, vocabulary: str = DEFAULT_VOCABULARY) -> int:
    """Quantize every ``nn.Linear`` of ``module`` (a :class:`~.step.DecoderStep` or
    :class:`~.step.SourceEncoder`) to int8 in place, with torchao; returns the number of products
    quantized.  ``vocabulary``: ``"int8"`` or ``"float32"`` for the decoder's vocabulary projection
    ``fc3`` (the module's child named ``fc3``; the encoder has none).

    The weights are quantized from the module's own float32 weights, deterministically (no
    calibration data); the module's float weights are replaced, not modified, so a model the module
    shares storage with is unchanged."""
    if vocabulary not in VOCABULARY_CHOICES:
        raise ValueError(f"vocabulary must be one of {VOCABULARY_CHOICES}, not {vocabulary!r}")
    config = _torchao_config()
    _check_quantizable(module)
    from torchao.quantization import quantize_

    def selected(child: nn.Module, name: str) -> bool:
        # plain nn.Linear only (a subclass may compute something else); fc3 as ``vocabulary`` says
        if type(child) is not nn.Linear:
            return False
        return not (name == "fc3" and vocabulary == "float32")

    quantize_(module, config, filter_fn=selected)
    return sum(is_quantized(m) for m in module.modules())


def vocabulary_rows(step: nn.Module, rows: Tensor, int8_rows: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
    """Rows ``rows`` (a LongTensor of vocabulary indices: a shortlist) of the step's vocabulary
    projection, as the ``vocabulary_weight``, ``vocabulary_bias`` arguments of
    :meth:`~.step.DecoderStep.forward`, selected once per batch.

    A float32 ``fc3`` gives float32 rows.  An int8 ``fc3`` gives, by default, its int8 rows dequantized
    to float32 (``C x in`` values times their row scales): the shortlist's product then runs in float32
    over the int8 weights' values, which was faster end to end than torchao's int8 product over the
    rows in eager decoding (docs/int8.md: most steps of a test set have few rows, where torchao's int8
    product costs more than a float32 one).  ``int8_rows=True`` gives the int8 rows themselves (with
    their scales; nothing is repacked), which ``F.linear`` runs through torchao's int8 product: the
    columns of the full int8 product exactly."""
    fc3 = step.fc3
    weight = fc3.weight[rows]  # C x in; an int8 fc3 selects its int8 rows and their scales (torchao's index)
    if is_quantized_weight(weight) and not int8_rows:
        weight = weight.dequantize()  # C x in float32: int8 values x row scales
    bias = None if fc3.bias is None else fc3.bias[rows]  # C
    return weight, bias
