"""fairseq ``fconv_lm`` -> ``fconv_ext_lm``.

    fconv-ext-convert checkpoints/fconv_lm/checkpoint_best.pt fconv_ext_lm.pt

As for fconv: the weight-norm ``g`` and ``v`` are carried over as they are (convolutions
re-laid out from ConvTBC to Conv1d), and the adaptive softmax (fairseq's own module on
both sides) is copied unchanged, so the converted model computes the same
log-probabilities.

Both build the adaptive softmax only when trained with ``--criterion adaptive_loss`` and a
cutoff; the converted config says so exactly when the checkpoint holds adaptive-softmax
weights.
"""

from typing import Any, Dict, Optional

from ..modules import LayerSpecError, parse_attention, parse_layers
from .common import ConversionError, Converter, Weights, as_dict, copy_options

#: fconv_lm options FConvExtLMConfig takes over as they are
MODEL_FIELDS = ("dropout", "decoder_embed_dim", "decoder_layers", "adaptive_softmax_dropout")
ADAPTIVE_PREFIX = "decoder.adaptive_softmax."


def _cutoff_text(value) -> Optional[str]:
    """fconv_lm stores the cutoff as a comma-separated string; accept a list too."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return ",".join(str(int(v)) for v in value)
    return str(value)


def model_config(options: Dict[str, Any], cfg: Dict[str, Any], weights: Weights) -> Dict[str, Any]:
    if any(k.startswith("decoder.embed_positions.") for k in weights):
        raise ConversionError("the checkpoint has position embeddings; fconv_lm has none: not an fconv_lm model")
    model_cfg = copy_options(options, MODEL_FIELDS)
    model_cfg["decoder_learned_pos"] = False  # fconv_lm has no position embeddings
    has_adaptive = any(k.startswith(ADAPTIVE_PREFIX) for k in weights)
    cutoff = _cutoff_text(options.get("adaptive_softmax_cutoff"))
    if has_adaptive and cutoff is None:
        raise ConversionError(
            "the checkpoint has adaptive-softmax weights but no adaptive_softmax_cutoff in its config"
        )
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

    task = as_dict(cfg.get("task"))
    # fconv_lm: tokens_per_sample defaults to max_target_positions (it only bounds the inputs)
    model_cfg["tokens_per_sample"] = (
        options.get("tokens_per_sample") or task.get("tokens_per_sample") or options.get("max_target_positions") or 1024
    )
    model_cfg["max_target_positions"] = options.get("max_target_positions") or task.get("max_target_positions")
    return model_cfg


CONVERTER = Converter(
    source="fconv_lm",
    archs=frozenset({"fconv_lm", "fconv_lm_dauphin_wikitext103", "fconv_lm_dauphin_gbw"}),
    target="fconv_ext_lm",
    model_config=model_config,
    vocab_keys=("decoder.embed_tokens.weight",),
)
