"""Named presets (``--arch``) of every model family, as data.

Each preset lists the values that differ from its model's config dataclass defaults
(:class:`~.presets.Preset`); :func:`~.presets.register_presets` registers them with fairseq.
Options given on the command line win, as in fairseq.  ``--arch fconv_ext``,
``fconv_ext_lm`` and ``fconv_ext_self_att`` themselves are fairseq's ``fconv``, ``fconv_lm``
and ``fconv_self_att``: the dataclass defaults, registered by ``register_model``.

The paper/fairseq presets carry exactly the hyperparameters of fairseq's presets of the same
name without ``_ext`` (``fairseq/models/fconv.py``, ``fconv_lm.py``, ``fconv_self_att.py``).
"""

from .fconv_ext import FConvExtConfig
from .fconv_ext_lm import FConvExtLMConfig
from .fconv_ext_self_att import FConvExtSelfAttConfig
from .presets import Preset, register_presets

# ----------------------------------------------------------------------------- fconv_ext

# WMT'14 En-De (paper, table 1/4): 15 layers, 9 x 512, 4 x 1024, then two 1x1 layers.
WMT_EN_DE_LAYERS = "[(512, 3)] * 9 + [(1024, 3)] * 4 + [(2048, 1)] * 2"
# WMT'14 En-Fr: 15 layers, 6 x 512, 4 x 768, 3 x 1024, 1 x 2048 (1x1), 1 x 4096 (1x1).
WMT_EN_FR_LAYERS = "[(512, 3)] * 6 + [(768, 3)] * 4 + [(1024, 3)] * 3 + [(2048, 1)] * 1 + [(4096, 1)] * 1"

#: fconv_ext's presets (``--arch fconv_ext``: 20 + 20 layers of 512 units, kernel width 3)
PRESETS = {
    "fconv_ext_iwslt_de_en": Preset(
        "IWSLT'14 De-En: 4 encoder and 3 decoder layers of 256 units.",
        {
            "encoder_embed_dim": 256,
            "encoder_layers": "[(256, 3)] * 4",
            "decoder_embed_dim": 256,
            "decoder_layers": "[(256, 3)] * 3",
            "decoder_out_embed_dim": 256,
        },
    ),
    "fconv_ext_wmt_en_ro": Preset(
        "WMT'16 En-Ro: the base 20 + 20 layers of 512 units with a 512-d decoder output.",
        {"decoder_out_embed_dim": 512},
    ),
    "fconv_ext_wmt_en_de": Preset(
        "WMT'14 En-De (paper, tables 1 and 4): 768-d embeddings, 15 layers each side.",
        {
            "encoder_embed_dim": 768,
            "encoder_layers": WMT_EN_DE_LAYERS,
            "decoder_embed_dim": 768,
            "decoder_layers": WMT_EN_DE_LAYERS,
            "decoder_out_embed_dim": 512,
        },
    ),
    "fconv_ext_wmt_en_fr": Preset(
        "WMT'14 En-Fr (paper, table 1): 768-d embeddings, 15 layers each side.",
        {
            "encoder_embed_dim": 768,
            "encoder_layers": WMT_EN_FR_LAYERS,
            "decoder_embed_dim": 768,
            "decoder_layers": WMT_EN_FR_LAYERS,
            "decoder_out_embed_dim": 512,
        },
    ),
    "fconv_ext_summarization": Preset(
        "Abstractive summarization (paper, section 5.3 / table 3, Gigaword and DUC-2004): 6 encoder and "
        "6 decoder layers of 256 units, 256-d embeddings and decoder output, kernel width 3 (the paper's "
        "default width; fairseq has no preset for this model).",
        {
            "encoder_embed_dim": 256,
            "encoder_layers": "[(256, 3)] * 6",
            "decoder_embed_dim": 256,
            "decoder_layers": "[(256, 3)] * 6",
            "decoder_out_embed_dim": 256,
        },
    ),
    "fconv_ext_tiny": Preset(
        "A few-second model for tests and CPU smoke runs (not from the paper).",
        {
            "encoder_embed_dim": 32,
            "encoder_layers": "[(32, 3)] * 2",
            "decoder_embed_dim": 32,
            "decoder_layers": "[(32, 3)] * 2",
            "decoder_out_embed_dim": 32,
        },
    ),
}

# ----------------------------------------------------------------------------- fconv_ext_lm

# Dauphin et al. 2017, table 1 (GCNN-14 for WikiText-103, GCNN-13 bottleneck for Google
# Billion Word), written as fairseq's fconv_lm presets write them.
WIKITEXT103_LAYERS = (
    "[(850, 6)] * 3 + [(850, 1)] * 1 + [(850, 5)] * 4 + [(850, 1)] * 1"
    " + [(850, 4)] * 3 + [(1024, 4)] * 1 + [(2048, 4)] * 1"
)
GBW_LAYERS = (
    "[(512, 5)]"
    " + [(128, 1, 0), (128, 5, 0), (512, 1, 3)] * 3"
    " + [(512, 1, 0), (512, 5, 0), (1024, 1, 3)] * 3"
    " + [(1024, 1, 0), (1024, 5, 0), (2048, 1, 3)] * 6"
    " + [(1024, 1, 0), (1024, 5, 0), (4096, 1, 3)]"
)

#: fconv_ext_lm's presets (``--arch fconv_ext_lm``: 13 layers of 1268 units, kernel width 4)
LM_PRESETS = {
    "fconv_ext_lm_dauphin_wikitext103": Preset(
        "WikiText-103 (paper, GCNN-14): 280-d embeddings, adaptive softmax 10k/20k/200k.",
        {
            "decoder_embed_dim": 280,
            "decoder_layers": WIKITEXT103_LAYERS,
            "adaptive_softmax_cutoff": "10000,20000,200000",
        },
    ),
    "fconv_ext_lm_dauphin_gbw": Preset(
        "Google Billion Word (paper, GCNN-13 with bottleneck blocks): adaptive softmax 10k/50k/200k.",
        {"decoder_embed_dim": 128, "decoder_layers": GBW_LAYERS, "adaptive_softmax_cutoff": "10000,50000,200000"},
    ),
    "fconv_ext_lm_tiny": Preset(
        "A few-second model for tests and CPU smoke runs (not from the paper): a bottleneck block whose "
        "residual skips 3 layers back, like the GBW preset in small.",
        {"decoder_embed_dim": 32, "decoder_layers": "[(32, 4)] + [(16, 1, 0), (16, 4, 0), (32, 1, 3)] + [(32, 3)]"},
    ),
}

# ----------------------------------------------------------------------------- fconv_ext_self_att

# fconv_self_att_wp (Fan et al. 2018, WritingPrompts)
WRITING_PROMPTS = {
    "encoder_embed_dim": 256,
    "encoder_layers": "[(128, 3)] * 2 + [(512,3)] * 1",
    "decoder_embed_dim": 256,
    "decoder_layers": "[(512, 4)] * 4 + [(768, 4)] * 2 + [(1024, 4)] * 1",
    "decoder_out_embed_dim": 256,
    "self_attention": "True",
    "multihead_self_attention_nheads": 4,
    "project_input": "True",
    "gated_attention": "True",
    "downsample": "True",
}

#: fconv_ext_self_att's presets (``--arch fconv_ext_self_att``: 3 encoder and 8 decoder layers of 512
#: units, encoder attention in every decoder layer, no self-attention)
SELF_ATT_PRESETS = {
    "fconv_ext_self_att_wp": Preset(
        "fairseq's fconv_self_att_wp (WritingPrompts, Fan et al. 2018): 3 encoder layers, 7 decoder layers "
        "with kernel width 4, gated multi-scale self-attention with 4 downsampled heads and input projections.",
        WRITING_PROMPTS,
    ),
    "fconv_ext_self_att_tiny": Preset(
        "A few-second model for tests and CPU smoke runs with the wp features on (not from the paper).",
        {
            **WRITING_PROMPTS,
            "encoder_embed_dim": 32,
            "encoder_layers": "[(32, 3)] * 2",
            "decoder_embed_dim": 32,
            "decoder_layers": "[(32, 4)] * 2",
            "decoder_out_embed_dim": 32,
            "multihead_self_attention_nheads": 2,
        },
    ),
}

register_presets("fconv_ext", FConvExtConfig, PRESETS)
register_presets("fconv_ext_lm", FConvExtLMConfig, LM_PRESETS)
register_presets("fconv_ext_self_att", FConvExtSelfAttConfig, SELF_ATT_PRESETS)
