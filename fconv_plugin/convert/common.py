"""What every converter shares.

A conversion reads the fairseq checkpoint's model options (from ``cfg``, or from the one
``args`` Namespace of fairseq < 0.10), lets the source architecture's module turn them
into the target model's config (:class:`Converter`), builds that (untrained) target model
through :func:`fconv_plugin.models.build_model_from_config` with dummy dictionaries of the
checkpoint's sizes, and converts the weights onto the names and shapes of the target's
``state_dict()``:

* weight norm: fairseq's ``weight_g`` / ``weight_v`` become torch's parametrization
  ``parametrizations.weight.original0`` / ``original1`` as they are; a plain fairseq
  weight whose target is weight-normalised gets ``v = weight`` and ``g = ||weight||``;
* convolutions: fairseq's ConvTBC lays weights out ``k x in x out`` (weight norm over dim
  2), ``Conv1d`` ``out x in x k`` (weight norm over dim 0);
* names: after the architecture's own renames, a module path the target does not have is
  matched to the one target module that holds the same names in the same order, with the
  same first and last name (``decoder.convolutions.0`` -> ``decoder.stack.convolutions.0``),
  so the converters follow the target models' layout without a table of their names.

Then the weights must match the target's names and shapes exactly
(:func:`check_weights_match`), and :func:`converted_checkpoint` writes the new checkpoint.
"""

import argparse
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, FrozenSet, Iterable, Mapping, Optional, Sequence, Tuple

import torch
from fairseq.data import Dictionary

from ..checkpoint import CheckpointError
from ..models import build_model_from_config
from ..modules import LayerSpecError

#: fairseq's Dictionary: <s>=0, <pad>=1, </s>=2, <unk>=3
PADDING_IDX = 1
#: torch's weight-norm parametrization: g (original0) and v (original1) of w = g * v / ||v||
WEIGHT_G = "parametrizations.weight.original0"
WEIGHT_V = "parametrizations.weight.original1"

#: options fairseq's fconv and fconv_self_att share, with the same meaning in their targets
ENCODER_DECODER_FIELDS = (
    "dropout",
    "encoder_embed_dim",
    "encoder_layers",
    "decoder_embed_dim",
    "decoder_layers",
    "decoder_out_embed_dim",
    "decoder_attention",
)

Weights = Dict[str, torch.Tensor]


class ConversionError(ValueError):
    pass


# ---------------------------------------------------------------- the source checkpoint


def as_dict(options: Any) -> Dict[str, Any]:
    """A config section (argparse.Namespace, dict or DictConfig; None) as a plain dict."""
    if options is None:
        return {}
    return vars(options) if isinstance(options, argparse.Namespace) else dict(options)


def has_config(state: Mapping[str, Any]) -> bool:
    """Whether ``state`` records how it was trained, as fairseq training checkpoints do."""
    return state.get("cfg") is not None or state.get("args") is not None


def model_options(state: Mapping[str, Any]) -> Dict[str, Any]:
    """The model options of a fairseq checkpoint as a dict (``{}`` when it records none)."""
    cfg = state.get("cfg")
    if cfg is None:  # fairseq < 0.10: everything in one Namespace
        return as_dict(state.get("args"))
    return as_dict(cfg.get("model") if isinstance(cfg, Mapping) else getattr(cfg, "model", None))


def checkpoint_arch(state: Mapping[str, Any]) -> Optional[str]:
    """The ``arch`` a checkpoint was trained with (None when it names none)."""
    options = model_options(state)
    return options.get("arch") or options.get("_name")


def full_config(state: Mapping[str, Any]) -> Dict[str, Any]:
    """The checkpoint's whole config as a dict (a legacy ``args`` Namespace converted)."""
    cfg = state.get("cfg")
    if cfg is not None:
        return dict(cfg)
    args = state.get("args")
    if args is None:
        raise ConversionError("the checkpoint has neither 'cfg' nor 'args': not a fairseq training checkpoint")
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from omegaconf import OmegaConf

    return OmegaConf.to_container(convert_namespace_to_omegaconf(args))


def copy_options(
    options: Mapping[str, Any], names: Iterable[str], value: Callable[[Any], Any] = lambda v: v
) -> Dict[str, Any]:
    """``{name: value(options[name])}`` for each of ``names``, all of which must be there."""
    copied = {}
    for name in names:
        if name not in options:
            raise ConversionError(f"the checkpoint's model config has no {name!r}")
        copied[name] = value(options[name])
    return copied


def _tensor(weights: Weights, key: str) -> torch.Tensor:
    if key not in weights:
        raise ConversionError(f"the checkpoint has no {key!r}")
    return weights[key]


def max_positions(weights: Weights, key: str) -> int:
    """Positions a fairseq position table ``key`` holds: its N rows start at padding_idx + 1."""
    return _tensor(weights, key).size(0) - PADDING_IDX - 1


def dummy_dictionary(size: int) -> Dictionary:
    """A Dictionary of ``size`` symbols (fairseq's four specials first)."""
    d = Dictionary()
    while len(d) < size:
        d.add_symbol(f"<w{len(d)}>")
    return d


# ---------------------------------------------------------------- weights


def _module_and_param(key: str) -> Tuple[str, str]:
    """``("a.b", "weight")`` for ``a.b.weight`` and ``a.b.parametrizations.weight.original0``."""
    base, sep, rest = key.partition(".parametrizations.")
    if sep:
        return base, "parametrizations." + rest
    base, _, param = key.rpartition(".")
    return base, param


class TargetLayout:
    """The target model's ``state_dict()`` names, and where a source module goes in it."""

    def __init__(self, expected: Weights):
        self.expected = expected
        self.modules = {_module_and_param(key)[0] for key in expected}

    def module(self, path: str) -> str:
        """``path`` if the target has it; else the target module with the same first and
        last names that holds all of ``path``'s names in order, with the fewest added
        (unique, or ``path`` is kept and the weight check reports it)."""
        if path in self.modules:
            return path
        parts = path.split(".")
        candidates = [m.split(".") for m in self.modules]
        candidates = [m for m in candidates if m[0] == parts[0] and m[-1] == parts[-1] and _in_order(parts, m)]
        if not candidates:
            return path
        fewest = min(len(m) for m in candidates)
        best = [m for m in candidates if len(m) == fewest]
        return ".".join(best[0]) if len(best) == 1 else path


def _in_order(names: Sequence[str], within: Sequence[str]) -> bool:
    rest = iter(within)
    return all(name in rest for name in names)


def conv_tbc_to_conv1d(weight: torch.Tensor) -> torch.Tensor:
    """ConvTBC's ``k x in x out`` -> Conv1d's ``out x in x k``."""
    return weight.permute(2, 1, 0).contiguous()


def conv_tbc_weight_norm(g: torch.Tensor, v: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """ConvTBC weight norm (dim 2, v: k x in x out, g: 1 x 1 x out) -> Conv1d's (dim 0,
    v: out x in x k, g: out x 1 x 1)."""
    if g.dim() != 3 or g.shape[:2] != (1, 1):
        # fairseq decoder version < 2 normalised over the wrong dim: keep the weight it
        # computed and re-split it along the output channels
        w = torch._weight_norm(v, g, 0)
        v, g = w, torch.linalg.vector_norm(w, dim=(0, 1), keepdim=True)
    return g.reshape(-1, 1, 1).contiguous(), conv_tbc_to_conv1d(v)


def weight_norm_of(weight: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(g, v)`` with ``g * v / ||v|| == weight``: ``v = weight``, ``g = ||weight||`` per
    output unit (dim 0)."""
    return torch.linalg.vector_norm(weight, dim=tuple(range(1, weight.dim())), keepdim=True), weight


def convert_weights(
    src: Weights,
    expected: Weights,
    renames: Sequence[Tuple[str, str]] = (),
    skip: Optional[str] = None,
    optional: Optional[str] = None,
) -> Weights:
    """fairseq weights ``src`` on the names and layout of a target model whose state dict
    is ``expected`` (names and shapes; its ``version`` buffers are taken as they are).

    ``renames``: (pattern, replacement) applied in order to each fairseq key; ``skip``:
    pattern of fairseq keys that are dropped; ``optional``: pattern of (renamed) modules
    fairseq creates also where they are unused, dropped when the target has none."""
    target = TargetLayout(expected)
    dst: Weights = {}

    def put(key: str, value: torch.Tensor) -> None:
        if key in dst:
            raise ConversionError(f"two weights of the checkpoint convert to {key!r}")
        dst[key] = value

    for key, value in src.items():
        if key.endswith(".version") or (skip and re.search(skip, key)) or key.endswith(".weight_v"):
            continue  # versions: the target's below; weight_v: with its weight_g
        name = key
        for pattern, replacement in renames:
            name = re.sub(pattern, replacement, name)
        base, param = _module_and_param(name)
        base = target.module(base)
        if optional and base not in target.modules and re.search(optional, base):
            continue
        conv = ".convolutions." in key  # fairseq's convolutions are ConvTBC: k x in x out
        if param == "weight_g":  # weight-normed in fairseq too
            v = src.get(key[: -len("weight_g")] + "weight_v")
            if v is None:
                raise ConversionError(f"the checkpoint has {key!r} without its weight_v")
            g, v = conv_tbc_weight_norm(value, v) if conv else (value, v)
            put(f"{base}.{WEIGHT_G}", g)
            put(f"{base}.{WEIGHT_V}", v)
        elif param == "weight" and f"{base}.{WEIGHT_G}" in expected:  # plain in fairseq
            g, v = weight_norm_of(conv_tbc_to_conv1d(value) if conv else value)
            put(f"{base}.{WEIGHT_G}", g)
            put(f"{base}.{WEIGHT_V}", v)
        else:
            put(f"{base}.{param}", value)
    for key, value in expected.items():
        if key.endswith(".version"):
            put(key, value.clone())
    order = {key: i for i, key in enumerate(expected)}  # the target's order; strangers last
    return dict(sorted(dst.items(), key=lambda item: order.get(item[0], len(order))))


def check_weights_match(expected: Weights, weights: Weights) -> None:
    """Converted ``weights`` have exactly the names and shapes of the target model's
    ``expected`` state dict, or a ConversionError says what differs."""
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise ConversionError(
            "the converted weights do not match the architecture in the checkpoint's config "
            f"(missing: {missing[:5]}, unexpected: {unexpected[:5]})"
        )
    for name, tensor in expected.items():
        if tensor.shape != weights[name].shape:
            raise ConversionError(
                f"{name}: shape {tuple(weights[name].shape)} does not match the config's {tuple(tensor.shape)}"
            )


# ---------------------------------------------------------------- the conversion


@dataclass(frozen=True)
class Converter:
    """How one fairseq model family converts; :meth:`convert` does the shared rest."""

    #: the fairseq model family ("fconv") and its registered archs
    source: str
    archs: FrozenSet[str]
    #: the registered model it converts to ("fconv_ext")
    target: str
    #: (model options, full config, weights) -> the target's model config (without "_name")
    model_config: Callable[[Dict[str, Any], Dict[str, Any], Weights], Dict[str, Any]]
    #: the embedding weights whose rows size the source (and target) dictionary
    vocab_keys: Tuple[str, ...]
    #: see :func:`convert_weights`
    renames: Sequence[Tuple[str, str]] = ()
    skip: Optional[str] = None
    optional: Optional[str] = None
    #: model config -> a sentence added to errors building the target model ("" for none)
    build_hint: Callable[[Dict[str, Any]], str] = lambda model_cfg: ""

    def convert(self, state: Mapping[str, Any]) -> Dict[str, Any]:
        """Convert a loaded fairseq checkpoint of this family; returns the target's checkpoint."""
        arch = checkpoint_arch(state)
        if arch not in self.archs:
            raise ConversionError(f"the checkpoint's arch is {arch!r}, not one of {', '.join(sorted(self.archs))}")
        cfg, weights = full_config(state), state["model"]
        model_cfg = {"_name": self.target, **self.model_config(model_options(state), cfg, weights)}
        expected = self.build_target(model_cfg, weights).state_dict()
        new_weights = convert_weights(weights, expected, self.renames, self.skip, self.optional)
        check_weights_match(expected, new_weights)
        return converted_checkpoint(state, cfg, model_cfg, new_weights, arch)

    def build_target(self, model_cfg: Dict[str, Any], weights: Weights):
        """An untrained target model of ``model_cfg``, with dummy dictionaries of the
        checkpoint's sizes, for its state-dict layout."""
        dictionaries = [dummy_dictionary(_tensor(weights, key).size(0)) for key in self.vocab_keys]
        try:
            return build_model_from_config(model_cfg, *dictionaries)
        except LayerSpecError as err:
            raise ConversionError(f"the checkpoint's layer spec is not accepted: {err}") from None
        except (CheckpointError, ValueError) as err:
            hint = self.build_hint(model_cfg)
            raise ConversionError(
                f"the converted config does not build an {self.target}: {err}" + (f". {hint}" if hint else "")
            ) from None


def converted_checkpoint(
    state: Mapping[str, Any], cfg, model_cfg: Dict[str, Any], weights: Weights, source: str
) -> Dict[str, Any]:
    """The checkpoint written for a converted model: its config with ``model_cfg``, the new
    weights, the optimizer history without optimizer state (fine-tune with
    ``--reset-optimizer``), and where it came from."""
    cfg = dict(cfg)
    cfg["model"] = model_cfg
    history = [{k: v for k, v in h.items() if k != "optimizer"} for h in state.get("optimizer_history", [])] or [
        {
            "criterion_name": "CrossEntropyCriterion",
            "optimizer_name": "converted",
            "lr_scheduler_state": {},
            "num_updates": 0,
        }
    ]
    return {
        "args": None,
        "cfg": cfg,
        "model": weights,
        "optimizer_history": history,
        "extra_state": {"converted_from": source},
        "last_optimizer_state": None,
    }
