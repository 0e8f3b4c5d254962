"""Convert fairseq's ConvS2S checkpoints into this plugin's models (``fconv-ext-convert``).

=================  =====================  ===================
fairseq            converts to            module
=================  =====================  ===================
fconv              fconv_ext              :mod:`.fconv`
fconv_lm           fconv_ext_lm           :mod:`.fconv_lm`
fconv_self_att     fconv_ext_self_att     :mod:`.fconv_self_att`
=================  =====================  ===================

:mod:`.common` holds what they share (config extraction, weight-norm renames and the
ConvTBC -> Conv1d re-layout, building the target model, the weight check, the output
checkpoint), :mod:`.dispatch` picks the converter by the checkpoint's arch, :mod:`.cli`
is the command, :mod:`.legacy` upgrades old fairseq checkpoints first, :mod:`.archive`
converts a model directory (a published archive).  Importing this package registers the
converters with the models (:func:`fconv_plugin.models.register_checkpoint_converter`), so
that the fusion model accepts a fairseq ``fconv_self_att`` pretrained checkpoint, and the
directory conversion with :mod:`fconv_plugin.hub` (``from_pretrained("conv.wmt14.en-fr")``).
"""

from .. import hub
from ..models import register_checkpoint_converter
from . import archive
from .cli import main
from .common import ConversionError, check_weights_match, converted_checkpoint
from .dispatch import CONVERTERS, convert_checkpoint, convert_foreign_checkpoint

register_checkpoint_converter(convert_foreign_checkpoint)
hub.register_directory_converter(archive.convert_directory, archive.converts)

__all__ = [
    "CONVERTERS",
    "ConversionError",
    "check_weights_match",
    "convert_checkpoint",
    "converted_checkpoint",
    "main",
]
