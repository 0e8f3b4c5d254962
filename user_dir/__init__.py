"""An example fairseq user directory that extends fconv_ext: copy it to start your own.

    fairseq-train DATA --user-dir user_dir --arch fconv_ext_gated_tiny --gate gtu ...
    fairseq-generate DATA --user-dir user_dir --path checkpoints/checkpoint_best.pt

fairseq imports this directory as a Python package named after the folder (here
``user_dir``), so when you copy it, rename the folder to something unique: two user
directories with the same name cannot be loaded in one process, and neither can two
models or presets registered under the same name.
"""

import fconv_plugin  # registers fconv_ext, its task and criterion first

from . import gated_conv  # registers fconv_ext_gated and its presets
