"""Safe checkpoint reading.

torch >= 2.6 loads checkpoints with ``weights_only=True``: only tensors, containers and
allow-listed classes can be unpickled, so a checkpoint cannot run code.  fairseq
checkpoints of models without a dataclass config (fairseq's own ``fconv``, ...) store
their options as an ``argparse.Namespace``, which that loader refuses
("Unsupported global: argparse.Namespace", REFERENCE.md problem 2); users then turn
the protection off altogether with ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``.

``argparse.Namespace`` is a plain attribute bag: rebuilding one sets attributes and
calls nothing else.  Importing this plugin allow-lists exactly that class, so such
checkpoints load while weights-only loading stays on for everything else.
fconv_ext's own checkpoints need no allow-listing (their config is plain dicts).
"""

import argparse
import os
import pickle
import zipfile
from typing import Any, Dict

import torch

SAFE_GLOBALS = [argparse.Namespace]

torch.serialization.add_safe_globals(SAFE_GLOBALS)


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read; the message names the file and what to do."""


def load_checkpoint_file(path: str) -> Dict[str, Any]:
    """Read a fairseq checkpoint with torch's weights-only loader, on the CPU.

    Raises :class:`CheckpointError` with a message naming ``path`` for a missing,
    truncated or corrupt file, and for a file that carries code (a pickled object that
    is not plain data), instead of a pickle traceback.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist (check the path)")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"refusing to load {path!r}: it contains objects that are not plain data "
            f"({str(err).splitlines()[0][:300]}). Only load checkpoints you trust; "
            "fconv_ext never turns weights-only loading off"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as err:
        raise CheckpointError(
            f"cannot read checkpoint {path!r}: the file is truncated or corrupt "
            f"({type(err).__name__}: {str(err).splitlines()[0][:200]}). "
            "Use another checkpoint (e.g. checkpoint_last.pt or an epoch checkpoint)"
        ) from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path!r} is not a fairseq checkpoint (no 'model' entry)")
    return state
