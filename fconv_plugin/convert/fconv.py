"""fairseq ``fconv`` -> ``fconv_ext``.

    fconv-ext-convert checkpoints/fconv/checkpoint_best.pt converted.pt
    fairseq-generate DATA --user-dir fconv_plugin --path converted.pt ...

The converted model computes the same function: the weight-norm parameters ``g`` and
``v`` are carried over as they are (convolutions are re-laid out from fairseq's
ConvTBC ``k x in x out`` to ``Conv1d``'s ``out x in x k``), so decoding gives the same
hypotheses and fine-tuning continues from the same point (with ``--reset-optimizer``:
the optimizer state is not carried over).
"""

from typing import Any, Dict

from .common import ENCODER_DECODER_FIELDS, ConversionError, Converter, Weights, copy_options, max_positions

#: fconv options FConvExtConfig takes over as they are
MODEL_FIELDS = ENCODER_DECODER_FIELDS + ("share_input_output_embed",)


def model_config(options: Dict[str, Any], cfg: Dict[str, Any], weights: Weights) -> Dict[str, Any]:
    if any("adaptive_softmax" in key for key in weights):
        raise ConversionError("fconv checkpoints with adaptive softmax are not supported")
    model_cfg = copy_options(options, MODEL_FIELDS)
    model_cfg["encoder_embed_path"] = None  # the embeddings are in the weights
    model_cfg["decoder_embed_path"] = None
    model_cfg["max_source_positions"] = max_positions(weights, "encoder.embed_positions.weight")
    model_cfg["max_target_positions"] = max_positions(weights, "decoder.embed_positions.weight")
    return model_cfg


CONVERTER = Converter(
    source="fconv",
    archs=frozenset({"fconv", "fconv_iwslt_de_en", "fconv_wmt_en_ro", "fconv_wmt_en_de", "fconv_wmt_en_fr"}),
    target="fconv_ext",
    model_config=model_config,
    vocab_keys=("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"),
)
