"""Run a model exported by ``fconv-ext-export`` (ONNX or AOTInductor) without fairseq, and for ONNX
without torch: ``Translator(OUTDIR).translate(lines)`` and the ``fconv-ext-translate`` command.

This package is separate from ``fconv_plugin`` on purpose: importing anything under ``fconv_plugin``
imports fairseq (its ``__init__`` registers the models).  Dependencies: numpy, onnxruntime, sacremoses,
subword-nmt; torch only to run an ``aoti`` export.
"""

from .artifact import FORMAT_VERSION, ArtifactError, load_manifest, read_dictionary
from .translator import Translation, Translator
