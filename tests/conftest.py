"""Shared helpers: twin fairseq-fconv / fconv_ext models with identical weights."""

import argparse
import os
import sys

import pytest
import torch
from fairseq.data import Dictionary

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(REPO, "..", "shared", "data")
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import fconv_plugin  # noqa: E402,F401  (registers fconv_ext)
from fconv_plugin.convert import convert_checkpoint  # noqa: E402
from fconv_plugin.models import build_model_from_config  # noqa: E402


def make_dictionary(size: int) -> Dictionary:
    d = Dictionary()
    for i in range(size - len(d)):
        d.add_symbol(f"w{i}")
    return d


class StubTask:
    def __init__(self, src_dict, tgt_dict):
        self.source_dictionary = src_dict
        self.target_dictionary = tgt_dict


def fconv_args(arch: str, **overrides) -> argparse.Namespace:
    """fairseq fconv options for ``arch`` (its preset function fills the defaults)."""
    from fairseq.models import ARCH_CONFIG_REGISTRY

    args = argparse.Namespace(arch=arch, max_source_positions=1024, max_target_positions=1024, **overrides)
    ARCH_CONFIG_REGISTRY[arch](args)
    return args


def build_twins(arch: str, vocab: int = 60, noise: float = 0.02, seed: int = 0, **overrides):
    """A fairseq ``fconv`` model with perturbed weights (so biases are non-zero and
    g != ||v||) and its fconv_ext twin obtained through the converter.  Both in eval mode."""
    from fairseq.models.fconv import FConvModel

    torch.manual_seed(seed)
    src_dict, tgt_dict = make_dictionary(vocab), make_dictionary(vocab + 7)
    args = fconv_args(arch, **overrides)
    ref = FConvModel.build_model(args, StubTask(src_dict, tgt_dict))
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(noise * torch.randn_like(p))
    converted = convert_checkpoint({"cfg": {"model": args}, "model": ref.state_dict()})
    ext = build_model_from_config(converted["cfg"]["model"], src_dict, tgt_dict)
    ext.load_state_dict(converted["model"], strict=True)
    return ref.eval(), ext.eval(), src_dict, tgt_dict


def random_batch(dictionary, lengths, seed=1, left_pad=True):
    """B x T token ids ending with EOS, padded with the dictionary's pad (left by default)."""
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    out = torch.full((len(lengths), T), dictionary.pad(), dtype=torch.long)
    for i, n in enumerate(lengths):
        toks = torch.randint(dictionary.nspecial, len(dictionary), (n,), generator=g)
        toks[-1] = dictionary.eos()
        if left_pad:
            out[i, T - n:] = toks
        else:
            out[i, :n] = toks
    return out


@pytest.fixture
def shared_gettext():
    path = os.path.join(SHARED_DATA, "gettext-en-de")
    if not os.path.isfile(os.path.join(path, "train.en")):
        pytest.skip("../shared/data/gettext-en-de is not beside the repository")
    return path
