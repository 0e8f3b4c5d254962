"""Checkpoints written by other implementations, seen from the models.

The fusion model (:mod:`.fconv_ext_self_att`) loads a pretrained checkpoint that may be
fairseq's own ``fconv_self_att``.  Models never import the converters (the dependency
runs convert -> models only), so :mod:`fconv_plugin.convert` registers its converters
here with :func:`register_checkpoint_converter`, and :func:`native_checkpoint` applies
the first one that accepts a checkpoint.
"""

from typing import Any, Callable, Dict, List, Optional

#: a converter returns the converted checkpoint, or None for one it does not convert
CheckpointConverter = Callable[[Dict[str, Any]], Optional[Dict[str, Any]]]
_CONVERTERS: List[CheckpointConverter] = []


def register_checkpoint_converter(converter: CheckpointConverter) -> CheckpointConverter:
    """Let :func:`native_checkpoint` use ``converter`` (idempotent)."""
    if converter not in _CONVERTERS:
        _CONVERTERS.append(converter)
    return converter


def native_checkpoint(state: Dict[str, Any]) -> Dict[str, Any]:
    """``state`` itself if no registered converter accepts it (it is one of this plugin's
    checkpoints, or unknown), else its conversion."""
    for converter in _CONVERTERS:
        converted = converter(state)
        if converted is not None:
            return converted
    return state
