from .fconv_ext import FConvExtConfig, FConvExtDecoder, FConvExtEncoder, FConvExtModel
from . import architectures  # noqa: E402,F401  (registers the presets; needs the model first)
from . import fconv_ext_lm  # noqa: E402,F401  (registers fconv_ext_lm, the gated conv language model, and its presets)
from . import fconv_ext_self_att  # noqa: E402,F401  (registers fconv_ext_self_att, Fan et al. 2018 story generation, and its presets)

__all__ = ["FConvExtConfig", "FConvExtDecoder", "FConvExtEncoder", "FConvExtModel"]
