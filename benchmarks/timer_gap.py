"""Where fairseq-generate's timer and bench.py's / the profiler's disagree: one side's decoding of the
whole test set, batch by batch, under the length limits of each.

    python benchmarks/timer_gap.py --data /tmp/gt/bin --checkpoint CK.pt [--beam 1 --batch 64] [--threads 2]
        [--limits 1.2,10 0,200] [--passes 2] [--json OUT.json]

``CK.pt`` is an fconv checkpoint (fairseq's SequenceGenerator) or an fconv_ext one (the generator
``task.build_generator`` gives it).  For every ``--limits`` pair (max_len_a, max_len_b: 1.2,10 is bench.py's
and profile_decode.py's, 0,200 fairseq-generate's default) the test set is decoded ``--passes`` times in
one process (the first pass cold, as fairseq-generate's only pass), each batch timed as fairseq-generate's
timer does (the generator call only).  Printed per pass: the total, the first batch, the slowest batches,
the hypotheses that reached the length limit and the time spent in the batches that hold one (such a
batch runs until that hypothesis stops, with the rest of its sentences finished and dropped), and
tokens per second.  Compare with ``bench_cli.py`` (the CLI timer) and ``profile_decode.py`` (6 batches,
after a warm-up pass).
"""

import argparse
import json
import os
import sys
import time
from types import SimpleNamespace

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_child import prepare_ensemble_decoding


def decode_pass(models, gen, batches, max_len_a, max_len_b):
    """One timed pass over ``batches``: per-batch seconds, hypothesis lengths, and which hit the limit."""
    import torch

    rows = []
    with torch.no_grad():
        for b in batches:
            start = time.perf_counter()
            outs = gen.generate(models, b)
            seconds = time.perf_counter() - start
            src_lens = b["net_input"]["src_lengths"].tolist()
            lens = [len(o[0]["tokens"]) for o in outs]
            # a hypothesis at the limit: max_len tokens + EOS (fairseq's max_len = a * src_len + b, capped)
            limit = [n >= int(max_len_a * s + max_len_b) for n, s in zip(lens, src_lens)]
            rows.append(
                {
                    "seconds": seconds,
                    "sentences": len(lens),
                    "tokens": sum(lens),
                    "max_len": max(lens),
                    "at_limit": sum(limit),
                }
            )
    return rows


def summary(rows):
    total = sum(r["seconds"] for r in rows)
    capped = [r for r in rows if r["at_limit"]]
    slowest = sorted(rows, key=lambda r: -r["seconds"])[:3]
    return {
        "seconds": total,
        "batches": len(rows),
        "first_batch_s": rows[0]["seconds"],
        "tokens": sum(r["tokens"] for r in rows),
        "tokens_per_s": sum(r["tokens"] for r in rows) / total,
        "hyps_at_limit": sum(r["at_limit"] for r in rows),
        "batches_with_hyp_at_limit": len(capped),
        "seconds_in_those_batches": sum(r["seconds"] for r in capped),
        "slowest_batches": [(round(r["seconds"], 3), r["max_len"], r["at_limit"]) for r in slowest],
        "batch_seconds": [round(r["seconds"], 3) for r in rows],
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--beam", type=int, default=1)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--limits", nargs="+", default=["1.2,10", "0,200"], help="max_len_a,max_len_b pairs")
    p.add_argument("--passes", type=int, default=2, help="passes per limit, in one process (the first one cold)")
    p.add_argument("--json", help="write the summaries here")
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    results = {}
    for spec in args.limits:
        a, b = spec.split(",")
        job = SimpleNamespace(
            checkpoint=args.checkpoint,
            data=args.data,
            dtype="float32",
            beam=args.beam,
            batch=args.batch,
            max_batches=0,
            device="cpu",
            max_len_a=float(a),
            max_len_b=int(b),
        )
        models, task, gen, batches = prepare_ensemble_decoding(job)
        results[spec] = []
        for i in range(args.passes):
            s = summary(decode_pass(models, gen, batches, float(a), int(b)))
            results[spec].append(s)
            print(
                f"{os.path.basename(args.checkpoint)} {type(gen).__name__} limits {spec} pass {i + 1}: "
                f"{s['seconds']:.2f} s for {s['batches']} batches (first {s['first_batch_s']:.2f} s), "
                f"{s['tokens']} tokens ({s['tokens_per_s']:.0f}/s); {s['hyps_at_limit']} hypotheses at the limit "
                f"in {s['batches_with_hyp_at_limit']} batches taking {s['seconds_in_those_batches']:.2f} s; "
                f"slowest (s, longest hyp, at limit) {s['slowest_batches']}; per batch (s, length order) "
                f"{s['batch_seconds']}",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
