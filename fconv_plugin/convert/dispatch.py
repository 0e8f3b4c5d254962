"""Which converter takes a checkpoint: by the fairseq arch it was trained with."""

from typing import Any, Dict, Mapping, Optional

from . import fconv, fconv_lm, fconv_self_att
from .common import ConversionError, Converter, checkpoint_arch, has_config
from .legacy import LegacyCheckpointError, upgrade_legacy_checkpoint

#: one per fairseq model family
FAMILIES = (fconv.CONVERTER, fconv_lm.CONVERTER, fconv_self_att.CONVERTER)
#: fairseq arch -> its converter
CONVERTERS: Dict[str, Converter] = {arch: converter for converter in FAMILIES for arch in converter.archs}


def convert_checkpoint(state: Mapping[str, Any]) -> Dict[str, Any]:
    """Convert a loaded fairseq fconv / fconv_lm / fconv_self_att checkpoint ``state``;
    returns the fconv_ext / fconv_ext_lm / fconv_ext_self_att checkpoint."""
    if not has_config(state):
        raise ConversionError("the checkpoint has neither 'cfg' nor 'args': not a fairseq training checkpoint")
    arch = checkpoint_arch(state)
    if arch not in CONVERTERS:
        families = "; ".join(f"{c.source} to {c.target} ({', '.join(sorted(c.archs))})" for c in FAMILIES)
        raise ConversionError(f"the checkpoint's arch is {arch!r}; fconv-ext-convert converts fairseq's {families}")
    return CONVERTERS[arch].convert(upgraded_checkpoint(state))


def convert_foreign_checkpoint(state: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """For the models' checkpoint loading (:func:`fconv_plugin.models.native_checkpoint`):
    the conversion of a fairseq checkpoint converted here, None for any other (this
    plugin's own checkpoints included)."""
    converter = CONVERTERS.get(checkpoint_arch(state))
    return None if converter is None else converter.convert(upgraded_checkpoint(state))


def upgraded_checkpoint(state: Mapping[str, Any]) -> Dict[str, Any]:
    """``state`` in today's fairseq layout (old fairseq's checkpoints: :mod:`.legacy`)."""
    try:
        return upgrade_legacy_checkpoint(state)
    except LegacyCheckpointError as err:
        raise ConversionError(str(err)) from None
