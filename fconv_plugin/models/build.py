"""Build any fconv_ext model from a plain config dict.

A checkpoint stores its model options as a dict (``state["cfg"]["model"]``, with the
registered model name under ``"_name"``).  :func:`build_model_from_config` turns such a
dict and the dictionaries into an untrained model of the right class, the way
``fairseq-train`` would, without a task or a data directory.  The converters, tools and
tests build models here; the fusion model's pretrained-checkpoint loader, which cannot import
this module (it is one of the models built here), shares its first step,
:func:`~.presets.config_from_dict`.
"""

from types import SimpleNamespace
from typing import Any, Mapping, Optional

from fairseq.models import MODEL_DATACLASS_REGISTRY, MODEL_REGISTRY

from .fconv_ext import FConvExtModel
from .fconv_ext_lm import FConvExtLanguageModel
from .fconv_ext_self_att import FConvExtSelfAttModel
from .presets import config_from_dict

#: the model families this function builds (and their subclasses, e.g. user_dir variants)
FAMILIES = (FConvExtModel, FConvExtLanguageModel, FConvExtSelfAttModel)


def build_model_from_config(
    model_cfg: Mapping[str, Any],
    source_dictionary,
    target_dictionary=None,
    data: Optional[str] = None,
):
    """An untrained model for ``model_cfg`` (a checkpoint's ``cfg["model"]`` as a dict).

    ``model_cfg["_name"]`` names a registered model of the fconv_ext family (fconv_ext,
    fconv_ext_lm, fconv_ext_self_att, or a variant registered from a user directory);
    options it does not give take the model's dataclass defaults, options the dataclass
    does not know are ignored.  A language model takes one dictionary
    (``target_dictionary`` defaults to ``source_dictionary``).  ``data``: the data
    directory, where the fusion model also looks for a relative ``pretrained_checkpoint``.
    """
    name = model_cfg.get("_name")
    cls, config_class = MODEL_REGISTRY.get(name), MODEL_DATACLASS_REGISTRY.get(name)
    if cls is None or config_class is None or not issubclass(cls, FAMILIES):
        known = sorted(n for n, c in MODEL_REGISTRY.items() if isinstance(c, type) and issubclass(c, FAMILIES))
        raise ValueError(f"model {name!r} is not a registered fconv_ext model (known: {', '.join(known)})")
    cfg = config_from_dict(config_class, model_cfg)
    task = SimpleNamespace(
        source_dictionary=source_dictionary,
        target_dictionary=target_dictionary if target_dictionary is not None else source_dictionary,
        cfg=SimpleNamespace(data=data),
    )
    return cls.build_model(cfg, task)
