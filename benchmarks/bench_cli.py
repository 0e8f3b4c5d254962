"""fconv_ext vs fairseq's fconv as users run them: ``fairseq-generate``'s own timer, native and with the
kernels limited to AVX2 (an AVX2-only CPU, emulated on an AVX-512 one).

    python benchmarks/bench_cli.py --data /tmp/gt/bin --fconv-checkpoint CK.pt [--reps 3] [--threads 2]
        [--emulations native avx2] [--configs beam5_batch64 beam1_batch64] [--out benchmarks/results/cli]

The fconv checkpoint is converted to fconv_ext here (fconv-ext-convert's code).  For every emulation and
configuration, ``fairseq-generate DATA --user-dir fconv_plugin --path CK --gen-subset test --beam B
--max-sentences 64 --remove-bpe --quiet`` runs for fconv and for fconv_ext, alternating, ``--reps`` times,
each in a fresh process with ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` = ``--threads`` and fairseq-generate's
defaults otherwise (max_len_a 0, max_len_b 200: as users run it).  Reported per run: the seconds of
fairseq-generate's ``Translated N sentences (M tokens) in Xs (Y sentences/s, ...)`` line (N / Y: more
digits than X; its timer covers ``task.inference_step`` only), the process's wall time (start-up,
loading, data, scoring included) and the ``BLEU4`` line (equal lines on both sides: the same hypotheses,
as far as fairseq's scorer sees them).  Medians and ratios go to ``OUT.json`` / ``OUT.md`` with the
machine's description (``bench_common.machine``: the CPU model and its flags of interest).

Emulations (environment of both sides):

* ``native``: nothing set;
* ``avx2``: ``MKL_ENABLE_INSTRUCTIONS=AVX2`` (MKL's BLAS: the ``addmm`` / ``mm`` products),
  ``ONEDNN_MAX_CPU_ISA=AVX2`` (oneDNN: convolutions, int8 and bf16 kernels) and ``ATEN_CPU_CAPABILITY=avx2``
  (torch's own vectorized kernels: softmax, elementwise, reductions, topk) -- the last one is not in the
  usual recipe, but an AVX2-only CPU has it too.

Before measuring, each emulation is verified in a child process: torch's CPU capability, the ISA oneDNN
and MKL say they dispatch to (``ONEDNN_VERBOSE=1`` / ``MKL_VERBOSE=1`` on one convolution and one
product) and the fp32 rate of a 320 x 256 x V product (the vocabulary projection at beam 5 batch 64).
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from bench_common import machine, machine_line, results_path
from bench_inputs import convert_to, data_languages, fairseq_cli

CONFIGS = {"beam5_batch64": (5, 64), "beam1_batch64": (1, 64), "beam5_batch1": (5, 1)}
EMULATIONS = {
    "native": {},
    "avx2": {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
}
TRANSLATED = re.compile(r"Translated ([\d,]+) sentences \(([\d,]+) tokens\) in ([\d.]+)s \(([\d.]+) sentences/s")
BLEU_LINE = re.compile(r"Generate \S+ with beam=\d+: (BLEU4 = .*)")

# run in a child with the emulation's environment: what the kernels dispatch to, and a product's rate
VERIFY = r"""
import json, os, sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
V = int(sys.argv[2])
x, w = torch.randn(320, 256), torch.randn(256, V)
torch.mm(x, w)
reps, start = 0, time.perf_counter()
while time.perf_counter() - start < 1.0:
    torch.mm(x, w); reps += 1
rate = 2 * 320 * 256 * V * reps / (time.perf_counter() - start) / 1e9
print(json.dumps({"torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "mm_gflops": rate}))
sys.stdout.flush()
os.environ["ONEDNN_VERBOSE"] = "1"
torch.nn.functional.conv1d(torch.randn(8, 64, 100), torch.randn(64, 64, 3))
"""


def parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="binarized data directory with a test split")
    p.add_argument("--fconv-checkpoint", required=True, help="a trained fairseq fconv checkpoint")
    p.add_argument("--fconv-ext-checkpoint", help="its fconv_ext conversion (default: converted here)")
    p.add_argument("--reps", type=int, default=3, help="runs per side, configuration and emulation (median reported)")
    p.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS / MKL_NUM_THREADS of every run")
    p.add_argument(
        "--emulations",
        nargs="+",
        choices=list(EMULATIONS),
        default=list(EMULATIONS),
        help="instruction-set environments measured (native: none; avx2: AVX2-only emulation)",
    )
    p.add_argument(
        "--configs",
        nargs="+",
        choices=list(CONFIGS),
        default=["beam5_batch64", "beam1_batch64"],
        help="beam / batch configurations",
    )
    p.add_argument(
        "--extra",
        default="",
        help="more fairseq-generate options for both sides, one string "
        "(e.g. '--max-len-a 1.2 --max-len-b 10' to cap lengths as bench.py)",
    )
    p.add_argument("--out", default=results_path("cli"), help="output prefix (.json and .md)")
    return p


def environment(emulation, threads):
    return dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), **EMULATIONS[emulation])


def verify(emulation, threads, vocab):
    """What the kernels dispatch to under ``emulation`` (see VERIFY) and the product's rate."""
    env = environment(emulation, threads)
    env["MKL_VERBOSE"] = "1"
    proc = subprocess.run(
        [sys.executable, "-c", VERIFY, str(threads), str(vocab)], env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(f"verifying emulation {emulation} failed:\n{proc.stderr[-2000:]}")
    result = next(json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{"))
    onednn = [line for line in proc.stdout.splitlines() if "isa:" in line]
    mkl = [
        line
        for line in proc.stdout.splitlines()
        if line.startswith("MKL_VERBOSE") and ("Intel" in line or "oneMKL" in line)
    ]
    result["onednn_isa"] = onednn[0].split("isa:", 1)[1].split(",")[0].strip() if onednn else None
    result["mkl_version_line"] = mkl[0][:300] if mkl else None
    return result


def generate(checkpoint, data, beam, batch, emulation, threads, extra):
    """One fairseq-generate run: its timer's seconds, the sentences, tokens, BLEU line and wall time."""
    cmd = [
        *fairseq_cli("fairseq-generate"),
        data,
        "--user-dir",
        os.path.join(REPO, "fconv_plugin"),
        "--path",
        checkpoint,
        "--gen-subset",
        "test",
        "--beam",
        str(beam),
        "--max-sentences",
        str(batch),
        "--remove-bpe",
        "--quiet",
        *extra.split(),
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=environment(emulation, threads), capture_output=True, text=True)
    wall = time.perf_counter() - start
    text = proc.stdout + proc.stderr
    found = TRANSLATED.search(text)
    if proc.returncode != 0 or not found:
        raise SystemExit(f"fairseq-generate failed or printed no 'Translated' line: {' '.join(cmd)}\n{text[-3000:]}")
    sentences, tokens = int(found.group(1).replace(",", "")), int(found.group(2).replace(",", ""))
    bleu = BLEU_LINE.search(text)
    return {
        "seconds": sentences / float(found.group(4)),
        "timer_line_seconds": float(found.group(3)),
        "sentences": sentences,
        "tokens": tokens,
        "wall_seconds": wall,
        "bleu_line": bleu.group(1) if bleu else None,
    }


def summarize(runs):
    """Medians of each side's runs and the fconv_ext / fconv ratio of the timer and of the wall time."""
    entry = {}
    for side, rs in runs.items():
        entry[side] = {
            "seconds": statistics.median(r["seconds"] for r in rs),
            "wall_seconds": statistics.median(r["wall_seconds"] for r in rs),
            "all_seconds": [round(r["seconds"], 2) for r in rs],
            "sentences": rs[0]["sentences"],
            "tokens": rs[0]["tokens"],
            "bleu_line": rs[0]["bleu_line"],
            "same_bleu_line_every_rep": len({r["bleu_line"] for r in rs}) == 1,
        }
    entry["ratio"] = entry["fconv"]["seconds"] / entry["fconv_ext"]["seconds"]
    entry["wall_ratio"] = entry["fconv"]["wall_seconds"] / entry["fconv_ext"]["wall_seconds"]
    entry["same_bleu_line"] = entry["fconv"]["bleu_line"] == entry["fconv_ext"]["bleu_line"]
    return entry


TARGETS = {"beam5_batch64": 1.5, "beam1_batch64": 1.3}  # the targets for the AVX2-only CPU


def markdown(r):
    lines = [
        f"fairseq-generate's own timer, {r['date']}, {r['threads']} threads, median of {r['reps']}, "
        "alternating fconv / fconv_ext, fresh process per run.",
        f"Command: `{r['command']}`",
        "",
        machine_line(r["machine"]),
        "",
        "Emulations verified (a child with the emulation's environment):",
        "",
        "| emulation | environment | torch CPU capability | oneDNN ISA | fp32 mm 320x256xV GFLOP/s |",
        "|---|---|---|---|---|",
    ]
    for name, v in r["verification"].items():
        env = " ".join(f"{k}={val}" for k, val in EMULATIONS[name].items()) or "-"
        lines.append(f"| {name} | {env} | {v['torch_cpu_capability']} | {v['onednn_isa']} | {v['mm_gflops']:.0f} |")
    lines += [
        "",
        "| emulation | config | fconv s | fconv_ext s | ratio | target | fconv runs | fconv_ext runs | "
        "wall s (fconv / ext) | same BLEU line |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, configs in r["results"].items():
        for config, e in configs.items():
            a, b = e["fconv"], e["fconv_ext"]
            target = f">= {TARGETS[config]}x" if name == "avx2" and config in TARGETS else "-"
            lines.append(
                f"| {name} | {config} | {a['seconds']:.2f} | {b['seconds']:.2f} | **{e['ratio']:.2f}x** | {target} | "
                f"{a['all_seconds']} | {b['all_seconds']} | {a['wall_seconds']:.1f} / {b['wall_seconds']:.1f} | "
                f"{e['same_bleu_line']} |"
            )
    first = next(iter(next(iter(r["results"].values())).values()), None)
    if first:
        lines += ["", f"BLEU lines (fconv): {first['fconv']['bleu_line']}"]
    return "\n".join(lines) + "\n"


def main():
    args = parser().parse_args()
    work = tempfile.mkdtemp(prefix="fconv-bench-cli-")
    ext = args.fconv_ext_checkpoint or convert_to(args.fconv_checkpoint, os.path.join(work, "fconv_ext.pt"))
    with open(os.path.join(args.data, f"dict.{data_languages(args.data)[1]}.txt"), encoding="utf-8") as f:
        vocab = sum(1 for _ in f) + 4  # fairseq's 4 specials precede the file's entries
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join(sys.argv),
        "threads": args.threads,
        "reps": args.reps,
        "machine": machine(threads=args.threads),
        "verification": {},
        "results": {},
    }
    for name in args.emulations:
        report["verification"][name] = verify(name, args.threads, vocab)
        print(f"{name}: {report['verification'][name]}", flush=True)
    sides = {"fconv": args.fconv_checkpoint, "fconv_ext": ext}
    for name in args.emulations:
        report["results"][name] = {}
        for config in args.configs:
            beam, batch = CONFIGS[config]
            runs = {side: [] for side in sides}
            for rep in range(args.reps):
                for side in list(sides) if rep % 2 == 0 else list(sides)[::-1]:
                    runs[side].append(generate(sides[side], args.data, beam, batch, name, args.threads, args.extra))
            report["results"][name][config] = e = summarize(runs)
            print(
                f"{name} {config}: fconv {e['fconv']['seconds']:.2f} s, fconv_ext {e['fconv_ext']['seconds']:.2f} s, "
                f"{e['ratio']:.2f}x (wall {e['wall_ratio']:.2f}x), same BLEU line {e['same_bleu_line']}",
                flush=True,
            )
            with open(args.out + ".json", "w") as f:
                json.dump(report, f, indent=1)
    with open(args.out + ".md", "w") as f:
        f.write(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
