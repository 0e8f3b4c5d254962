"""Checkpoints written by old fairseq (0.6 - 0.10), brought to today's layout before converting.

fairseq's published ConvS2S archives (``conv.wmt14.en-fr``, ..., :mod:`fconv_plugin.hub`)
and the checkpoints users trained years ago carry things today's fairseq no longer writes.
fairseq itself upgrades them at load time in two places, and :func:`upgrade_legacy_checkpoint`
does the same on a copy of the checkpoint, reusing fairseq's own code where it fits:

* ``checkpoint_utils._upgrade_state_dict`` (the checkpoint's outer layout), called as it is:
  no ``optimizer_history`` (``optimizer`` + ``best_loss`` at the top level), ``epoch`` /
  ``batch_offset`` / ``val_loss`` at the top level instead of ``extra_state``, the
  optimizer state kept in every history entry, no ``optimizer_name`` /
  ``lr_scheduler_state`` / ``num_updates`` / ``train_iterator``; and in ``args``:
  ``max_positions`` instead of ``max_source_positions`` / ``max_target_positions``, no
  ``task``, ``raw_text`` / ``lazy_load``, ``remove_bpe``, ``min_lr``, ``lr`` as a float,
  ``data`` as a list.  Fields it requires and very old checkpoints may lack (``best_loss``,
  ``optimizer``, ``extra_state``) are filled with ``None`` / ``{}`` first.
* the models' ``upgrade_state_dict_named``: ``LinearizedConvolution`` drops the cached
  ``<conv>._linearized_weight`` buffer old versions saved (dropped here, :data:`LEGACY_BUFFERS`);
  fconv's decoder (``decoder.version`` < 2 or absent) re-creates the weight norm of its
  convolutions over dim 0 instead of 2 -- the converter recognises that layout by the shape
  of ``weight_g`` (:func:`fconv_plugin.convert.common.conv_tbc_weight_norm`) and keeps the
  weight fairseq computes.
* options added to an architecture after the checkpoint was written (e.g.
  ``share_input_output_embed``): filled by the architecture's own preset function, as
  fairseq does when it builds the model (a preset only sets what is missing).

The result keeps ``args`` (upgraded) and no ``cfg``: the converter derives the config from
``args`` (:func:`fconv_plugin.convert.common.full_config`).
"""

import argparse
import copy
from typing import Any, Dict, Mapping

#: state-dict entries old fairseq versions saved that no model reads (suffixes of the key)
LEGACY_BUFFERS = ("._linearized_weight",)


class LegacyCheckpointError(ValueError):
    """An old checkpoint whose layout fairseq's own upgrade code cannot read."""


def is_legacy(state: Mapping[str, Any]) -> bool:
    """Whether ``state`` needs :func:`upgrade_legacy_checkpoint`: it has no ``cfg`` (only
    an ``args`` Namespace), no optimizer history, or legacy state-dict buffers."""
    model = state.get("model") or {}
    return (
        state.get("cfg") is None
        or "optimizer_history" not in state
        or any(key.endswith(LEGACY_BUFFERS) for key in model)
    )


def upgrade_legacy_checkpoint(state: Mapping[str, Any]) -> Dict[str, Any]:
    """``state`` in today's fairseq layout (a new dict; ``state`` itself is not changed).

    A checkpoint that needs nothing (:func:`is_legacy` false) comes back as it is."""
    if not is_legacy(state):
        return dict(state)
    new = dict(state)
    model = state.get("model")
    if isinstance(model, Mapping):
        new["model"] = {k: v for k, v in model.items() if not k.endswith(LEGACY_BUFFERS)}
    if new.get("cfg") is not None:  # fairseq >= 0.10 with a leftover buffer: nothing else to do
        return new
    args = new.get("args")
    if not isinstance(args, argparse.Namespace):
        return new  # no config at all: the converter says what is wrong
    new["args"] = argparse.Namespace(**vars(args))  # _upgrade_state_dict edits it in place
    # copies of what _upgrade_state_dict edits in place
    new["optimizer_history"] = [dict(h) for h in state.get("optimizer_history", [])] or None
    if new["optimizer_history"] is None:
        del new["optimizer_history"]
        new.setdefault("best_loss", None)
        new.setdefault("optimizer", None)
    if "extra_state" in state:
        new["extra_state"] = copy.copy(state["extra_state"]) if state["extra_state"] is not None else {}
    elif "epoch" not in state:
        new["extra_state"] = {}
    else:  # epoch / batch_offset / val_loss at the top level: _upgrade_state_dict moves them
        for key in ("batch_offset", "val_loss"):
            new.setdefault(key, None)
    if isinstance(new.get("extra_state"), dict) and "train_iterator" in new["extra_state"]:
        new["extra_state"]["train_iterator"] = copy.copy(new["extra_state"]["train_iterator"])

    from fairseq.checkpoint_utils import _upgrade_state_dict

    try:
        upgraded = _upgrade_state_dict(new)
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        raise LegacyCheckpointError(
            f"fairseq's upgrade of old checkpoints cannot read this one ({type(err).__name__}: {err})"
        ) from None
    # after the upgrade, which copies an old max_positions that a preset's default would hide
    _fill_arch_defaults(upgraded["args"])
    upgraded["cfg"] = None  # the converter derives its config from the upgraded args
    return upgraded


def _fill_arch_defaults(args: argparse.Namespace) -> None:
    """Options the checkpoint's architecture gained after it was written, set to the
    architecture's defaults by its own preset function (which sets only what is missing)."""
    from fairseq.models import ARCH_CONFIG_REGISTRY

    preset = ARCH_CONFIG_REGISTRY.get(getattr(args, "arch", None))
    if preset is not None:
        preset(args)
