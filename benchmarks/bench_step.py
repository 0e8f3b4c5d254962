"""FConvBeamSearch through the pure-tensor decoder step (eager, and compiled with --compile) against
fairseq's SequenceGenerator (the model's incremental interface), on
one fconv_ext model with the gettext benchmark's shapes (fconv_ext_iwslt_de_en, random weights with
EOS made likelier so that hypotheses end at different steps).  Same model, same batches, alternating,
median of --reps; prints seconds per batch and ratios, and whether the hypotheses are identical.

    python benchmarks/bench_step.py --vocab 8000 --batch 64 --beam 5 1 --reps 3 [--compile]
"""

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from conftest import make_dictionary, random_batch  # noqa: E402  (the tests' tiny dictionaries)

from fairseq.sequence_generator import SequenceGenerator  # noqa: E402

from fconv_plugin.models import build_model_from_config  # noqa: E402
from fconv_plugin.models.architectures import PRESETS  # noqa: E402
from fconv_plugin.serving.beam_search import FConvBeamSearch  # noqa: E402


def model_for(vocab: int, seed: int = 0):
    torch.manual_seed(seed)
    src_dict, tgt_dict = make_dictionary(vocab), make_dictionary(vocab)
    config = {"_name": "fconv_ext", **PRESETS["fconv_ext_iwslt_de_en"].values,
              "max_source_positions": 1024, "max_target_positions": 1024}
    model = build_model_from_config(config, src_dict, tgt_dict)
    with torch.no_grad():
        model.decoder.fc3.bias[tgt_dict.eos()] += 4.0  # hypotheses end after 5-40 tokens
    model.make_generation_fast_(need_attn=False)
    model.eval()
    return model, src_dict, tgt_dict


def batch(src_dict, size: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(4, 30, (size,), generator=g).tolist()  # gettext-like sentence lengths
    return {"net_input": {"src_tokens": random_batch(src_dict, lengths, seed=seed),
                          "src_lengths": torch.tensor(lengths)}, "id": torch.arange(size)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--batch", type=int, nargs="+", default=[64])
    parser.add_argument("--beam", type=int, nargs="+", default=[5, 1])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="also the compiled step (inference_compile)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, src_dict, tgt_dict = model_for(args.vocab)

    def run(path: str, sample, beam: int):
        model.inference_compile = path == "compiled"
        cls = SequenceGenerator if path == "fairseq" else FConvBeamSearch
        generator = cls([model], tgt_dict, beam_size=beam, max_len_a=1.2, max_len_b=10)
        start = time.perf_counter()
        with torch.no_grad():
            out = generator.generate([model], sample)
        return time.perf_counter() - start, [h[0]["tokens"].tolist() for h in out]

    paths = ["fairseq", "step"] + (["compiled"] if args.compile else [])
    print(f"# torch {torch.__version__}, {args.threads} threads, vocabulary {args.vocab}, fconv_ext_iwslt_de_en shapes")
    for size in args.batch:
        for beam in args.beam:
            samples = [batch(src_dict, size, seed) for seed in range(args.reps)]
            if args.compile:  # compile outside the timing (the compilation cost is reported by itself)
                start = time.perf_counter()
                run("compiled", samples[0], beam)
                print(f"batch {size} beam {beam}: first compiled batch (compilation included) "
                      f"{time.perf_counter() - start:.1f} s")
            times = {p: [] for p in paths}
            outputs = {p: [] for p in paths}
            for sample in samples:
                for path in paths:  # alternating
                    seconds, hyps = run(path, sample, beam)
                    times[path].append(seconds)
                    outputs[path].append(hyps)
            medians = {p: statistics.median(t) for p, t in times.items()}
            line = ", ".join(f"{p} {medians[p]:.3f} s ({medians['fairseq'] / medians[p]:.2f}x)" for p in paths)
            same = {p: outputs[p] == outputs["fairseq"] for p in paths}
            print(f"batch {size} beam {beam}: {line}; identical to fairseq: {same}")


if __name__ == "__main__":
    main()
