"""Keep every example in fairseq's batches.

fairseq's ``data_utils.batch_by_size`` (used by every task) ends with

    if bsz_mult > 1 and len(b[-1]) % bsz_mult != 0:
        b = b[:-1]

so with ``--required-batch-size-multiple 8`` (the default) the last batch is dropped
whenever its size is not a multiple of 8: the last ``N mod 8`` examples in size order,
i.e. the *longest* ones, are never trained on and never decoded (fairseq-generate on
the 1266-sentence gettext test set prints 1264 hypotheses; REFERENCE.md problem 11,
fairseq issue #5036).

:func:`install` wraps that function (at import of the plugin, in this process only;
no installed file is changed) so that the dropped batch is appended again.  The
batches are consecutive runs of ``indices``, so the dropped batch is exactly the tail
of ``indices`` that no batch covers.  Upstream, the fix is to delete those two lines
(a smaller last batch costs a little efficiency, nothing else).
"""

import functools

import numpy as np
from fairseq.data import data_utils

_ATTR = "_fconv_ext_keeps_all"


def _keep_all(original):
    @functools.wraps(original)
    def batch_by_size(indices, num_tokens_fn, num_tokens_vec=None, max_tokens=None,
                      max_sentences=None, required_batch_size_multiple=1, fixed_shapes=None):
        if not isinstance(indices, np.ndarray):
            indices = np.fromiter(indices, dtype=np.int64, count=-1)
        batches = original(indices, num_tokens_fn, num_tokens_vec=num_tokens_vec, max_tokens=max_tokens,
                           max_sentences=max_sentences, required_batch_size_multiple=required_batch_size_multiple,
                           fixed_shapes=fixed_shapes)
        if fixed_shapes is None:
            covered = sum(len(b) for b in batches)
            if covered < len(indices):
                batches = list(batches) + [np.asarray(indices[covered:], dtype=np.int64)]
        return batches

    setattr(batch_by_size, _ATTR, True)
    return batch_by_size


def install() -> None:
    """Patch ``fairseq.data.data_utils.batch_by_size`` (idempotent)."""
    if not getattr(data_utils.batch_by_size, _ATTR, False):
        data_utils.batch_by_size = _keep_all(data_utils.batch_by_size)
