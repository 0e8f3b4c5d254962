"""Named presets of fconv_ext.

The four paper/fairseq presets carry exactly the hyperparameters of fairseq's
``fconv_iwslt_de_en``, ``fconv_wmt_en_ro``, ``fconv_wmt_en_de`` and ``fconv_wmt_en_fr``
(see ``fairseq/models/fconv.py``); options given on the command line win, as in fairseq.
"""

from .fconv_ext import FConvExtConfig
from .presets import Preset, register_presets

# WMT'14 En-De (paper, table 1/4): 15 layers, 9 x 512, 4 x 1024, then two 1x1 layers.
WMT_EN_DE_LAYERS = "[(512, 3)] * 9 + [(1024, 3)] * 4 + [(2048, 1)] * 2"
# WMT'14 En-Fr: 15 layers, 6 x 512, 4 x 768, 3 x 1024, 1 x 2048 (1x1), 1 x 4096 (1x1).
WMT_EN_FR_LAYERS = "[(512, 3)] * 6 + [(768, 3)] * 4 + [(1024, 3)] * 3 + [(2048, 1)] * 1 + [(4096, 1)] * 1"


PRESETS = {
    "fconv_ext_iwslt_de_en": Preset(
        "IWSLT'14 De-En: 4 encoder and 3 decoder layers of 256 units.",
        {"encoder_embed_dim": 256, "encoder_layers": "[(256, 3)] * 4",
         "decoder_embed_dim": 256, "decoder_layers": "[(256, 3)] * 3", "decoder_out_embed_dim": 256},
    ),
    "fconv_ext_wmt_en_ro": Preset(
        "WMT'16 En-Ro: the base 20 + 20 layers of 512 units with a 512-d decoder output.",
        {"decoder_out_embed_dim": 512},
    ),
    "fconv_ext_wmt_en_de": Preset(
        "WMT'14 En-De (paper, tables 1 and 4): 768-d embeddings, 15 layers each side.",
        {"encoder_embed_dim": 768, "encoder_layers": WMT_EN_DE_LAYERS,
         "decoder_embed_dim": 768, "decoder_layers": WMT_EN_DE_LAYERS, "decoder_out_embed_dim": 512},
    ),
    "fconv_ext_wmt_en_fr": Preset(
        "WMT'14 En-Fr (paper, table 1): 768-d embeddings, 15 layers each side.",
        {"encoder_embed_dim": 768, "encoder_layers": WMT_EN_FR_LAYERS,
         "decoder_embed_dim": 768, "decoder_layers": WMT_EN_FR_LAYERS, "decoder_out_embed_dim": 512},
    ),
    "fconv_ext_summarization": Preset(
        "Abstractive summarization (paper, section 5.3 / table 3, Gigaword and DUC-2004): 6 encoder and "
        "6 decoder layers of 256 units, 256-d embeddings and decoder output, kernel width 3 (the paper's "
        "default width; fairseq has no preset for this model).",
        {"encoder_embed_dim": 256, "encoder_layers": "[(256, 3)] * 6",
         "decoder_embed_dim": 256, "decoder_layers": "[(256, 3)] * 6", "decoder_out_embed_dim": 256},
    ),
    "fconv_ext_tiny": Preset(
        "A few-second model for tests and CPU smoke runs (not from the paper).",
        {"encoder_embed_dim": 32, "encoder_layers": "[(32, 3)] * 2",
         "decoder_embed_dim": 32, "decoder_layers": "[(32, 3)] * 2", "decoder_out_embed_dim": 32},
    ),
}

#: ``--arch fconv_ext`` itself is fairseq's ``fconv`` (20 + 20 layers of 512 units, kernel
#: width 3): the config dataclass defaults, registered by ``register_model``.
ARCHITECTURES = register_presets("fconv_ext", FConvExtConfig, PRESETS)
fconv_ext_tiny = ARCHITECTURES["fconv_ext_tiny"]  # what user_dir/ builds its variant on
