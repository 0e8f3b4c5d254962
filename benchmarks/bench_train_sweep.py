"""How training cost grows with the vocabulary and the batch: fairseq's ``fconv``
(label_smoothed_cross_entropy) vs ``fconv_ext`` (the same criterion) vs ``fconv_ext`` with
``fused_label_smoothed_cross_entropy``, at the ``iwslt_de_en`` dimensions.

Every measurement is one child process (one side, one vocabulary, one batch size), so that its
peak memory (``ru_maxrss``) is its own; the sides alternate within each repetition and their
order rotates between repetitions.  A child builds the model at random initialisation, makes
``--steps`` + 1 batches (the first one is a warm-up), and times forward + backward + gradient
clipping + a NAG-like SGD step with 2 threads.  Batches: random token ids with the sentence
lengths of ``../shared/data/gettext-en-de/train.{en,de}`` (words + EOS; no BPE), cut as
fairseq cuts them (sorted by length, sentences x longest side <= max tokens); every side sees
the same batches.  Reported per configuration: target words/s (median over repetitions of each
child's total), peak RSS and the training's own peak (peak RSS minus the RSS after importing
torch and fairseq, which is the same for all sides), and the ratios to fconv.

    .venv/bin/python benchmarks/bench_train_sweep.py --vocab 8000 32000 --tokens 2000 4000 \\
        --reps 2 --out benchmarks/results/train_sweep
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
GETTEXT = os.path.join(REPO, "..", "shared", "data", "gettext-en-de")
sys.path.insert(0, HERE)

from bench_common import machine, machine_line, numbered_dictionary

SIDES = ("fconv", "fconv_ext", "fconv_ext_fused")


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def sentence_lengths():
    """(source, target) lengths in tokens (words + EOS) of the gettext training corpus, or a
    fixed synthetic distribution where the corpus is not beside the repository."""
    src, tgt = os.path.join(GETTEXT, "train.en"), os.path.join(GETTEXT, "train.de")
    if os.path.isfile(src) and os.path.isfile(tgt):
        with open(src) as fs, open(tgt) as ft:
            return [(min(len(a.split()), 200) + 1, min(len(b.split()), 200) + 1) for a, b in zip(fs, ft)], "gettext"
    import random

    rng = random.Random(0)
    return [(rng.randint(2, 40), rng.randint(2, 40)) for _ in range(40000)], "synthetic"


def make_batches(vocab: int, max_tokens: int, count: int, seed: int = 0):
    """``count`` batches of random tokens shaped like fairseq's batches of the corpus."""
    import torch

    lengths, _ = sentence_lengths()
    lengths.sort(key=lambda st: (st[0], st[1]))
    g = torch.Generator().manual_seed(seed)
    pad, eos = 1, 2
    batches = []
    for _ in range(count):
        start = int(torch.randint(0, len(lengths) - 1, (1,), generator=g))
        rows = []
        while start + len(rows) < len(lengths):
            cand = rows + [lengths[start + len(rows)]]
            if len(cand) * max(max(s, t) for s, t in cand) > max_tokens:
                break
            rows = cand
        S, T = max(s for s, _ in rows), max(t for _, t in rows)
        src = torch.full((len(rows), S), pad)
        tgt = torch.full((len(rows), T), pad)
        prev = torch.full((len(rows), T), pad)
        for i, (s, t) in enumerate(rows):
            src[i, S - s :] = torch.randint(4, vocab, (s,), generator=g)  # left-padded source
            src[i, -1] = eos
            words = torch.randint(4, vocab, (t,), generator=g)
            words[-1] = eos
            tgt[i, :t] = words
            prev[i, 0] = eos
            prev[i, 1:t] = words[:-1]
        batches.append(
            {
                "net_input": {"src_tokens": src, "src_lengths": src.ne(pad).sum(1), "prev_output_tokens": prev},
                "target": tgt,
                "ntokens": int(tgt.ne(pad).sum()),
                "nsentences": len(rows),
            }
        )
    return batches


def child(side: str, vocab: int, max_tokens: int, steps: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion
    from fairseq.models import ARCH_CONFIG_REGISTRY
    from fairseq.models.fconv import FConvModel

    sys.path.insert(0, REPO)
    from fconv_plugin.criterions import FusedLabelSmoothedCrossEntropyCriterion
    from fconv_plugin.models import build_model_from_config
    from fconv_plugin.models.architectures import PRESETS

    rss_imports = rss_mib()
    d = numbered_dictionary(vocab)
    task = argparse.Namespace(source_dictionary=d, target_dictionary=d)
    torch.manual_seed(1)
    if side == "fconv":
        args = argparse.Namespace(arch="fconv_iwslt_de_en", max_source_positions=1024, max_target_positions=1024)
        ARCH_CONFIG_REGISTRY["fconv_iwslt_de_en"](args)
        model = FConvModel.build_model(args, task)
    else:
        model = build_model_from_config(
            {
                "_name": "fconv_ext",
                **PRESETS["fconv_ext_iwslt_de_en"].values,
                "max_source_positions": 1024,
                "max_target_positions": 1024,
            },
            d,
            d,
        )
    crit_class = (
        FusedLabelSmoothedCrossEntropyCriterion if side == "fconv_ext_fused" else LabelSmoothedCrossEntropyCriterion
    )
    crit = crit_class(task, False, 0.1)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.25, momentum=0.99, nesterov=True)
    batches = make_batches(vocab, max_tokens, steps + 1)
    rss_setup = rss_mib()
    times, words, losses = [], 0, []
    for i, sample in enumerate(batches):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss, _, log = crit(model, sample)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        opt.step()
        dt = time.perf_counter() - t0
        losses.append(float(log["loss"]) / sample["ntokens"])
        if i > 0:  # the first batch warms up allocators and caches
            times.append(dt)
            words += sample["ntokens"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB (Linux)
    return {
        "side": side,
        "vocab": vocab,
        "max_tokens": max_tokens,
        "seconds": sum(times),
        "words": words,
        "wps": words / sum(times),
        "peak_mib": peak,
        "rss_imports_mib": rss_imports,
        "rss_setup_mib": rss_setup,
        "train_peak_mib": peak - rss_imports,
        "first_loss": losses[0],
    }


def loss_only(vocab: int, rows: int, hidden: int, reps: int, threads: int, chunk_rows=()) -> str:
    """The part the fused criterion changes, alone, in one process, alternating: fc3 + log-softmax +
    smoothed NLL, forward and backward, on ``rows`` target tokens (10 of them padding per 300):
    fairseq's way and fused (label smoothing 0.1); where torch has ``F.linear_cross_entropy`` also
    its chunked path against fused without smoothing (its chunked path refuses smoothing); and
    fused with each of ``chunk_rows`` rows per chunk (the default is the criterion's choice)."""
    import torch
    import torch.nn.functional as F
    from fairseq.criterions.label_smoothed_cross_entropy import label_smoothed_nll_loss

    sys.path.insert(0, REPO)
    from fconv_plugin.criterions.fused_label_smoothed_cross_entropy import ChunkBuffer, fused_linear_label_smoothed_nll

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    x = torch.randn(rows, hidden, requires_grad=True)
    w = (torch.randn(vocab, hidden) * hidden**-0.5).requires_grad_(True)
    b = torch.zeros(vocab, requires_grad=True)
    t = torch.randint(4, vocab, (rows,))
    t[::30] = 1  # padding
    buffer = ChunkBuffer()  # as the criterion keeps one

    def fairseq_path():
        lprobs = torch.log_softmax(F.linear(x, w, b).float(), dim=-1)
        return label_smoothed_nll_loss(lprobs, t, 0.1, ignore_index=1)[0]

    def fused_path(eps=0.1, chunk=None):
        return fused_linear_label_smoothed_nll(x, w, b, t, eps, 1, chunk, count_correct=False, buffer=buffer)[0]

    paths = {"fairseq": fairseq_path, "fused": fused_path}
    for n in chunk_rows:
        paths[f"fused, {n} rows per chunk"] = lambda n=n: fused_path(chunk=n)
    if hasattr(F, "linear_cross_entropy"):  # torch >= 2.13
        from torch.nn.modules.linear_cross_entropy_options import LinearCrossEntropyOptions

        paths["torch_chunked_eps0"] = lambda: F.linear_cross_entropy(
            x, w, t, linear_bias=b, reduction="sum", ignore_index=1, options=LinearCrossEntropyOptions()
        )
        paths["fused_eps0"] = lambda: fused_path(0.0)
    times = {name: [] for name in paths}
    for rep in range(reps + 1):
        for name, f in list(paths.items())[:: 1 if rep % 2 else -1]:
            x.grad = w.grad = b.grad = None
            t0 = time.perf_counter()
            f().backward()
            if rep > 0:  # the first round warms up
                times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(v) for name, v in times.items()}
    text = (
        f"loss only, V={vocab}, {rows} tokens, H={hidden}, {threads} threads, median of {reps} alternating: "
        f"fairseq {med['fairseq']:.3f} s, fused {med['fused']:.3f} s: {med['fairseq'] / med['fused']:.2f}x"
    )
    for name in med:
        if name.startswith("fused, "):
            text += f"; {name} {med[name]:.3f} s"
    if "fused_eps0" in med:
        text += (
            f"; without smoothing: torch's chunked linear_cross_entropy {med['torch_chunked_eps0']:.3f} s, "
            f"fused {med['fused_eps0']:.3f} s"
        )
    return text


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vocab", type=int, nargs="+", default=[8000, 32000])
    p.add_argument("--tokens", type=int, nargs="+", default=[2000, 4000], help="--max-tokens of a batch")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--steps", type=int, default=3, help="timed updates per child (after one warm-up update)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sides", nargs="+", default=list(SIDES), choices=SIDES)
    p.add_argument("--out", default=None, help="write OUT.json and OUT.md")
    p.add_argument(
        "--loss-only",
        action="store_true",
        help="time only fc3 + loss (forward + backward), fairseq's way vs fused, for each --vocab at "
        "the largest --tokens, --reps rounds alternating, in this process",
    )
    p.add_argument(
        "--chunk-rows",
        type=int,
        nargs="*",
        default=[],
        help="with --loss-only: also time the fused path with these rows per chunk",
    )
    p.add_argument("--child", nargs=3, metavar=("SIDE", "VOCAB", "TOKENS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        side, vocab, tokens = args.child
        print(json.dumps(child(side, int(vocab), int(tokens), args.steps, args.threads)))
        return

    if args.loss_only:
        print(machine_line(machine(threads=args.threads)))
        for vocab in args.vocab:
            print(loss_only(vocab, max(args.tokens), 256, args.reps, args.threads, args.chunk_rows), flush=True)
        return
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    header = machine(threads=args.threads)
    header["load_average_start"] = os.getloadavg()[0]
    runs = []
    for rep in range(args.reps):
        for vocab in args.vocab:
            for tokens in args.tokens:
                order = args.sides[rep % len(args.sides) :] + args.sides[: rep % len(args.sides)]
                for side in order:
                    cmd = [
                        sys.executable,
                        os.path.abspath(__file__),
                        "--child",
                        side,
                        str(vocab),
                        str(tokens),
                        "--steps",
                        str(args.steps),
                        "--threads",
                        str(args.threads),
                    ]
                    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
                    if out.returncode != 0:
                        raise SystemExit(f"child {side} {vocab} {tokens} failed:\n{out.stderr[-3000:]}")
                    result = json.loads(out.stdout.strip().splitlines()[-1])
                    result["rep"] = rep
                    runs.append(result)
                    print(
                        f"rep {rep} V={vocab} tokens={tokens} {side:16s} {result['wps']:8.0f} w/s  "
                        f"peak {result['peak_mib']:7.0f} MiB (training {result['train_peak_mib']:6.0f})  "
                        f"first loss {result['first_loss']:.6f}",
                        flush=True,
                    )
    table = summarize(runs, args)
    text = report(header, args, table, os.getloadavg()[0])
    print(text)
    if args.out:
        with open(args.out + ".json", "w") as f:
            json.dump({"machine": header, "args": vars(args), "runs": runs}, f, indent=1)
        with open(args.out + ".md", "w") as f:
            f.write(text)


def summarize(runs, args):
    rows = []
    for vocab in args.vocab:
        for tokens in args.tokens:
            cell = {}
            for side in args.sides:
                mine = [r for r in runs if r["side"] == side and r["vocab"] == vocab and r["max_tokens"] == tokens]
                cell[side] = {
                    "wps": statistics.median(r["wps"] for r in mine),
                    "wps_all": [round(r["wps"]) for r in mine],
                    "peak": statistics.median(r["peak_mib"] for r in mine),
                    "train_peak": statistics.median(r["train_peak_mib"] for r in mine),
                    "first_loss": mine[0]["first_loss"],
                }
            rows.append((vocab, tokens, cell))
    return rows


def report(header, args, table, load_end) -> str:
    lines = [
        f"Command: `{' '.join([os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:])}`",
        "",
        machine_line(header) + f" Load average {header['load_average_start']:.2f} at the start, "
        f"{load_end:.2f} at the end.",
        f"{args.threads} threads, {args.reps} repetitions x {args.steps} timed updates per side and "
        f"configuration (one child process each, sides alternating); batches: {sentence_lengths()[1]} "
        "sentence lengths, random tokens, random initialisation.",
        "",
        "| vocab | max tokens | side | words/s (median; each rep) | x fconv | peak RSS MiB | x fconv "
        "| training peak MiB | x fconv | first-batch loss/token |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for vocab, tokens, cell in table:
        base = cell.get("fconv")
        for side, c in cell.items():
            ratio = (lambda key: f"{c[key] / base[key]:.2f}x") if base else (lambda key: "")
            lines.append(
                f"| {vocab} | {tokens} | {side} | {c['wps']:.0f} ({', '.join(map(str, c['wps_all']))}) | "
                f"{ratio('wps')} | {c['peak']:.0f} | {ratio('peak')} | {c['train_peak']:.0f} | "
                f"{ratio('train_peak')} | {c['first_loss']:.6f} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
