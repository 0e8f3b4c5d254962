"""fconv_ext with a choice of gate in every conv block.

The paper's block is conv -> GLU (``A * sigmoid(B)``) -> scaled residual.  Dauphin et
al. (2017) compare the GLU with the gated tanh unit of Oord et al. (2016),
``GTU([A; B]) = tanh(A) * sigmoid(B)``.  This variant adds a ``--gate {glu,gtu}``
option; everything else (encoder, decoder, attention, incremental decoding,
checkpoints, the converter's parity) is fconv_ext's own, reused through one hook:
``FConvExtModel.gate_for``.
"""

from dataclasses import dataclass, field

import torch
from fairseq.dataclass import ChoiceEnum
from fairseq.models import register_model

from fconv_plugin.models import FConvExtConfig, FConvExtModel
from fconv_plugin.models.architectures import PRESETS
from fconv_plugin.models.presets import Preset, register_presets
from fconv_plugin.modules import glu


def gtu(x: torch.Tensor) -> torch.Tensor:
    """Gated tanh unit: 2C channels in, C out (B x T x 2C -> B x T x C)."""
    a, b = x.chunk(2, dim=-1)
    return torch.tanh(a) * torch.sigmoid(b)


GATES = {"glu": glu, "gtu": gtu}


@dataclass
class FConvGatedConfig(FConvExtConfig):
    gate: ChoiceEnum(list(GATES)) = field(
        default="gtu",
        metadata={"help": "gate of every conv block: glu = A*sigmoid(B) (the paper), gtu = tanh(A)*sigmoid(B)"},
    )


@register_model("fconv_ext_gated", dataclass=FConvGatedConfig)
class FConvGatedModel(FConvExtModel):
    @classmethod
    def gate_for(cls, cfg):
        return GATES[str(cfg.gate)]


# Presets are data: the values that differ from the config's defaults; options given on the
# command line win.
register_presets(
    "fconv_ext_gated",
    FConvGatedConfig,
    {
        "fconv_ext_gated_tiny": Preset(
            "fconv_ext_tiny's sizes with the gated tanh unit.",
            {**PRESETS["fconv_ext_tiny"].values, "gate": "gtu"},
        ),
    },
)
