"""Safe checkpoint reading.

torch >= 2.6 loads checkpoints with ``weights_only=True``: only tensors, containers and
allow-listed classes can be unpickled, so a checkpoint cannot run code.  fairseq
checkpoints of models without a dataclass config (fairseq's own ``fconv``, ...) store
their options as an ``argparse.Namespace``, which that loader refuses
("Unsupported global: argparse.Namespace", docs/upstream-problems.md, problem 2); users
then turn the protection off altogether with ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``.

``argparse.Namespace`` is a plain attribute bag: rebuilding one sets attributes and
calls nothing else, so it is safe to allow (:data:`SAFE_GLOBALS`).
:func:`load_checkpoint_file` (the converters, the fusion model's pretrained checkpoint)
allows it while it reads; fairseq's own loading gets it from
:mod:`fconv_plugin.fairseq_fixes` (entry ``safe_globals``), which also uses
:func:`checkpoint_error_for` to name an unreadable file (entry ``checkpoint_errors``).
Importing this module changes nothing.  fconv_ext's own checkpoints need no
allow-listing (their config is plain dicts).
"""

import argparse
import contextlib
import functools
import os
import pickle
import zipfile
from typing import Any, Dict, Optional

import torch

SAFE_GLOBALS = [argparse.Namespace]


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read; the message names the file and what to do."""


def _is_unreadable_file_error(err: BaseException) -> bool:
    if isinstance(err, (EOFError, zipfile.BadZipFile, pickle.UnpicklingError)):
        return True
    return isinstance(err, RuntimeError) and any(
        s in str(err) for s in ("PytorchStreamReader", "zip archive", "invalid load key", "unexpected EOF")
    )


def _explain(path: str, err: BaseException, cls=CheckpointError) -> CheckpointError:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    # torch's weights-only message: the first line is general advice, the reason is on the line that says
    # "Unsupported global ..." / "unsupported GLOBAL ..." (code) or "Unsupported operand ..." (not a pickle)
    reason = next((line for line in lines if "unsupported " in line.lower()), lines[0] if lines else type(err).__name__)
    reason = reason[:300]
    if isinstance(err, pickle.UnpicklingError) and "unsupported global" in reason.lower():
        return cls(
            f"refusing to load {path!r}: it contains objects that are not plain data ({reason}). "
            "Only load checkpoints you trust; fconv_ext never turns weights-only loading off"
        )
    hint = ""
    if os.path.basename(path) in ("checkpoint_last.pt", "checkpoint_best.pt"):
        hint = (
            " fairseq writes the epoch/update checkpoint (checkpoint<E>.pt, checkpoint_<E>_<U>.pt) "
            "atomically and copies it to checkpoint_last/best.pt, so a crash while copying leaves this "
            "file damaged: resume with --restore-file pointing at the newest intact one."
        )
    return cls(
        f"cannot read checkpoint {path!r}: the file is truncated or corrupt ({type(err).__name__}: "
        f"{reason}).{hint or ' Use another checkpoint.'}"
    )


@functools.lru_cache(maxsize=None)
def _error_class(original: type) -> type:
    """CheckpointError that is also an ``original`` (EOFError, BadZipFile, UnpicklingError,
    RuntimeError), so that code catching what torch raised still catches it."""
    if issubclass(original, CheckpointError):
        return original
    try:
        return type("CheckpointError", (CheckpointError, original), {"__module__": __name__})
    except TypeError:  # an exception class whose instance layout cannot be combined with RuntimeError's
        return CheckpointError


def checkpoint_error_for(path: str, err: BaseException) -> Optional[CheckpointError]:
    """The error to raise instead of ``err``, raised by torch while reading the checkpoint
    ``path``: a :class:`CheckpointError` naming the file and what to do, which is also an
    instance of ``err``'s class; ``None`` when ``err`` is not about an unreadable file."""
    if not _is_unreadable_file_error(err):
        return None
    return _explain(path, err, _error_class(type(err)))


def allow_safe_globals():
    """A context in which torch's weights-only loader accepts :data:`SAFE_GLOBALS`; on exit
    it takes off the list only what it added (torch's ``safe_globals`` context manager takes
    its classes off even when they were allowed before)."""
    allowed = torch.serialization.get_safe_globals()
    missing = [g for g in SAFE_GLOBALS if g not in allowed]
    return torch.serialization.safe_globals(missing) if missing else contextlib.nullcontext()


def load_checkpoint_file(path: str) -> Dict[str, Any]:
    """Read a fairseq checkpoint with torch's weights-only loader, on the CPU.

    Raises :class:`CheckpointError` with a message naming ``path`` for a missing,
    truncated or corrupt file, and for a file that carries code (a pickled object that
    is not plain data), instead of a pickle traceback.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist (check the path)")
    try:
        with allow_safe_globals():
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError) as err:
        raise _explain(path, err) from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path!r} is not a fairseq checkpoint (no 'model' entry)")
    return state
