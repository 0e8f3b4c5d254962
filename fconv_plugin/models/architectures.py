"""Named presets of fconv_ext.

The four paper/fairseq presets carry exactly the hyperparameters of fairseq's
``fconv_iwslt_de_en``, ``fconv_wmt_en_ro``, ``fconv_wmt_en_de`` and ``fconv_wmt_en_fr``
(see ``fairseq/models/fconv.py``); options given on the command line win, as in fairseq.
"""

from fairseq.models import register_model_architecture
from fairseq.utils import safe_getattr

# WMT'14 En-De (paper, table 1/4): 15 layers, 9 x 512, 4 x 1024, then two 1x1 layers.
WMT_EN_DE_LAYERS = "[(512, 3)] * 9 + [(1024, 3)] * 4 + [(2048, 1)] * 2"
# WMT'14 En-Fr: 15 layers, 6 x 512, 4 x 768, 3 x 1024, 1 x 2048 (1x1), 1 x 4096 (1x1).
WMT_EN_FR_LAYERS = "[(512, 3)] * 6 + [(768, 3)] * 4 + [(1024, 3)] * 3 + [(2048, 1)] * 1 + [(4096, 1)] * 1"


def _default(args, name, value):
    setattr(args, name, safe_getattr(args, name, value))


def base_architecture(args):
    """fairseq's ``fconv``: 20 + 20 layers of 512 units, kernel width 3.

    ``--arch fconv_ext`` itself is registered by ``register_model`` and takes the same
    values from the config dataclass defaults."""
    _default(args, "dropout", 0.1)
    _default(args, "encoder_embed_dim", 512)
    _default(args, "encoder_embed_path", None)
    _default(args, "encoder_layers", "[(512, 3)] * 20")
    _default(args, "decoder_embed_dim", 512)
    _default(args, "decoder_embed_path", None)
    _default(args, "decoder_layers", "[(512, 3)] * 20")
    _default(args, "decoder_out_embed_dim", 256)
    _default(args, "decoder_attention", "True")
    _default(args, "share_input_output_embed", False)


@register_model_architecture("fconv_ext", "fconv_ext_iwslt_de_en")
def fconv_ext_iwslt_de_en(args):
    """IWSLT'14 De-En: 4 encoder and 3 decoder layers of 256 units."""
    _default(args, "encoder_embed_dim", 256)
    _default(args, "encoder_layers", "[(256, 3)] * 4")
    _default(args, "decoder_embed_dim", 256)
    _default(args, "decoder_layers", "[(256, 3)] * 3")
    _default(args, "decoder_out_embed_dim", 256)
    base_architecture(args)


@register_model_architecture("fconv_ext", "fconv_ext_wmt_en_ro")
def fconv_ext_wmt_en_ro(args):
    """WMT'16 En-Ro: the base 20 + 20 layers with a 512-d decoder output."""
    _default(args, "decoder_out_embed_dim", 512)
    base_architecture(args)


@register_model_architecture("fconv_ext", "fconv_ext_wmt_en_de")
def fconv_ext_wmt_en_de(args):
    _default(args, "encoder_embed_dim", 768)
    _default(args, "encoder_layers", WMT_EN_DE_LAYERS)
    _default(args, "decoder_embed_dim", 768)
    _default(args, "decoder_layers", WMT_EN_DE_LAYERS)
    _default(args, "decoder_out_embed_dim", 512)
    base_architecture(args)


@register_model_architecture("fconv_ext", "fconv_ext_wmt_en_fr")
def fconv_ext_wmt_en_fr(args):
    _default(args, "encoder_embed_dim", 768)
    _default(args, "encoder_layers", WMT_EN_FR_LAYERS)
    _default(args, "decoder_embed_dim", 768)
    _default(args, "decoder_layers", WMT_EN_FR_LAYERS)
    _default(args, "decoder_out_embed_dim", 512)
    base_architecture(args)


@register_model_architecture("fconv_ext", "fconv_ext_summarization")
def fconv_ext_summarization(args):
    """Abstractive summarization (paper, section 5.3 / table 3, Gigaword and DUC-2004): 6 encoder
    and 6 decoder layers of 256 units, 256-d embeddings and decoder output, kernel width 3
    (the paper's default width; fairseq has no preset for this model)."""
    _default(args, "encoder_embed_dim", 256)
    _default(args, "encoder_layers", "[(256, 3)] * 6")
    _default(args, "decoder_embed_dim", 256)
    _default(args, "decoder_layers", "[(256, 3)] * 6")
    _default(args, "decoder_out_embed_dim", 256)
    base_architecture(args)


@register_model_architecture("fconv_ext", "fconv_ext_tiny")
def fconv_ext_tiny(args):
    """A few-second model for tests and CPU smoke runs (not from the paper)."""
    _default(args, "encoder_embed_dim", 32)
    _default(args, "encoder_layers", "[(32, 3)] * 2")
    _default(args, "decoder_embed_dim", 32)
    _default(args, "decoder_layers", "[(32, 3)] * 2")
    _default(args, "decoder_out_embed_dim", 32)
    base_architecture(args)
