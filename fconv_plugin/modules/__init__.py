"""Building blocks of fconv_ext, one concept per file."""

from .attention import MultiStepAttention, source_length_scale
from .convolution import CausalConv1d, ConvDecoderLayer, ConvEncoderLayer, SameConv1d
from .embeddings import Embedding, LearnedPositions
from .grad_scale import GradScale, scale_grad
from .layer_spec import LayerSpecError, parse_attention, parse_layers, safe_literal
from .weight_norm import Linear, fold_weight_norm_

__all__ = [
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
    "parse_layers",
    "safe_literal",
    "scale_grad",
    "source_length_scale",
]
