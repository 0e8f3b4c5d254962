"""Copy a fairseq checkpoint without its optimizer state: what generation and bench.py need, about half the size.

    python benchmarks/strip_checkpoint.py IN.pt OUT.pt

fairseq's trainer saves the model weights, the config (``cfg``, or ``args`` for old checkpoints), a short
``optimizer_history`` (criterion and optimizer names, lr-scheduler state, update count) and ``extra_state``
(epoch, iterator position, metrics) next to ``last_optimizer_state``, the optimizer's buffers (NAG: one
momentum tensor per weight, as large as the model).  The copy keeps everything except the optimizer
buffers, so ``checkpoint_utils.load_model_ensemble_and_task`` (fairseq-generate, bench.py) loads it as
before and decodes identically; resuming training from it starts a fresh optimizer (as fairseq's own
``--reset-optimizer`` would).  The source is read with fconv_ext's weights-only loader.
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fconv_plugin.checkpoint import load_checkpoint_file


def strip_checkpoint(src, dst):
    """Write ``src`` to ``dst`` without ``last_optimizer_state``; returns whether there was one to drop."""
    state = load_checkpoint_file(src)
    if "optimizer_history" not in state:
        raise SystemExit(
            f"{src}: no 'optimizer_history': a pre-0.6 fairseq layout, which this script does not handle "
            "(load and save it once with fairseq first)"
        )
    had_state = state.pop("last_optimizer_state", None) is not None
    torch.save(state, dst)
    return had_state


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("src", help="fairseq checkpoint (any model)")
    p.add_argument("dst", help="where to write the copy without optimizer state")
    args = p.parse_args()
    had_state = strip_checkpoint(args.src, args.dst)
    print(
        f"{args.dst}: {os.path.getsize(args.dst) / 2**20:.1f} MiB (from {os.path.getsize(args.src) / 2**20:.1f} MiB; "
        f"{'optimizer state dropped' if had_state else 'there was no optimizer state'})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
