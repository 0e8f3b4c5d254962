"""int8 for the serving modules (fconv_plugin/serving/int8.py): speed of single products at
decoding shapes, and whole-test-set decoding through DecoderStep / SourceEncoder, float32 against int8.

    # per product, one thread: float32, Int8Linear, torchao's int8 subclass, torch's dynamic int8 kernels, bfloat16
    python benchmarks/int8_step.py products [--threads 1] [--rounds 5] [--calls 50] [--compile]

    # the test set, beam 5, batch 64, 2 threads, every variant once per round, rounds alternating
    python benchmarks/int8_step.py decode --checkpoint CK.pt --data /tmp/gt/bin --shortlist SL.npz \\
        [--references ../shared/data/gettext-en-de/test.de] [--variants float32 int8 ...] [--rounds 3]

Decode variants (``--variants``, names composed of options):
``float32`` / ``int8`` (the step and the encoder as they are / quantized by ``quantize_int8_``), ``_fc3float``
(``vocabulary="float32"``: the vocabulary projection stays float32), ``_sl`` (the shortlist's rows of fc3, per
batch, through ``vocabulary_rows``; of an int8 fc3 its int8 rows), ``_sldq`` (the same
with an int8 fc3's rows dequantized to float32), ``_compiled`` (encoder and step through
``torch.compile(dynamic=True, fullgraph=True)``, the
package's options, compiled in an untimed first pass over ``--warm-batches`` batches), ``_frozen`` (the same
with inductor's ``freezing`` option); ``model`` with any of ``_int8``, ``_compiled``,
``_sl``: the model through fairseq's generator (FConvBeamSearch driving the step) with the model overrides
``inference_dtype int8``, ``inference_compile`` (the package's compile options, compiled within the timed run)
and ``shortlist``.

The step variants decode with the small beam search below (fairseq's rules: hypotheses end at EOS among the
best ``beam`` candidates, scores divided by length, a sentence ends when it has ``beam`` finished hypotheses,
at most 1.2 x source + 10 tokens; finished sentences leave the batch).  Reported per variant: median seconds
over the rounds, detokenized sacreBLEU (bench_child's), tokenized BLEU, the share of hypotheses identical to
``float32``'s, and the median ratio float32 / variant.
"""

import argparse
import json
import os
import statistics
import sys
import time
import types

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench_common import machine

STEP_VARIANTS = (
    "float32",
    "float32_sl",
    "int8",
    "int8_sl",
    "int8_sldq",
    "int8_fc3float",
    "int8_fc3float_sl",
    "float32_compiled",
    "int8_compiled",
    "float32_frozen",
    "int8_frozen",
    "int8_fc3float_sl_frozen",
)
MODEL_VARIANTS = tuple(
    "model" + int8 + compiled + sl for int8 in ("", "_int8") for compiled in ("", "_compiled") for sl in ("", "_sl")
)


# ---------------------------------------------------------------- products

#: (name, rows, in, out): the products of fconv_iwslt_de_en's decoder step and their sizes at beam 5 batch
#: 64 (320 rows), beam 1 batch 64 (64) and beam 5 batch 1 (5); ``fc3 shortlist``: a shortlist's 1,600 rows
PRODUCTS = [
    ("fc3", 320, 256, 8192),
    ("fc3", 64, 256, 8192),
    ("fc3", 5, 256, 8192),
    ("fc3 shortlist", 320, 256, 1600),
    ("fc3 shortlist", 5, 256, 1600),
    ("conv k=3", 320, 768, 512),
    ("conv k=3", 64, 768, 512),
    ("conv k=3", 5, 768, 512),
    ("attention / fc2", 320, 256, 256),
    ("attention / fc2", 5, 256, 256),
]


def torchao_int8(linear):
    """For comparison only: ``linear`` through torchao's int8 tensor subclass
    (``Int8DynamicActivationInt8WeightConfig``, per-row weights, per-token activations): the same numbers
    as the package's ``Int8Linear``, dispatched through the subclass at every call."""
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, PerRow, quantize_

    holder = nn.Sequential(nn.Linear(linear.in_features, linear.out_features))
    holder[0].load_state_dict(linear.state_dict())
    quantize_(holder, Int8DynamicActivationInt8WeightConfig(granularity=PerRow(), set_inductor_config=False))
    return holder


def torch_dynamic_int8(linear):
    """For comparison only: ``linear`` through torch's own dynamic int8 kernels (``quantize_dynamic``:
    ``torch.ops.quantized.linear_dynamic``, fbgemm, one activation scale per tensor), what the package used
    before torchao."""
    from torch.ao.quantization import quantize_dynamic

    return quantize_dynamic(nn.Sequential(linear), {nn.Linear}, dtype=torch.qint8)


def product_variants(linear, compile_too):
    """name -> callable(x) computing ``linear`` one way."""
    from fconv_plugin.serving.int8 import Int8Linear

    int8_linear = Int8Linear(linear)
    torchao_linear = torchao_int8(linear)
    weight_bf16, bias_bf16 = linear.weight.bfloat16(), linear.bias.bfloat16()
    variants = {
        "float32": linear,
        "Int8Linear (shipped)": int8_linear,
        "torchao int8 subclass": torchao_linear,
        "torch.ops.quantized int8": torch_dynamic_int8(linear),
        "bfloat16": lambda x: F.linear(x.bfloat16(), weight_bf16, bias_bf16).float(),
    }
    if compile_too:
        variants["Int8Linear, torch.compile"] = torch.compile(int8_linear, dynamic=False)
        variants["float32, torch.compile"] = torch.compile(linear, dynamic=False)
    return variants


def time_calls(fn, x, calls, best=False):
    """Median (``best``: minimum) seconds of one call over ``calls`` calls."""
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return min(times) if best else statistics.median(times)


def run_products(args):
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows_out = []
    with torch.no_grad():
        for name, rows, fan_in, fan_out in PRODUCTS:
            if args.rows and rows not in args.rows:
                continue
            linear = nn.Linear(fan_in, fan_out)
            variants = product_variants(linear, args.compile)
            x = torch.randn(rows, fan_in)
            for fn in variants.values():  # warm-up (and compilation), not timed
                for _ in range(3):
                    fn(x)
            medians, bests = {v: [] for v in variants}, {v: [] for v in variants}
            for _ in range(args.rounds):  # variants alternate within each round
                for v, fn in variants.items():
                    medians[v].append(time_calls(fn, x, args.calls))
                    bests[v].append(time_calls(fn, x, args.calls, best=True))
            ms = {v: 1000 * statistics.median(t) for v, t in medians.items()}
            best_ms = {v: 1000 * min(t) for v, t in bests.items()}
            rows_out.append(
                {
                    "product": name,
                    "shape": f"{rows} x {fan_in} @ {fan_in} x {fan_out}",
                    "median_ms": ms,
                    "best_ms": best_ms,
                }
            )
            print(
                f"{name:16s} {rows:4d} x {fan_in} @ {fan_in} x {fan_out:5d} median (best): "
                + ", ".join(f"{v} {ms[v]:.3f} ({best_ms[v]:.3f})" for v in ms),
                flush=True,
            )
        rows_selected = torch.randperm(8192)[:1600].sort().values
        rows_out.append(
            {"product": "select 1600 of 8192 rows of fc3 (per batch)", "ms": select_rows_ms(rows_selected, args)}
        )
        print(rows_out[-1], flush=True)
    return rows_out


def select_rows_ms(rows, args):
    """Per-batch cost of a shortlist's rows of fc3 (``vocabulary_rows``): float32 rows, int8 rows."""
    from fconv_plugin.serving.int8 import quantize_int8_, vocabulary_rows

    step = nn.Module()
    step.fc3 = nn.Linear(256, 8192)
    quantized = nn.Module()
    quantized.fc3 = nn.Linear(256, 8192)
    quantized.fc3.load_state_dict(step.fc3.state_dict())
    quantize_int8_(quantized)
    calls = {
        "float32 rows": lambda _: vocabulary_rows(step, rows),
        "int8 rows": lambda _: vocabulary_rows(quantized, rows),
    }
    return {
        v: 1000 * statistics.median(time_calls(fn, None, args.calls) for _ in range(args.rounds))
        for v, fn in calls.items()
    }


# ---------------------------------------------------------------- decoding


def beam_search(encoder, step, src_tokens, beam, eos, pad, max_len_a, max_len_b, candidates=None, int8_rows=True):
    """Best hypothesis (token list, EOS last) of each sentence of ``src_tokens`` (B x S, left-padded),
    decoded with ``step``.  ``candidates``: sorted target ids (a shortlist): only those rows of fc3 are
    scored, rows of an int8 fc3 as int8 (``int8_rows``) or dequantized to float32 here.  fairseq's rules
    (module docstring); no length penalty beyond dividing by the length."""
    from fconv_plugin.serving.int8 import vocabulary_rows

    keys, values, mask, scale = encoder(src_tokens)
    sentences = src_tokens.size(0)
    max_len = ((~mask).sum(1).float() * max_len_a + max_len_b).long()  # B: tokens allowed, EOS included
    vocabulary = {}
    if candidates is not None:
        vocabulary = vocabulary_rows(step, candidates)
        if "vocabulary_scale" in vocabulary and not int8_rows:  # int8 values x row scales, in float32
            scales = vocabulary.pop("vocabulary_scale")
            vocabulary["vocabulary_weight"] = vocabulary["vocabulary_weight"].float() * scales.unsqueeze(1)
        pad_column, eos_column = int((candidates == pad).nonzero()), int((candidates == eos).nonzero())
    else:
        pad_column, eos_column = pad, eos
    ids = torch.arange(sentences)  # the batch rows' sentence numbers
    tokens = torch.full((sentences, beam), eos, dtype=torch.long)  # B x K: fairseq starts from EOS
    windows = step.initial_windows(sentences, beam)
    scores = torch.zeros(sentences, beam)
    scores[:, 1:] = float("-inf")  # the first step expands one beam only
    history = torch.zeros(sentences, beam, 0, dtype=torch.long)  # B x K x t: columns of the output
    finished = [[] for _ in range(sentences)]  # per sentence: (score / length, columns)
    t = 0
    while ids.numel():
        lprobs, _, windows = step(tokens, torch.tensor([t + 1]), windows, keys, values, mask, scale, **vocabulary)
        lprobs[:, :, pad_column] = float("-inf")
        at_limit = max_len[ids] <= t + 1  # B: the next token must be EOS
        if at_limit.any():
            eos_only = torch.full_like(lprobs[0, 0], float("-inf"))
            eos_only[eos_column] = 0
            lprobs[at_limit] = lprobs[at_limit][:, :, eos_column : eos_column + 1] + eos_only
        width = lprobs.size(-1)
        total = (scores.unsqueeze(-1) + lprobs).view(ids.numel(), -1)  # B x K*V
        best, flat = total.topk(2 * beam, dim=1)  # B x 2K
        beams, columns = flat // width, flat % width
        ends = columns == eos_column
        for b, k in ends[:, :beam].nonzero().tolist():  # EOS among the best K: a finished hypothesis
            if len(finished[b]) < beam:
                path = history[b, beams[b, k]].tolist() + [eos_column]
                finished[b].append((best[b, k].item() / (t + 1), path))
        # the best K candidates that do not end: continue (EOS candidates sort last)
        order = (ends.long() * 2 * beam + torch.arange(2 * beam)).argsort(dim=1)[:, :beam]  # B x K
        keep_beams, keep_columns = beams.gather(1, order), columns.gather(1, order)
        scores = best.gather(1, order)
        history = torch.cat(
            [history.gather(1, keep_beams.unsqueeze(-1).expand(-1, -1, t)), keep_columns.unsqueeze(-1)], dim=2
        )
        windows = tuple(w.gather(1, keep_beams.view(*keep_beams.shape, 1, 1).expand_as(w)) for w in windows)
        tokens = keep_columns if candidates is None else candidates[keep_columns]
        t += 1
        done = [b for b in range(ids.numel()) if len(finished[b]) >= beam]
        if done:
            for b in done:  # the sentence's best finished hypothesis, as target ids
                _, path = max(finished[b], key=lambda f: f[0])
                yield int(ids[b]), (path if candidates is None else candidates[torch.tensor(path)].tolist())
            kept = [b for b in range(ids.numel()) if len(finished[b]) < beam]
            finished = [finished[b] for b in kept]
            kept = torch.tensor(kept, dtype=torch.long)
            ids, tokens, scores, history = ids[kept], tokens[kept], scores[kept], history[kept]
            windows = tuple(w[kept] for w in windows)
            keys, values, mask, scale = keys[kept], values[kept], mask[kept], scale[kept]


def step_variant(model, variant):
    """(encoder, step) for a step variant name."""
    from fconv_plugin.serving.int8 import quantize_int8_
    from fconv_plugin.serving.step import DecoderStep, SourceEncoder

    encoder, step = SourceEncoder(model), DecoderStep(model, need_attn=False)
    if variant.startswith("int8"):
        quantize_int8_(encoder)
        quantize_int8_(step, vocabulary="float32" if "_fc3float" in variant else "int8")
    if "_compiled" in variant or "_frozen" in variant:
        # _frozen: inductor's freezing treats the weights as constants (it may prepack them for its
        # own kernels).  The compiled modules keep the eager ones' attributes (initial_windows, fc3)
        options = {"freezing": True} if "_frozen" in variant else {}
        encoder = torch.compile(encoder, dynamic=True, fullgraph=True, options=options)
        step = torch.compile(step, dynamic=True, fullgraph=True, options=options)
    return encoder, step


def decode_steps(model, task, batches, variant, shortlist, beam, warm_batches=0):
    """id -> hypothesis tokens of the whole test set through the step; and the seconds it took (after
    an untimed pass over ``warm_batches`` evenly spaced batches: compilation)."""
    import bench_child

    encoder, step = step_variant(model, variant)
    d = task.target_dictionary

    def decode(batch):  # (row, hypothesis) of each sentence of the batch
        src = batch["net_input"]["src_tokens"]
        candidates = shortlist.candidates(src) if "_sl" in variant else None
        limits = (bench_child.MAX_LEN_A, bench_child.MAX_LEN_B)
        return beam_search(encoder, step, src, beam, d.eos(), d.pad(), *limits, candidates, "_sldq" not in variant)

    hyps = {}
    with torch.no_grad():
        for batch in batches[:: max(1, len(batches) // warm_batches)] if warm_batches else []:
            for _ in decode(batch):
                pass
    start = time.perf_counter()
    with torch.no_grad():
        for batch in batches:
            for row, tokens in decode(batch):
                hyps[int(batch["id"][row])] = tokens
    return hyps, time.perf_counter() - start


def decode_model(args, variant):
    """The model through fairseq's generator (bench_child's child_generate): hypotheses and seconds."""
    import bench_child

    overrides = {}
    if "int8" in variant:
        overrides["inference_dtype"] = "int8"
    if "_compiled" in variant:
        overrides["inference_compile"] = True
    if "_sl" in variant:
        overrides["shortlist"] = args.shortlist
    job = types.SimpleNamespace(
        checkpoint=args.checkpoint,
        data=args.data,
        dtype="float32",
        beam=args.beam,
        batch=args.batch,
        max_batches=args.max_batches,
        device="cpu",
        overrides=overrides or None,
        threads=args.threads,
        references=args.references,
    )
    result = bench_child.child_generate(job)
    return {int(i): h for i, h in result["hyps"].items()}, result["seconds"]


def run_decode(args):
    import bench_child
    from fconv_plugin.serving.shortlist import Shortlist

    torch.set_num_threads(args.threads)
    job = types.SimpleNamespace(
        checkpoint=args.checkpoint,
        data=args.data,
        dtype="float32",
        beam=args.beam,
        batch=args.batch,
        max_batches=args.max_batches,
        device="cpu",
    )
    models, task, _, batches = bench_child.prepare_ensemble_decoding(job)
    model = models[0]
    shortlist = None
    if any("_sl" in v for v in args.variants):
        shortlist = Shortlist.load(args.shortlist, task.source_dictionary, task.target_dictionary)
    seconds = {v: [] for v in args.variants}
    hyps = {}
    report = None
    for r in range(args.rounds):
        for v in args.variants:  # alternate: every variant once per round
            if v in MODEL_VARIANTS:
                hyps[v], s = decode_model(args, v)
            else:
                warm = args.warm_batches if ("_compiled" in v or "_frozen" in v) else 0
                hyps[v], s = decode_steps(model, task, batches, v, shortlist, args.beam, warm)
            seconds[v].append(s)
            print(f"round {r}: {v} {s:.2f} s", flush=True)
        report = summary(args, task, seconds, hyps)  # after every round: a run cut short still reports
        if args.out:
            write(args.out, report)
    return report


def summary(args, task, seconds, hyps):
    """Per variant: seconds (each round, median), BLEU, identical shares, speed ratio over float32."""
    import bench_child

    report = {
        "command": " ".join(sys.argv),
        "machine": machine(threads=args.threads),
        "threads": args.threads,
        "beam": args.beam,
        "batch": args.batch,
        "rounds_done": len(seconds[args.variants[0]]),
        "sentences": len(hyps["float32"]),
        "variants": {},
    }
    for v in args.variants:
        entry = {
            "seconds": seconds[v],
            "median_s": statistics.median(seconds[v]),
            "detok_bleu": bench_child.detokenized_bleu(task, hyps[v], args.references),
            "bleu": bench_child.tokenized_bleu(task, hyps[v]),
            "speedup_over_float32": statistics.median(seconds["float32"]) / statistics.median(seconds[v]),
        }
        for reference in ("float32", "model"):
            if reference in hyps:
                same = sum(hyps[v][i] == hyps[reference][i] for i in hyps[reference])
                entry[f"identical_to_{reference}"] = same / len(hyps[reference])
        report["variants"][v] = entry
        print(v, json.dumps(entry), flush=True)
    return report


def write(path, result):
    with open(path, "w") as f:
        json.dump({"machine": machine(), "command": " ".join(sys.argv), "results": result}, f, indent=1)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    pp = sub.add_parser("products")
    pp.add_argument("--threads", type=int, default=1)
    pp.add_argument("--rounds", type=int, default=5)
    pp.add_argument("--calls", type=int, default=50)
    pp.add_argument("--compile", action="store_true", help="also torch.compile'd float32 and Int8Linear")
    pp.add_argument("--rows", type=int, nargs="+", help="only the products with these numbers of rows (5, 64, 320)")
    pd = sub.add_parser("decode")
    pd.add_argument("--checkpoint", required=True, help="an fconv_ext checkpoint (fconv-ext-convert's output)")
    pd.add_argument("--data", required=True)
    pd.add_argument("--shortlist", help="fconv-ext-shortlist's file, for the _sl variants")
    pd.add_argument(
        "--references", default=os.path.join(HERE, "..", "..", "shared", "data", "gettext-en-de", "test.de")
    )
    pd.add_argument("--variants", nargs="+", default=list(STEP_VARIANTS), choices=STEP_VARIANTS + MODEL_VARIANTS)
    pd.add_argument("--rounds", type=int, default=3)
    pd.add_argument("--threads", type=int, default=2)
    pd.add_argument("--beam", type=int, default=5)
    pd.add_argument("--batch", type=int, default=64)
    pd.add_argument("--max-batches", type=int, default=0, help="evenly spaced batches only (0: the whole test set)")
    pd.add_argument("--warm-batches", type=int, default=4, help="batches of the untimed first pass of _compiled")
    for q in (pp, pd):
        q.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args()
    if args.command == "decode" and any("_sl" in v for v in args.variants) and not args.shortlist:
        p.error("the _sl variants need --shortlist")
    if args.command == "decode" and "float32" not in args.variants:
        args.variants.insert(0, "float32")  # the reference of every ratio and identical share
    result = run_products(args) if args.command == "products" else run_decode(args)
    if args.out:
        write(args.out, result)


if __name__ == "__main__":
    main()
