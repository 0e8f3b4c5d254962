"""fairseq drops the last N mod 8 examples of a split (its longest); with the plugin
imported (fconv_plugin.fairseq_fixes, entry keep_last_batch) every example is in exactly
one batch.  tests/unit/fairseq_fixes/test_fairseq_fixes.py compares the batches with fairseq's own."""

import numpy as np
import pytest
from fairseq.data import data_utils

import fconv_plugin  # noqa: F401  (installs the fix)
from fconv_plugin import fairseq_fixes


@pytest.mark.parametrize("n,max_sentences,mult", [(1266, 64, 8), (13, 4, 8), (37, 16, 8), (40, 16, 8), (5, 64, 1)])
def test_every_index_in_exactly_one_batch(n, max_sentences, mult):
    indices = np.arange(n, dtype=np.int64)[::-1].copy()  # any order
    sizes = np.full(n, 10, dtype=np.int64)
    batches = data_utils.batch_by_size(
        indices,
        lambda i: sizes[i],
        num_tokens_vec=sizes,
        max_tokens=10_000,
        max_sentences=max_sentences,
        required_batch_size_multiple=mult,
    )
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(n))
    assert all(len(b) <= max_sentences for b in batches)


def test_unpatched_fairseq_really_drops_examples():
    """The bug the wrapper exists for (if fairseq fixes it, this test says so)."""
    original = data_utils.batch_by_size.__wrapped__
    sizes = np.full(13, 10, dtype=np.int64)
    batches = original(
        np.arange(13), None, num_tokens_vec=sizes, max_tokens=10_000, max_sentences=4, required_batch_size_multiple=8
    )
    assert sum(len(b) for b in batches) < 13
    fairseq_fixes.install_all()  # idempotent
    assert data_utils.batch_by_size.__wrapped__ is original
