"""fconv_ext_lm: gated convolutional language model (Dauphin et al. 2017, "Language
Modeling with Gated Convolutional Networks", arXiv 1612.08083).

fairseq's ``fconv_lm`` in this plugin's own blocks: the ConvS2S decoder without an
encoder and without attention, top to bottom:

    FConvExtLMConfig        the model's options (every field documented)
    FConvExtLanguageModel   build_model(): config -> decoder
    FConvExtLMDecoder       embed [+ positions] -> fc1 -> [causal conv, GLU, residual] x L
                            -> fc2 -> fc3 (full softmax) | adaptive softmax

Its presets (fconv_ext_lm_dauphin_wikitext103, fconv_ext_lm_dauphin_gbw, fconv_ext_lm_tiny) are
in :mod:`.architectures`.  The conv blocks, weight-normalised layers, embeddings and the
incremental window of the causal convolutions are :mod:`fconv_plugin.modules`; the gate hook
and weight-norm folding are :class:`~.conv_model.ConvModel`'s; the adaptive softmax (Grave et al.
2017) is fairseq's own ``AdaptiveSoftmax``, so ``--criterion adaptive_loss`` works as with
``fconv_lm``.  Tensors are batch-major: ``B`` batch, ``T`` length, ``C`` conv channels,
``E`` embedding dim, ``V`` vocabulary.

As in ``fconv_lm``, the adaptive softmax is built only when ``--adaptive-softmax-cutoff``
is set *and* the model is trained with ``--criterion adaptive_loss`` (fairseq's
``AdaptiveSoftmax.get_log_prob`` is inference-only, so ``cross_entropy`` needs the full
softmax); the presets carry fconv_lm's cutoffs, which ``cross_entropy`` runs ignore (a log
line says so).  One addition: ``--decoder-learned-pos`` adds learned absolute positions,
which ``fconv_lm`` (and the paper) do not have; off by default and in the presets.
"""

import logging
from dataclasses import dataclass, field
from typing import List, Optional

from fairseq.dataclass import FairseqDataclass
from fairseq.models import FairseqLanguageModel, register_model
from fairseq.modules import AdaptiveSoftmax
from fairseq.utils import safe_getattr
from omegaconf import II
from torch import Tensor

from ..modules import (
    Gate,
    IncrementalState,
    LAYERS_HELP,
    LayerSpecError,
    Linear,
    glu,
    parse_layers,
    parse_option,
    safe_literal,
)
from .conv_decoder import ConvDecoder
from .conv_model import ConvModel

logger = logging.getLogger(__name__)


@dataclass
class FConvExtLMConfig(FairseqDataclass):
    dropout: float = field(
        default=0.1, metadata={"help": "dropout probability (embeddings, conv inputs, output projection)"}
    )
    decoder_embed_dim: int = field(
        default=128,
        metadata={"help": "token embedding dimension (also the width of the output projection fc2, as in fconv_lm)"},
    )
    decoder_layers: str = field(
        default="[(1268, 4)] * 13",
        metadata={"help": "causal " + LAYERS_HELP},
    )
    decoder_learned_pos: bool = field(
        default=False,
        metadata={"help": "add learned absolute position embeddings (fconv_lm and the paper have none)"},
    )
    adaptive_softmax_cutoff: Optional[str] = field(
        default=None,
        metadata={
            "help": "comma separated list of adaptive softmax cutoff points, e.g. 10000,20000,200000; "
            "used with --criterion adaptive_loss only (as fconv_lm)"
        },
    )
    adaptive_softmax_dropout: float = field(
        default=0.0, metadata={"help": "dropout inside the adaptive softmax tail projections"}
    )
    criterion: str = field(
        default=II("criterion._name"),
        metadata={
            "help": "the training criterion (fairseq's --criterion; fixed in the checkpoint): "
            "the adaptive softmax exists only for adaptive_loss, as in fconv_lm"
        },
    )
    tokens_per_sample: int = II("task.tokens_per_sample")
    max_target_positions: Optional[int] = II("task.max_target_positions")


def parse_cutoff(text: Optional[str]) -> Optional[List[int]]:
    """``"10000,20000"`` -> ``[10000, 20000]``; None or ``""`` -> None.

    Parsed with the safe spec parser (fconv_lm uses ``eval``); the cutoffs must be
    positive and increasing."""
    if text is None or not str(text).strip():
        return None
    return parse_option("adaptive_softmax_cutoff", str(text), _cutoff)


def _cutoff(text: str) -> List[int]:
    value = safe_literal(text)
    cutoff = [value] if isinstance(value, int) else value
    if (
        not isinstance(cutoff, (list, tuple))
        or not cutoff
        or not all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in cutoff)
        or any(a >= b for a, b in zip(cutoff, cutoff[1:]))
    ):
        raise LayerSpecError(
            f"{text!r}: expected increasing positive integers separated by commas, e.g. 10000,20000,200000"
        )
    return list(cutoff)


@register_model("fconv_ext_lm", dataclass=FConvExtLMConfig)
class FConvExtLanguageModel(ConvModel, FairseqLanguageModel):
    """Gated convolutional language model (GCNN): a causal ConvS2S decoder alone."""

    @classmethod
    def build_model(cls, cfg: FConvExtLMConfig, task):
        layers = parse_option("decoder_layers", cfg.decoder_layers, parse_layers)
        dictionary = task.target_dictionary
        cutoff = parse_cutoff(cfg.adaptive_softmax_cutoff)
        if cutoff is not None and cfg.criterion != "adaptive_loss":
            logger.info(
                "--adaptive-softmax-cutoff %s is not used: the criterion is %s, not adaptive_loss "
                "(full softmax, as fconv_lm)",
                cfg.adaptive_softmax_cutoff,
                cfg.criterion,
            )
            cutoff = None
        if cutoff is not None and cutoff[-1] > len(dictionary):
            raise ValueError(
                f"--adaptive-softmax-cutoff {cfg.adaptive_softmax_cutoff}: the last cutoff is larger "
                f"than the vocabulary ({len(dictionary)} types); lower the cutoffs, or train with "
                "--criterion cross_entropy for a full softmax"
            )
        max_positions = None
        if cfg.decoder_learned_pos:
            max_positions = safe_getattr(cfg, "max_target_positions", None) or cfg.tokens_per_sample
        decoder = FConvExtLMDecoder(
            dictionary,
            embed_dim=cfg.decoder_embed_dim,
            layers=layers,
            dropout=cfg.dropout,
            max_positions=max_positions,
            adaptive_softmax_cutoff=cutoff,
            adaptive_softmax_dropout=cfg.adaptive_softmax_dropout,
            gate=cls.gate_for(cfg),
        )
        return cls(decoder)


class FConvExtLMDecoder(ConvDecoder):
    """Causal conv blocks over the token embeddings (paper, section 2), no attention.

    ``max_positions=None``: no position embeddings (fconv_lm, the paper); the model then
    accepts any length.  Incremental decoding keeps each conv's window of the last
    ``k - 1`` inputs (:class:`~fconv_plugin.modules.CausalConv1d`), so a step costs one
    frame per layer."""

    def __init__(
        self,
        dictionary,
        embed_dim: int,
        layers,
        dropout: float,
        max_positions: Optional[int] = None,
        adaptive_softmax_cutoff: Optional[List[int]] = None,
        adaptive_softmax_dropout: float = 0.0,
        gate: Gate = glu,
    ):
        super().__init__(dictionary, embed_dim, max_positions, layers, dropout, gate)
        out_channels = self.stack.out_channels

        if adaptive_softmax_cutoff is not None:
            # the conv output goes straight into the adaptive softmax (as in fconv_lm)
            self.adaptive_softmax = AdaptiveSoftmax(
                len(dictionary), out_channels, list(adaptive_softmax_cutoff), dropout=adaptive_softmax_dropout
            )
            self.fc2 = self.fc3 = None
        else:
            self.adaptive_softmax = None
            self.fc2 = Linear(out_channels, embed_dim)
            self.fc3 = Linear(embed_dim, len(dictionary), dropout=dropout)

    def forward(
        self,
        prev_output_tokens: Tensor,  # B x T (right-padded)
        encoder_out=None,
        incremental_state: Optional[IncrementalState] = None,
        **unused,
    ):
        """Returns the logits (B x T x V), or with the adaptive softmax the features
        (B x T x C) that it turns into log-probabilities, and None (no attention).
        With ``incremental_state`` only the last position is computed (T = 1)."""
        if encoder_out is not None:
            raise ValueError("fconv_ext_lm is a language model: it takes no encoder output")
        x, _ = self.extract_features(prev_output_tokens, incremental_state=incremental_state)
        return self.output_layer(x), None

    def extract_features(
        self,
        prev_output_tokens: Tensor,  # B x T
        encoder_out=None,
        incremental_state: Optional[IncrementalState] = None,
        **unused,
    ):
        """What the vocabulary projection takes (``output_layer``'s input) and None (no
        attention): ``fc2``'s output after dropout (B x T x E), or with the adaptive softmax the
        conv stack's output (B x T x C), which the adaptive softmax projects itself."""
        x = self.embed(prev_output_tokens, incremental_state)  # B x T x E

        x = self.fc1(x)  # B x T x C
        x = self.stack(x, incremental_state=incremental_state)  # [causal conv, GLU, residual] x L
        if self.adaptive_softmax is not None:
            return x, None  # B x T x C
        x = self.fc2(x)  # B x T x E
        return self.dropout_module(x), None

    def output_layer(self, features: Tensor, **unused) -> Tensor:
        """The logits ``fc3(features)`` (B x T x V); with the adaptive softmax the features
        themselves (``get_normalized_probs`` applies the adaptive softmax)."""
        if self.adaptive_softmax is not None:
            return features  # B x T x C
        return self.fc3(features)  # B x T x V
