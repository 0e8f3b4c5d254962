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
import functools
import os
import pickle
import zipfile
from typing import Any, Dict

import torch

SAFE_GLOBALS = [argparse.Namespace]

torch.serialization.add_safe_globals(SAFE_GLOBALS)


def _is_unreadable_file_error(err: BaseException) -> bool:
    if isinstance(err, (EOFError, zipfile.BadZipFile, pickle.UnpicklingError)):
        return True
    return isinstance(err, RuntimeError) and any(
        s in str(err) for s in ("PytorchStreamReader", "zip archive", "invalid load key", "unexpected EOF")
    )


def _explain(path: str, err: BaseException) -> "CheckpointError":
    first_line = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
    if isinstance(err, pickle.UnpicklingError) and "Weights only load failed" in str(err):
        return CheckpointError(
            f"refusing to load {path!r}: it contains objects that are not plain data "
            f"({[l for l in str(err).splitlines() if 'Unsupported global' in l][:1] or first_line}). "
            "Only load checkpoints you trust; fconv_ext never turns weights-only loading off"
        )
    hint = ""
    if os.path.basename(path) in ("checkpoint_last.pt", "checkpoint_best.pt"):
        hint = (" fairseq writes the epoch/update checkpoint (checkpoint<E>.pt, checkpoint_<E>_<U>.pt) "
                "atomically and copies it to checkpoint_last/best.pt, so a crash while copying leaves this "
                "file damaged: resume with --restore-file pointing at the newest intact one.")
    return CheckpointError(
        f"cannot read checkpoint {path!r}: the file is truncated or corrupt ({type(err).__name__}: "
        f"{first_line}).{hint or ' Use another checkpoint.'}"
    )


def install_clear_load_errors() -> None:
    """Make fairseq's own checkpoint loading (fairseq-train resume, fairseq-generate,
    the hub interface) report an unreadable file with :class:`CheckpointError` naming it,
    instead of a pickle/zip traceback.  Wraps ``checkpoint_utils.load_checkpoint_to_cpu``
    in this process; idempotent."""
    from fairseq import checkpoint_utils

    original = checkpoint_utils.load_checkpoint_to_cpu
    if getattr(original, "_fconv_ext_wrapped", False):
        return

    @functools.wraps(original)
    def load_checkpoint_to_cpu(path, *args, **kwargs):
        try:
            return original(path, *args, **kwargs)
        except Exception as err:  # re-raised unless it is an unreadable-file error
            if _is_unreadable_file_error(err):
                raise _explain(path, err) from None
            raise

    load_checkpoint_to_cpu._fconv_ext_wrapped = True
    checkpoint_utils.load_checkpoint_to_cpu = load_checkpoint_to_cpu


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
    # (not the ``safe_globals`` context manager: on exit it removes the classes again, also
    # from the process-wide list this module's import added them to, so that fairseq's own
    # loading of an fconv checkpoint later in the process would be refused)
    torch.serialization.add_safe_globals(SAFE_GLOBALS)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError) as err:
        raise _explain(path, err) from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path!r} is not a fairseq checkpoint (no 'model' entry)")
    return state
