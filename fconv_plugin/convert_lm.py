"""Convert a fairseq ``fconv_lm`` checkpoint into an ``fconv_ext_lm`` checkpoint.

Called by ``fconv-ext-convert`` (:func:`fconv_plugin.convert.convert_checkpoint`) when the
checkpoint's arch is one of fconv_lm's.  As for fconv: the weight-norm ``g`` and ``v`` are
carried over as they are (convolutions re-laid out from ConvTBC to Conv1d), and the
adaptive softmax (fairseq's own module on both sides) is copied unchanged, so the
converted model computes the same log-probabilities.

Both build the adaptive softmax only when trained with ``--criterion adaptive_loss`` and a
cutoff; the converted config says so exactly when the checkpoint holds adaptive-softmax
weights.
"""

import argparse
from typing import Any, Dict, Optional

import torch

from .convert import ConversionError, _conv, _dummy_dictionary, check_weights_match, converted_checkpoint
from .modules.layer_spec import LayerSpecError, parse_attention, parse_layers

#: fairseq archs handled here (fconv_lm's registered presets)
FCONV_LM_ARCHS = {"fconv_lm", "fconv_lm_dauphin_wikitext103", "fconv_lm_dauphin_gbw"}
#: fields of FConvExtLMConfig taken over from the fconv_lm config as they are
MODEL_FIELDS = ("dropout", "decoder_embed_dim", "decoder_layers", "adaptive_softmax_dropout")
ADAPTIVE_PREFIX = "decoder.adaptive_softmax."


def checkpoint_arch(state: Dict[str, Any]) -> Optional[str]:
    """The ``arch`` a fairseq checkpoint was trained with (None when it names none)."""
    options = _raw_model_options(state)
    return options.get("arch") or options.get("_name")


def _raw_model_options(state: Dict[str, Any]) -> Dict[str, Any]:
    cfg = state.get("cfg")
    if cfg is None:  # fairseq < 0.10: everything in one Namespace
        args = state.get("args")
        return vars(args) if args is not None else {}
    model = cfg.get("model") if isinstance(cfg, dict) else getattr(cfg, "model", None)
    if model is None:
        return {}
    return vars(model) if isinstance(model, argparse.Namespace) else dict(model)


def _full_config(state: Dict[str, Any]) -> Dict[str, Any]:
    cfg = state.get("cfg")
    if cfg is not None:
        return dict(cfg)
    args = state.get("args")
    if args is None:
        raise ConversionError("the checkpoint has neither 'cfg' nor 'args': not a fairseq training checkpoint")
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from omegaconf import OmegaConf

    return OmegaConf.to_container(convert_namespace_to_omegaconf(args))


def _cutoff_text(value) -> Optional[str]:
    """fconv_lm stores the cutoff as a comma-separated string; accept a list too."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return ",".join(str(int(v)) for v in value)
    return str(value)


def convert_lm_state_dict(src: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename/re-lay-out fconv_lm parameters to fconv_ext_lm's."""
    src = dict(src)
    dst: Dict[str, torch.Tensor] = {}
    if any(k.startswith("decoder.embed_positions.") for k in src):
        raise ConversionError("the checkpoint has position embeddings; fconv_lm has none: not an fconv_lm model")
    conv_prefixes = sorted(
        {k[: -len("weight_v")] for k in src if k.startswith("decoder.convolutions.") and k.endswith("weight_v")}
    )
    for prefix in conv_prefixes:
        _conv(prefix, src, dst)
    src.pop("decoder.version", None)
    dst["decoder.version"] = torch.tensor([1.0])
    for key, value in src.items():
        if key.startswith(ADAPTIVE_PREFIX):
            dst[key] = value  # fairseq's AdaptiveSoftmax on both sides: same names, same layout
        elif key.endswith(".weight_g"):
            dst[key[: -len("weight_g")] + "parametrizations.weight.original0"] = value
        elif key.endswith(".weight_v"):
            dst[key[: -len("weight_v")] + "parametrizations.weight.original1"] = value
        else:
            dst[key] = value
    return dst


def _model_config(options: Dict[str, Any], cfg: Dict[str, Any], weights: Dict[str, torch.Tensor]) -> Dict[str, Any]:
    model_cfg: Dict[str, Any] = {"_name": "fconv_ext_lm"}
    for name in MODEL_FIELDS:
        if name not in options:
            raise ConversionError(f"the checkpoint's model config has no {name!r}")
        model_cfg[name] = options[name]
    model_cfg["decoder_learned_pos"] = False  # fconv_lm has no position embeddings
    has_adaptive = any(k.startswith(ADAPTIVE_PREFIX) for k in weights)
    cutoff = _cutoff_text(options.get("adaptive_softmax_cutoff"))
    if has_adaptive and cutoff is None:
        raise ConversionError("the checkpoint has adaptive-softmax weights but no adaptive_softmax_cutoff in its config")
    model_cfg["adaptive_softmax_cutoff"] = cutoff if has_adaptive else None
    # fconv_lm and fconv_ext_lm build the adaptive softmax only for this criterion
    model_cfg["criterion"] = "adaptive_loss" if has_adaptive else (options.get("criterion") or "cross_entropy")

    try:
        layers = parse_layers(model_cfg["decoder_layers"])
        attention = parse_attention(options.get("decoder_attention", "False"), len(layers))
    except LayerSpecError as err:
        raise ConversionError(f"the checkpoint's layer spec is not accepted: {err}") from None
    if any(attention):
        raise ConversionError("the checkpoint's fconv_lm has decoder attention, which a language model cannot use")

    task = cfg.get("task") or {}
    task = vars(task) if isinstance(task, argparse.Namespace) else dict(task)
    # fconv_lm: tokens_per_sample defaults to max_target_positions (it only bounds the inputs)
    model_cfg["tokens_per_sample"] = (
        options.get("tokens_per_sample") or task.get("tokens_per_sample") or options.get("max_target_positions") or 1024
    )
    model_cfg["max_target_positions"] = options.get("max_target_positions") or task.get("max_target_positions")
    return model_cfg


def convert_lm_checkpoint(state: Dict[str, Any]) -> Dict[str, Any]:
    """Convert a loaded fconv_lm checkpoint ``state``; returns the fconv_ext_lm checkpoint."""
    options = _raw_model_options(state)
    arch = options.get("arch") or options.get("_name")
    if arch not in FCONV_LM_ARCHS:
        raise ConversionError(f"the checkpoint's arch is {arch!r}, not one of {', '.join(sorted(FCONV_LM_ARCHS))}")
    cfg = _full_config(state)
    weights = state["model"]
    model_cfg = _model_config(options, cfg, weights)
    new_weights = convert_lm_state_dict(weights)
    _check_loads(model_cfg, new_weights)

    return converted_checkpoint(state, cfg, model_cfg, new_weights, "fconv_lm")


def build_fconv_ext_lm(model_cfg: Dict[str, Any], dictionary):
    """Build an (untrained) fconv_ext_lm model from a converted model config."""
    from omegaconf import OmegaConf

    from .models.fconv_ext_lm import FConvExtLanguageModel, FConvExtLMConfig

    class _Task:  # just the dictionary build_model reads
        source_dictionary = dictionary
        target_dictionary = dictionary

    conf = OmegaConf.merge(
        OmegaConf.structured(FConvExtLMConfig), {k: v for k, v in model_cfg.items() if k != "_name"}
    )
    return FConvExtLanguageModel.build_model(conf, _Task())


def _check_loads(model_cfg: Dict[str, Any], weights: Dict[str, torch.Tensor]) -> None:
    """Build an fconv_ext_lm of the converted config and compare names and shapes, so a
    mismatch is reported here and not at evaluation time."""
    try:
        model = build_fconv_ext_lm(model_cfg, _dummy_dictionary(weights["decoder.embed_tokens.weight"].size(0)))
    except (LayerSpecError, ValueError) as err:
        raise ConversionError(f"the converted config does not build an fconv_ext_lm: {err}") from None
    check_weights_match(model.state_dict(), weights)
