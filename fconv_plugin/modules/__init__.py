"""Building blocks of fconv_ext, one concept per file."""

from .attention import AttentionAverage, MultiStepAttention, source_length_scale
from .conv_stack import SQRT_HALF, AfterConv, ConvStack, Gate, glu
from .convolution import CausalConv1d, ConvDecoderLayer, ConvEncoderLayer, IncrementalState, SameConv1d
from .embeddings import Embedding, LearnedPositions, embed_prefix
from .grad_scale import GradScale, scale_grad
from .int8 import Int8Conv, Int8Linear, int8_engine, quantize_int8_
from .layer_spec import LAYERS_HELP, ConvLayerSpec, LayerSpecError, parse_attention, parse_layers, safe_literal
from .weight_norm import Linear, fold_weight_norm_

__all__ = [
    "LAYERS_HELP",
    "AttentionAverage",
    "SQRT_HALF",
    "AfterConv",
    "ConvLayerSpec",
    "ConvStack",
    "Gate",
    "IncrementalState",
    "embed_prefix",
    "glu",
    "int8_engine",
    "CausalConv1d",
    "ConvDecoderLayer",
    "ConvEncoderLayer",
    "Embedding",
    "GradScale",
    "Int8Conv",
    "Int8Linear",
    "LayerSpecError",
    "LearnedPositions",
    "Linear",
    "MultiStepAttention",
    "SameConv1d",
    "fold_weight_norm_",
    "parse_attention",
    "parse_layers",
    "quantize_int8_",
    "safe_literal",
    "scale_grad",
    "source_length_scale",
]
