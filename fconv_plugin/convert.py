"""Convert a fairseq ``fconv`` checkpoint into an fconv_ext checkpoint.

    fconv-ext-convert checkpoints/fconv/checkpoint_best.pt converted.pt
    fairseq-generate DATA --user-dir fconv_plugin --path converted.pt ...

The converted model computes the same function: the weight-norm parameters ``g`` and
``v`` are carried over as they are (convolutions are re-laid out from fairseq's
ConvTBC ``k x in x out`` to ``Conv1d``'s ``out x in x k``), so decoding gives the same
hypotheses and fine-tuning continues from the same point (with ``--reset-optimizer``:
the optimizer state is not carried over).
"""

import argparse
import logging
import sys
from typing import Any, Dict, Tuple

import torch
from fairseq.data import Dictionary

from .checkpoint import CheckpointError, load_checkpoint_file
from .modules.layer_spec import LayerSpecError, parse_attention, parse_layers

logger = logging.getLogger(__name__)

#: fairseq archs this converter understands (fconv's registered presets)
FCONV_ARCHS = {"fconv", "fconv_iwslt_de_en", "fconv_wmt_en_ro", "fconv_wmt_en_de", "fconv_wmt_en_fr"}
#: fields of FConvExtConfig taken from the fconv config
MODEL_FIELDS = (
    "dropout",
    "encoder_embed_dim",
    "encoder_layers",
    "decoder_embed_dim",
    "decoder_layers",
    "decoder_out_embed_dim",
    "decoder_attention",
    "share_input_output_embed",
)


class ConversionError(ValueError):
    pass


def _model_options(state: Dict[str, Any]) -> Tuple[Dict[str, Any], Any]:
    """The fconv model options (as a dict) and the full config of a checkpoint."""
    cfg = state.get("cfg")
    args = state.get("args")
    if cfg is None and args is None:
        raise ConversionError("the checkpoint has neither 'cfg' nor 'args': not a fairseq training checkpoint")
    if cfg is None:  # fairseq < 0.10: everything in one Namespace
        from fairseq.dataclass.utils import convert_namespace_to_omegaconf
        from omegaconf import OmegaConf

        model = vars(args)
        cfg = OmegaConf.to_container(convert_namespace_to_omegaconf(args))
    else:
        model = cfg["model"]
        model = vars(model) if isinstance(model, argparse.Namespace) else dict(model)
    arch = model.get("arch") or model.get("_name")
    if arch not in FCONV_ARCHS:
        raise ConversionError(
            f"the checkpoint's arch is {arch!r}; fconv-ext-convert converts fairseq's fconv models "
            f"({', '.join(sorted(FCONV_ARCHS))}). fconv_lm goes to fconv_ext_lm, fconv_self_att to fconv_ext_self_att"
        )
    return model, cfg


def _conv(prefix: str, src: Dict[str, torch.Tensor], dst: Dict[str, torch.Tensor]) -> None:
    """ConvTBC weight norm (dim 2, v: k x in x out, g: 1 x 1 x out) -> Conv1d (dim 0,
    v: out x in x k, g: out x 1 x 1)."""
    v = src.pop(prefix + "weight_v")
    g = src.pop(prefix + "weight_g")
    if g.dim() != 3 or g.shape[:2] != (1, 1):
        # fairseq decoder version < 2 normalised over the wrong dim: keep the weight it
        # computed and re-split it along the output channels
        w = torch._weight_norm(v, g, 0)
        v, g = w, torch.linalg.vector_norm(w, dim=(0, 1), keepdim=True)
    dst[prefix + "parametrizations.weight.original1"] = v.permute(2, 1, 0).contiguous()
    dst[prefix + "parametrizations.weight.original0"] = g.reshape(-1, 1, 1).contiguous()
    dst[prefix + "bias"] = src.pop(prefix + "bias")


def convert_state_dict(src: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename/re-lay-out fconv parameters to fconv_ext's."""
    src = dict(src)
    dst: Dict[str, torch.Tensor] = {}
    conv_prefixes = sorted(
        {k[: -len("weight_v")] for k in src if ".convolutions." in k and k.endswith("weight_v")}
    )
    for prefix in conv_prefixes:
        _conv(prefix, src, dst)
    src.pop("decoder.version", None)
    dst["decoder.version"] = torch.tensor([1.0])
    for key, value in src.items():
        if "adaptive_softmax" in key:
            raise ConversionError("fconv checkpoints with adaptive softmax are not supported")
        if key.endswith(".weight_g"):
            dst[key[: -len("weight_g")] + "parametrizations.weight.original0"] = value
        elif key.endswith(".weight_v"):
            dst[key[: -len("weight_v")] + "parametrizations.weight.original1"] = value
        else:
            dst[key] = value
    return dst


def _dummy_dictionary(size: int) -> Dictionary:
    d = Dictionary()
    while len(d) < size:
        d.add_symbol(f"<w{len(d)}>")
    return d


def convert_checkpoint(state: Dict[str, Any]) -> Dict[str, Any]:
    """Convert a loaded fconv checkpoint ``state``; returns the fconv_ext checkpoint."""
    from .convert_lm import FCONV_LM_ARCHS, checkpoint_arch, convert_lm_checkpoint

    if checkpoint_arch(state) in FCONV_LM_ARCHS:  # fconv_lm -> fconv_ext_lm (convert_lm.py)
        return convert_lm_checkpoint(state)
    from .convert_self_att import convert_self_att_checkpoint, is_self_att_checkpoint

    if is_self_att_checkpoint(state):  # fconv_self_att -> fconv_ext_self_att (convert_self_att.py)
        return convert_self_att_checkpoint(state)
    options, cfg = _model_options(state)
    weights = state["model"]
    padding_idx = 1  # fairseq's Dictionary: <s>=0, <pad>=1, </s>=2, <unk>=3
    model_cfg: Dict[str, Any] = {"_name": "fconv_ext"}
    for name in MODEL_FIELDS:
        if name not in options:
            raise ConversionError(f"the checkpoint's model config has no {name!r}")
        model_cfg[name] = options[name]
    model_cfg["encoder_embed_path"] = None  # the embeddings are in the weights
    model_cfg["decoder_embed_path"] = None
    # fconv's table of N rows starts at padding_idx + 1: it holds N - padding_idx - 1 positions
    for side in ("encoder", "decoder"):
        table = weights[f"{side}.embed_positions.weight"]
        model_cfg[f"max_{'source' if side == 'encoder' else 'target'}_positions"] = (
            table.size(0) - padding_idx - 1
        )
    try:
        parse_layers(model_cfg["encoder_layers"])
        decoder_layers = parse_layers(model_cfg["decoder_layers"])
        parse_attention(model_cfg["decoder_attention"], len(decoder_layers))
    except LayerSpecError as err:
        raise ConversionError(f"the checkpoint's layer spec is not accepted: {err}") from None

    new_weights = convert_state_dict(weights)
    _check_loads(model_cfg, new_weights, cfg)

    return converted_checkpoint(state, cfg, model_cfg, new_weights, "fconv")


def build_fconv_ext(model_cfg: Dict[str, Any], src_dict: Dictionary, tgt_dict: Dictionary):
    """Build an (untrained) fconv_ext model from a converted model config."""
    from omegaconf import OmegaConf

    from .models.fconv_ext import FConvExtConfig, FConvExtModel

    class _Task:  # just the two dictionaries build_model reads
        source_dictionary = src_dict
        target_dictionary = tgt_dict

    conf = OmegaConf.merge(
        OmegaConf.structured(FConvExtConfig), {k: v for k, v in model_cfg.items() if k != "_name"}
    )
    return FConvExtModel.build_model(conf, _Task())


def _check_loads(model_cfg: Dict[str, Any], weights: Dict[str, torch.Tensor], cfg) -> None:
    """Build an fconv_ext model of the converted config and load the weights strictly,
    so a mismatch is reported here and not at generation time."""
    model = build_fconv_ext(
        model_cfg,
        _dummy_dictionary(weights["encoder.embed_tokens.weight"].size(0)),
        _dummy_dictionary(weights["decoder.embed_tokens.weight"].size(0)),
    )
    check_weights_match(model.state_dict(), weights)


def check_weights_match(expected: Dict[str, torch.Tensor], weights: Dict[str, torch.Tensor]) -> None:
    """Converted ``weights`` have exactly the names and shapes of the target model's
    ``expected`` state dict, or a ConversionError says what differs."""
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise ConversionError(
            "the converted weights do not match the architecture in the checkpoint's config "
            f"(missing: {missing[:5]}, unexpected: {unexpected[:5]})"
        )
    for name, tensor in expected.items():
        if tensor.shape != weights[name].shape:
            raise ConversionError(
                f"{name}: shape {tuple(weights[name].shape)} does not match the config's {tuple(tensor.shape)}"
            )


def converted_checkpoint(state: Dict[str, Any], cfg, model_cfg: Dict[str, Any], weights: Dict[str, torch.Tensor], source: str) -> Dict[str, Any]:
    """The checkpoint written for a converted model: its config with ``model_cfg``, the new
    weights, the optimizer history without optimizer state (fine-tune with
    ``--reset-optimizer``), and where it came from."""
    cfg = dict(cfg)
    cfg["model"] = model_cfg
    history = [
        {k: v for k, v in h.items() if k != "optimizer"} for h in state.get("optimizer_history", [])
    ] or [{"criterion_name": "CrossEntropyCriterion", "optimizer_name": "converted", "lr_scheduler_state": {}, "num_updates": 0}]
    return {
        "args": None,
        "cfg": cfg,
        "model": weights,
        "optimizer_history": history,
        "extra_state": {"converted_from": source},
        "last_optimizer_state": None,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="fconv-ext-convert",
        description="Convert a fairseq fconv checkpoint into an fconv_ext checkpoint "
        "(same outputs; load with --user-dir fconv_plugin).",
    )
    parser.add_argument("input", help="fairseq fconv checkpoint (.pt)")
    parser.add_argument("output", help="where to write the fconv_ext checkpoint")
    args = parser.parse_args(argv)
    try:
        state = load_checkpoint_file(args.input)
        converted = convert_checkpoint(state)
    except (CheckpointError, ConversionError) as err:
        print(f"fconv-ext-convert: error: {err}", file=sys.stderr)
        return 2
    torch.save(converted, args.output)
    model_name = converted["cfg"]["model"]["_name"]  # fconv_ext, fconv_ext_lm, ...
    print(f"wrote {args.output} ({model_name}, {sum(v.numel() for v in converted['model'].values())} values)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
