"""fconv-ext: ConvS2S (Gehring et al. 2017) as a fairseq plugin.

Importing this package (``--user-dir fconv_plugin`` or ``import fconv_plugin``)
registers the ``fconv_ext`` model and its presets, the ``fconv_translation`` task and the
``sequence_risk`` criterion with fairseq, lets torch's weights-only checkpoint loader
read fairseq checkpoints (:mod:`.checkpoint`), and makes fairseq's batching keep every
example (:mod:`.data.batching`), and gives fconv_ext models a leaner beam search with
fairseq's results (:mod:`.beam_search`).
"""

__version__ = "0.1.0"

from . import beam_search  # noqa: E402
from . import checkpoint  # noqa: F401,E402
from . import criterions  # noqa: F401,E402
from . import models  # noqa: F401,E402
from . import tasks  # noqa: F401,E402
from .cli import robust_input  # noqa: E402
from .data import batching  # noqa: E402

checkpoint.install_clear_load_errors()  # unreadable checkpoints: a message naming the file
robust_input.install()  # fairseq-interactive: undecodable bytes replaced, not fatal
batching.install()  # every example gets a batch (fairseq drops the last N mod 8; see data/batching.py)
beam_search.install()  # fconv_ext models: FConvBeamSearch from task.build_generator (same results)
