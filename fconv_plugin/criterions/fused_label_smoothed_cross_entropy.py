"""``fused_label_smoothed_cross_entropy``: fairseq's ``label_smoothed_cross_entropy`` (same
options, same loss, same gradients, same logged metrics) without a ``tokens x V`` tensor
for the whole batch.

fairseq's criterion takes the decoder's logits (``B x T x V``), makes their log-probabilities
(another ``B x T x V``, in float32), and autograd keeps both for the backward pass, which makes
two more of the same size.  Here the decoder stops before its vocabulary projection ``fc3``
(:meth:`FConvExtDecoder.extract_features`'s features, ``B x T x out_embed_dim``) and
:class:`FusedLinearLabelSmoothedNLL` walks over chunks of rows: ``fc3`` (one matrix product),
softmax in place, the smoothed NLL and, while the chunk is there, its gradient, turned at once
into the gradients w.r.t. the features and ``fc3``'s weight and bias (two more products).  Only
one chunk of ``rows x V`` exists at a time, in a buffer the criterion keeps between updates
(:class:`ChunkBuffer`); padding rows are skipped altogether; the smoothing term's sum over the
vocabulary comes from column sums, not from another pass over the chunk.  This is the
technique of Wijmans et al. 2024, "Cut Your Losses in Large-Vocabulary Language Models"
(Apple's cut-cross-entropy) and of Liger-Kernel's fused linear cross entropy, written in
plain PyTorch so it runs on CPUs and GPUs alike (both of those are Triton kernels for GPUs).
torch 2.13's ``F.linear_cross_entropy(..., options=LinearCrossEntropyOptions())`` is chunked too,
but not with label smoothing (it then warns and computes the full logits), it returns the loss
only (fairseq's logged ``nll_loss``, ppl and accuracy would cost a second pass over ``tokens x V``),
older torch releases lack it, and it was slower even without smoothing (measured side by side:
benchmarks/results/train_sweep.md, "fc3 + loss alone").

The gradient of fairseq's smoothed loss w.r.t. a row's logits ``z`` (target ``y``,
``eps_i = eps / (V - 1)``; fairseq's ``label_smoothed_nll_loss``)::

    loss = (1 - eps - eps_i) * (-log p_y) + eps_i * sum_v (-log p_v)
    d loss / d z = p - (1 - eps - eps_i) * onehot(y) - eps_i        (the p terms add up to 1)

and it is computed in the forward pass: fairseq's loss is a sum, so the backward pass only
multiplies the stored gradients by the incoming scalar (1, ``alpha`` in ``sequence_risk``, or
the fp16 loss scale).

The model is called as usual (``model(**net_input)``, through any data-parallel wrapper, so
DDP sees a normal forward), with the decoder's ``output_layer`` replaced for that one call by
the fused loss: the "logits" the decoder returns are then the summed loss, which depends on
the features and on ``fc3``, as the real logits would.  The decoders of ``fconv_ext`` and
``fconv_ext_lm`` (full softmax) end in ``output_layer(features) = fc3(features)``;
other models (the self-attention family, an adaptive softmax) are refused with the criterion to
use instead.

``sequence_risk`` scores its candidates the same way: :class:`FusedLinearTargetLogProb` gives each
row's ``log p(target)`` with gradient, chunk by chunk, and recomputes a chunk's logits in the
backward pass (one more product) instead of keeping ``candidates x T x V`` of them.
"""

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from fairseq import utils
from fairseq.criterions import register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import (
    LabelSmoothedCrossEntropyCriterion,
    LabelSmoothedCrossEntropyCriterionConfig,
)
from torch import Tensor

from ..models import FConvExtDecoder, FConvExtLanguageModel, FConvExtModel
from ..models.fconv_ext_lm import FConvExtLMDecoder

#: Rows per chunk: at least MIN_CHUNK_ROWS, more while a chunk stays within CHUNK_ELEMENTS.
#: The weight gradient is accumulated once per chunk (a V x H product over the chunk's rows),
#: and that product is slower with few rows; from 512 rows up the chunk size barely matters
#: (measured: docs/training.md, "Chunk size").  The buffer holds one chunk, against tokens x V
#: per tensor for fairseq's criterion.
MIN_CHUNK_ROWS = 512
CHUNK_ELEMENTS = 2**23

#: Rows whose target probability is below this (log p < -69) take their log-sum-exp from an exact
#: recomputation instead of ``z_y - log p_y`` (forward, step 3): ``p_y`` keeps its full relative
#: precision down to float32's smallest normal number, 1.2e-38.
TINY_PROBABILITY = 1e-30


def chunk_rows_for(vocab: int) -> int:
    return max(MIN_CHUNK_ROWS, CHUNK_ELEMENTS // max(vocab, 1))


class ChunkBuffer:
    """The ``rows x V`` float32 buffer a chunk's logits and probabilities live in, kept between
    calls.  Fresh memory of that size comes from the operating system page by page, and its first
    write costs page faults at every chunk of every update, a large part of the time of the
    matrix product that fills it (measured: benchmarks/results/train_sweep.md).  Each criterion
    owns one; it grows to the largest chunk seen and is reused, never shared between two calls
    in flight (nothing of it is kept for the backward pass: a backward pass that needs a chunk
    again recomputes it there, after every forward of the update is done)."""

    def __init__(self):
        self._flat: Optional[Tensor] = None

    def get(self, rows: int, vocab: int, device: torch.device) -> Tensor:
        need = rows * vocab
        flat = self._flat
        if flat is None or flat.numel() < need or flat.device != device:
            flat = self._flat = torch.empty(need, dtype=torch.float32, device=device)
        return flat[:need].view(rows, vocab)  # rows x V


class FusedLinearLabelSmoothedNLL(torch.autograd.Function):
    """``label_smoothed_nll_loss(log_softmax(features @ weight.T + bias), target, eps)``, summed,
    computed ``chunk_rows`` rows at a time.

    features: N x H (any float dtype; the softmax is taken in float32 as fairseq does);
    weight: V x H; bias: V or None; target: N (rows equal to ``ignore_index`` count for nothing).
    Returns (loss, nll_loss, n_correct): float32 scalars, the last two without gradient;
    n_correct counts the rows whose argmax log-probability is the target (fairseq's accuracy),
    computed only with ``count_correct`` (it costs a pass over every chunk), else 0.
    ``buffer``: a :class:`ChunkBuffer` to compute float32 chunks in, or None for fresh memory.

    Per chunk of ``r`` rows (``z`` = logits, ``p`` = softmax(z), ``y`` = targets)::

        1. z = x W^T + b                      r x V, one product, written into the buffer
        2. p = softmax(z)                     in place (float32); z_y gathered first
        3. lse = z_y - log p_y                log-sum-exp per row, exact recomputation where p_y is tiny
        4. nll += sum(lse - z_y)              = sum(-log p_y)
        5. grad = p - (1 - eps - eps_i) onehot(y)             in place, r elements
           grad_x = grad W,  grad_W += grad^T x,  grad_b += sum_rows grad

    and once for all rows, without touching ``N x V`` again::

        smooth = sum_rows,v (-log p_v) = V * sum(lse) - sum_rows,v z
               = V * sum(lse) - (sum_rows x) . (sum_v W_v) - N * sum(b)      (in float64)
        the gradient's "- eps_i" term: grad_x -= eps_i sum_v W_v, grad_W -= eps_i sum_rows x, grad_b -= eps_i N
    """

    @staticmethod
    def forward(
        ctx,
        features: Tensor,
        weight: Tensor,
        bias: Optional[Tensor],
        target: Tensor,
        epsilon: float,
        ignore_index: int,
        chunk_rows: int,
        count_correct: bool = True,
        buffer: Optional[ChunkBuffer] = None,
    ):
        vocab = weight.size(0)
        eps_i = epsilon / (vocab - 1)
        target_weight = 1.0 - epsilon - eps_i  # of -log p_target (fairseq's formula)
        need_grad = any(ctx.needs_input_grad[:3])

        keep = target.ne(ignore_index).nonzero().squeeze(1)  # the rows that count
        x = features.index_select(0, keep)  # n x H
        t = target.index_select(0, keep)  # n
        n = x.size(0)
        lse_sum = torch.zeros((), dtype=torch.float64, device=features.device)
        nll = torch.zeros((), dtype=torch.float32, device=features.device)
        n_correct = torch.zeros((), dtype=torch.long, device=features.device)
        if need_grad:
            grad_x = torch.empty_like(x)  # n x H
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)  # V x H
            grad_b = torch.zeros(vocab, dtype=torch.float32, device=weight.device) if bias is not None else None
        for start in range(0, n, chunk_rows):
            xc, tc = x[start : start + chunk_rows], t[start : start + chunk_rows]  # r x H, r
            rows = torch.arange(xc.size(0), device=xc.device)
            z = _logits(xc, weight, bias, buffer)  # r x V (1.)
            z_y = z[rows, tc].float()  # r
            p = _softmax_(z)  # r x V, float32 (2.)
            p_y = p[rows, tc]
            lse = z_y - p_y.log()  # r (3.)
            tiny = p_y < TINY_PROBABILITY
            if bool(tiny.any()):
                exact = torch.logsumexp(F.linear(xc[tiny], weight, bias).float(), dim=-1)
                lse = lse.masked_scatter(tiny, exact)
            lse_sum += lse.sum(dtype=torch.float64)
            nll += (lse - z_y).sum()  # (4.)
            if count_correct:
                n_correct += p.argmax(dim=-1).eq(tc).sum()
            if not need_grad:
                continue
            p[rows, tc] -= target_weight  # (5.): p - (1 - eps - eps_i) onehot(y)
            _chunk_gradients(p.to(xc.dtype), xc, weight, grad_x[start : start + chunk_rows], grad_w, grad_b)
        # sum of every logit of every counted row, from the column sums (no N x V pass)
        x_sum, w_sum = x.double().sum(0), weight.double().sum(0)  # H, H
        z_sum = x_sum @ w_sum + (n * bias.double().sum() if bias is not None else 0.0)
        smooth = (vocab * lse_sum - z_sum).float()
        loss = target_weight * nll + eps_i * smooth
        if need_grad:
            if eps_i != 0.0:  # the "- eps_i" of every logit's gradient, as rank-one corrections
                grad_x -= (eps_i * w_sum).to(grad_x.dtype)
                grad_w -= (eps_i * x_sum).float()  # every row of V x H
                if grad_b is not None:
                    grad_b -= eps_i * n
            grad_features = torch.zeros_like(features)
            grad_features.index_copy_(0, keep, grad_x)  # padding rows: 0
            ctx.grads = (grad_features, grad_w, grad_b)
            ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        ctx.mark_non_differentiable(nll, n_correct)
        return loss, nll, n_correct

    @staticmethod
    def backward(ctx, grad_loss: Tensor, grad_nll: Tensor, grad_correct: Tensor):
        grad_features, grad_w, grad_b = ctx.grads
        del ctx.grads  # once only (retain_graph would need them again: not supported)
        g = grad_loss.float()
        grad_features = grad_features * g.to(grad_features.dtype)
        grad_w = (grad_w * g).to(ctx.dtypes[0])
        grad_b = None if grad_b is None else (grad_b * g).to(ctx.dtypes[1])
        return grad_features, grad_w, grad_b, None, None, None, None, None, None


def _logits(x: Tensor, weight: Tensor, bias: Optional[Tensor], buffer: Optional[ChunkBuffer]) -> Tensor:
    """``x W^T + b`` (r x V), in ``buffer`` when the product is float32 and there is one."""
    out = None
    if buffer is not None and x.dtype == torch.float32:
        out = buffer.get(x.size(0), weight.size(0), x.device)
    if bias is not None:
        return torch.addmm(bias, x, weight.t(), out=out)
    return torch.mm(x, weight.t(), out=out)


def _chunk_gradients(
    grad: Tensor, xc: Tensor, weight: Tensor, grad_x: Tensor, grad_w: Tensor, grad_b: Optional[Tensor]
) -> None:
    """From a chunk's gradient w.r.t. its logits (``grad``, r x V, in the features' dtype): its rows of
    the features' gradient (``grad_x``, r x H, written) and its share of fc3's (``grad_w`` V x H and
    ``grad_b`` V, float32, accumulated)."""
    torch.mm(grad, weight, out=grad_x)  # r x H
    if grad.dtype == torch.float32:
        grad_w.addmm_(grad.t(), xc)  # V x H, accumulated in place
    else:
        grad_w += (grad.t() @ xc).float()  # V x H (products in the model's dtype, sum in float32)
    if grad_b is not None:
        grad_b += grad.sum(dim=0, dtype=torch.float32)


def _softmax_(z: Tensor) -> Tensor:
    """float32 softmax over the last dim: in place for float32 ``z`` (the kernels of CPU and CUDA
    write each element where they read it), a new float32 tensor for lower precisions."""
    if z.dtype == torch.float32:
        return torch.softmax(z, dim=-1, out=z)
    return torch.softmax(z, dim=-1, dtype=torch.float32)


def fused_linear_label_smoothed_nll(
    features: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    target: Tensor,
    epsilon: float,
    ignore_index: int,
    chunk_rows: Optional[int] = None,
    count_correct: bool = True,
    buffer: Optional[ChunkBuffer] = None,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Functional form of :class:`FusedLinearLabelSmoothedNLL`; ``features`` may be ``... x H``
    with ``target`` of the leading shape."""
    features = features.reshape(-1, features.size(-1))
    target = target.reshape(-1)
    if chunk_rows is None:
        chunk_rows = chunk_rows_for(weight.size(0))
    device_type = features.device.type
    dtype = _autocast_dtype(device_type)
    if dtype is not None:  # --amp: fc3 in the autocast dtype, as F.linear would run it there
        features, weight = features.to(dtype), weight.to(dtype)
    if bias is not None and bias.dtype != weight.dtype:
        bias = bias.to(weight.dtype)
    with torch.autocast(device_type, enabled=False):  # the dtypes are settled above
        loss, nll, n_correct = FusedLinearLabelSmoothedNLL.apply(
            features,
            weight,
            bias,
            target,
            float(epsilon),
            int(ignore_index),
            int(chunk_rows),
            bool(count_correct),
            buffer,
        )
    return loss, nll, n_correct


class FusedLinearTargetLogProb(torch.autograd.Function):
    """``log_softmax(features @ weight.T + bias)[row, target[row]]`` for every row (N, float32),
    ``chunk_rows`` rows at a time; rows equal to ``ignore_index`` give 0.

    The gradient depends on the caller's weights per row (``g``, e.g. a candidate's share of the
    risk), known only in the backward pass, so nothing of ``N x V`` is kept: the backward pass
    recomputes each chunk's logits.  Per chunk (``z`` = logits, ``p`` = softmax(z), ``y`` = targets)::

        forward:   out = z_y - logsumexp(z)
        backward:  d out / d z = onehot(y) - p,  times g per row
                   grad_x = grad W,  grad_W += grad^T x,  grad_b += sum_rows grad
    """

    @staticmethod
    def forward(ctx, features, weight, bias, target, ignore_index: int, chunk_rows: int, buffer=None):
        keep = target.ne(ignore_index).nonzero().squeeze(1)  # the rows that count
        x, t = features.index_select(0, keep), target.index_select(0, keep)  # n x H, n
        out = torch.zeros(target.shape, dtype=torch.float32, device=features.device)  # N
        kept = torch.empty(x.size(0), dtype=torch.float32, device=features.device)  # n
        for start in range(0, x.size(0), chunk_rows):
            xc, tc = x[start : start + chunk_rows], t[start : start + chunk_rows]  # r x H, r
            z = _logits(xc, weight, bias, buffer)  # r x V
            z_y = z[torch.arange(xc.size(0), device=xc.device), tc].float()  # r
            kept[start : start + chunk_rows] = z_y - torch.logsumexp(z.float(), dim=-1)
        out.index_copy_(0, keep, kept)
        ctx.save_for_backward(x, t, keep, weight, bias)
        ctx.shape, ctx.chunk_rows, ctx.buffer = features.shape, chunk_rows, buffer
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, t, keep, weight, bias = ctx.saved_tensors
        g = grad_out.index_select(0, keep).float()  # n
        grad_x = torch.empty_like(x)  # n x H
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)  # V x H
        grad_b = torch.zeros(weight.size(0), dtype=torch.float32, device=weight.device) if bias is not None else None
        for start in range(0, x.size(0), ctx.chunk_rows):
            xc, tc = x[start : start + ctx.chunk_rows], t[start : start + ctx.chunk_rows]  # r x H, r
            gc = g[start : start + ctx.chunk_rows]  # r
            p = _softmax_(_logits(xc, weight, bias, ctx.buffer))  # r x V, float32
            p.mul_(-gc.unsqueeze(1))  # -g p
            p[torch.arange(xc.size(0), device=xc.device), tc] += gc  # g (onehot(y) - p)
            _chunk_gradients(p.to(xc.dtype), xc, weight, grad_x[start : start + ctx.chunk_rows], grad_w, grad_b)
        grad_features = grad_x.new_zeros(ctx.shape)
        grad_features.index_copy_(0, keep, grad_x)  # padding rows: 0
        grad_w = grad_w.to(weight.dtype)
        grad_b = None if grad_b is None else grad_b.to(bias.dtype)
        return grad_features, grad_w, grad_b, None, None, None, None


def fused_linear_target_log_prob(
    features: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    target: Tensor,
    ignore_index: int,
    chunk_rows: Optional[int] = None,
    buffer: Optional[ChunkBuffer] = None,
) -> Tensor:
    """Functional form of :class:`FusedLinearTargetLogProb`: ``features`` ``... x H``, ``target``
    of the leading shape; returns log-probabilities of that shape (float32)."""
    shape = target.shape
    features = features.reshape(-1, features.size(-1))  # N x H
    if chunk_rows is None:
        chunk_rows = chunk_rows_for(weight.size(0))
    dtype = _autocast_dtype(features.device.type)
    if dtype is not None:  # --amp: fc3 in the autocast dtype
        features, weight = features.to(dtype), weight.to(dtype)
    if bias is not None and bias.dtype != weight.dtype:
        bias = bias.to(weight.dtype)
    with torch.autocast(features.device.type, enabled=False):
        out = FusedLinearTargetLogProb.apply(
            features, weight, bias, target.reshape(-1), int(ignore_index), int(chunk_rows), buffer
        )
    return out.view(shape)


def _autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    """The dtype autocast gives matrix products on ``device_type`` now, or None outside autocast."""
    if hasattr(torch, "get_autocast_dtype"):  # torch >= 2.4
        return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
    if device_type == "cuda" and torch.is_autocast_enabled():
        return torch.get_autocast_gpu_dtype()
    return None


class FusedLossUnsupported(ValueError):
    """The model's decoder does not end in fconv_ext's ``output_layer`` = ``fc3``."""


def _core_model(model: nn.Module) -> nn.Module:
    while hasattr(model, "module"):  # fairseq's ModuleProxyWrapper / DistributedDataParallel
        model = model.module
    return model


def unsupported_reason(model: nn.Module) -> Optional[str]:
    """Why the fused loss cannot run on ``model`` and which criterion to use instead, or None."""
    core = _core_model(model)
    name = type(core).__name__
    decoder = getattr(core, "decoder", None)
    if getattr(decoder, "adaptive_softmax", None) is not None:
        return (
            f"--criterion fused_label_smoothed_cross_entropy: model {name} has an adaptive softmax, which "
            "computes its own loss; use --criterion adaptive_loss"
        )
    if not (
        isinstance(core, (FConvExtModel, FConvExtLanguageModel))
        and isinstance(decoder, (FConvExtDecoder, FConvExtLMDecoder))
        and isinstance(getattr(decoder, "fc3", None), nn.Linear)
    ):
        return (
            f"--criterion fused_label_smoothed_cross_entropy works with fconv_ext and fconv_ext_lm models only "
            f"(--arch fconv_ext, fconv_ext_lm or one of their presets: it takes the decoder's features and its fc3 "
            f"projection); model {name} is not one. Use --criterion label_smoothed_cross_entropy (the same options "
            "and results)"
        )
    return None


def fused_decoder(model: nn.Module) -> FConvExtDecoder:
    """The decoder whose features and ``fc3`` the fused loss uses; FusedLossUnsupported
    (saying which criterion to use instead) for other models."""
    reason = unsupported_reason(model)
    if reason is not None:
        raise FusedLossUnsupported(reason)
    return _core_model(model).decoder


@contextmanager
def _output_layer_replaced(decoder: nn.Module, replacement):
    """``decoder.output_layer`` is ``replacement`` inside the block (an instance attribute
    shadowing the method), whatever was there before afterwards."""
    had = "output_layer" in decoder.__dict__
    previous = decoder.__dict__.get("output_layer")
    decoder.output_layer = replacement
    try:
        yield
    finally:
        if had:
            decoder.output_layer = previous
        else:
            del decoder.output_layer


def _run_fused(model: nn.Module, net_input: Dict, output_fn, name: str):
    """``model(**net_input)`` with the decoder's ``output_layer`` replaced by
    ``output_fn(features, fc3)`` (features: B x T x H, what fc3 takes), whose result becomes the
    decoder's first output: it depends on the features and on fc3, as the logits would.
    Returns the model's outputs."""
    decoder = fused_decoder(model)
    called = []

    def fused_output_layer(features: Tensor, **unused) -> Tensor:
        called.append(True)
        return output_fn(features, decoder.fc3)

    with _output_layer_replaced(decoder, fused_output_layer):
        net_output = model(**net_input)
    if not called:
        raise FusedLossUnsupported(
            f"{name}: the decoder of {type(_core_model(model)).__name__} did not call its output_layer (a variant "
            "that overrides forward?); use --criterion label_smoothed_cross_entropy"
        )
    return net_output


def fused_token_loss(
    model: nn.Module,
    sample: Dict,
    epsilon: float,
    padding_idx: int,
    ignore_prefix_size: int = 0,
    chunk_rows: Optional[int] = None,
    count_correct: bool = True,
    buffer: Optional[ChunkBuffer] = None,
):
    """Run ``model`` on ``sample["net_input"]`` and return fairseq's summed label-smoothed loss,
    nll_loss, the number of correct argmax predictions (0 without ``count_correct``) and of counted
    target tokens, and the decoder's other outputs (``extra``, e.g. attention), without the
    ``B x T x V`` logits."""
    target = sample["target"]  # B x T (what fconv_ext's get_targets returns)
    if ignore_prefix_size > 0:
        target = target[:, ignore_prefix_size:]
    results = {}

    def loss_of(features: Tensor, fc3: nn.Linear) -> Tensor:
        if ignore_prefix_size > 0:
            features = features[:, ignore_prefix_size:, :]  # B x T' x H
        loss, nll, n_correct = fused_linear_label_smoothed_nll(
            features, fc3.weight, fc3.bias, target, epsilon, padding_idx, chunk_rows, count_correct, buffer
        )
        results.update(nll=nll, n_correct=n_correct)
        return loss

    net_output = _run_fused(model, sample["net_input"], loss_of, "--criterion fused_label_smoothed_cross_entropy")
    total = target.ne(padding_idx).sum()
    return net_output[0], results["nll"], results["n_correct"], total, net_output[1:]


def fused_target_log_probs(
    model: nn.Module,
    net_input: Dict,
    target: Tensor,
    padding_idx: int,
    chunk_rows: Optional[int] = None,
    buffer: Optional[ChunkBuffer] = None,
) -> Tensor:
    """``log p(target[b, t] | ...)`` (B x T, float32, with gradient; 0 at padding) of an fconv_ext
    model run on ``net_input``, without the ``B x T x V`` logits (:class:`FusedLinearTargetLogProb`)."""

    def log_probs_of(features: Tensor, fc3: nn.Linear) -> Tensor:
        return fused_linear_target_log_prob(features, fc3.weight, fc3.bias, target, padding_idx, chunk_rows, buffer)

    return _run_fused(model, net_input, log_probs_of, "--criterion sequence_risk")[0]


@dataclass
class FusedLabelSmoothedCrossEntropyConfig(LabelSmoothedCrossEntropyCriterionConfig):
    """Exactly ``label_smoothed_cross_entropy``'s options."""


@register_criterion("fused_label_smoothed_cross_entropy", dataclass=FusedLabelSmoothedCrossEntropyConfig)
class FusedLabelSmoothedCrossEntropyCriterion(LabelSmoothedCrossEntropyCriterion):
    """fairseq's label-smoothed cross entropy, fused with fconv_ext's output projection
    (module docstring).  Options, loss, gradients and logged metrics are fairseq's;
    ``reduce=False`` (per-token losses, not used in training) takes fairseq's own path."""

    #: rows per chunk; None: :func:`chunk_rows_for` (tests set a small number to cross chunks)
    chunk_rows: Optional[int] = None

    def __init__(self, task, sentence_avg, label_smoothing, ignore_prefix_size=0, report_accuracy=False):
        # (named arguments: fairseq builds criteria by matching the config's fields to them)
        super().__init__(task, sentence_avg, label_smoothing, ignore_prefix_size, report_accuracy)
        self.chunk_buffer = ChunkBuffer()  # the chunks' memory, kept between updates

    def forward(self, model, sample, reduce=True):
        if not reduce:
            return super().forward(model, sample, reduce=reduce)
        loss, nll_loss, n_correct, total, _ = fused_token_loss(
            model,
            sample,
            self.eps,
            self.padding_idx,
            self.ignore_prefix_size,
            self.chunk_rows,
            count_correct=self.report_accuracy,
            buffer=self.chunk_buffer,
        )
        sample_size = sample["target"].size(0) if self.sentence_avg else sample["ntokens"]
        logging_output = {
            "loss": loss.data,
            "nll_loss": nll_loss.data,
            "ntokens": sample["ntokens"],
            "nsentences": sample["target"].size(0),
            "sample_size": sample_size,
        }
        if self.report_accuracy:
            logging_output["n_correct"] = utils.item(n_correct.data)
            logging_output["total"] = utils.item(total.data)
        return loss, sample_size, logging_output
