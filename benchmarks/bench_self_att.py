"""Generation speed on long outputs: fconv_ext_self_att vs fairseq's fconv_self_att.

    OMP_NUM_THREADS=1 python benchmarks/bench_self_att.py --lengths 100 200 400 --reps 3 \
        --out benchmarks/results/self_att.md

fairseq's fconv_self_att has no incremental decoder: at every step SequenceGenerator runs
its decoder over the whole prefix (O(T^2) per sentence), while fconv_ext_self_att caches
conv windows and self-attention keys/values (O(T)).  Both sides decode the same model: a
randomly initialised (perturbed) fairseq model of the wp architecture at reduced width,
converted with fconv-ext-convert's code.  fairseq's SequenceGenerator on both, fixed output
length (min_len = max_len = L), the same threads, the sides alternating, median of --reps;
hypotheses are compared.  Random weights: the numbers are speed only, not quality.
"""

import importlib
import argparse
import os
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

importlib.import_module("fconv_plugin")  # registers fconv_ext_self_att
from bench_common import machine, machine_line, numbered_dictionary
from fconv_plugin.convert import convert_checkpoint

# fconv_self_att_wp's features (gated, 4 downsampled heads, input projections, kernel 4)
# at a width that keeps the O(T^2) side within minutes on a CPU
MODEL = dict(
    encoder_embed_dim=128,
    encoder_layers="[(128, 3)] * 2 + [(256, 3)]",
    decoder_embed_dim=128,
    decoder_layers="[(256, 4)] * 4 + [(384, 4)] * 2 + [(512, 4)]",
    decoder_out_embed_dim=128,
)


def build(vocab: int, seed: int):
    from fairseq.models import ARCH_CONFIG_REGISTRY
    from fairseq.models.fconv_self_att import FConvModelSelfAtt

    from fconv_plugin.models import build_model_from_config

    d = numbered_dictionary(vocab)

    class Task:
        source_dictionary = target_dictionary = d

    torch.manual_seed(seed)
    args = argparse.Namespace(arch="fconv_self_att_wp", max_source_positions=1024, max_target_positions=1024, **MODEL)
    ARCH_CONFIG_REGISTRY["fconv_self_att_wp"](args)
    ref = FConvModelSelfAtt.build_model(args, Task())
    with torch.no_grad():  # spread the output distribution so that hypotheses are well separated
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    converted = convert_checkpoint({"cfg": {"model": args}, "model": ref.state_dict()})
    ext = build_model_from_config(converted["cfg"]["model"], d, d)
    ext.load_state_dict(converted["model"], strict=True)
    return ref.eval(), ext.eval(), d


def decode(model, dictionary, sample, length: int, beam: int):
    from fairseq.sequence_generator import SequenceGenerator

    gen = SequenceGenerator([model], dictionary, beam_size=beam, min_len=length, max_len_a=0, max_len_b=length)
    start = time.perf_counter()
    with torch.no_grad():
        out = gen.forward(sample)
    seconds = time.perf_counter() - start
    return seconds, [[h["tokens"].tolist() for h in hyps] for hyps in out]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[100, 200, 400])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=2, help="source sentences per batch")
    parser.add_argument("--beam", type=int, default=2)
    parser.add_argument("--src-len", type=int, default=30)
    parser.add_argument("--vocab", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="write a markdown table here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    ref, ext, d = build(args.vocab, seed=0)
    for model in (ref, ext):
        model.make_generation_fast_(need_attn=False)
    g = torch.Generator().manual_seed(1)
    src = torch.randint(d.nspecial, len(d), (args.batch, args.src_len), generator=g)
    src[:, -1] = d.eos()
    sample = {"net_input": {"src_tokens": src, "src_lengths": torch.full((args.batch,), args.src_len)}}

    rows = []
    for length in args.lengths:
        times = {"fairseq": [], "ext": []}
        hyps = {}
        for rep in range(args.reps):
            sides = [("fairseq", ref), ("ext", ext)] if rep % 2 == 0 else [("ext", ext), ("fairseq", ref)]
            for side, model in sides:
                seconds, hyps[side] = decode(model, d, sample, length, args.beam)
                times[side].append(seconds)
        med = {side: statistics.median(t) for side, t in times.items()}
        tokens = args.batch * args.beam * (length + 1)  # decoder steps x beams (incl. EOS)
        same = hyps["fairseq"] == hyps["ext"]
        rows.append((length, med["fairseq"], med["ext"], med["fairseq"] / med["ext"], tokens, same))
        print(
            f"L={length}: fconv_self_att {med['fairseq']:.2f}s, fconv_ext_self_att {med['ext']:.2f}s, "
            f"speedup {med['fairseq'] / med['ext']:.1f}x, identical hypotheses: {same}",
            flush=True,
        )

    if args.out:
        with open(args.out, "w") as f:
            f.write("# Generation on long outputs: fconv_ext_self_att vs fairseq's fconv_self_att\n\n")
            f.write(
                "Command (repository root, virtualenv active):\n\n```bash\nOMP_NUM_THREADS=1 python "
                f"benchmarks/bench_self_att.py --lengths {' '.join(map(str, args.lengths))} --reps {args.reps} "
                f"--batch {args.batch} --beam {args.beam} --threads {args.threads} --out {args.out}\n```\n\n"
            )
            f.write(machine_line(machine(threads=args.threads)) + "\n\n")
            f.write(
                "Model: fconv_self_att_wp's features "
                f"(gated, 4 downsampled self-attention heads, input projections, kernel 4) at reduced width "
                f"{MODEL}, random (perturbed) weights, converted; vocabulary {args.vocab}. "
                f"fairseq's SequenceGenerator, beam {args.beam}, {args.batch} source sentences of "
                f"{args.src_len} tokens, output length fixed (min_len = max_len = L). Median of {args.reps} "
                "alternating repetitions.\n\n"
            )
            f.write(
                "| L (output tokens) | fconv_self_att (s) | fconv_ext_self_att (s) | speedup | "
                "ext tokens/s | identical hypotheses |\n|---|---|---|---|---|---|\n"
            )
            for length, t_ref, t_ext, ratio, tokens, same in rows:
                f.write(f"| {length} | {t_ref:.2f} | {t_ext:.2f} | {ratio:.1f}x | {tokens / t_ext:.0f} | {same} |\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
