"""Where decoding time goes: torch profiler (per-op self CPU time) or cProfile (Python) summary
for one side of ``bench.py``'s generation configs.

    python benchmarks/profile_decode.py --data /tmp/gt/bin --checkpoint CK.pt [--beam 5 --batch 64]
        [--max-batches 5] [--threads 2] [--mode torch|python] [--rows 25] [--dtype int8] [--shortlist FILE]

``CK.pt`` may be a fairseq fconv checkpoint (profiled with fairseq's SequenceGenerator) or an fconv_ext
one (FConvBeamSearch, as fairseq-generate would use; with ``FCONV_EXT_BEAM_SEARCH=fairseq`` in the
environment, fairseq's SequenceGenerator: bench.py's ``fconv_ext_seqgen`` side); convert with
``fconv-ext-convert``.
"""

import argparse
import cProfile
import os
import pstats
import sys
import time
from types import SimpleNamespace

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from bench_child import prepare_decoding


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument(
        "--max-batches", type=int, default=5, help="batches profiled, evenly spaced over the length-sorted test set"
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--dtype", default="float32", help="float32, bfloat16, int8 (fconv_ext's inference_dtype) or float16"
    )
    p.add_argument("--shortlist", help="decode with this vocabulary shortlist (fconv_ext's model override)")
    p.add_argument("--mode", choices=["torch", "python"], default="torch")
    p.add_argument("--rows", type=int, default=25)
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    job = SimpleNamespace(
        checkpoint=args.checkpoint,
        data=args.data,
        dtype=args.dtype,
        beam=args.beam,
        batch=args.batch,
        max_batches=args.max_batches,
        device="cpu",
        overrides={"shortlist": args.shortlist} if args.shortlist else None,
    )
    model, task, gen, batches = prepare_decoding(job)

    def run():
        with torch.no_grad():
            for b in batches:
                gen.generate([model], b)

    run()  # warm-up
    start = time.perf_counter()
    if args.mode == "torch":
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            run()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
    else:
        profiler = cProfile.Profile()
        profiler.runcall(run)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(args.rows)
    print(f"{type(gen).__name__}: {len(batches)} batches in {time.perf_counter() - start:.2f} s (profiled)")
    start = time.perf_counter()
    run()
    print(f"unprofiled: {time.perf_counter() - start:.3f} s")


if __name__ == "__main__":
    main()
