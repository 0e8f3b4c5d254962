"""fconv-ext: ConvS2S (Gehring et al. 2017) as a fairseq plugin.

Importing this package (``--user-dir fconv_plugin`` or ``import fconv_plugin``)
registers the fconv_ext models and their presets, the ``fconv_translation`` task, the
``sequence_risk`` and ``fused_label_smoothed_cross_entropy`` criteria and the
``moses_protected`` tokenizer with fairseq, and applies the changes to fairseq and torch
listed in :mod:`.fairseq_fixes` (each with its switch; ``python -m
fconv_plugin.fairseq_fixes`` prints them).
"""

__version__ = "0.1.0"

from . import criterions
from .data import tokenizer  # registers --tokenizer moses_protected
from . import models
from . import convert  # registers the converters for the fusion model's pretrained checkpoint
from . import tasks
from . import fairseq_fixes

fairseq_fixes.install_all()
