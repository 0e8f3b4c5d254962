"""Where decoding time goes: torch profiler (per-op self CPU time) or cProfile (Python) summary
for one side of ``bench.py``'s generation configs.

    python benchmarks/profile_decode.py --data /tmp/gt/bin --checkpoint CK.pt [--beam 5 --batch 64]
        [--max-batches 5] [--threads 2] [--mode torch|python] [--rows 25]

``CK.pt`` may be a fairseq fconv checkpoint (profiled with fairseq's SequenceGenerator) or an fconv_ext
one (FConvBeamSearch, as fairseq-generate would use); convert with ``fconv-ext-convert``.
"""

import argparse
import cProfile
import os
import pstats
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from bench import MAX_LEN_A, MAX_LEN_B, _load  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--max-batches", type=int, default=5, help="batches profiled, evenly spaced over the length-sorted test set")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--mode", choices=["torch", "python"], default="torch")
    p.add_argument("--rows", type=int, default=25)
    args = p.parse_args()

    import torch
    from fairseq import utils

    torch.set_num_threads(args.threads)
    model, _, task = _load(args.checkpoint, args.data, args.dtype)
    model.eval()
    model.make_generation_fast_(beamable_mm_beam_size=args.beam, need_attn=False)
    task.load_dataset("test")
    itr = task.get_batch_iterator(
        dataset=task.dataset("test"), max_sentences=args.batch, required_batch_size_multiple=1,
        max_positions=utils.resolve_max_positions(task.max_positions(), model.max_positions()),
    ).next_epoch_itr(shuffle=False)
    batches = list(itr)
    stride = max(len(batches) / args.max_batches, 1)
    batches = [batches[int(i * stride)] for i in range(min(args.max_batches, len(batches)))]
    gen = task.build_generator([model], argparse.Namespace(beam=args.beam, max_len_a=MAX_LEN_A, max_len_b=MAX_LEN_B))

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
