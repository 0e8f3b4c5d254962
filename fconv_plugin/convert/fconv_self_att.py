"""fairseq ``fconv_self_att`` -> ``fconv_ext_self_att``.

    fconv-ext-convert stories/pretrained_checkpoint.pt pretrained_ext.pt
    fconv-ext-convert stories/fusion_checkpoint.pt fusion_ext.pt

The parity contract.  fairseq's ``fconv_self_att`` applies no weight norm (except inside its
attention modules) and does not mask padded source positions.  The converted model is
weight-normalised with ``g = ||v||`` for every layer that fairseq keeps plain, so its
effective weights are fairseq's, and on batches WITHOUT padding it gives the same
log-probabilities as fairseq's model (full forward; its cached decoding gives the same as
its full forward).  On padded batches the converted model masks the padding: every sentence
gets the output it has unpadded, where fairseq's output changes with the padding.

A fusion checkpoint (``--pretrained True``) keeps ``pretrained_checkpoint`` as it is: at
load time fconv_ext_self_att reads that file weights-only and converts it in memory if it
is a fairseq checkpoint (this converter, registered with
:func:`fconv_plugin.models.register_checkpoint_converter`; the weights themselves come
from the fusion checkpoint).  Converting a fusion checkpoint builds the fusion model, so
its ``pretrained_checkpoint`` must be readable.
"""

from typing import Any, Dict

from .common import ENCODER_DECODER_FIELDS, Converter, Weights, copy_options, max_positions

#: fairseq options FConvExtSelfAttConfig takes over (booleans as the strings its flags parse)
MODEL_FIELDS = ENCODER_DECODER_FIELDS + (
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
# the pretrained model inside a fusion checkpoint is renamed the same way); module paths
# the target nests deeper are then found by the shared name matching (common.py)
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
#: fusion: fairseq stores the pretrained encoder twice (also as encoder.pretrained)
SKIP = r"^pretrained_encoder\."
#: fairseq creates the input projections also with project_input False, unused
OPTIONAL = r"\.groups\.\d+\.[qkv]_proj$"


def model_config(options: Dict[str, Any], cfg: Dict[str, Any], weights: Weights) -> Dict[str, Any]:
    model_cfg = copy_options(options, MODEL_FIELDS, lambda value: str(value) if isinstance(value, bool) else value)
    model_cfg["max_source_positions"] = max_positions(weights, "encoder.encoder.embed_positions.weight")
    model_cfg["max_target_positions"] = max_positions(weights, "decoder.embed_positions.weight")
    return model_cfg


def _build_hint(model_cfg: Dict[str, Any]) -> str:
    if str(model_cfg.get("pretrained")).lower() != "true":
        return ""
    return (
        "A fusion checkpoint is converted together with its pretrained model: "
        f"pretrained_checkpoint={model_cfg['pretrained_checkpoint']!r} must be readable from here"
    )


CONVERTER = Converter(
    source="fconv_self_att",
    archs=frozenset({"fconv_self_att", "fconv_self_att_wp"}),
    target="fconv_ext_self_att",
    model_config=model_config,
    vocab_keys=("encoder.encoder.embed_tokens.weight", "decoder.embed_tokens.weight"),
    renames=RENAMES,
    skip=SKIP,
    optional=OPTIONAL,
    build_hint=_build_hint,
)
