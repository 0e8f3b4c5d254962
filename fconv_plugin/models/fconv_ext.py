"""fconv_ext: Convolutional Sequence to Sequence Learning (Gehring et al. 2017).

The whole forward path lives in this file, top to bottom:

    FConvExtConfig   the model's options (every field documented)
    FConvExtModel    build_model(): config -> encoder + decoder
    FConvExtEncoder  embed -> fc1 -> [conv, GLU, residual] x N -> fc2 -> (z, z + e)
    FConvExtDecoder  embed -> fc1 -> [conv, GLU, attention, residual] x M -> fc2 -> fc3

The stack of gated conv blocks is :class:`fconv_plugin.modules.ConvStack`, shared by all
three models (this file adds what follows each decoder block's gate: multi-step
attention); the decoder's embedding, ``fc1`` and causal stack are
:class:`~fconv_plugin.models.conv_decoder.ConvDecoder`.  The other building blocks
(weight-normalised layers, convolutions, attention, positions, gradient scaling, the
layer-spec parser) are in :mod:`fconv_plugin.modules`.
Tensors are batch-major everywhere: ``B`` batch, ``S`` source length, ``T`` target
length, ``C`` conv channels, ``E`` embedding dim, ``V`` vocabulary.
"""

import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from fairseq import utils
from fairseq.dataclass import FairseqDataclass
from fairseq.models import (
    FairseqEncoder,
    FairseqEncoderDecoderModel,
    register_model,
)
from fairseq.modules import FairseqDropout
from omegaconf import II
from torch import Tensor

from ..modules import (
    SQRT_HALF,
    AfterConv,
    AttentionAverage,
    ConvStack,
    Embedding,
    Gate,
    IncrementalState,
    LAYERS_HELP,
    LayerSpecError,
    LearnedPositions,
    Linear,
    MultiStepAttention,
    glu,
    parse_attention,
    parse_layers,
    parse_option,
    scale_grad,
    source_length_scale,
)
from .conv_decoder import ConvDecoder
from .conv_model import ConvSeq2SeqModel
from .. import hub

logger = logging.getLogger(__name__)


@dataclass
class ConvSeq2SeqConfig(FairseqDataclass):
    """The options of every convolutional encoder-decoder here (fconv_ext, fconv_ext_self_att);
    the defaults are fairseq's ``fconv``."""

    dropout: float = field(
        default=0.1, metadata={"help": "dropout probability (embeddings, conv inputs, decoder output)"}
    )
    encoder_embed_dim: int = field(default=512, metadata={"help": "encoder embedding dimension"})
    encoder_layers: str = field(default="[(512, 3)] * 20", metadata={"help": "encoder " + LAYERS_HELP})
    decoder_embed_dim: int = field(default=512, metadata={"help": "decoder embedding dimension"})
    decoder_layers: str = field(default="[(512, 3)] * 20", metadata={"help": "decoder " + LAYERS_HELP})
    decoder_out_embed_dim: int = field(
        default=256, metadata={"help": "dimension of the decoder output before the vocabulary projection"}
    )
    decoder_attention: str = field(
        default="True",
        metadata={
            "help": "attention over the encoder output in every decoder layer (True), none (False), "
            "or a list of True/False per decoder layer"
        },
    )
    max_source_positions: int = field(
        default=II("task.max_source_positions"),
        metadata={"help": "longest source (in tokens, EOS included) the model accepts"},
    )
    max_target_positions: int = field(
        default=II("task.max_target_positions"),
        metadata={"help": "longest target (in tokens, EOS included) the model accepts"},
    )


@dataclass
class FConvExtConfig(ConvSeq2SeqConfig):
    encoder_embed_path: Optional[str] = field(
        default=None, metadata={"help": "path to pre-trained encoder embeddings (text: word v1 v2 ...)"}
    )
    decoder_embed_path: Optional[str] = field(
        default=None, metadata={"help": "path to pre-trained decoder embeddings (text: word v1 v2 ...)"}
    )
    share_input_output_embed: bool = field(
        default=False,
        metadata={
            "help": "tie the decoder input embedding and the output projection "
            "(requires --decoder-out-embed-dim == --decoder-embed-dim)"
        },
    )
    inference_dtype: str = field(
        default="float32",
        metadata={
            "help": "opt-in, inference only: 'bfloat16' casts the model to bfloat16 when decoding starts "
            "(make_generation_fast_; faster or slower than float32 depending on the CPU: benchmarks/README.md); "
            "'int8' (CPUs only) decodes with the decoder step and encoder quantized to int8: int8 weights "
            "(one scale per row), int8 activations (one scale per token) in every product (docs/int8.md; "
            "FConvBeamSearch only, fairseq's own generators decode in float32). log-probabilities "
            "and beam scores stay float32. Not exact: BLEU moves slightly (benchmarks/README.md, docs/int8.md). "
            "fairseq-generate: --model-overrides \"{'model': {'inference_dtype': 'bfloat16'}}\" (or 'int8'). "
            "Training always runs in the checkpoint's own precision"
        },
    )

    inference_compile: bool = field(
        default=False,
        metadata={
            "help": "opt-in, inference only: decode with the decoder step compiled by torch.compile "
            "(inductor: C++ on CPUs, Triton on GPUs; one compilation per model for batches of any size; "
            "docs/design.md#the-decoder-step). The first batch pays the compilation. fairseq-generate: "
            "--model-overrides \"{'model': {'inference_compile': True}}\""
        },
    )
    shortlist: Optional[str] = field(
        default=None,
        metadata={
            "help": "opt-in, inference only: a vocabulary shortlist file written by fconv-ext-shortlist "
            "(docs/shortlists.md). Each batch is decoded over the union of its sentences' shortlists "
            "(every source token's most likely translations + the most frequent target words + "
            "specials) instead of the whole target vocabulary. Not exact: BLEU moves slightly "
            "(benchmarks/README.md). fairseq-generate: --model-overrides "
            "\"{'model': {'shortlist': 'FILE'}}\" (or --task fconv_translation --shortlist-file FILE)"
        },
    )


def _parse_specs(cfg) -> Tuple[List, List, List[bool]]:
    """Parse the three spec strings of ``cfg``, naming the option that is wrong."""
    encoder_layers = parse_option("encoder_layers", cfg.encoder_layers, parse_layers)
    decoder_layers = parse_option("decoder_layers", cfg.decoder_layers, parse_layers)
    attention = parse_option("decoder_attention", cfg.decoder_attention, parse_attention, len(decoder_layers))
    return encoder_layers, decoder_layers, attention


#: --inference-dtype values; anything else is refused when the model is built ('int8': torch.qint8
#: stands for the int8 decoder step and encoder, fconv_plugin/serving/int8.py)
INFERENCE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "int8": torch.qint8}


@register_model("fconv_ext", dataclass=FConvExtConfig)
class FConvExtModel(ConvSeq2SeqModel, hub.PublishedModels, FairseqEncoderDecoderModel):
    """Convolutional encoder-decoder with multi-step attention (ConvS2S).  The gate hook
    (``gate_for``, which variants override), weight-norm folding for inference and the
    1 / (2N) gradient scale of the encoder output (N = attention layers) are
    :class:`~.conv_model.ConvSeq2SeqModel`'s."""

    PUBLISHED = hub.FCONV_MODELS  # fairseq's published fconv models: names, archives (hub.py)

    inference_dtype = torch.float32  # set from the config by build_model
    inference_compile = False  # set from the config by build_model (read by fconv_plugin.serving)
    shortlist_path: Optional[str] = None  # the config's vocabulary shortlist file (read by fconv_plugin.serving)

    @classmethod
    def build_model(cls, cfg: FConvExtConfig, task):
        encoder_layers, decoder_layers, attention = _parse_specs(cfg)
        if (getattr(cfg, "inference_dtype", None) or "float32") not in INFERENCE_DTYPES:
            raise ValueError(f"--inference-dtype {cfg.inference_dtype!r}: use one of {sorted(INFERENCE_DTYPES)}")
        gate = cls.gate_for(cfg)
        if not any(attention):
            raise LayerSpecError(
                "--decoder-attention selects no layer: fconv_ext needs attention in at least "
                "one decoder layer (use True, or a list with at least one True)"
            )
        if cfg.share_input_output_embed and cfg.decoder_out_embed_dim != cfg.decoder_embed_dim:
            raise ValueError(
                "--share-input-output-embed needs --decoder-out-embed-dim "
                f"({cfg.decoder_out_embed_dim}) == --decoder-embed-dim ({cfg.decoder_embed_dim})"
            )

        def pretrained(path, dictionary):
            if not path:
                return None
            embed_dict = utils.parse_embedding(path)
            utils.print_embed_overlap(embed_dict, dictionary)
            return embed_dict

        encoder = FConvExtEncoder(
            task.source_dictionary,
            embed_dim=cfg.encoder_embed_dim,
            embed_dict=pretrained(cfg.encoder_embed_path, task.source_dictionary),
            max_positions=cfg.max_source_positions,
            layers=encoder_layers,
            dropout=cfg.dropout,
            gate=gate,
        )
        decoder = FConvExtDecoder(
            task.target_dictionary,
            embed_dim=cfg.decoder_embed_dim,
            embed_dict=pretrained(cfg.decoder_embed_path, task.target_dictionary),
            out_embed_dim=cfg.decoder_out_embed_dim,
            max_positions=cfg.max_target_positions,
            layers=decoder_layers,
            attention=attention,
            dropout=cfg.dropout,
            share_embed=cfg.share_input_output_embed,
            gate=gate,
        )
        model = cls(encoder, decoder)
        model.shortlist_path = getattr(cfg, "shortlist", None) or None
        model.inference_dtype = INFERENCE_DTYPES[getattr(cfg, "inference_dtype", None) or "float32"]
        model.inference_compile = bool(getattr(cfg, "inference_compile", False))
        return model

    def make_generation_fast_(self, **kwargs):
        """Inference only: weight norm folded and fairseq's part (``ConvModel``), then a cast to
        ``--inference-dtype`` bfloat16 if asked.  ``int8`` is applied by the decoder step
        (:mod:`fconv_plugin.serving`), not to the model."""
        cast = not self._is_generation_fast and self.inference_dtype not in (torch.float32, torch.qint8)
        super().make_generation_fast_(**kwargs)
        if cast:
            self.to(self.inference_dtype)


class FConvExtEncoder(FairseqEncoder):
    """Convolutional encoder (paper, section 3.2): stacked non-causal conv blocks."""

    def __init__(
        self,
        dictionary,
        embed_dim: int,
        embed_dict: Optional[Dict[str, Tensor]],
        max_positions: int,
        layers,
        dropout: float,
        gate: Gate = glu,
    ):
        super().__init__(dictionary)
        self.dropout_module = FairseqDropout(dropout, module_name=self.__class__.__name__)
        self.padding_idx = dictionary.pad()
        self.grad_scale = 1.0  # set by the model to 1 / (2 * attention layers): ConvSeq2SeqModel

        self.embed_tokens = Embedding(len(dictionary), embed_dim, self.padding_idx)
        if embed_dict:
            self.embed_tokens = utils.load_embedding(embed_dict, dictionary, self.embed_tokens)
        self.embed_positions = LearnedPositions(max_positions, embed_dim, self.padding_idx)

        in_channels = layers[0].out_channels
        self.fc1 = Linear(embed_dim, in_channels, dropout=dropout)
        self.stack = ConvStack(
            in_channels, layers, dropout, causal=False, gate=gate, module_name=self.__class__.__name__
        )
        self.fc2 = Linear(self.stack.out_channels, embed_dim)

    def forward(self, src_tokens: Tensor, src_lengths: Optional[Tensor] = None, **unused):
        """src_tokens: B x S, left-padded.  Returns the keys ``z`` (B x S x E), the
        values ``z + e`` (B x S x E) and the padding mask (B x S, or None)."""
        x = self.embed_tokens(src_tokens) + self.embed_positions(src_tokens)  # B x S x E
        x = self.dropout_module(x)
        input_embedding = x  # e: element embedding + position

        x = self.fc1(x)  # B x S x C
        padding_mask = src_tokens.eq(self.padding_idx)  # B x S
        if not padding_mask.any():
            padding_mask = None

        # [conv, gate, (what a variant adds), residual] x N
        x = self.stack(x, padding_mask=padding_mask, after_conv=self.after_conv(padding_mask))  # B x S x C

        x = self.fc2(x)  # B x S x E
        if padding_mask is not None:
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0)
        x = scale_grad(x, self.grad_scale)  # backward only: gradient * 1/(2N)
        y = (x + input_embedding) * SQRT_HALF  # values: z + e
        return {"encoder_out": (x, y), "encoder_padding_mask": padding_mask}

    def after_conv(self, padding_mask: Optional[Tensor]) -> Optional[AfterConv]:
        """What follows each conv block's gate: nothing in ConvS2S's encoder; the
        self-attention model adds self-attention here."""
        return None

    def reorder_encoder_out(self, encoder_out, new_order: Tensor):
        """Row ``i`` of the result is row ``new_order[i]`` of ``encoder_out``.

        Beam search only ever moves hypotheses between the beams of one sentence, so all
        ``k`` beams of a sentence read the same encoder output.  The tensors therefore stay
        one row per sentence and ``encoder_out["beams"] = k`` says how many consecutive
        decoder rows share each of them: expanding a batch to its beams copies nothing, and
        a step only selects sentences when some have finished (fairseq's ``fconv`` copies
        all ``B*k`` rows of keys and values at every step).  An order that does not keep the
        beams of a sentence together falls back to one row per decoder row."""
        keys, values = encoder_out["encoder_out"]  # B x S x E each, B = sentences
        mask = encoder_out["encoder_padding_mask"]  # B x S or None
        beams = encoder_out.get("beams", 1)
        sentence = torch.div(new_order, beams, rounding_mode="floor")  # sentence of each new row
        rows, sentences = new_order.numel(), keys.size(0)
        # group size of the new order: the beam size (fixed during a search), or on the first
        # call (B rows -> B*k rows) the expansion factor
        k = beams if beams > 1 else max(rows // sentences, 1)
        grouped = sentence.view(-1, k) if rows % k == 0 else None  # B' x k
        if grouped is not None and bool((grouped == grouped[:, :1]).all()):
            picked = grouped[:, 0]  # B': one sentence per group of k rows
            if picked.numel() != sentences or not torch.equal(picked, torch.arange(sentences, device=picked.device)):
                keys, values = keys.index_select(0, picked), values.index_select(0, picked)
                mask = None if mask is None else mask.index_select(0, picked)
            return {"encoder_out": (keys, values), "encoder_padding_mask": mask, "beams": k}
        return {
            "encoder_out": (keys.index_select(0, sentence), values.index_select(0, sentence)),
            "encoder_padding_mask": None if mask is None else mask.index_select(0, sentence),
            "beams": 1,
        }

    def max_positions(self) -> int:
        return self.embed_positions.max_positions


class FConvExtDecoder(ConvDecoder):
    """Convolutional decoder (paper, sections 3.2-3.3): causal conv blocks, each
    optionally followed by its own attention over the encoder output."""

    def __init__(
        self,
        dictionary,
        embed_dim: int,
        embed_dict: Optional[Dict[str, Tensor]],
        out_embed_dim: int,
        max_positions: int,
        layers,
        attention: List[bool],
        dropout: float,
        share_embed: bool,
        gate: Gate = glu,
    ):
        super().__init__(dictionary, embed_dim, max_positions, layers, dropout, gate)
        if embed_dict:
            self.embed_tokens = utils.load_embedding(embed_dict, dictionary, self.embed_tokens)
        self.attention = nn.ModuleList(
            MultiStepAttention(layer.out_channels, embed_dim) if use else None for layer, use in zip(layers, attention)
        )
        self.num_attention_layers = sum(attention)

        self.fc2 = Linear(self.stack.out_channels, out_embed_dim)
        if share_embed:
            self.fc3 = nn.Linear(out_embed_dim, len(dictionary))
            self.fc3.weight = self.embed_tokens.weight
            nn.init.zeros_(self.fc3.bias)
        else:
            self.fc3 = Linear(out_embed_dim, len(dictionary), dropout=dropout)

    def forward(
        self,
        prev_output_tokens: Tensor,  # B x T (right-padded, BOS first)
        encoder_out=None,
        incremental_state: Optional[IncrementalState] = None,
        **unused,
    ):
        """Returns logits (B x T x V) and the attention averaged over the attention
        layers (B x T x S; only in eval mode with ``need_attn``).  With
        ``incremental_state``, only the last position is computed (T = 1)."""
        x, avg_attn = self.extract_features(prev_output_tokens, encoder_out, incremental_state)
        return self.output_layer(x), avg_attn

    def extract_features(
        self,
        prev_output_tokens: Tensor,  # B x T
        encoder_out=None,
        incremental_state: Optional[IncrementalState] = None,
        **unused,
    ) -> Tuple[Tensor, Optional[Tensor]]:
        """What the vocabulary projection ``fc3`` takes (``output_layer``'s input): ``fc2``'s
        output after dropout (B x T x out_embed_dim), as fairseq's ``fconv`` feeds its ``fc3``;
        and the attention averaged over the attention layers (or None)."""
        keys, values = encoder_out["encoder_out"]  # B' x S x E each (B' = B / beams)
        padding_mask = encoder_out["encoder_padding_mask"]  # B' x S or None
        beams = encoder_out.get("beams", 1)  # decoder rows per encoder row (reorder_encoder_out)
        length_scale = source_length_scale(values, padding_mask)

        x = self.embed(prev_output_tokens, incremental_state)  # B x T x E
        target_embedding = x  # g: used in every attention query

        x = self.fc1(x)  # B x T x C
        average = AttentionAverage(self.num_attention_layers, enabled=not self.training and self.need_attn)

        def attend(layer: int, h: Tensor) -> Tensor:  # after the gate of decoder layer `layer`
            attention = self.attention[layer]
            if attention is None:
                return h
            h, attn = attention(h, target_embedding, keys, values, padding_mask, length_scale, beams)
            average.add(attn)
            return h

        # [causal conv, gate, attention, residual] x M
        x = self.stack(x, incremental_state=incremental_state, after_conv=attend)  # B x T x C

        x = self.fc2(x)  # B x T x out_embed_dim
        return self.dropout_module(x), average.value

    def output_layer(self, features: Tensor, **unused) -> Tensor:
        """The logits ``fc3(features)`` (B x T x V)."""
        return self.fc3(features)
