"""Gradient scaling of the encoder output (paper, section 3.4)."""

import torch


class GradScale(torch.autograd.Function):
    """Identity in the forward pass; multiplies the gradient by ``scale`` in backward.

    The encoder output is used by every attention layer, so its gradient is the sum of
    ``N`` attention gradients (and the conditional input counts twice): the paper
    scales it by ``1 / (2N)`` to keep the encoder's gradient magnitude stable.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


def scale_grad(x: torch.Tensor, scale: float) -> torch.Tensor:
    return GradScale.apply(x, scale)
