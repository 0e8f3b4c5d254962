"""Safe parsing of ConvS2S layer specifications.

fairseq's ``fconv`` turns strings such as ``"[(512, 3)] * 9 + [(1024, 3)] * 4"`` into
lists with ``eval()``, also when a checkpoint's stored config is rebuilt, so a crafted
checkpoint or command line can run arbitrary code (docs/upstream-problems.md, problem 3).

Here the string is parsed with :mod:`ast` and only a tiny expression language is
evaluated: integer/boolean literals, lists, tuples, ``+`` (concatenation) and ``*``
(repetition by an integer).  Anything else is refused with a clear message.
"""

import ast
from typing import Callable, List, NamedTuple, Sequence, TypeVar, Union

T = TypeVar("T")

#: Upper bound on the number of layers / list items a spec may expand to; protects
#: against ``[(512, 3)] * 10**12`` style inputs that would exhaust memory.
MAX_SPEC_ITEMS = 10_000

#: help text of every ``--*-layers`` option
LAYERS_HELP = (
    "conv layers as a list of (out_channels, kernel_width[, residual[, dilation]]); residual 1 = previous "
    "layer (default), 0 = none, N = N layers back; dilation d (default 1) spaces the taps d frames apart. "
    "Parsed safely: literals, lists, tuples, + and * only"
)


class ConvLayerSpec(NamedTuple):
    """One conv block of a layer spec: ``(out_channels, kernel_width[, residual[, dilation]])``."""

    out_channels: int
    kernel_width: int
    residual: int = 1  # 1 = previous layer's output, 0 = none, N = the output N layers back
    dilation: int = 1  # taps d frames apart: a window of (k - 1) * d + 1 frames


class LayerSpecError(ValueError):
    """Raised for a layer specification that is not a safe literal expression."""


def _refuse(text: str, node: ast.AST, why: str) -> LayerSpecError:
    where = f" (at column {node.col_offset + 1})" if hasattr(node, "col_offset") else ""
    return LayerSpecError(
        f"invalid layer specification {text!r}{where}: {why}. "
        "Only integer/boolean literals, lists, tuples, '+' and '*' are allowed, e.g. "
        '"[(512, 3)] * 9 + [(1024, 3, 1)] * 4".'
    )


def _evaluate(text: str, node: ast.AST):
    if isinstance(node, ast.Constant):
        if isinstance(node.value, (bool, int)):
            return node.value
        raise _refuse(text, node, f"literal {node.value!r} is not an integer or boolean")
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        value = _evaluate(text, node.operand)
        if isinstance(value, bool) or not isinstance(value, int):
            raise _refuse(text, node, "'-' applies to integers only")
        return -value
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [_evaluate(text, elt) for elt in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
        left = _evaluate(text, node.left)
        right = _evaluate(text, node.right)
        if isinstance(node.op, ast.Add):
            if isinstance(left, list) and isinstance(right, list):
                result = left + right
            elif _is_int(left) and _is_int(right):
                return left + right
            else:
                raise _refuse(text, node, "'+' joins two lists (or adds two integers)")
        else:
            if isinstance(left, (list, tuple)) and _is_int(right):
                seq, count = left, right
            elif _is_int(left) and isinstance(right, (list, tuple)):
                seq, count = right, left
            elif _is_int(left) and _is_int(right):
                if abs(left * right) > 10**9:
                    raise _refuse(text, node, "integer too large")
                return left * right
            else:
                raise _refuse(text, node, "'*' repeats a list by an integer")
            if count < 0 or len(seq) * count > MAX_SPEC_ITEMS:
                raise _refuse(text, node, f"repetition must expand to 0..{MAX_SPEC_ITEMS} items")
            result = seq * count
        if len(result) > MAX_SPEC_ITEMS:
            raise _refuse(text, node, f"more than {MAX_SPEC_ITEMS} items")
        return result
    raise _refuse(text, node, f"{type(node).__name__} expressions are not allowed")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def safe_literal(text: str):
    """Evaluate ``text`` in the restricted spec language (see module docstring)."""
    if not isinstance(text, str):
        raise LayerSpecError(f"layer specification must be a string, got {type(text).__name__}")
    if len(text) > 10_000:
        raise LayerSpecError("layer specification is longer than 10000 characters")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as err:
        raise LayerSpecError(f"invalid layer specification {text!r}: {err.msg}") from None
    return _evaluate(text, tree.body)


def parse_layers(text: str) -> List[ConvLayerSpec]:
    """Parse a conv layer spec into :class:`ConvLayerSpec` tuples
    ``(out_channels, kernel_width, residual, dilation)``.

    Each entry is ``(out_channels, kernel_width[, residual[, dilation]])``: ``residual`` is
    1 (previous layer, the default), 0 (no residual) or N (the output N layers back), as
    in fairseq's ``fconv``; ``dilation`` (default 1) spaces the kernel's taps ``d`` frames
    apart, so the receptive field grows with depth without more layers (ByteNet-style
    stacks; the paper's section 3.2 on context size).
    """
    value = safe_literal(text)
    if not isinstance(value, list) or not value:
        raise LayerSpecError(
            f"invalid layer specification {text!r}: expected a non-empty list of "
            "(out_channels, kernel_width[, residual[, dilation]]) tuples"
        )
    layers: List[ConvLayerSpec] = []
    for i, item in enumerate(value):
        if not isinstance(item, (tuple, list)) or len(item) not in (2, 3, 4) or not all(_is_int(v) for v in item):
            raise LayerSpecError(
                f"invalid layer specification {text!r}: layer {i} is {item!r}, expected "
                "(out_channels, kernel_width[, residual[, dilation]]) of integers"
            )
        layer = ConvLayerSpec(*item)
        if layer.out_channels <= 0 or layer.kernel_width <= 0 or layer.dilation <= 0:
            raise LayerSpecError(
                f"invalid layer specification {text!r}: layer {i} has out_channels={layer.out_channels}, "
                f"kernel_width={layer.kernel_width} and dilation={layer.dilation}; all must be positive"
            )
        if layer.residual < 0 or layer.residual > i + 1:
            raise LayerSpecError(
                f"invalid layer specification {text!r}: layer {i} asks for a residual "
                f"connection {layer.residual} layers back, but only {i + 1} earlier outputs exist"
            )
        layers.append(layer)
    return layers


def parse_attention(spec: Union[str, bool, Sequence[bool]], num_layers: int) -> List[bool]:
    """Parse the decoder attention selection: ``"True"``, ``"False"`` or a list of booleans
    (one per decoder layer), as fairseq's ``--decoder-attention`` accepts."""
    value = safe_literal(spec) if isinstance(spec, str) else spec
    if isinstance(value, bool):
        return [value] * num_layers
    if isinstance(value, (list, tuple)) and all(isinstance(v, bool) for v in value):
        if len(value) != num_layers:
            raise LayerSpecError(
                f"decoder attention {spec!r} lists {len(value)} layers but the decoder has "
                f"{num_layers}; give one True/False per decoder layer, or just True/False"
            )
        return list(value)
    raise LayerSpecError(
        f"invalid decoder attention {spec!r}: expected True, False, or a list of True/False "
        f"with one entry per decoder layer ({num_layers})"
    )


def parse_flag(spec: Union[str, bool]) -> bool:
    """Parse a single True/False option given as a string (fairseq's ``--project-input True``)."""
    value = safe_literal(spec) if isinstance(spec, str) else spec
    if not isinstance(value, bool):
        raise LayerSpecError(f"must be True or False, got {spec!r}")
    return value


def parse_option(name: str, spec, parse: Callable[..., T], *args) -> T:
    """``parse(spec, *args)`` for the model option ``name`` (e.g. ``decoder_layers``): a
    :class:`LayerSpecError` is raised again with the option as typed on the command line in
    front (``--decoder-layers: ...``), so the user knows which of several specs is wrong."""
    try:
        return parse(spec, *args)
    except LayerSpecError as err:
        raise LayerSpecError(f"--{name.replace('_', '-')}: {err}") from None
