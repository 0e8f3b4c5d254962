"""Model configs as plain data: named presets (fairseq "architectures"), a config dataclass's
defaults, and a plain dict (a checkpoint's ``cfg["model"]``) back into the dataclass config.

The presets of every model family are listed in :mod:`.architectures` as
``{name: Preset(doc, values)}`` and registered with :func:`register_presets`.  ``--arch <preset>``
then fills, for every option the command line does not give, the preset's value, else the
model's dataclass default; options given on the command line win, as in fairseq.
"""

import dataclasses
from typing import Any, Callable, Dict, Mapping, NamedTuple, Type

from fairseq.models import register_model_architecture
from fairseq.utils import safe_getattr
from omegaconf import DictConfig, OmegaConf


class Preset(NamedTuple):
    doc: str  # where the values come from (paper, fairseq preset)
    values: Dict[str, Any]  # option name -> value, over the dataclass defaults


def dataclass_defaults(config_class: Type) -> Dict[str, Any]:
    """The plain defaults of a config dataclass (interpolations such as
    ``II("task.max_source_positions")`` and fields without a default are left to fairseq)."""
    defaults = {}
    for f in dataclasses.fields(config_class):
        if f.name == "_name" or f.default is dataclasses.MISSING:
            continue
        if isinstance(f.default, str) and f.default.startswith("${"):
            continue
        defaults[f.name] = f.default
    return defaults


def config_from_dict(config_class: Type, values: Mapping[str, Any]) -> DictConfig:
    """``config_class``'s config (an OmegaConf structured config, as fairseq passes to
    ``build_model``) with ``values`` over its defaults; keys the dataclass does not have
    (``_name``, options of other models) are ignored."""
    fields = set(config_class.__dataclass_fields__) - {"_name"}
    return OmegaConf.merge(OmegaConf.structured(config_class), {k: v for k, v in values.items() if k in fields})


def register_presets(model_name: str, config_class: Type, presets: Dict[str, Preset]) -> Dict[str, Callable]:
    """Register each preset as ``--arch <name>`` of ``model_name``; returns name -> the
    function fairseq calls on the parsed arguments."""
    base = dataclass_defaults(config_class)
    functions = {}
    for name, preset in presets.items():

        def fill(args, values={**base, **preset.values}):
            for option, value in values.items():
                setattr(args, option, safe_getattr(args, option, value))

        fill.__name__, fill.__doc__ = name, preset.doc
        functions[name] = register_model_architecture(model_name, name)(fill)
    return functions
