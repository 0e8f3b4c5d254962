"""The report of ``bench.py``: medians and ratios of the children's results, the machine's description,
and ``OUT.json`` / ``OUT.md`` (rewritten after every configuration, marked partial until the end).

A generation entry (one configuration) maps each side to its medians, plus:
``identical_hypotheses`` (fconv_ext == fconv), ``identical_hypotheses_seqgen`` (fconv_ext_seqgen ==
fconv_ext) and ``identical_hypotheses_fp16`` (fconv_ext_fp16 == fconv_fp16) where those sides ran.
"""

import json
import os
import platform
import statistics


def median(values):
    return statistics.median(values)


def machine(device="cpu"):
    info = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    import fairseq
    import torch

    info.update(torch=torch.__version__, fairseq=fairseq.__version__)
    if device == "cuda":
        info.update(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda,
                    float32_matmul_precision=torch.get_float32_matmul_precision(),
                    cudnn_allow_tf32=torch.backends.cudnn.allow_tf32)
    return info


def summarize_generation(runs):
    """Medians and ratios of one generation config's runs (side -> list of child results)."""
    def same_hypotheses(a, b):
        return {r["hyp_sha1"] for r in runs[a]} == {r["hyp_sha1"] for r in runs[b]}

    entry = {}
    for name, rs in runs.items():
        sec = median([r["seconds"] for r in rs])
        entry[name] = {"seconds": sec, "sentences": rs[0]["sentences"], "sentences_per_s": rs[0]["sentences"] / sec,
                       "tokens": rs[0]["tokens"], "distinct_hypotheses": rs[0]["distinct_hypotheses"],
                       "tokens_per_s": rs[0]["tokens"] / sec, "ms_per_sentence": 1000 * sec / rs[0]["sentences"],
                       "peak_rss_mb": max(r["peak_rss_mb"] for r in rs), "flops": rs[0]["flops"],
                       "bleu": rs[0]["bleu"], "generator": rs[0]["generator"], "params": rs[0]["params"],
                       "same_hypotheses_every_rep": len({r["hyp_sha1"] for r in rs}) == 1,
                       "same_hypotheses_as_fconv": same_hypotheses(name, "fconv")}
        if rs[0].get("peak_gpu_mb") is not None:
            entry[name]["peak_gpu_mb"] = max(r["peak_gpu_mb"] for r in rs)
    for name in entry:
        entry[name]["ratio_sentences_per_s"] = entry[name]["sentences_per_s"] / entry["fconv"]["sentences_per_s"]
    entry["identical_hypotheses"] = entry["fconv_ext"]["same_hypotheses_as_fconv"]
    # the same pair comparisons: (side, its reference, the entry's flag)
    for side, reference, flag in [("fconv_ext", "fconv_ext_seqgen", "identical_hypotheses_seqgen"),
                                  ("fconv_ext_fp16", "fconv_fp16", "identical_hypotheses_fp16")]:
        if side in entry and reference in entry:
            entry[side][f"ratio_vs_{reference}"] = entry[side]["sentences_per_s"] / entry[reference]["sentences_per_s"]
            entry[side][f"same_hypotheses_as_{reference}"] = same_hypotheses(side, reference)
            entry[flag] = same_hypotheses(side, reference)
    return entry


def summarize_training(runs, updates):
    """Medians and the fconv_ext / fconv ratio of one training preset's runs."""
    entry = {}
    for name, rs in runs.items():
        sec = median([r["seconds"] for r in rs])
        entry[name] = {"seconds": sec, "words_per_s": rs[0]["words"] / sec, "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
                       "flops": rs[0]["flops"], "first_losses": rs[0]["losses"][:3], "params": rs[0]["params"],
                       "updates": updates}
        if rs[0].get("peak_gpu_mb") is not None:
            entry[name]["peak_gpu_mb"] = max(r["peak_gpu_mb"] for r in rs)
    entry["ratio_words_per_s"] = entry["fconv_ext"]["words_per_s"] / entry["fconv"]["words_per_s"]
    return entry


def add_efficiency(report, rate):
    """Fill in every side's efficiency: its analytic FLOPs / ``rate`` (FLOP/s) / its time."""
    report["matmul_gflops"] = rate / 1e9
    for entry in report["generation"].values():
        for side in entry.values():
            if isinstance(side, dict):
                side["efficiency"] = side["flops"] / rate / side["seconds"] if side["flops"] else None
    for entry in report["training"].values():
        for side in ("fconv", "fconv_ext"):
            entry[side]["efficiency"] = entry[side]["flops"] / rate / entry[side]["seconds"]


def generation_line(config, entry):
    """One line per configuration for the console while the run goes on."""
    line = f"{config}: " + ", ".join(f"{n} {e['seconds']:.2f}s ({e['ratio_sentences_per_s']:.2f}x, BLEU {e['bleu']:.2f})"
                                     for n, e in entry.items() if isinstance(e, dict))
    line += f"; fconv_ext identical={entry['identical_hypotheses']}"
    if "identical_hypotheses_seqgen" in entry:
        line += (f"; FConvBeamSearch vs SequenceGenerator {entry['fconv_ext']['ratio_vs_fconv_ext_seqgen']:.2f}x, "
                 f"identical={entry['identical_hypotheses_seqgen']}")
    if "identical_hypotheses_fp16" in entry:
        line += (f"; fconv_ext_fp16 vs fconv_fp16 {entry['fconv_ext_fp16']['ratio_vs_fconv_fp16']:.2f}x, "
                 f"identical={entry['identical_hypotheses_fp16']}")
    return line


def training_line(preset, entry):
    return (f"training {preset}: fconv {entry['fconv']['words_per_s']:.0f} w/s, fconv_ext "
            f"{entry['fconv_ext']['words_per_s']:.0f} w/s, ratio {entry['ratio_words_per_s']:.2f}x")


def write_report(report, out, complete):
    """(Re)write ``OUT.json`` and ``OUT.md``; ``complete=False`` marks a run still going (or cut short)."""
    report["complete"] = complete
    with open(out + ".json", "w") as f:
        json.dump(report, f, indent=1)
    with open(out + ".md", "w") as f:
        f.write(markdown(report))


def _percent(x):
    return f"{x:.0%}" if x is not None else "-"


def markdown(r):
    """The report as markdown.  CPU runs keep the committed results.md layout; CUDA runs add the GPU,
    peak GPU memory and (with fp16 sides) a half-precision table."""
    m, gpu = r["machine"], r.get("device", "cpu") == "cuda"
    rate = (f"fp32 matmul rate {r['matmul_gflops']:.0f} GFLOP/s" if r.get("matmul_gflops") is not None
            else "fp32 matmul rate not measured yet (it is measured last)")
    if gpu:
        rate += (f" (torch.mm on the GPU at the model's decoding shapes, float32 matmul precision "
                 f"'{m.get('float32_matmul_precision')}')")
        where = f"{m['gpu']} (CUDA {m['cuda']}; host {m['cpu']}, {m['cpus']} CPUs)"
    else:
        where = f"{m['cpu']} ({m['cpus']} CPUs)"
    lines = [f"Benchmark {r['date']} on {where}, {r['threads']} threads, torch {m['torch']}, "
             f"fairseq {m['fairseq']}; median of {r['reps']}; {rate}.",
             f"Command: `{r['command']}`", ""]
    if not r.get("complete", True):
        lines += ["**Partial results**: the run had not finished when this was written.", ""]
    if gpu:
        lines += ["On CUDA: models and batches on the GPU, the clock read after torch.cuda.synchronize(), one untimed "
                  "warm-up batch per process; peak GPU MB = torch.cuda.max_memory_allocated.", ""]
    mem_head, mem_rule = ("peak GPU MB | peak RSS MB |", "---|---|") if gpu else ("peak RSS MB |", "---|")
    lines += ["Generation (max_len_a 1.2, max_len_b 10; BLEU: test set, BPE removed, tokenized, sacrebleu tokenize=none; "
              "ratio = sentences/s over fconv's; eff. = FLOP floor / time, fp32 conv models only):", "",
              "| config | model | generator | params | s | sent/s | ratio vs fconv | eff. | BLEU | same hyps as fconv | " + mem_head,
              "|---|---|---|---|---|---|---|---|---|---|" + mem_rule]
    for config, e in r["generation"].items():
        for name, s in e.items():
            if not isinstance(s, dict):
                continue
            eff = f"{s['efficiency']:.0%}" if s.get("efficiency") else "-"
            mem = f"{s['peak_gpu_mb']:.0f} | {s['peak_rss_mb']:.0f} |" if gpu else f"{s['peak_rss_mb']:.0f} |"
            lines.append(f"| {config} | {name} | {s['generator']} | {s['params'] / 1e6:.1f}M | {s['seconds']:.2f} | "
                         f"{s['sentences_per_s']:.1f} | {s['ratio_sentences_per_s']:.2f}x | {eff} | {s['bleu']:.2f} | "
                         f"{s['same_hypotheses_as_fconv']} | " + mem)
    seqgen = [(config, e) for config, e in r["generation"].items() if "identical_hypotheses_seqgen" in e]
    if seqgen:
        lines += ["", "What FConvBeamSearch buys: fconv_ext decoded by FConvBeamSearch against the same model decoded by "
                  "fairseq's SequenceGenerator (fconv_ext_seqgen, FCONV_EXT_BEAM_SEARCH=fairseq):", "",
                  "| config | SequenceGenerator s | FConvBeamSearch s | FConvBeamSearch speed-up | same hyps |",
                  "|---|---|---|---|---|"]
        for config, e in seqgen:
            a, b = e["fconv_ext_seqgen"], e["fconv_ext"]
            lines.append(f"| {config} | {a['seconds']:.2f} | {b['seconds']:.2f} | {b['ratio_vs_fconv_ext_seqgen']:.2f}x | "
                         f"{e['identical_hypotheses_seqgen']} |")
    half = [(config, e) for config, e in r["generation"].items() if "identical_hypotheses_fp16" in e]
    if half:
        lines += ["", "Half precision (model.half(), as fairseq-generate --fp16), fconv_ext_fp16 against fconv_fp16 "
                  "(hypotheses may legitimately differ from float32 and between the two):", "",
                  "| config | fconv_fp16 s | fconv_ext_fp16 s | ratio vs fconv_fp16 | ratio vs fconv (fp32) | "
                  "BLEU fconv_fp16 / fconv_ext_fp16 | same hyps |", "|---|---|---|---|---|---|---|"]
        for config, e in half:
            a, b = e["fconv_fp16"], e["fconv_ext_fp16"]
            lines.append(f"| {config} | {a['seconds']:.2f} | {b['seconds']:.2f} | {b['ratio_vs_fconv_fp16']:.2f}x | "
                         f"{b['ratio_sentences_per_s']:.2f}x | {a['bleu']:.2f} / {b['bleu']:.2f} | "
                         f"{e['identical_hypotheses_fp16']} |")
    mem_head = "peak GPU MB (fconv / ext)" if gpu else "peak RSS MB (fconv / ext)"
    lines += ["", f"Training: NAG, batches of {r.get('train_max_tokens', 4000)} tokens, the same batches and seed on both sides; "
              "eff. = 3 x forward FLOPs / matmul rate / time.", "", "| training | params | fconv words/s | fconv_ext words/s | ratio | fconv eff. | fconv_ext eff. | " + mem_head + " |",
              "|---|---|---|---|---|---|---|---|"]
    for preset, t in r["training"].items():
        mem = "peak_gpu_mb" if gpu else "peak_rss_mb"
        lines.append(f"| {preset} ({t['fconv'].get('updates', '?')} updates) | {t['fconv']['params'] / 1e6:.1f}M | {t['fconv']['words_per_s']:.0f} | "
                     f"{t['fconv_ext']['words_per_s']:.0f} | {t['ratio_words_per_s']:.2f}x | {_percent(t['fconv'].get('efficiency'))} | "
                     f"{_percent(t['fconv_ext'].get('efficiency'))} | {t['fconv'][mem]:.0f} / {t['fconv_ext'][mem]:.0f} |")
    for config, e in r["generation"].items():
        if config.endswith("batch1"):
            lines.append(f"\nLatency {config} (ms/sentence): " + ", ".join(
                f"{n} {s['ms_per_sentence']:.1f}" for n, s in e.items() if isinstance(s, dict)) + ".")
    for where_failed, err in r.get("errors", {}).items():
        lines.append(f"\nFailed and dropped (--keep-going): {where_failed}: `{err.strip().splitlines()[-1][:300]}`")
    return "\n".join(lines) + "\n"
