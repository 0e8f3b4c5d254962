"""fconv_ext_self_att: the self-attention ConvS2S of Fan et al. 2018 ("Hierarchical Neural
Story Generation"), equivalent to fairseq's ``fconv_self_att`` / ``fconv_self_att_wp``.

    FConvExtSelfAttConfig   the model's options (every field documented)
    FConvExtSelfAttModel    build_model(): config -> encoder + decoder (+ frozen pretrained model)
    FConvExtSelfAttEncoder  embed -> fc1 -> [conv, GLU, (self-attention), residual] x N -> fc2 -> (z, z + e)
    FConvExtSelfAttDecoder  embed -> fc1 -> [causal conv, GLU, (encoder attention), (gated multi-head
                            self-attention), residual] x M -> fc2 -> (fusion with the pretrained model) -> fc3
    ModelFusion             gated fusion of the decoder's hidden state with the pretrained model's
                            (paper, section 4.3 "Model fusion")

What differs from fairseq's implementation (its known problems, docs/upstream-problems.md, problem 7):

* a real incremental decoder: convolutions keep their window, self-attention caches the
  projected keys/values of past steps, encoder attention projects the encoder output once;
  fairseq's decoder recomputes the whole prefix at every step;
* padded source positions are masked in every attention (fairseq attends to them), so a
  sentence gets the same output padded or not;
* weight norm (with the paper's initialisation) on every linear/conv layer, as fairseq's
  docstrings promise but its ``Linear``/conv helpers do not do;
* layer specs are parsed safely (no ``eval``); the pretrained model is loaded weights-only.

Converted fairseq checkpoints (``fconv-ext-convert``) give the same log-probabilities as
fairseq's model on batches without padding: weight norm is set up with ``g = ||v||`` so the
effective weights are fairseq's.  On padded batches fairseq's output depends on the padding
and ours does not.  The alignment returned for ``--print-alignment`` is the encoder attention
averaged over layers (fairseq sums it).

Tensors are batch-major: ``B`` batch, ``S`` source length, ``T`` target length, ``C`` conv
channels, ``E`` embedding dim, ``V`` vocabulary.
"""

import logging
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
import torch.nn as nn
from fairseq.models import (
    ARCH_MODEL_REGISTRY,
    FairseqEncoderDecoderModel,
    register_model,
)
from fairseq.utils import safe_getattr
from torch import Tensor

from ..checkpoint import load_checkpoint_file
from ..modules import (
    AfterConv,
    AttentionAverage,
    Gate,
    IncrementalState,
    LAYERS_HELP,
    LayerSpecError,
    Linear,
    glu,
    parse_attention,
    parse_flag,
    parse_layers,
    parse_option,
)
from ..modules.downsampled_attention import DownsampledMultiHeadAttention, GatedSelfAttention
from .fconv_ext import ConvSeq2SeqConfig, FConvExtEncoder
from .conv_decoder import ConvDecoder
from .conv_model import ConvSeq2SeqModel
from .. import hub
from .presets import config_from_dict
from .foreign import native_checkpoint

logger = logging.getLogger(__name__)


@dataclass
class FConvExtSelfAttConfig(ConvSeq2SeqConfig):
    # Defaults are fairseq's fconv_self_att base architecture: 3 encoder and 8 decoder layers.
    encoder_layers: str = field(default="[(512, 3)] * 3", metadata={"help": "encoder " + LAYERS_HELP})
    decoder_layers: str = field(default="[(512, 3)] * 8", metadata={"help": "decoder " + LAYERS_HELP})
    self_attention: str = field(
        default="False",
        metadata={
            "help": "gated multi-head self-attention in every decoder layer (True), none (False), "
            "or a list of True/False per decoder layer, e.g. [True] + [False] * 5"
        },
    )
    encoder_attention: str = field(
        default="False",
        metadata={
            "help": "self-attention (causal, as fairseq's) in every encoder layer (True), none (False), "
            "or a list of True/False per encoder layer"
        },
    )
    multihead_attention_nheads: int = field(
        default=1, metadata={"help": "number of heads of the decoder's attention over the encoder output"}
    )
    multihead_self_attention_nheads: int = field(
        default=1, metadata={"help": "number of heads of the decoder's self-attention"}
    )
    encoder_attention_nheads: int = field(
        default=1, metadata={"help": "number of heads of the encoder's self-attention"}
    )
    project_input: str = field(
        default="False",
        metadata={"help": "True: learned query/key/value projections inside the decoder's attention modules"},
    )
    gated_attention: str = field(
        default="False",
        metadata={"help": "True: the self-attention projections are gated 3-layer networks (GLU between)"},
    )
    downsample: str = field(
        default="False",
        metadata={"help": "True: self-attention head h sees every (h+1)-th past position (multi-scale heads)"},
    )
    pretrained: str = field(
        default="False",
        metadata={"help": "True: fuse with the frozen pretrained model of --pretrained-checkpoint (model fusion)"},
    )
    pretrained_checkpoint: str = field(
        default="",
        metadata={
            "help": "checkpoint of the pretrained model for fusion: an fconv_ext_self_att checkpoint or a "
            "fairseq fconv_self_att one (converted in memory); a relative path is also looked up in "
            "the data directory"
        },
    )


@register_model("fconv_ext_self_att", dataclass=FConvExtSelfAttConfig)
class FConvExtSelfAttModel(ConvSeq2SeqModel, hub.PublishedModels, FairseqEncoderDecoderModel):
    """Convolutional encoder-decoder with gated multi-head self-attention and optional
    fusion with a frozen pretrained model (Fan et al. 2018).  The gate hook, weight-norm
    folding for inference and the 1 / (2N) gradient scale of the encoder output (N = the
    decoder's encoder-attention layers) are :class:`~.conv_model.ConvSeq2SeqModel`'s."""

    PUBLISHED = hub.FCONV_SELF_ATT_MODELS  # fairseq's published fconv_self_att models: names, archives (hub.py)

    @classmethod
    def build_model(cls, cfg: FConvExtSelfAttConfig, task):
        pretrained = None
        if parse_option("pretrained", cfg.pretrained, parse_flag):
            pretrained = load_pretrained_model(cfg.pretrained_checkpoint, task)
        return cls.build_with_pretrained(cfg, task, pretrained)

    @classmethod
    def build_with_pretrained(
        cls, cfg: FConvExtSelfAttConfig, task, pretrained: Optional["FConvExtSelfAttModel"]
    ) -> "FConvExtSelfAttModel":
        """build_model() with the (frozen) pretrained model for fusion given, or None."""
        encoder_layers = parse_option("encoder_layers", cfg.encoder_layers, parse_layers)
        decoder_layers = parse_option("decoder_layers", cfg.decoder_layers, parse_layers)
        attention = parse_option("decoder_attention", cfg.decoder_attention, parse_attention, len(decoder_layers))
        if not any(attention):
            raise LayerSpecError(
                "--decoder-attention selects no layer: fconv_ext_self_att needs attention over the "
                "encoder output in at least one decoder layer"
            )
        encoder = FConvExtSelfAttEncoder(
            task.source_dictionary,
            embed_dim=cfg.encoder_embed_dim,
            max_positions=cfg.max_source_positions,
            layers=encoder_layers,
            self_attention=parse_option(
                "encoder_attention", cfg.encoder_attention, parse_attention, len(encoder_layers)
            ),
            self_attention_heads=cfg.encoder_attention_nheads,
            dropout=cfg.dropout,
            gate=cls.gate_for(cfg),
            pretrained=None if pretrained is None else pretrained.encoder,
        )
        decoder = FConvExtSelfAttDecoder(
            task.target_dictionary,
            embed_dim=cfg.decoder_embed_dim,
            out_embed_dim=cfg.decoder_out_embed_dim,
            max_positions=cfg.max_target_positions,
            layers=decoder_layers,
            attention=attention,
            attention_heads=cfg.multihead_attention_nheads,
            self_attention=parse_option("self_attention", cfg.self_attention, parse_attention, len(decoder_layers)),
            self_attention_heads=cfg.multihead_self_attention_nheads,
            project_input=parse_option("project_input", cfg.project_input, parse_flag),
            gated=parse_option("gated_attention", cfg.gated_attention, parse_flag),
            downsample=parse_option("downsample", cfg.downsample, parse_flag),
            dropout=cfg.dropout,
            gate=cls.gate_for(cfg),
            pretrained=None if pretrained is None else pretrained.decoder,
        )
        return cls(encoder, decoder)


def load_pretrained_model(path: str, task) -> FConvExtSelfAttModel:
    """Load the frozen pretrained model for fusion, weights-only (fconv_plugin.checkpoint).

    ``path`` is an fconv_ext_self_att checkpoint, or a fairseq fconv_self_att one that is
    converted in memory (fconv-ext-convert's code); a relative path that does not exist is
    also looked up in the task's data directory, as fairseq does."""
    if not path:
        raise ValueError("--pretrained True needs --pretrained-checkpoint (the pretrained model's checkpoint)")
    if not os.path.exists(path):
        data = safe_getattr(getattr(task, "cfg", None), "data", None)
        candidate = os.path.join(str(data).split(os.pathsep)[0], path) if data else None
        if candidate and os.path.exists(candidate):
            path = candidate
    logger.info(f"fusion: loading the pretrained model from {path}")
    return pretrained_model_from_state(load_checkpoint_file(path), task, path)


def pretrained_model_from_state(state: Dict, task, path: str = "<checkpoint>") -> FConvExtSelfAttModel:
    """Build the pretrained model of a loaded checkpoint, load its weights, freeze it."""
    state = native_checkpoint(state)  # fairseq's fconv_self_att: converted (fconv_plugin.convert)
    cfg = state.get("cfg")
    model_cfg = cfg.get("model") if isinstance(cfg, dict) else None
    if not isinstance(model_cfg, dict) or ARCH_MODEL_REGISTRY.get(model_cfg.get("_name")) is not FConvExtSelfAttModel:
        raise ValueError(
            f"--pretrained-checkpoint {path!r} is neither an fconv_ext_self_att nor a fairseq fconv_self_att checkpoint"
        )
    if parse_option("pretrained", model_cfg.get("pretrained", "False"), parse_flag):
        raise ValueError(f"--pretrained-checkpoint {path!r} is itself a fusion model; fuse with its base model")
    model = FConvExtSelfAttModel.build_with_pretrained(config_from_dict(FConvExtSelfAttConfig, model_cfg), task, None)
    model.load_state_dict(state["model"], strict=True)
    for p in model.parameters():
        p.requires_grad = False
    return model


class FConvExtSelfAttEncoder(FConvExtEncoder):
    """fconv_ext's convolutional encoder, with (causal, as fairseq's) self-attention after
    the gate of selected layers, padded positions masked, and for fusion the frozen
    pretrained encoder running beside it."""

    def __init__(
        self,
        dictionary,
        embed_dim: int,
        max_positions: int,
        layers,
        self_attention: List[bool],
        self_attention_heads: int,
        dropout: float,
        gate: Gate = glu,
        pretrained: Optional["FConvExtSelfAttEncoder"] = None,
    ):
        super().__init__(dictionary, embed_dim, None, max_positions, layers, dropout, gate)
        # fairseq's encoder attention: no input projection, no gating, no downsampling
        self.self_attention = nn.ModuleList(
            GatedSelfAttention(layer.out_channels, embed_dim, self_attention_heads) if use else None
            for layer, use in zip(layers, self_attention)
        )
        self.pretrained = pretrained

    def after_conv(self, padding_mask: Optional[Tensor]) -> Optional[AfterConv]:
        def self_attend(layer: int, h: Tensor) -> Tensor:  # B x S x C
            attention = self.self_attention[layer]
            return h if attention is None else attention(h, key_padding_mask=padding_mask)

        return self_attend

    def forward(self, src_tokens: Tensor, src_lengths: Optional[Tensor] = None, **unused):
        """fconv_ext's encoder output (keys ``z``, values ``z + e``, padding mask) and, for
        fusion, the pretrained encoder's output under ``"pretrained"``."""
        out = super().forward(src_tokens, src_lengths)
        if self.pretrained is not None:
            out["pretrained"] = self.pretrained(src_tokens, src_lengths)
        return out

    def reorder_encoder_out(self, encoder_out, new_order: Tensor):
        """One row per decoder row (the decoder's attention modules do not share encoder
        rows between beams as fconv_ext's do)."""
        keys, values = encoder_out["encoder_out"]
        mask = encoder_out["encoder_padding_mask"]
        out = {
            "encoder_out": (keys.index_select(0, new_order), values.index_select(0, new_order)),
            "encoder_padding_mask": None if mask is None else mask.index_select(0, new_order),
        }
        if "pretrained" in encoder_out:
            out["pretrained"] = self.pretrained.reorder_encoder_out(encoder_out["pretrained"], new_order)
        return out


class ModelFusion(nn.Module):
    """Gated fusion of the decoder state ``x`` with the frozen pretrained decoder's ``p``
    (Fan et al. 2018, section 4.3; fairseq's ``gate1``/``gate2``/``joining``):

        y = [x; p],  g1 = sigmoid(W1 y),  g2 = sigmoid(W2 y)
        out = joining([g1 * x; g2 * p])

    ``joining`` = Linear(2d, 2d), LayerNorm, GLU, Linear(d, 2d), LayerNorm, GLU, Linear(d, d),
    LayerNorm."""

    def __init__(self, dim: int):
        super().__init__()
        self.gate1 = Linear(dim * 2, dim)
        self.gate2 = Linear(dim * 2, dim)
        self.joining = nn.Sequential(
            Linear(dim * 2, dim * 2),
            nn.LayerNorm(dim * 2),
            nn.GLU(),  # 2d -> d
            Linear(dim, dim * 2),
            nn.LayerNorm(dim * 2),
            nn.GLU(),  # 2d -> d
            Linear(dim, dim),
            nn.LayerNorm(dim),
        )

    def forward(self, x: Tensor, pretrained: Tensor) -> Tensor:  # B x T x d each
        y = torch.cat([x, pretrained], dim=-1)  # B x T x 2d
        gated = torch.cat(
            [torch.sigmoid(self.gate1(y)) * x, torch.sigmoid(self.gate2(y)) * pretrained], dim=-1
        )  # B x T x 2d
        return self.joining(gated)  # B x T x d


class FConvExtSelfAttDecoder(ConvDecoder):
    """Convolutional decoder: causal conv blocks, each optionally followed by attention
    over the encoder output and by gated multi-head self-attention."""

    def __init__(
        self,
        dictionary,
        embed_dim: int,
        out_embed_dim: int,
        max_positions: int,
        layers,
        attention: List[bool],
        attention_heads: int,
        self_attention: List[bool],
        self_attention_heads: int,
        project_input: bool,
        gated: bool,
        downsample: bool,
        dropout: float,
        gate: Gate = glu,
        pretrained: Optional["FConvExtSelfAttDecoder"] = None,
    ):
        super().__init__(dictionary, embed_dim, max_positions, layers, dropout, gate)
        # attention over the encoder output: query = W h + g (target embedding)
        self.attention_query = nn.ModuleList(
            Linear(layer.out_channels, embed_dim, dropout=dropout) if use else None
            for layer, use in zip(layers, attention)
        )
        self.attention = nn.ModuleList(
            DownsampledMultiHeadAttention(layer.out_channels, embed_dim, attention_heads, project_input=project_input)
            if use
            else None
            for layer, use in zip(layers, attention)
        )
        self.num_attention_layers = sum(attention)
        self.self_attention = nn.ModuleList(
            GatedSelfAttention(layer.out_channels, embed_dim, self_attention_heads, project_input, gated, downsample)
            if use
            else None
            for layer, use in zip(layers, self_attention)
        )
        self.fc2 = Linear(self.stack.out_channels, out_embed_dim)
        self.fc3 = Linear(out_embed_dim, len(dictionary), dropout=dropout)
        # model fusion: the frozen pretrained decoder and the gates that join the two
        self.pretrained = pretrained
        self.fusion = ModelFusion(out_embed_dim) if pretrained is not None else None

    def forward(
        self,
        prev_output_tokens: Tensor,  # B x T (right-padded, BOS first)
        encoder_out=None,
        incremental_state: Optional[IncrementalState] = None,
        **unused,
    ):
        """Returns logits (B x T x V) and the encoder attention averaged over layers
        (B x T x S; eval mode with ``need_attn`` only).  With ``incremental_state`` only
        the newest position is computed (T = 1)."""
        x, avg_attn = self.extract_features(prev_output_tokens, encoder_out, incremental_state)
        return self.output_layer(x), avg_attn

    def extract_features(
        self,
        prev_output_tokens: Tensor,
        encoder_out,
        incremental_state: Optional[IncrementalState] = None,
        **unused,
    ):
        """What the vocabulary projection ``fc3`` takes (``output_layer``'s input, B x T x
        out_embed_dim): ``fc2``'s output after dropout, with fusion joined with the pretrained
        decoder's :meth:`hidden_state`; and the averaged encoder attention (or None)."""
        x, avg_attn = self.hidden_state(prev_output_tokens, encoder_out, incremental_state)
        x = self.dropout_module(x)
        if self.fusion is not None:
            hidden, _ = self.pretrained.hidden_state(prev_output_tokens, encoder_out["pretrained"], incremental_state)
            x = self.fusion(x, hidden)
        return x, avg_attn

    def output_layer(self, features: Tensor, **unused) -> Tensor:
        """The logits ``fc3(features)`` (B x T x V)."""
        return self.fc3(features)

    def hidden_state(
        self,
        prev_output_tokens: Tensor,
        encoder_out,
        incremental_state: Optional[IncrementalState] = None,
    ):
        """``fc2``'s output before dropout (B x T x out_embed_dim) and the averaged encoder
        attention: what model fusion reads of the pretrained decoder (fairseq's forward hook
        on its ``fc2``)."""
        keys, values = encoder_out["encoder_out"]  # B x S x E each
        padding_mask = encoder_out["encoder_padding_mask"]  # B x S or None

        x = self.embed(prev_output_tokens, incremental_state)  # B x T x E
        target_embedding = x  # g: added to every attention query
        x = self.fc1(x)  # B x T x C

        average = AttentionAverage(self.num_attention_layers, enabled=not self.training and self.need_attn)

        def attend(layer: int, h: Tensor) -> Tensor:  # after the gate of decoder layer `layer`
            attention, self_attention = self.attention[layer], self.self_attention[layer]
            if attention is not None:
                query = self.attention_query[layer](h) + target_embedding  # B x T x E
                context, attn = attention(
                    query,
                    keys,
                    values,
                    key_padding_mask=padding_mask,
                    incremental_state=incremental_state,
                    static_kv=True,
                )
                h = h + context
                average.add(attn)
            if self_attention is not None:
                h = self_attention(h, incremental_state=incremental_state)
            return h

        # [causal conv, gate, encoder attention, self-attention, residual] x M
        x = self.stack(x, incremental_state=incremental_state, after_conv=attend)  # B x T x C
        return self.fc2(x), average.value  # B x T x out_embed_dim
