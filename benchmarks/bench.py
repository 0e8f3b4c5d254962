"""Side-by-side benchmark: fconv_ext vs fairseq's fconv, same weights, same data, same threads.

    python benchmarks/bench.py --data /tmp/gt/bin --fconv-checkpoint CK.pt [--reps 3] [--out benchmarks/results/decode]
        [--context lstm=CK_LSTM.pt transformer=CK_TRANSFORMER.pt] [--train-presets checkpoint fconv_wmt_en_de]
    python benchmarks/bench.py --smoke [--data D --fconv-checkpoint CK.pt]   # minutes: tiny model and data, no claims
    python benchmarks/bench.py --device cuda --dtypes fp16 bf16 ...   # on a GPU (benchmarks/gpu_run.sh)
    python benchmarks/bench.py ... --opt-ins shortlist int8 shortlist+int8 [--shortlist FILE]
        [--ensemble-with CK2.pt] [--references RAW_TEST.de]   # the fast-serving opt-ins

The fairseq fconv checkpoint is converted to fconv_ext in this run (fconv-ext-convert's code), so both
sides decode the same model; hypotheses are compared and must be identical.  Every measurement runs in
its own child process (one process tree), the sides alternating, ``--reps`` times; the medians and
the ratios (side / fconv) are written to ``OUT.json`` and ``OUT.md`` with the machine's description.

The harness, one job per file:

* ``bench.py`` (this file): the command line, the sides, the order of the measurements;
* ``bench_child.py``: one measurement in a child process (decode the test set, or time training
  updates), and the machine's matmul rate;
* ``bench_flops.py``: the FLOP model (analytic matmul FLOPs per layer) behind the efficiency column;
* ``bench_report.py``: medians, ratios, the machine's description, ``OUT.json`` / ``OUT.md``;
* ``bench_inputs.py``: the checkpoints and data measured (conversion, untrained presets, ``--smoke``);
* ``bench_common.py`` (shared with the other benchmark scripts): the machine's description and
  ``benchmarks/results/``, where committed results go.

Sides (generation):
* ``fconv``: fairseq's fconv checkpoint, decoded by fairseq's SequenceGenerator;
* ``fconv_ext``: its conversion, decoded by fconv_ext's FConvBeamSearch (what ``task.build_generator``
  gives an fconv_ext model);
* ``fconv_ext_seqgen``: the same conversion decoded by fairseq's SequenceGenerator
  (``FCONV_EXT_BEAM_SEARCH=fairseq`` in its child): the A/B that shows what FConvBeamSearch buys;
* ``--dtypes bf16`` (default): ``fconv_ext_bf16``, the conversion with ``inference_dtype=bfloat16``
  (opt-in, not exact: its BLEU is reported next to the others);
* ``--dtypes fp16``: ``fconv_fp16`` and ``fconv_ext_fp16``, both cast with ``model.half()`` as
  ``fairseq-generate --fp16`` does (meant for GPUs; hypotheses compared, not required to match);
  ``--dtypes`` with no value: float32 sides only;
* ``--context NAME=CK``: other fairseq models (lstm, transformer) on the same data, generation only;
* ``--opt-ins``: ``fconv_ext_shortlist`` (model override ``shortlist``: the file of ``--shortlist``, or
  one built in this run with ``fconv-ext-shortlist``, its build time reported), ``fconv_ext_int8``
  (``inference_dtype=int8``) and ``fconv_ext_shortlist_int8`` (both): not exact, reported with their speed
  against fconv and fconv_ext, BLEU delta and share of sentences identical to fconv_ext;
* ``--ensemble-with CK2``: ``fconv_ext_ensemble2`` (the conversion and CK2's, ``--path a.pt:b.pt``,
  decoded by the generator ``task.build_generator`` gives two models) against
  ``fconv_ext_ensemble2_seqgen`` (the same pair, fairseq's SequenceGenerator), on ``--ensemble-configs``;
* ``--no-seqgen`` leaves out ``fconv_ext_seqgen``.
Training: ``fconv`` and ``fconv_ext`` on the checkpoint's architecture and each ``--train-presets`` preset.

``--device cuda``: models and batches on the GPU (batches moved before the clock starts), the clock read
after ``torch.cuda.synchronize()``, one untimed warm-up batch per generation child, peak GPU memory
(``torch.cuda.max_memory_allocated``) next to peak RSS, and the matmul rate measured with torch.mm on the
GPU.  ``--device cpu`` (the default) measures exactly as before (no warm-up batch for generation).
The parent rewrites ``OUT.json`` / ``OUT.md`` after every configuration, so a run cut short leaves the
finished ones (marked partial; efficiencies are filled in at the end).

Measured per side:
* generation: beam 5 batch 64, beam 1 batch 64 on the test set, beam 5 batch 1 on --latency-sentences
  sentences spread evenly over the length-sorted test set (ms per sentence); sentences/s, target tokens/s,
  BLEU of the test set (sacrebleu on the BPE-removed tokenized text, tokenize=none) and detokenized
  sacreBLEU (BPE removed, sacremoses-detokenized, sacreBLEU's default tokenizer, against ``--references``
  or the detokenized binarized references);
* training: target words/s over --train-updates updates (forward, backward, NAG step) on the same
  batches, for the checkpoint's architecture and each ``--train-presets`` preset (random weights,
  the data's dictionaries);
* peak resident memory of the child process (and on CUDA its peak allocated GPU memory);
* efficiency (float32 sides): analytic matmul FLOPs of the work (``bench_flops.py``) divided by the
  machine's measured fp32 matmul rate for the model's shapes, over the time.
"""

import argparse
import os
import sys
import tempfile
import time
from typing import NamedTuple

from bench_child import ChildFailed, load_model, matmul_rate, run_child
from bench_inputs import build_shortlist, convert_to, smoke_setup, untrained_checkpoint
from bench_common import machine, results_path
from bench_report import (
    add_efficiency,
    generation_line,
    markdown,
    summarize_generation,
    summarize_training,
    training_line,
    write_report,
)

GEN_CONFIGS = [("beam5_batch64", 5, 64), ("beam1_batch64", 1, 64), ("beam5_batch1", 5, 1)]
# fconv_plugin.serving.beam_search's switch: =fairseq makes task.build_generator return fairseq's SequenceGenerator
FAIRSEQ_BEAM_SEARCH = {"FCONV_EXT_BEAM_SEARCH": "fairseq"}


class Side(NamedTuple):
    """What one side measures: a checkpoint (``a.pt:b.pt``: an ensemble), the child's dtype, variables
    added to its environment, model config overrides (``--model-overrides "{'model': {...}}"``) and the
    generation configs it runs on (empty: all)."""

    checkpoint: str
    dtype: str = "float32"
    env: dict = {}
    overrides: dict = {}
    configs: tuple = ()


# --dtypes name -> (the sides it adds, the side they derive from, the child's dtype)
LOW_PRECISION_SIDES = {
    "fp16": [("fconv_fp16", "fconv", "float16"), ("fconv_ext_fp16", "fconv_ext", "float16")],
    "bf16": [("fconv_ext_bf16", "fconv_ext", "bfloat16")],
}
# --opt-ins name -> (the side it adds, its model overrides; "SHORTLIST" stands for the shortlist file)
OPT_IN_SIDES = {
    "shortlist": ("fconv_ext_shortlist", {"shortlist": "SHORTLIST"}),
    "int8": ("fconv_ext_int8", {"inference_dtype": "int8"}),
    "shortlist+int8": ("fconv_ext_shortlist_int8", {"shortlist": "SHORTLIST", "inference_dtype": "int8"}),
    "compiled": ("fconv_ext_compiled", {"inference_compile": True}),
    "compiled+shortlist+int8": (
        "fconv_ext_compiled_shortlist_int8",
        {"inference_compile": True, "shortlist": "SHORTLIST", "inference_dtype": "int8"},
    ),
}
REQUIRED_SIDES = ("fconv", "fconv_ext")  # a failure of these ends the run, even with --keep-going


def parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="binarized data directory with train/test splits")
    p.add_argument("--fconv-checkpoint", help="a trained fairseq fconv checkpoint")
    p.add_argument(
        "--context",
        nargs="*",
        default=[],
        metavar="NAME=CHECKPOINT",
        help="other fairseq models on the same data (e.g. lstm=..., transformer=...), generation only",
    )
    p.add_argument(
        "--train-presets",
        nargs="*",
        default=["checkpoint"],
        help="'checkpoint' (the fconv checkpoint's architecture) and/or fairseq fconv presets, "
        "e.g. fconv_wmt_en_de (random weights); PRESET:N times N updates instead of --train-updates",
    )
    p.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="where the models run (cuda: synchronized clock, a warm-up batch, peak GPU memory)",
    )
    p.add_argument(
        "--dtypes",
        nargs="*",
        choices=sorted(LOW_PRECISION_SIDES),
        default=["bf16"],
        help="low-precision generation sides next to the float32 ones (always run): "
        "fp16 = fconv_fp16 and fconv_ext_fp16 (model.half(), fairseq-generate --fp16), "
        "bf16 = fconv_ext_bf16 (inference_dtype=bfloat16); no value: none",
    )
    p.add_argument(
        "--opt-ins",
        nargs="*",
        choices=list(OPT_IN_SIDES),
        default=[],
        help="fconv_ext's not-exact fast-serving sides: shortlist = fconv_ext_shortlist, int8 = "
        "fconv_ext_int8, shortlist+int8 = fconv_ext_shortlist_int8 (model overrides)",
    )
    p.add_argument(
        "--shortlist",
        help="the shortlist file of the shortlist sides (default: built here from "
        "--data's train split with fconv-ext-shortlist, the build timed)",
    )
    p.add_argument(
        "--shortlist-build-args",
        default="",
        help="extra fconv-ext-shortlist options when the shortlist is built here, e.g. '--n-best 50'",
    )
    p.add_argument(
        "--ensemble-with",
        metavar="CK2",
        help="a second fairseq fconv checkpoint on the same dictionaries: adds fconv_ext_ensemble2 "
        "(both conversions, fconv_ext's generator) and fconv_ext_ensemble2_seqgen (fairseq's)",
    )
    p.add_argument(
        "--ensemble-configs",
        nargs="*",
        choices=[c[0] for c in GEN_CONFIGS],
        default=["beam5_batch64"],
        help="generation configs the ensemble sides run on",
    )
    p.add_argument("--no-seqgen", action="store_true", help="leave out the fconv_ext_seqgen side")
    p.add_argument(
        "--references",
        help="raw (untokenized) test-set targets, one line per sentence, for the "
        "detokenized BLEU (default: the binarized references, detokenized)",
    )
    p.add_argument(
        "--gen-configs",
        nargs="*",
        choices=[c[0] for c in GEN_CONFIGS],
        default=[c[0] for c in GEN_CONFIGS],
        help="generation configurations to run (default: all)",
    )
    p.add_argument("--reps", type=int, default=3, help="repetitions per measurement (median reported)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads, the same for every side")
    p.add_argument(
        "--latency-sentences", type=int, default=200, help="sentences decoded at batch 1 (evenly spaced by length)"
    )
    p.add_argument("--train-updates", type=int, default=20, help="timed training updates")
    p.add_argument("--train-max-tokens", type=int, default=4000, help="tokens per training batch")
    p.add_argument(
        "--out",
        help="output prefix (.json and .md; default: benchmarks/results/decode, with --smoke "
        "the run's temporary directory)",
    )
    p.add_argument(
        "--train-first",
        action="store_true",
        help="measure training before generation (a run cut short by a time limit then has training)",
    )
    p.add_argument(
        "--keep-going",
        action="store_true",
        help="a failing side other than fconv / fconv_ext is reported and dropped instead of ending the run",
    )
    p.add_argument("--log-children", action="store_true", help="print every child's job and times to stderr")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="one repetition, 10 latency sentences, 3 training updates of 500 tokens; on a tiny model "
        "and data made here unless --data and --fconv-checkpoint are given; for CI, no claims",
    )
    return p


def generation_sides(args, converted, shortlist=None, second=None):
    """name -> Side for generation, in the order they alternate.  ``shortlist``: the shortlist file of
    the ``--opt-ins`` shortlist sides; ``second``: the ensemble's second fconv_ext checkpoint."""
    sides = {"fconv": Side(args.fconv_checkpoint), "fconv_ext": Side(converted)}
    if not args.no_seqgen:
        sides["fconv_ext_seqgen"] = Side(converted, env=FAIRSEQ_BEAM_SEARCH)
    for precision in args.dtypes:
        for name, base, dtype in LOW_PRECISION_SIDES[precision]:
            sides[name] = Side(sides[base].checkpoint, dtype)
    for opt_in in args.opt_ins:
        name, overrides = OPT_IN_SIDES[opt_in]
        sides[name] = Side(converted, overrides={k: shortlist if v == "SHORTLIST" else v for k, v in overrides.items()})
    if second:
        pair, configs = os.pathsep.join([converted, second]), tuple(args.ensemble_configs)
        sides["fconv_ext_ensemble2"] = Side(pair, configs=configs)
        sides["fconv_ext_ensemble2_seqgen"] = Side(pair, env=FAIRSEQ_BEAM_SEARCH, configs=configs)
    for spec in args.context:
        name, _, path = spec.partition("=")
        sides[name] = Side(path)
    return sides


def alternate(sides, reps, measure):
    """``measure(name, side)`` for every side, ``reps`` times, the order reversed every other
    repetition so that no side always runs first.  A side whose ``measure`` returns ``None``
    (it failed and the caller chose to go on) is not measured again and is left out of the result."""
    runs = {name: [] for name in sides}
    failed = set()
    for rep in range(reps):
        for name in list(sides) if rep % 2 == 0 else list(sides)[::-1]:
            if name in failed:
                continue
            result = measure(name, sides[name])
            if result is None:
                failed.add(name)
            else:
                runs[name].append(result)
    return {name: rs for name, rs in runs.items() if name not in failed}


def main():
    p = parser()
    args = p.parse_args()
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            p.error(
                "--device cuda: torch.cuda.is_available() is False (torch %s, built for CUDA %s)"
                % (torch.__version__, torch.version.cuda)
            )
    work = tempfile.mkdtemp(prefix="fconv-bench-")
    if args.smoke:
        if not (args.data and args.fconv_checkpoint):
            args.data, args.fconv_checkpoint = smoke_setup(work)
        args.reps, args.latency_sentences, args.train_updates, args.train_max_tokens = 1, 10, 3, 500
    if args.out is None:  # a smoke run never overwrites the committed results
        args.out = os.path.join(work, "smoke") if args.smoke else results_path("decode")
    if not (args.data and args.fconv_checkpoint):
        p.error("--data and --fconv-checkpoint are required (or --smoke)")

    converted = convert_to(args.fconv_checkpoint, os.path.join(work, "fconv_ext.pt"))
    report = {
        "machine": machine(args.device, args.threads),
        "threads": args.threads,
        "reps": args.reps,
        "train_max_tokens": args.train_max_tokens,
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join(sys.argv),
        "device": args.device,
        "generation": {},
        "training": {},
        "errors": {},
        "references": args.references or "binarized test targets, detokenized",
    }
    shortlist = args.shortlist
    if any("shortlist" in o for o in args.opt_ins):
        if shortlist is None:
            shortlist = os.path.join(work, "shortlist.npz")
            report["shortlist_build"] = build_shortlist(args.data, shortlist, args.shortlist_build_args, args.threads)
            print(
                f"shortlist built in {report['shortlist_build']['seconds']:.1f} s: "
                f"{report['shortlist_build']['command']}",
                flush=True,
            )
        report["shortlist"] = shortlist
    second = None
    if args.ensemble_with:
        second = convert_to(args.ensemble_with, os.path.join(work, "fconv_ext_second.pt"))
        report["ensemble"] = [args.fconv_checkpoint, args.ensemble_with]
    sides = generation_sides(args, converted, shortlist, second)

    def measure(name, side, label, **job):
        """One child run; with --keep-going a failure of a side other than fconv / fconv_ext is
        recorded in the report and gives None (the side is dropped), otherwise it ends the run."""
        job.update(
            checkpoint=side.checkpoint,
            data=args.data,
            threads=args.threads,
            device=args.device,
            overrides=side.overrides,
            references=args.references,
        )
        try:
            return run_child(job, env=side.env, log=args.log_children)
        except ChildFailed as err:
            if not args.keep_going or name in REQUIRED_SIDES:
                raise SystemExit(str(err)) from None
            print(f"{label}: side {name} failed and is dropped:\n{err}", file=sys.stderr, flush=True)
            report["errors"][f"{label}/{name}"] = str(err)[-3000:]
            return None

    def generation_config(config, beam, batch):
        """All generation sides on one config, alternating; the report rewritten after it."""
        limit = args.latency_sentences if batch == 1 else 0
        here = {name: side for name, side in sides.items() if not side.configs or config in side.configs}
        runs = alternate(
            here,
            args.reps,
            lambda name, side: measure(
                name, side, config, mode="generate", dtype=side.dtype, beam=beam, batch=batch, max_batches=limit
            ),
        )
        for name in set(here) - set(runs):  # failed (--keep-going): not run again
            del sides[name]
        report["generation"][config] = entry = summarize_generation(runs)
        print(generation_line(config, entry), flush=True)
        write_report(report, args.out, complete=False)

    def training_preset(spec):
        """fconv and fconv_ext training on one preset (PRESET[:UPDATES]); the report rewritten after it."""
        preset, _, updates = spec.partition(":")
        updates = int(updates or args.train_updates)
        if preset == "checkpoint":
            fconv, ext = args.fconv_checkpoint, converted
        else:
            fconv = untrained_checkpoint(preset, args.data, os.path.join(work, preset))
            ext = convert_to(fconv, os.path.join(work, preset + "_ext.pt"))
        runs = alternate(
            {"fconv": Side(fconv), "fconv_ext": Side(ext)},
            args.reps,
            lambda name, side: measure(
                name,
                side,
                "train_" + preset,
                mode="train",
                train_updates=updates,
                train_max_tokens=args.train_max_tokens,
            ),
        )
        report["training"][preset] = entry = summarize_training(runs, updates)
        print(training_line(preset, entry), flush=True)
        write_report(report, args.out, complete=False)

    def generation():
        for config, beam, batch in GEN_CONFIGS:
            if config in args.gen_configs:
                generation_config(config, beam, batch)

    def training():
        for spec in args.train_presets:
            training_preset(spec)

    for phase in (training, generation) if args.train_first else (generation, training):
        phase()

    # the machine's matmul rate for these shapes, in this process tree
    add_efficiency(report, matmul_rate(load_model(converted, args.data)[0], args.threads, device=args.device))
    write_report(report, args.out, complete=True)
    print(markdown(report))
    print(f"wrote {args.out}.json and {args.out}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
