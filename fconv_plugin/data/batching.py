"""Keep every example in fairseq's batches.

fairseq's ``data_utils.batch_by_size`` (used by every task) ends with

    if bsz_mult > 1 and len(b[-1]) % bsz_mult != 0:
        b = b[:-1]

so with ``--required-batch-size-multiple 8`` (the default) the last batch is dropped
whenever its size is not a multiple of 8: the last ``N mod 8`` examples in size order,
i.e. the *longest* ones, are never trained on and never decoded (fairseq-generate on
the 1266-sentence gettext test set prints 1264 hypotheses; fairseq issues #5036 and
#5351, docs/upstream-problems.md, problem 11).

:func:`with_dropped_tail` appends the dropped batch again.  The batches are consecutive
runs of ``indices``, so the dropped batch is exactly the tail of ``indices`` that no
batch covers.  :mod:`fconv_plugin.fairseq_fixes` (entry ``keep_last_batch``) wraps
``batch_by_size`` with it; importing this module changes nothing.  Upstream, the fix is
to delete those two lines (a smaller last batch costs a little efficiency, nothing else).
"""

from typing import List

import numpy as np


def with_dropped_tail(indices: np.ndarray, batches: List[np.ndarray]) -> List[np.ndarray]:
    """``batches`` (fairseq's, from ``indices`` without fixed shapes) plus one batch of the
    indices at the end that none of them covers, if any."""
    covered = sum(len(b) for b in batches)
    if covered < len(indices):
        return list(batches) + [np.asarray(indices[covered:], dtype=np.int64)]
    return batches
