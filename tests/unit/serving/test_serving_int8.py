"""int8 for the serving modules (fconv_plugin/serving/int8.py): what is quantized, that Int8Linear
computes torchao's int8 scheme exactly, how close the quantized step stays to float32, shortlist rows,
determinism, refusals, and that neither torch.ao.quantization nor torch's quantized kernels are used."""

import ast
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

from helpers import random_batch, REPO, small_fconv_ext

pytest.importorskip("torchao")

from fconv_plugin.serving.int8 import Int8Linear, is_quantized, quantize_int8_, vocabulary_rows  # noqa: E402
from fconv_plugin.serving.step import DecoderStep, SourceEncoder  # noqa: E402


def prepared_model(seed=11):
    model, src_dict, tgt_dict = small_fconv_ext(seed=seed)
    model.make_generation_fast_(beamable_mm_beam_size=None, need_attn=True)
    return model, src_dict, tgt_dict


def decode_log_probs(encoder, step, src_tokens, targets, **vocabulary):
    """The step driven over ``targets`` (B x T, BOS first, one beam): B x T x V log-probabilities."""
    keys, values, mask, scale = encoder(src_tokens)
    windows = step.initial_windows(src_tokens.size(0), 1)
    steps = []
    for t in range(targets.size(1)):
        lprobs, _, windows = step(
            targets[:, t : t + 1], torch.tensor([t + 1]), windows, keys, values, mask, scale, **vocabulary
        )
        steps.append(lprobs[:, 0])
    return torch.stack(steps, dim=1)


def inputs(src_dict, tgt_dict, seed=12):
    src_tokens = random_batch(src_dict, [7, 3, 5], seed=seed)
    targets = torch.randint(tgt_dict.nspecial, len(tgt_dict), (3, 6), generator=torch.Generator().manual_seed(seed))
    targets[:, 0] = tgt_dict.eos()
    return src_tokens, targets


def test_every_linear_is_quantized_and_counted():
    model, _, _ = prepared_model()
    step, encoder = DecoderStep(model), SourceEncoder(model)
    linears = sum(type(m) is nn.Linear for m in step.modules())
    # fc1, fc2, fc3; 4 convolutions; 2 residual projections; 3 attention layers x 2 projections
    assert linears == 3 + 4 + 2 + 3 * 2
    assert quantize_int8_(step) == linears
    assert not any(type(m) is nn.Linear for m in step.modules())
    # fc1, fc2, 3 convolutions, 2 residual projections
    assert quantize_int8_(encoder) == 2 + 3 + 2
    # int8 weights, one float32 scale per output row; embeddings stay float32
    assert step.fc3.weight_int8.dtype == torch.int8 and step.fc3.weight_int8.shape == (45, 12)
    assert step.fc3.weight_scale.dtype == torch.float32 and step.fc3.weight_scale.numel() == 45
    assert step.embed_tokens.dtype == torch.float32

    float_fc3 = DecoderStep(model)
    assert quantize_int8_(float_fc3, vocabulary="float32") == linears - 1
    assert not is_quantized(float_fc3.fc3) and is_quantized(float_fc3.fc2)


def test_quantized_step_stays_close_to_float32():
    model, src_dict, tgt_dict = prepared_model()
    src_tokens, targets = inputs(src_dict, tgt_dict)
    weights_before = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        expected = decode_log_probs(SourceEncoder(model), DecoderStep(model), src_tokens, targets)
        encoder, step = SourceEncoder(model), DecoderStep(model)
        quantize_int8_(encoder)
        quantize_int8_(step)
        got = decode_log_probs(encoder, step, src_tokens, targets)
    assert got.dtype == torch.float32
    # measured: max 0.0095 (log-probabilities of about -3.8), every argmax the same; 8-bit weights and
    # per-token 8-bit activations through 11 products in a row
    assert 0 < (got - expected).abs().max() < 0.05
    assert (got.argmax(-1) == expected.argmax(-1)).float().mean() > 0.9
    # the model, whose weights the step shares, is untouched: the step's weights were replaced, not overwritten
    assert all(torch.equal(a, b) for a, b in zip(weights_before, model.parameters()))


def test_int8_linear_is_torchaos_int8_product():
    """Int8Linear computes what torchao's int8 tensor subclass computes (per-row int8 weights, per-token
    int8 activations, int32 accumulation, the same scalings in the same order): the same numbers."""
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, PerRow, quantize_

    torch.manual_seed(3)
    linear = nn.Linear(48, 40)
    x = torch.randn(2, 7, 48) * torch.logspace(-2, 1, 7).view(1, 7, 1)  # rows of very different ranges
    x[0, 3] = 0  # an all-zero row: scale clamped, output = bias
    reference = nn.Sequential(nn.Linear(48, 40))
    reference[0].load_state_dict(linear.state_dict())
    quantize_(reference, Int8DynamicActivationInt8WeightConfig(granularity=PerRow(), set_inductor_config=False))
    with torch.no_grad():
        expected, got, exact = reference(x), Int8Linear(linear)(x), linear(x)
    assert got.shape == (2, 7, 40) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    torch.testing.assert_close(got[0, 3], linear.bias.detach(), rtol=0, atol=0)
    # and it is an int8 product: close to float32, not equal
    assert 0 < (got - exact).abs().max() < 0.02 * exact.abs().max()
    # torchao's int8 values and scales, kept as they are
    layer = Int8Linear(linear)
    assert torch.equal(layer.weight_int8, reference[0].weight.qdata)
    assert torch.equal(layer.weight_scale, reference[0].weight.scale.view(-1))
    torch.testing.assert_close(layer.dequantized_weight(), reference[0].weight.dequantize(), rtol=0, atol=0)


@pytest.mark.parametrize("vocabulary", ["int8", "float32"])
def test_shortlist_rows_give_the_columns_of_the_full_product(vocabulary):
    model, src_dict, tgt_dict = prepared_model(seed=5)
    src_tokens, targets = inputs(src_dict, tgt_dict, seed=6)
    rows = torch.tensor([0, 1, 2, 3, 5, 7, 9, 11, 30, 40] + targets.unique().tolist()).unique()
    encoder, step = SourceEncoder(model), DecoderStep(model)
    quantize_int8_(encoder)
    quantize_int8_(step, vocabulary=vocabulary)
    selected = vocabulary_rows(step, rows)
    weight = selected["vocabulary_weight"]
    assert weight.shape == (rows.numel(), 12)
    assert weight.dtype == (torch.int8 if vocabulary == "int8" else torch.float32)
    assert ("vocabulary_scale" in selected) == (vocabulary == "int8")
    with torch.no_grad():
        got = decode_log_probs(encoder, step, src_tokens, targets, **selected)
        # the same over the whole vocabulary with -inf outside the rows: each activation row is quantized
        # on its own (per token), whichever weight rows it meets, so the logits of the rows are the same
        mask = torch.full((len(tgt_dict),), float("-inf"))
        mask[rows] = 0
        masked = step.fc3.bias + mask  # a buffer of Int8Linear, a parameter of nn.Linear
        step.fc3.bias = masked if vocabulary == "int8" else nn.Parameter(masked, requires_grad=False)
        full = decode_log_probs(encoder, step, src_tokens, targets)
    torch.testing.assert_close(got, full[:, :, rows], rtol=0, atol=1e-5)


def test_quantization_and_decoding_are_deterministic():
    model, src_dict, tgt_dict = prepared_model()
    src_tokens, targets = inputs(src_dict, tgt_dict)
    outputs, weights = [], []
    for _ in range(2):
        encoder, step = SourceEncoder(model), DecoderStep(model)
        quantize_int8_(encoder)
        quantize_int8_(step)
        weights.append((step.layers[1].conv.weight_int8.clone(), step.layers[1].conv.weight_scale.clone()))
        with torch.no_grad():
            outputs.append(decode_log_probs(encoder, step, src_tokens, targets))
    assert torch.equal(weights[0][0], weights[1][0]) and torch.equal(weights[0][1], weights[1][1])
    assert torch.equal(outputs[0], outputs[1])


class _Operators(TorchDispatchMode):
    """Records the operators that reach the dispatcher, and the dtypes of their outputs."""

    def __init__(self):
        super().__init__()
        self.names, self.dtypes = set(), set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.names.add(func.name())  # "namespace::op.overload"
        for tensor in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(tensor, torch.Tensor):
                self.dtypes.add(tensor.dtype)
        return out


def test_no_torch_quantized_kernels_and_no_quantized_tensors():
    model, src_dict, tgt_dict = prepared_model()
    src_tokens, targets = inputs(src_dict, tgt_dict)
    operators = _Operators()
    with torch.no_grad(), operators:
        encoder, step = SourceEncoder(model), DecoderStep(model)
        quantize_int8_(encoder)
        quantize_int8_(step)
        decode_log_probs(encoder, step, src_tokens, targets)
    assert "aten::_int_mm" in operators.names  # the products run in int8
    assert not {name for name in operators.names if name.startswith("quantized::")}
    assert not operators.dtypes & {torch.qint8, torch.quint8, torch.qint32}  # no torch quantized tensors


def test_the_module_does_not_import_torch_ao_quantization():
    with open(os.path.join(REPO, "fconv_plugin", "serving", "int8.py"), encoding="utf-8") as f:
        source = f.read()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(("." * node.level) + (node.module or ""))
    assert not {name for name in imported if name.startswith(("torch.ao", "torch.quantization"))}
    assert not {name for name in imported if "modules" in name}  # not the model-level int8 either
    assert "torch.ops.quantized" not in source.replace("``torch.ops.quantized``", "")
    # `import torch` itself imports torch.ao.quantization (and torchao some of its submodules), so the
    # check in a fresh interpreter is that quantizing and decoding import no further part of it
    script = textwrap.dedent("""
        import sys, torch, torchao.quantization
        sys.path.insert(0, "tests")
        before = {name for name in sys.modules if name.startswith("torch.ao.quantization")}
        from helpers import small_fconv_ext, random_batch
        from fconv_plugin.serving.int8 import quantize_int8_
        from fconv_plugin.serving.step import DecoderStep, SourceEncoder
        model, src_dict, tgt_dict = small_fconv_ext(seed=1)
        model.make_generation_fast_(beamable_mm_beam_size=None, need_attn=False)
        encoder, step = SourceEncoder(model), DecoderStep(model)
        quantize_int8_(encoder), quantize_int8_(step)
        keys, values, mask, scale = encoder(random_batch(src_dict, [4, 2]))
        with torch.no_grad():
            step(torch.full((2, 1), tgt_dict.eos()), torch.tensor([1]), step.initial_windows(2, 1),
                 keys, values, mask, scale)
        after = {name for name in sys.modules if name.startswith("torch.ao.quantization")}
        print(sorted(after - before))
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_refusals_say_why():
    model, _, _ = prepared_model()
    with pytest.raises(ValueError, match="vocabulary must be one of"):
        quantize_int8_(DecoderStep(model), vocabulary="bfloat16")
    on_meta = DecoderStep(model).to("meta")  # another device; CUDA below where there is one
    with pytest.raises(ValueError, match="CPUs only.*meta"):
        quantize_int8_(on_meta)
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="CPUs only.*cuda"):
            quantize_int8_(DecoderStep(model).cuda())
    with pytest.raises(ValueError, match="float32 module"):
        quantize_int8_(DecoderStep(model).to(torch.bfloat16))
    step = DecoderStep(model)
    quantize_int8_(step)
    with pytest.raises(ValueError, match="quantized already"):
        quantize_int8_(step)
    with pytest.raises(ValueError, match="no nn.Linear to quantize"):
        quantize_int8_(nn.Sequential(nn.ReLU()))
