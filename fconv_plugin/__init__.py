"""fconv-ext: ConvS2S (Gehring et al. 2017) as a fairseq plugin.

Importing this package (``--user-dir fconv_plugin`` or ``import fconv_plugin``)
registers the ``fconv_ext`` model and its presets with fairseq, and lets torch's
weights-only checkpoint loader read fairseq checkpoints (see :mod:`.checkpoint`).
"""

__version__ = "0.1.0"

from . import checkpoint  # noqa: F401,E402
from . import models  # noqa: F401,E402
