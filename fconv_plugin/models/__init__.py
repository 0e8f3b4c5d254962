"""The fconv_ext model family: one file per model, each built from :mod:`fconv_plugin.modules`."""

from .fconv_ext import FConvExtConfig, FConvExtDecoder, FConvExtEncoder, FConvExtModel
from .fconv_ext_lm import FConvExtLanguageModel, FConvExtLMConfig
from .fconv_ext_self_att import FConvExtSelfAttConfig, FConvExtSelfAttModel
from . import architectures  # every family's presets; need the models registered first
from .build import build_model_from_config
from .foreign import native_checkpoint, register_checkpoint_converter

__all__ = [
    "FConvExtConfig",
    "FConvExtDecoder",
    "FConvExtEncoder",
    "FConvExtLMConfig",
    "FConvExtLanguageModel",
    "FConvExtModel",
    "FConvExtSelfAttConfig",
    "FConvExtSelfAttModel",
    "build_model_from_config",
    "native_checkpoint",
    "register_checkpoint_converter",
]
