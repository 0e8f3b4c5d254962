"""Named presets (fairseq "architectures") as data.

Each model file lists its presets as ``{name: Preset(doc, values)}`` and registers them with
:func:`register_presets`.  ``--arch <preset>`` then fills, for every option the command line
does not give, the preset's value, else the model's dataclass default; options given on the
command line win, as in fairseq.
"""

import dataclasses
from typing import Any, Callable, Dict, NamedTuple, Type

from fairseq.models import register_model_architecture
from fairseq.utils import safe_getattr


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


def register_presets(model_name: str, config_class: Type, presets: Dict[str, Preset]) -> Dict[str, Callable]:
    """Register each preset as ``--arch <name>`` of ``model_name``; returns name -> the
    function fairseq calls on the parsed arguments (what ``user_dir/`` variants reuse)."""
    base = dataclass_defaults(config_class)
    functions = {}
    for name, preset in presets.items():

        def fill(args, values={**base, **preset.values}):
            for option, value in values.items():
                setattr(args, option, safe_getattr(args, option, value))

        fill.__name__, fill.__doc__ = name, preset.doc
        functions[name] = register_model_architecture(model_name, name)(fill)
    return functions
