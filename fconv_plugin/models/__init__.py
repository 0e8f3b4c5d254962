from .fconv_ext import FConvExtConfig, FConvExtDecoder, FConvExtEncoder, FConvExtModel
from . import architectures  # noqa: E402,F401  (registers the presets; needs the model first)

__all__ = ["FConvExtConfig", "FConvExtDecoder", "FConvExtEncoder", "FConvExtModel"]
