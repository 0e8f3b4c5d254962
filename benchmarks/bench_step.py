"""FConvBeamSearch through the decoder step, eager against compiled (``inference_compile``), on a
trained fconv_ext checkpoint and its test set: CPU seconds of the decoding process (user + system,
``time.process_time``: less sensitive than wall time to other processes on a shared machine), the
first compiled pass (compilation included) on its own, and the share of identical hypotheses.

    python benchmarks/bench_step.py --checkpoint ext.pt --data /tmp/gt/bin --batch 64 --beam 5 \\
        --batches 6 --reps 3 --threads 1 [--int8] [--shortlist FILE]

Same model, same batches, the two sides alternating, median of ``--reps``.
"""

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_child import load_model  # loads a checkpoint with fconv_plugin registered
from bench_common import machine, machine_line


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a fconv_ext checkpoint")
    parser.add_argument("--data", required=True, help="its binarized data directory (test split)")
    parser.add_argument("--batch", type=int, default=64, help="sentences per batch")
    parser.add_argument("--beam", type=int, nargs="+", default=[5, 1])
    parser.add_argument("--batches", type=int, default=6, help="batches of the test set decoded per pass")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--int8", action="store_true", help="inference_dtype int8 on both sides")
    parser.add_argument("--shortlist", help="a shortlist file for both sides")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    overrides = {"inference_dtype": "int8"} if args.int8 else {}
    if args.shortlist:
        overrides["shortlist"] = args.shortlist
    model, _, task = load_model(args.checkpoint, args.data, model_overrides=overrides)
    model.make_generation_fast_(need_attn=False)
    model.eval()
    task.load_dataset("test")
    batches = task.get_batch_iterator(
        dataset=task.dataset("test"), max_sentences=args.batch, max_positions=(1024, 1024)
    ).next_epoch_itr(shuffle=False)
    batches = [batch for _, batch in zip(range(args.batches), batches)]
    from fconv_plugin.serving.beam_search import FConvBeamSearch

    def decode(compiled: bool, beam: int):
        model.inference_compile = compiled
        generator = FConvBeamSearch([model], task.target_dictionary, beam_size=beam, max_len_a=1.2, max_len_b=10)
        cpu, wall = time.process_time(), time.perf_counter()
        with torch.no_grad():
            hypotheses = [h[0]["tokens"].tolist() for batch in batches for h in generator.generate([model], batch)]
        return time.process_time() - cpu, time.perf_counter() - wall, hypotheses

    print(f"# {machine_line(machine(threads=args.threads))}")
    print(
        f"# {args.checkpoint}, {len(batches)} batches of {args.batch}, int8={args.int8}, "
        f"shortlist={bool(args.shortlist)}"
    )
    for beam in args.beam:
        cpu, wall, _ = decode(True, beam)
        print(f"beam {beam}: first compiled pass (compilation included) {cpu:.1f} CPU s, {wall:.1f} s wall", flush=True)
        seconds = {"eager": [], "compiled": []}
        outputs = {}
        for _ in range(args.reps):
            for side in ("eager", "compiled"):
                cpu, _, outputs[side] = decode(side == "compiled", beam)
                seconds[side].append(cpu)
        eager, compiled = statistics.median(seconds["eager"]), statistics.median(seconds["compiled"])
        same = sum(a == b for a, b in zip(outputs["eager"], outputs["compiled"])) / len(outputs["eager"])
        print(
            f"beam {beam} batch {args.batch}: eager {eager:.3f} CPU s, compiled {compiled:.3f} CPU s "
            f"({eager / compiled:.2f}x); identical hypotheses {100 * same:.1f}%",
            flush=True,
        )


if __name__ == "__main__":
    main()
