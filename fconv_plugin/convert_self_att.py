"""Convert a fairseq ``fconv_self_att`` checkpoint into an fconv_ext_self_att checkpoint.

    fconv-ext-convert stories/pretrained_checkpoint.pt pretrained_ext.pt
    fconv-ext-convert stories/fusion_checkpoint.pt fusion_ext.pt

(``fconv-ext-convert`` dispatches here on the checkpoint's arch, see :mod:`.convert`.)

The parity contract.  fairseq's ``fconv_self_att`` applies no weight norm (except inside its
attention modules) and does not mask padded source positions.  The converted model is
weight-normalised with ``g = ||v||`` for every layer that fairseq keeps plain, so its
effective weights are fairseq's, and on batches WITHOUT padding it gives the same
log-probabilities as fairseq's model (full forward; its cached decoding gives the same as
its full forward).  On padded batches the converted model masks the padding: every sentence
gets the output it has unpadded, where fairseq's output changes with the padding.

A fusion checkpoint (``--pretrained True``) keeps ``pretrained_checkpoint`` as it is: at
load time fconv_ext_self_att reads that file weights-only and converts it in memory if it
is a fairseq checkpoint (the weights themselves come from the fusion checkpoint).
"""

import argparse
import re
from typing import Any, Dict, Tuple

import torch

from .convert import ConversionError, _dummy_dictionary, check_weights_match, converted_checkpoint

#: fairseq archs this module converts
SELF_ATT_ARCHS = {"fconv_self_att", "fconv_self_att_wp"}
#: options of FConvExtSelfAttConfig taken over from the fairseq config as they are
MODEL_FIELDS = (
    "dropout",
    "encoder_embed_dim",
    "encoder_layers",
    "decoder_embed_dim",
    "decoder_layers",
    "decoder_out_embed_dim",
    "decoder_attention",
    "self_attention",
    "encoder_attention",
    "multihead_attention_nheads",
    "multihead_self_attention_nheads",
    "encoder_attention_nheads",
    "project_input",
    "gated_attention",
    "downsample",
    "pretrained",
    "pretrained_checkpoint",
)

# fairseq key -> fconv_ext_self_att key, applied in order (anywhere in the key, so that
# the pretrained model inside a fusion checkpoint is renamed the same way)
RENAMES = [
    (r"^encoder\.encoder\.", "encoder."),  # CompositeEncoder {"encoder": ..., "pretrained": ...}
    (r"^encoder\.pretrained\.encoder\.", "encoder.pretrained."),  # the pretrained model's CompositeEncoder
    (r"\.pretrained_decoder\.", ".pretrained."),
    (r"\.gate([12])\.0\.", r".fusion.gate\1."),  # Sequential(Linear, Sigmoid)
    (r"\.joining\.", ".fusion.joining."),
    (r"\.attproj\.", ".attention_query."),
    (r"\.selfattention\.", ".self_attention."),
    (r"^(encoder(?:\.pretrained)?)\.attention\.", r"\1.self_attention."),  # encoder: SelfAttention blocks
    (r"\.ln\.", ".layer_norm."),
    # DownsampledMultiHeadAttention without downsampling: one SingleHeadAttention
    (r"\.attention_module\.in_proj_q\.", ".groups.0.q_proj."),
    (r"\.attention_module\.in_proj_([kv])\.0\.", r".groups.0.\1_proj."),  # Sequential(proj)
    (r"\.attention_module\.out_proj\.", ".out_proj."),
    # with downsampling (decoder self-attention only): a ModuleList of heads, keys/values
    # behind Sequential(Downsample, proj)
    (r"(self_attention\.\d+\.attention)\.(\d+)\.in_proj_q\.", r"\1.groups.\2.q_proj."),
    (r"(self_attention\.\d+\.attention)\.(\d+)\.in_proj_([kv])\.1\.", r"\1.groups.\2.\3_proj."),
    (r"(self_attention\.\d+\.attention)\.(\d+)\.out_proj\.", r"\1.groups.\2.out_proj."),
]


def _arch_and_options(state: Dict[str, Any]) -> Tuple[Any, Dict[str, Any], Any]:
    """(arch, model options as a dict, full config) of a fairseq checkpoint."""
    cfg, args = state.get("cfg"), state.get("args")
    if cfg is None and args is None:
        return None, {}, None
    if cfg is None:  # fairseq < 0.10: everything in one Namespace
        from fairseq.dataclass.utils import convert_namespace_to_omegaconf
        from omegaconf import OmegaConf

        options = vars(args)
        cfg = OmegaConf.to_container(convert_namespace_to_omegaconf(args))
    else:
        model = cfg.get("model") if isinstance(cfg, dict) else None
        if model is None:
            return None, {}, cfg
        options = vars(model) if isinstance(model, argparse.Namespace) else dict(model)
    return options.get("arch") or options.get("_name"), options, cfg


def is_self_att_checkpoint(state: Dict[str, Any]) -> bool:
    """Whether ``state`` is a fairseq fconv_self_att checkpoint (what this module converts)."""
    return _arch_and_options(state)[0] in SELF_ATT_ARCHS


def _rename(key: str) -> str:
    for pattern, replacement in RENAMES:
        key = re.sub(pattern, replacement, key)
    return key


def _weight_norm_of(weight: torch.Tensor, conv: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(g, v)`` with ``g * v / ||v|| == weight``: ``v = weight``, ``g = ||weight||`` per
    output unit.  ConvTBC weights (``k x in x out``) become Conv1d's ``out x in x k``."""
    v = weight.permute(2, 1, 0).contiguous() if conv else weight  # out x in x k for convs
    g = torch.linalg.vector_norm(v, dim=tuple(range(1, v.dim())), keepdim=True)  # out x 1 [x 1]
    return g, v


def convert_self_att_state_dict(src: Dict[str, torch.Tensor], expected: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename fairseq's parameters and give the plain ones weight norm, for a model whose
    state dict is ``expected`` (names and shapes)."""
    dst: Dict[str, torch.Tensor] = {}
    for key, value in src.items():
        if key.startswith("pretrained_encoder."):
            continue  # fusion: the same module as encoder.pretrained, stored twice by fairseq
        if key.endswith(".version"):
            continue  # fairseq's decoder version 2; ours is set below
        name = _rename(key)
        base, _, param = name.rpartition(".")
        if re.search(r"\.groups\.\d+\.[qkv]_proj\.", name) and not any(k.startswith(base + ".") for k in expected):
            continue  # fairseq creates the input projections also with project_input False, unused
        if param == "weight" and f"{base}.parametrizations.weight.original0" in expected:
            g, v = _weight_norm_of(value, conv=".convolutions." in base)
            dst[f"{base}.parametrizations.weight.original0"] = g
            dst[f"{base}.parametrizations.weight.original1"] = v
        elif param in ("weight_g", "weight_v"):  # weight-normed in fairseq too
            dst[f"{base}.parametrizations.weight.original{0 if param == 'weight_g' else 1}"] = value
        else:
            dst[name] = value
    for key in expected:
        if key.endswith("decoder.version") or key.endswith("decoder.pretrained.version"):
            dst[key] = torch.tensor([1.0])
    return dst


def convert_self_att_checkpoint(state: Dict[str, Any]) -> Dict[str, Any]:
    """Convert a loaded fairseq fconv_self_att checkpoint; returns the fconv_ext_self_att one."""
    arch, options, cfg = _arch_and_options(state)
    if arch not in SELF_ATT_ARCHS:
        raise ConversionError(f"the checkpoint's arch is {arch!r}, not one of {sorted(SELF_ATT_ARCHS)}")
    weights = state["model"]
    model_cfg: Dict[str, Any] = {"_name": "fconv_ext_self_att"}
    for name in MODEL_FIELDS:
        if name not in options:
            raise ConversionError(f"the checkpoint's model config has no {name!r}")
        value = options[name]
        model_cfg[name] = str(value) if isinstance(value, bool) else value
    padding_idx = 1  # fairseq's Dictionary: <s>=0, <pad>=1, </s>=2, <unk>=3
    # fairseq's table of N rows starts at padding_idx + 1: it holds N - padding_idx - 1 positions
    model_cfg["max_source_positions"] = weights["encoder.encoder.embed_positions.weight"].size(0) - padding_idx - 1
    model_cfg["max_target_positions"] = weights["decoder.embed_positions.weight"].size(0) - padding_idx - 1

    # the target architecture, for its state layout (fusion: loads the pretrained checkpoint)
    model = _build_for_layout(model_cfg, weights)
    expected = model.state_dict()
    new_weights = convert_self_att_state_dict(weights, expected)
    check_weights_match(expected, new_weights)

    return converted_checkpoint(state, cfg, model_cfg, new_weights, arch)


def _build_for_layout(model_cfg: Dict[str, Any], weights: Dict[str, torch.Tensor]):
    """An untrained model of the converted config, with dummy dictionaries of the
    checkpoint's sizes.  For a fusion checkpoint this reads ``pretrained_checkpoint`` (the
    only place where the pretrained model's architecture is recorded)."""
    from omegaconf import OmegaConf

    from .checkpoint import CheckpointError
    from .models.fconv_ext_self_att import FConvExtSelfAttConfig, FConvExtSelfAttModel
    from .modules import LayerSpecError

    class _Task:  # just the two dictionaries build_model reads
        source_dictionary = _dummy_dictionary(weights["encoder.encoder.embed_tokens.weight"].size(0))
        target_dictionary = _dummy_dictionary(weights["decoder.embed_tokens.weight"].size(0))

    conf = OmegaConf.merge(
        OmegaConf.structured(FConvExtSelfAttConfig), {k: v for k, v in model_cfg.items() if k != "_name"}
    )
    try:
        return FConvExtSelfAttModel.build_model(conf, _Task())
    except LayerSpecError as err:
        raise ConversionError(f"the checkpoint's layer spec is not accepted: {err}") from None
    except (CheckpointError, ValueError) as err:
        raise ConversionError(
            f"{err}. A fusion checkpoint is converted together with its pretrained model: "
            f"pretrained_checkpoint={model_cfg['pretrained_checkpoint']!r} must be readable from here"
        ) from None
