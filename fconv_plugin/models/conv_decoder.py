"""What the three decoders share: the input embedding, ``fc1`` and the causal conv stack.

    ConvDecoder   embed [+ positions] -> dropout -> fc1 -> ConvStack(causal) ...

Each model's decoder (:mod:`.fconv_ext`, :mod:`.fconv_ext_lm`, :mod:`.fconv_ext_self_att`)
subclasses it and writes its own forward path, top to bottom, from :meth:`ConvDecoder.embed`
to its vocabulary projection; what follows each conv block's gate (attention,
self-attention, nothing) is its ``after_conv`` hook to the stack.
"""

from typing import Optional, Sequence

import torch
from fairseq.models import FairseqIncrementalDecoder
from fairseq.modules import FairseqDropout
from torch import Tensor

from ..modules import (
    ConvLayerSpec,
    ConvStack,
    Embedding,
    Gate,
    IncrementalState,
    LearnedPositions,
    Linear,
    embed_prefix,
)


class ConvDecoder(FairseqIncrementalDecoder):
    """Token embeddings (+ learned positions when ``max_positions`` is given), ``fc1`` to the
    first layer's width, and the causal :class:`~fconv_plugin.modules.ConvStack`."""

    def __init__(
        self,
        dictionary,
        embed_dim: int,
        max_positions: Optional[int],
        layers: Sequence[ConvLayerSpec],
        dropout: float,
        gate: Gate,
    ):
        super().__init__(dictionary)
        # state-dict layout version, for upgrade_state_dict_named when it changes
        self.register_buffer("version", torch.tensor([1.0]))
        self.dropout_module = FairseqDropout(dropout, module_name=self.__class__.__name__)
        self.need_attn = True  # fairseq's flag: return the attention (for --print-alignment)
        padding_idx = dictionary.pad()

        self.embed_tokens = Embedding(len(dictionary), embed_dim, padding_idx)
        self.embed_positions = LearnedPositions(max_positions, embed_dim, padding_idx) if max_positions else None
        in_channels = layers[0].out_channels
        self.fc1 = Linear(embed_dim, in_channels, dropout=dropout)
        self.stack = ConvStack(
            in_channels, layers, dropout, causal=True, gate=gate, module_name=self.__class__.__name__
        )

    def embed(self, prev_output_tokens: Tensor, incremental_state: Optional[IncrementalState]) -> Tensor:
        """``dropout(token + position embedding)``: B x T x E, or B x 1 x E (the newest
        position) in an incremental step."""
        x = embed_prefix(prev_output_tokens, self.embed_tokens, self.embed_positions, incremental_state is not None)
        return self.dropout_module(x)

    def max_positions(self):
        if self.embed_positions is None:
            return float("inf")  # nothing in the model depends on the length (fconv_lm)
        return self.embed_positions.max_positions

    def reorder_incremental_state_scripting(self, incremental_state: IncrementalState, new_order: Tensor):
        """Beam search's reorder: what fairseq's version does, without walking every submodule
        at every step to find the few that keep state (the module tree does not change)."""
        stateful = self.__dict__.get("_stateful_modules")
        if stateful is None:
            stateful = [m for m in self.modules() if hasattr(m, "reorder_incremental_state")]
            self.__dict__["_stateful_modules"] = stateful
        for module in stateful:
            result = module.reorder_incremental_state(incremental_state, new_order)
            if result is not None:
                incremental_state = result

    def make_generation_fast_(self, need_attn: bool = False, **kwargs):
        self.need_attn = need_attn
