"""Weight-normalised layers with the ConvS2S initialisation (Gehring et al. 2017, section 3.5).

Every layer except the embeddings is weight-normalised (Salimans & Kingma 2016):
``w = g * v / ||v||`` with the norm taken per output unit.  ``v`` starts from a normal
distribution whose variance keeps the activation variance constant through dropout,
GLU and residual connections, and ``g`` starts at ``||v||`` so that ``w == v`` at init.

Weight norm uses torch's own parametrization (``torch.nn.utils.parametrizations``);
:func:`fold_weight_norm_` replaces it by the plain weight for inference so that
decoding does not recompute the norm at every step.
"""

import math

import torch.nn as nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm


def Linear(in_features: int, out_features: int, dropout: float = 0.0) -> nn.Linear:
    """Weight-normalised linear layer, ``v ~ N(0, (1 - p) / in_features)``, bias 0.

    The ``(1 - p)`` factor compensates for dropout with probability ``p`` applied to the
    layer's input (paper, section 3.5).
    """
    m = nn.Linear(in_features, out_features)
    nn.init.normal_(m.weight, mean=0.0, std=math.sqrt((1.0 - dropout) / in_features))
    nn.init.zeros_(m.bias)
    return weight_norm(m, name="weight", dim=0)


def init_conv_(conv: nn.Module, kernel_width: int, in_channels: int, dropout: float) -> None:
    """``v ~ N(0, 4 (1 - p) / (k * in_channels))``, bias 0 (paper, section 3.5).

    The factor 4 accounts for the GLU that follows: it halves the output variance twice
    over (only half of the 2d channels pass, each scaled by a sigmoid ~ 1/2)."""
    std = math.sqrt((4.0 * (1.0 - dropout)) / (kernel_width * in_channels))
    nn.init.normal_(conv.weight, mean=0.0, std=std)
    nn.init.zeros_(conv.bias)


def fold_weight_norm_(module: nn.Module) -> None:
    """Replace weight-norm parametrizations below ``module`` by their current value.

    Used for inference only (``make_generation_fast_``); the result is numerically the
    weight that the parametrization would compute.
    """
    for m in module.modules():
        if parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
