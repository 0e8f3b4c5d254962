"""What the three model classes share (their decoders share :mod:`.conv_decoder`).

    ConvModel         the gate of every conv block (one hook for variants), and weight norm
                      folded into plain weights for inference -- fconv_ext, fconv_ext_lm,
                      fconv_ext_self_att
    ConvSeq2SeqModel  + the 1 / (2N) gradient scale of the encoder output -- the two
                      encoder-decoders

Both are mixins: list them before the fairseq model class in the bases.
"""

from ..modules import Gate, fold_weight_norm_, glu


class ConvModel:
    """Mixin of every model here (before fairseq's model class in the bases)."""

    @classmethod
    def gate_for(cls, cfg) -> Gate:
        """The gate of every conv block: the paper's GLU.  Variants override this (see
        user_dir/) to swap the block without copying the encoder or decoder."""
        return glu

    def make_generation_fast_(self, **kwargs):
        """Inference only: fold weight norm into plain weights (fairseq disables training
        afterwards), then fairseq's part (dropout, need_attn)."""
        if not self._is_generation_fast:
            fold_weight_norm_(self)
        super().make_generation_fast_(**kwargs)


class ConvSeq2SeqModel(ConvModel):
    """Mixin of the encoder-decoder models: the encoder output feeds every attention layer of
    the decoder, so its gradient is the sum of N attention gradients; it is scaled by
    1 / (2N), N = the number of attention layers (Gehring et al. 2017, section 3.4;
    :func:`fconv_plugin.modules.scale_grad`)."""

    def __init__(self, encoder, decoder):
        super().__init__(encoder, decoder)
        encoder.grad_scale = 1.0 / (2.0 * decoder.num_attention_layers)
