"""The decoder step (and encoder) a model decodes with: built once per model, eager or compiled,
float32 or int8.

:func:`decoder_step` gives FConvBeamSearch the :class:`~fconv_plugin.serving.step.DecoderStep` of a
model and the callable that runs it: the module itself, or with the model option
``inference_compile`` (``--model-overrides "{'model': {'inference_compile': True}}"``) the module
compiled by ``torch.compile`` (inductor: C++ kernels on CPUs, Triton on GPUs).  The compiled step is
dynamic in its sizes (sentences, beams, source length), so one compilation serves a whole test set of
varied batches; :data:`COMPILE_OPTIONS` says how.  With ``inference_dtype`` ``int8`` the step and
the encoder (:func:`source_encoder`) are quantized by :func:`~fconv_plugin.serving.int8.quantize_int8_`
first; the model itself stays float32.

The step is rebuilt when the model's weights change (their storage or version), so a model that is
decoded, trained further and decoded again is never decoded with stale weights.
"""

import logging
import weakref
from typing import Callable, Tuple

import torch
import torch.fx.experimental._config as symbolic_shapes_config
import torch.nn as nn
from torch.nn.utils import parametrize

from .step import DecoderStep, SourceEncoder, unsupported_reason

logger = logging.getLogger(__name__)

#: ``torch.compile`` arguments for the step: every size symbolic from the first call (``dynamic``),
#: one graph for the whole step (``fullgraph``: a graph break would be a bug in the step)
COMPILE_OPTIONS = {"dynamic": True, "fullgraph": True}


class CompiledStep:
    """The step compiled by ``torch.compile``, one graph for every size: sizes that happen to be equal
    at the first call (say 5 beams and a 5-token source) are not assumed equal (``use_duck_shape=False``),
    and sizes 0 and 1 are not specialized either (``backed_size_oblivious``: a batch of one sentence,
    beam 1 and a one-token source run the graph traced for the first batch; inductor's lowering may still
    guard on beam 1, one more compilation the first time it occurs).  The inputs' dimensions
    that are 1 by construction (``position``; ``length_scale`` is ``B x 1 x 1``) are marked static, so
    that they broadcast."""

    def __init__(self, module: DecoderStep):
        self.compiled = torch.compile(module, **COMPILE_OPTIONS)

    def __call__(self, tokens, position, windows, keys, values, source_mask, length_scale, **kwargs):
        torch._dynamo.mark_static(position, 0)
        torch._dynamo.mark_static(length_scale, 1)
        torch._dynamo.mark_static(length_scale, 2)
        with symbolic_shapes_config.patch(use_duck_shape=False, backed_size_oblivious=True):
            return self.compiled(tokens, position, windows, keys, values, source_mask, length_scale, **kwargs)


_STEPS: "weakref.WeakKeyDictionary[nn.Module, Tuple]" = weakref.WeakKeyDictionary()


def step_ready(model: nn.Module) -> bool:
    """Whether FConvBeamSearch decodes ``model`` through its pure-tensor step: an fconv_ext model
    in inference (eval mode, weight norm folded by ``make_generation_fast_``) whose products are
    plain float ``nn.Linear`` layers and convolutions."""
    if unsupported_reason(model) is not None or model.training:
        return False
    return not any(parametrize.is_parametrized(module) for module in model.modules())  # weight norm: training


def int8(model: nn.Module) -> bool:
    """Whether ``model`` decodes in int8 (its ``inference_dtype`` option)."""
    return getattr(model, "inference_dtype", torch.float32) == torch.qint8


def _weights_key(model: nn.Module) -> Tuple:
    return tuple((p.data_ptr(), p._version, p.dtype) for p in model.parameters())


def decoder_step(model: nn.Module) -> Tuple[DecoderStep, Callable]:
    """``(step module, callable)`` for ``model`` (see :func:`step_ready`), built on first use and
    kept until the model's weights or its ``need_attn`` / ``inference_compile`` settings change."""
    need_attn = bool(getattr(model.decoder, "need_attn", True))
    compiled = bool(getattr(model, "inference_compile", False))
    key = (_weights_key(model), need_attn, compiled, int8(model))
    entry = _STEPS.get(model)
    if entry is None or entry[0] != key:
        module = DecoderStep(model, need_attn=need_attn)
        if int8(model):
            _quantize(module, "decoder step")
        run = CompiledStep(module) if compiled else module
        if compiled:
            logger.info("inference_compile: the decoder step is compiled by torch.compile on its first call")
        entry = (key, module, run)
        _STEPS[model] = entry
    return entry[1], entry[2]


_ENCODERS: "weakref.WeakKeyDictionary[nn.Module, Tuple]" = weakref.WeakKeyDictionary()


def source_encoder(model: nn.Module) -> SourceEncoder:
    """The int8 :class:`~fconv_plugin.serving.step.SourceEncoder` of an int8 ``model`` (see
    :func:`int8`), built on first use and kept while the model's weights do not change."""
    key = _weights_key(model)
    entry = _ENCODERS.get(model)
    if entry is None or entry[0] != key:
        module = SourceEncoder(model)
        _quantize(module, "encoder")
        entry = (key, module)
        _ENCODERS[model] = entry
    return entry[1]


def _quantize(module: nn.Module, what: str) -> None:
    from .int8 import quantize_int8_

    products = quantize_int8_(module)
    logger.info(
        f"inference_dtype int8: {products} matrix products of the {what} quantized to int8 (int8 weights "
        "per row, int8 activations per token)"
    )
