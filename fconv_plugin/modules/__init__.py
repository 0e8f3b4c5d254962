"""Building blocks of fconv_ext, one concept per file."""

from .attention import AttentionAverage, MultiStepAttention, source_length_scale
from .conv_stack import SQRT_HALF, AfterConv, ConvStack, Gate, glu
from .convolution import CausalConv1d, ConvDecoderLayer, ConvEncoderLayer, IncrementalState, SameConv1d
from .embeddings import Embedding, LearnedPositions, embed_prefix
from .grad_scale import GradScale, scale_grad
from .layer_spec import (
    LAYERS_HELP,
    ConvLayerSpec,
    LayerSpecError,
    parse_attention,
    parse_flag,
    parse_layers,
    parse_option,
    safe_literal,
)
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
    "CausalConv1d",
    "ConvDecoderLayer",
    "ConvEncoderLayer",
    "Embedding",
    "GradScale",
    "LayerSpecError",
    "LearnedPositions",
    "Linear",
    "MultiStepAttention",
    "SameConv1d",
    "fold_weight_norm_",
    "parse_attention",
    "parse_flag",
    "parse_layers",
    "parse_option",
    "safe_literal",
    "scale_grad",
    "source_length_scale",
]
