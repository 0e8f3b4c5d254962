"""Exported models (fconv-ext-export + fconv_runtime) next to fconv_ext in eager PyTorch.

    python benchmarks/bench_export.py --checkpoint CK.pt --data /tmp/gt/bin --codes /tmp/gt/tok/codes \\
        --threads 2 --out benchmarks/results/export

Sides, on the same model, the same raw test sentences and the same text pipeline (sacremoses with
escaping, the subword-nmt codes, fconv_runtime's length-sorted batches):

* ``eager``: the model in PyTorch, decoded by ``FConvBeamSearch`` (fairseq-generate's generator for
  fconv_ext) on the batches fconv_runtime builds;
* ``onnx``: ``fconv-ext-export --format onnx`` run by onnxruntime through ``fconv_runtime.Translator``;
* ``onnx_int8``: the same with ``--int8`` (onnxruntime's dynamic per-channel int8);
* ``aoti``: ``fconv-ext-export --format aoti`` (AOTInductor) through the same Translator;
* ``aoti_int8`` (not run by default): ``--format aoti --int8`` (the package's int8);
* ``compiled``, ``compiled_int8`` (not run by default): ``eager`` with the model options
  ``inference_compile`` (and ``inference_dtype`` int8): the step compiled by torch.compile in the child
  process, its compilation inside the time to first translation.  ``--inductor-cache DIR`` gives the
  children that inductor cache directory: a fresh one measures a cold compilation, the same one again a
  warm one.

Configurations: beam 5 batch 64, beam 1 batch 64, beam 5 batch 1 (``--configs``).  Each measurement
runs in a fresh child process (``--child JOB``) with ``OMP_NUM_THREADS`` = the threads, and reports:
sentences/s over the timed translation of the whole set; time to first translation (process start,
imports and model loading included, to the first sentence translated); peak RSS of the process; detok
BLEU (sacrebleu) against the raw references; % of hypotheses identical to eager's.  fairseq-generate's
length limits (max_len_a 0, max_len_b 200) and no length penalty, as fconv-ext-translate's defaults.

Results: ``OUT.json`` and ``OUT.md`` with the command, the machine (``bench_common.machine``), the date and
``--note`` (what else ran on the machine, say).  The machine may be shared: absolute numbers drift with the
load; the sides alternate within each config.
"""

import importlib
import argparse
import json
import os
import resource
import subprocess
import sys
import time

START = time.time()
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
if REPO not in sys.path:
    sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

from bench_common import machine, machine_line, results_path

SIDES = ("eager", "onnx", "onnx_int8", "aoti", "aoti_int8", "compiled", "compiled_int8")
DEFAULT_SIDES = ("eager", "onnx", "onnx_int8", "aoti")
CONFIGS = ("5x64", "1x64", "5x1")  # beam x batch


# ----------------------------------------------------------------------------------------- child


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes


def _eager_translate(job, translator_text):
    """A function lines -> texts decoding with fconv_ext in PyTorch (FConvBeamSearch) on fconv_runtime's
    batches and text pipeline (``translator_text``: a Translator used only for encode/decode)."""
    import numpy as np
    import torch

    importlib.import_module("fconv_plugin")  # registers fconv_ext, makes fairseq's build_generator pick FConvBeamSearch
    from fconv_plugin.serving.beam_search import FConvBeamSearch
    from fconv_plugin.serving.export import load_model

    torch.set_num_threads(job["threads"])
    model, _, _, _ = load_model(job["checkpoint"], job["data"])
    # the model options inference_compile / inference_dtype, as --model-overrides would set them
    model.inference_compile = job["side"].startswith("compiled")
    if job["side"].endswith("int8"):
        model.inference_dtype = torch.qint8
    model.make_generation_fast_(beamable_mm_beam_size=None, need_attn=False)
    tgt_dict = model.decoder.dictionary
    generator = FConvBeamSearch([model], tgt_dict, beam_size=job["beam"])

    def translate(lines):
        encoded = {i: translator_text.encode(line) for i, line in enumerate(lines) if line.strip()}
        order = sorted(encoded, key=lambda i: len(encoded[i]))
        out = [""] * len(lines)
        for start in range(0, len(order), job["batch"]):
            batch = order[start : start + job["batch"]]
            width = max(len(encoded[i]) for i in batch)
            src = np.full((len(batch), width), 1, dtype=np.int64)  # B x S, left-padded
            for row, i in enumerate(batch):
                src[row, width - len(encoded[i]) :] = encoded[i]
            src = torch.from_numpy(src)
            sample = {"net_input": {"src_tokens": src, "src_lengths": src.ne(1).sum(1)}}
            with torch.inference_mode():
                hyps = generator.generate([model], sample)
            for i, h in zip(batch, hyps):
                out[i] = translator_text.decode(h[0]["tokens"][:-1].tolist())
        return out

    return translate


def child(job_path: str) -> None:
    with open(job_path, encoding="utf-8") as f:
        job = json.load(f)
    with open(job["source"], encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f][: job["limit"] or None]
    from fconv_runtime import Translator

    side = job["side"]
    if side in ("eager", "compiled", "compiled_int8"):
        # an onnx export supplies the text pipeline (the same code as the other sides); its sessions are unused
        text = Translator(job["exports"]["onnx"], threads=job["threads"])
        translate = _eager_translate(job, text)
    else:
        translator = Translator(job["exports"][side], threads=job["threads"])

        def translate(batch_lines):
            return translator.translate(batch_lines, beam=job["beam"], batch_size=job["batch"])

    translate(lines[:1])
    first = time.time() - START
    started = time.time()
    hypotheses = translate(lines)
    seconds = time.time() - started
    with open(job["out"], "w", encoding="utf-8") as f:
        json.dump(
            {
                "side": side,
                "seconds": seconds,
                "sentences": len(lines),
                "first_translation_s": first,
                "peak_rss_mb": _peak_rss_mb(),
                "hypotheses": hypotheses,
            },
            f,
        )


# ----------------------------------------------------------------------------------------- parent


def export_all(args, work: str) -> dict:
    """OUTDIR of each exported side (exported once, reused when ``--reuse``), and the export times."""
    exports, times = {}, {}
    variants = {
        "onnx": ["--format", "onnx"],
        "onnx_int8": ["--format", "onnx", "--int8"],
        "aoti": ["--format", "aoti"],
        "aoti_int8": ["--format", "aoti", "--int8"],
    }
    for side, options in variants.items():
        text_only = side == "onnx" and {"eager", "compiled", "compiled_int8"} & set(args.sides)
        if side not in args.sides and not text_only:
            continue
        out = os.path.join(work, side)
        exports[side] = out
        if args.reuse and os.path.isfile(os.path.join(out, "manifest.json")):
            continue
        started = time.time()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "fconv_plugin.serving.export",
                args.checkpoint,
                out,
                *options,
                "--data",
                args.data,
                "--bpe-codes",
                args.codes,
                "--tokenizer",
                "moses",
                "--force",
            ],
            check=True,
            cwd=REPO,
            env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)),
        )
        times[side] = time.time() - started
    return {"dirs": exports, "seconds": times}


def run_child(args, work: str, exports: dict, side: str, beam: int, batch: int, limit: int) -> dict:
    job = {
        "side": side,
        "beam": beam,
        "batch": batch,
        "threads": args.threads,
        "checkpoint": args.checkpoint,
        "data": args.data,
        "source": args.source,
        "limit": limit,
        "exports": exports,
        "out": os.path.join(work, f"result_{side}_{beam}x{batch}.json"),
    }
    job_path = os.path.join(work, f"job_{side}_{beam}x{batch}.json")
    with open(job_path, "w", encoding="utf-8") as f:
        json.dump(job, f)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    if args.inductor_cache:
        env["TORCHINDUCTOR_CACHE_DIR"] = args.inductor_cache
    subprocess.run([sys.executable, os.path.abspath(__file__), "--child", job_path], check=True, cwd=REPO, env=env)
    with open(job["out"], encoding="utf-8") as f:
        return json.load(f)


def report(args, results: dict, export_times: dict, info: dict) -> str:
    lines = [
        "# Exported models next to fconv_ext eager",
        "",
        f"Command: `python benchmarks/bench_export.py {' '.join(sys.argv[1:])}`",
        "",
        machine_line(info),
        "",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; onnxruntime {_version('onnxruntime')}; "
        "one repetition per cell.",
        "",
        *([args.note, ""] if args.note else []),
        "Export times (s, including imports): " + ", ".join(f"{k} {v:.0f}" for k, v in export_times.items()),
        "",
        "| config | side | sentences | sent/s | x eager | BLEU (detok) | identical to eager | peak RSS MB "
        "| first translation s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for config, sides in results.items():
        eager = sides.get("eager")
        for side, r in sides.items():
            rate = r["sentences"] / r["seconds"]
            ratio = rate / (eager["sentences"] / eager["seconds"]) if eager else float("nan")
            same = (
                100.0 * sum(a == b for a, b in zip(r["hypotheses"], eager["hypotheses"])) / len(r["hypotheses"])
                if eager
                else float("nan")
            )
            lines.append(
                f"| {config} | {side} | {r['sentences']} | {rate:.1f} | {ratio:.2f} | {r['bleu']:.2f} | "
                f"{same:.1f}% | {r['peak_rss_mb']:.0f} | {r['first_translation_s']:.1f} |"
            )
    return "\n".join(lines) + "\n"


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "-"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--checkpoint", help="an fconv_ext checkpoint (fconv-ext-convert a fairseq fconv one first)")
    p.add_argument("--data", help="its data directory (dict.en.txt, dict.de.txt)")
    p.add_argument("--codes", help="the subword-nmt BPE codes of the data")
    corpus = os.path.join(REPO, "..", "shared", "data", "gettext-en-de")
    p.add_argument("--source", default=os.path.join(corpus, "test.en"), help="raw source sentences")
    p.add_argument("--reference", default=os.path.join(corpus, "test.de"), help="raw references")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sides", nargs="+", default=list(DEFAULT_SIDES), choices=SIDES)
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), help="BEAMxBATCH (default: 5x64 1x64 5x1)")
    p.add_argument("--limit", type=int, default=0, help="the first N sentences only (0: all; a smoke run)")
    p.add_argument("--limit-batch1", type=int, default=0, help="sentences for batch-1 configs (0: --limit)")
    p.add_argument("--work", default="/tmp/bench_export", help="exports and per-measurement files")
    p.add_argument("--reuse", action="store_true", help="reuse exports already in --work")
    p.add_argument("--inductor-cache", default="", help="TORCHINDUCTOR_CACHE_DIR of the children (default: inductor's)")
    p.add_argument("--out", default=results_path("export"), help="output prefix (.json and .md)")
    p.add_argument(
        "--note",
        default="",
        help="a remark printed under the machine in OUT.md (e.g. other jobs on the machine during the run)",
    )
    args = p.parse_args(argv)
    if args.child:
        child(args.child)
        return 0
    if not (args.checkpoint and args.data and args.codes):
        p.error("--checkpoint, --data and --codes are required")
    import sacrebleu

    os.makedirs(args.work, exist_ok=True)
    exported = export_all(args, args.work)
    with open(args.reference, encoding="utf-8") as f:
        references = [line.rstrip("\n") for line in f]
    results = {}
    for config in args.configs:
        beam, batch = (int(x) for x in config.split("x"))
        limit = args.limit_batch1 if batch == 1 and args.limit_batch1 else args.limit
        results[config] = {}
        for side in args.sides:
            r = run_child(args, args.work, exported["dirs"], side, beam, batch, limit)
            r["bleu"] = sacrebleu.corpus_bleu(r["hypotheses"], [references[: len(r["hypotheses"])]]).score
            results[config][side] = r
            print(f"{config} {side}: {r['sentences'] / r['seconds']:.1f} sent/s, BLEU {r['bleu']:.2f}", flush=True)
    info = machine(threads=args.threads)
    with open(args.out + ".json", "w", encoding="utf-8") as f:
        json.dump(
            {
                "command": sys.argv,
                "machine": info,
                "threads": args.threads,
                "export_seconds": exported["seconds"],
                "results": {
                    c: {s: {k: v for k, v in r.items() if k != "hypotheses"} for s, r in sides.items()}
                    for c, sides in results.items()
                },
            },
            f,
            indent=2,
        )
    with open(args.out + ".md", "w", encoding="utf-8") as f:
        f.write(report(args, results, exported["seconds"], info))
    with open(args.out + ".md", encoding="utf-8") as f:
        print(f.read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
