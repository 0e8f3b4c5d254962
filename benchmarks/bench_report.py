"""The report of ``bench.py``: medians and ratios of the children's results, the machine's
description (``bench_common.machine``), and ``OUT.json`` / ``OUT.md`` (rewritten after every configuration,
marked partial until the end).

A generation entry (one configuration) maps each side to its medians, plus:
``identical_hypotheses`` (fconv_ext == fconv), ``identical_hypotheses_seqgen`` (fconv_ext_seqgen ==
fconv_ext), ``identical_hypotheses_fp16`` (fconv_ext_fp16 == fconv_fp16) and
``identical_hypotheses_ensemble2`` (fconv_ext_ensemble2 == fconv_ext_ensemble2_seqgen) where those sides
ran.  Every not-exact opt-in side (``OPT_IN_SIDES``) also gets its speed over fconv_ext's, its BLEU deltas
to fconv_ext and the share of sentences whose hypothesis is identical to fconv_ext's.
"""

import json
import statistics

# not-exact sides compared with exact float32 fconv_ext (bench.py's --dtypes bf16 and --opt-ins)
OPT_IN_SIDES = ("fconv_ext_bf16", "fconv_ext_shortlist", "fconv_ext_int8", "fconv_ext_shortlist_int8")


def median(values):
    return statistics.median(values)


def share_identical(a, b):
    """The share of sentences of child result ``a`` whose hypothesis is the same as in ``b``."""
    ha, hb = a.get("hyps"), b.get("hyps")
    if not ha or not hb:
        return None
    return sum(ha[i] == hb.get(i) for i in ha) / len(ha)


def summarize_generation(runs):
    """Medians and ratios of one generation config's runs (side -> list of child results)."""

    def same_hypotheses(a, b):
        return {r["hyp_sha1"] for r in runs[a]} == {r["hyp_sha1"] for r in runs[b]}

    entry = {}
    for name, rs in runs.items():
        sec = median([r["seconds"] for r in rs])
        entry[name] = {
            "seconds": sec,
            "sentences": rs[0]["sentences"],
            "sentences_per_s": rs[0]["sentences"] / sec,
            "tokens": rs[0]["tokens"],
            "distinct_hypotheses": rs[0]["distinct_hypotheses"],
            "tokens_per_s": rs[0]["tokens"] / sec,
            "ms_per_sentence": 1000 * sec / rs[0]["sentences"],
            "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
            "flops": rs[0]["flops"],
            "bleu": rs[0]["bleu"],
            "detok_bleu": rs[0].get("detok_bleu"),
            "generator": rs[0]["generator"],
            "params": rs[0]["params"],
            "same_hypotheses_every_rep": len({r["hyp_sha1"] for r in rs}) == 1,
            "same_hypotheses_as_fconv": same_hypotheses(name, "fconv"),
        }
        if rs[0].get("peak_gpu_mb") is not None:
            entry[name]["peak_gpu_mb"] = max(r["peak_gpu_mb"] for r in rs)
    for name in entry:
        entry[name]["ratio_sentences_per_s"] = entry[name]["sentences_per_s"] / entry["fconv"]["sentences_per_s"]
    entry["identical_hypotheses"] = entry["fconv_ext"]["same_hypotheses_as_fconv"]
    # the same pair comparisons: (side, its reference, the entry's flag)
    for side, reference, flag in [
        ("fconv_ext", "fconv_ext_seqgen", "identical_hypotheses_seqgen"),
        ("fconv_ext_fp16", "fconv_fp16", "identical_hypotheses_fp16"),
        ("fconv_ext_ensemble2", "fconv_ext_ensemble2_seqgen", "identical_hypotheses_ensemble2"),
        *[(name, "fconv_ext", None) for name in OPT_IN_SIDES],
    ]:
        if side in entry and reference in entry:
            entry[side][f"ratio_vs_{reference}"] = entry[side]["sentences_per_s"] / entry[reference]["sentences_per_s"]
            entry[side][f"same_hypotheses_as_{reference}"] = same_hypotheses(side, reference)
            if flag:
                entry[flag] = same_hypotheses(side, reference)
            else:  # a not-exact opt-in against exact fconv_ext: what it costs
                s, ref = entry[side], entry[reference]
                s["bleu_delta"] = s["bleu"] - ref["bleu"]
                s["detok_bleu_delta"] = (
                    s["detok_bleu"] - ref["detok_bleu"] if None not in (s["detok_bleu"], ref["detok_bleu"]) else None
                )
                s["share_identical_to_fconv_ext"] = share_identical(runs[side][0], runs[reference][0])
    return entry


def summarize_training(runs, updates):
    """Medians and the fconv_ext / fconv ratio of one training preset's runs."""
    entry = {}
    for name, rs in runs.items():
        sec = median([r["seconds"] for r in rs])
        entry[name] = {
            "seconds": sec,
            "words_per_s": rs[0]["words"] / sec,
            "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
            "flops": rs[0]["flops"],
            "first_losses": rs[0]["losses"][:3],
            "params": rs[0]["params"],
            "updates": updates,
        }
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
    line = f"{config}: " + ", ".join(
        f"{n} {e['seconds']:.2f}s ({e['ratio_sentences_per_s']:.2f}x, BLEU {e['bleu']:.2f})"
        for n, e in entry.items()
        if isinstance(e, dict)
    )
    line += f"; fconv_ext identical={entry['identical_hypotheses']}"
    if "identical_hypotheses_seqgen" in entry:
        line += (
            f"; FConvBeamSearch vs SequenceGenerator {entry['fconv_ext']['ratio_vs_fconv_ext_seqgen']:.2f}x, "
            f"identical={entry['identical_hypotheses_seqgen']}"
        )
    if "identical_hypotheses_fp16" in entry:
        line += (
            f"; fconv_ext_fp16 vs fconv_fp16 {entry['fconv_ext_fp16']['ratio_vs_fconv_fp16']:.2f}x, "
            f"identical={entry['identical_hypotheses_fp16']}"
        )
    if "identical_hypotheses_ensemble2" in entry:
        line += (
            f"; ensemble2 {entry['fconv_ext_ensemble2']['generator']} vs SequenceGenerator "
            f"{entry['fconv_ext_ensemble2']['ratio_vs_fconv_ext_ensemble2_seqgen']:.2f}x, "
            f"identical={entry['identical_hypotheses_ensemble2']}"
        )
    return line


def training_line(preset, entry):
    return (
        f"training {preset}: fconv {entry['fconv']['words_per_s']:.0f} w/s, fconv_ext "
        f"{entry['fconv_ext']['words_per_s']:.0f} w/s, ratio {entry['ratio_words_per_s']:.2f}x"
    )


def write_report(report, out, complete):
    """(Re)write ``OUT.json`` and ``OUT.md``; ``complete=False`` marks a run still going (or cut short)."""
    report["complete"] = complete
    with open(out + ".json", "w") as f:
        json.dump(report, f, indent=1)
    with open(out + ".md", "w") as f:
        f.write(markdown(report))


def _percent(x, fmt=".0%"):
    return format(x, fmt) if x is not None else "-"


def _number(x, fmt=".2f"):
    return format(x, fmt) if x is not None else "-"


def markdown(r):
    """The report as markdown.  CPU runs keep the layout of the committed results/decode.md; CUDA runs add the GPU,
    peak GPU memory and (with fp16 sides) a half-precision table."""
    m, gpu = r["machine"], r.get("device", "cpu") == "cuda"
    rate = (
        f"fp32 matmul rate {r['matmul_gflops']:.0f} GFLOP/s"
        if r.get("matmul_gflops") is not None
        else "fp32 matmul rate not measured yet (it is measured last)"
    )
    if gpu:
        rate += (
            f" (torch.mm on the GPU at the model's decoding shapes, float32 matmul precision "
            f"'{m.get('float32_matmul_precision')}')"
        )
        where = f"{m['gpu']} (CUDA {m['cuda']}; host {m['cpu']}, {m['cpus']} CPUs)"
    else:
        where = f"{m['cpu']} ({m['cpus']} CPUs)"
    lines = [
        f"Benchmark {r['date']} on {where}, {r['threads']} threads, torch {m['torch']}, "
        f"fairseq {m['fairseq']}; median of {r['reps']}; {rate}.",
        f"Command: `{r['command']}`",
        "",
    ]
    if m.get("cpu_flags") is not None:
        isa = ", ".join(f"{k}={v}" for k, v in m.get("isa_environment", {}).items()) or "none"
        lines[-1:-1] = [
            f"CPU flags (of interest): {' '.join(m['cpu_flags'])}; torch CPU capability "
            f"{m.get('torch_cpu_capability')}; ISA-limiting environment: {isa}.",
            "",
        ]
    if not r.get("complete", True):
        lines += ["**Partial results**: the run had not finished when this was written.", ""]
    if gpu:
        lines += [
            "On CUDA: models and batches on the GPU, the clock read after torch.cuda.synchronize(), one untimed "
            "warm-up batch per process; peak GPU MB = torch.cuda.max_memory_allocated.",
            "",
        ]
    mem_head, mem_rule = ("peak GPU MB | peak RSS MB |", "---|---|") if gpu else ("peak RSS MB |", "---|")
    lines += [
        "Generation (max_len_a 1.2, max_len_b 10; BLEU: test set, BPE removed, tokenized, sacrebleu tokenize=none; "
        "ratio = sentences/s over fconv's; eff. = FLOP floor / time, fp32 conv models only):",
        "",
        "| config | model | generator | params | s | sent/s | ratio vs fconv | eff. | BLEU | detok. BLEU | "
        "same hyps as fconv | " + mem_head,
        "|---|---|---|---|---|---|---|---|---|---|---|" + mem_rule,
    ]
    for config, e in r["generation"].items():
        for name, s in e.items():
            if not isinstance(s, dict):
                continue
            eff = f"{s['efficiency']:.0%}" if s.get("efficiency") else "-"
            mem = f"{s['peak_gpu_mb']:.0f} | {s['peak_rss_mb']:.0f} |" if gpu else f"{s['peak_rss_mb']:.0f} |"
            lines.append(
                f"| {config} | {name} | {s['generator']} | {s['params'] / 1e6:.1f}M | {s['seconds']:.2f} | "
                f"{s['sentences_per_s']:.1f} | {s['ratio_sentences_per_s']:.2f}x | {eff} | {s['bleu']:.2f} | "
                f"{_number(s.get('detok_bleu'))} | {s['same_hypotheses_as_fconv']} | " + mem
            )
    seqgen = [(config, e) for config, e in r["generation"].items() if "identical_hypotheses_seqgen" in e]
    if seqgen:
        lines += [
            "",
            "What FConvBeamSearch buys: fconv_ext decoded by FConvBeamSearch against the same model decoded by "
            "fairseq's SequenceGenerator (fconv_ext_seqgen, FCONV_EXT_BEAM_SEARCH=fairseq):",
            "",
            "| config | SequenceGenerator s | FConvBeamSearch s | FConvBeamSearch speed-up | same hyps |",
            "|---|---|---|---|---|",
        ]
        for config, e in seqgen:
            a, b = e["fconv_ext_seqgen"], e["fconv_ext"]
            lines.append(
                f"| {config} | {a['seconds']:.2f} | {b['seconds']:.2f} | {b['ratio_vs_fconv_ext_seqgen']:.2f}x | "
                f"{e['identical_hypotheses_seqgen']} |"
            )
    opt_in_rows = [
        (config, name, e[name])
        for config, e in r["generation"].items()
        for name in OPT_IN_SIDES
        if name in e and "ratio_vs_fconv_ext" in e[name]
    ]
    if opt_in_rows:
        build = r.get("shortlist_build")
        lines += [
            "",
            "Opt-ins (not exact) against exact float32 fconv_ext on the same run: speed over fconv and over "
            "fconv_ext, ms/sentence, BLEU and detokenized sacreBLEU deltas to fconv_ext, the share of sentences "
            "whose output is identical to fconv_ext's, peak RSS of the process"
            + (f"; shortlist `{r['shortlist']}`" if r.get("shortlist") else "")
            + (f", built in {build['seconds']:.0f} s by `{build['command']}`" if build else "")
            + ":",
            "",
            "| config | side | ratio vs fconv | ratio vs fconv_ext | ms/sentence | detok. BLEU | delta | "
            "tok. BLEU delta | identical to fconv_ext | peak RSS MB |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for config, name, s in opt_in_rows:
            lines.append(
                f"| {config} | {name} | {s['ratio_sentences_per_s']:.2f}x | {s['ratio_vs_fconv_ext']:.2f}x | "
                f"{s['ms_per_sentence']:.1f} | {_number(s.get('detok_bleu'))} | "
                f"{_number(s.get('detok_bleu_delta'), '+.2f')} | {s['bleu_delta']:+.2f} | "
                f"{_percent(s.get('share_identical_to_fconv_ext'), '.1%')} | {s['peak_rss_mb']:.0f} |"
            )
    ensemble = [(config, e) for config, e in r["generation"].items() if "identical_hypotheses_ensemble2" in e]
    if ensemble:
        lines += [
            "",
            "Ensemble of 2 (`--path a.pt:b.pt`: "
            + " + ".join(f"`{c}`" for c in r.get("ensemble", []))
            + ", converted): fconv_ext's generator against fairseq's SequenceGenerator "
            "(FCONV_EXT_BEAM_SEARCH=fairseq), same models:",
            "",
            "| config | generator | s | SequenceGenerator s | speed-up | same hyps | detok. BLEU | peak RSS MB |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for config, e in ensemble:
            a, b = e["fconv_ext_ensemble2_seqgen"], e["fconv_ext_ensemble2"]
            lines.append(
                f"| {config} | {b['generator']} | {b['seconds']:.2f} | {a['seconds']:.2f} | "
                f"{b['ratio_vs_fconv_ext_ensemble2_seqgen']:.2f}x | {e['identical_hypotheses_ensemble2']} | "
                f"{_number(b.get('detok_bleu'))} | {b['peak_rss_mb']:.0f} |"
            )
    half = [(config, e) for config, e in r["generation"].items() if "identical_hypotheses_fp16" in e]
    if half:
        lines += [
            "",
            "Half precision (model.half(), as fairseq-generate --fp16), fconv_ext_fp16 against fconv_fp16 "
            "(hypotheses may legitimately differ from float32 and between the two):",
            "",
            "| config | fconv_fp16 s | fconv_ext_fp16 s | ratio vs fconv_fp16 | ratio vs fconv (fp32) | "
            "BLEU fconv_fp16 / fconv_ext_fp16 | same hyps |",
            "|---|---|---|---|---|---|---|",
        ]
        for config, e in half:
            a, b = e["fconv_fp16"], e["fconv_ext_fp16"]
            lines.append(
                f"| {config} | {a['seconds']:.2f} | {b['seconds']:.2f} | {b['ratio_vs_fconv_fp16']:.2f}x | "
                f"{b['ratio_sentences_per_s']:.2f}x | {a['bleu']:.2f} / {b['bleu']:.2f} | "
                f"{e['identical_hypotheses_fp16']} |"
            )
    mem_head = "peak GPU MB (fconv / ext)" if gpu else "peak RSS MB (fconv / ext)"
    lines += (
        []
        if not r["training"]
        else [
            "",
            f"Training: NAG, batches of {r.get('train_max_tokens', 4000)} tokens, the same batches and seed on "
            "both sides; eff. = 3 x forward FLOPs / matmul rate / time.",
            "",
            "| training | params | fconv words/s | fconv_ext words/s | ratio | fconv eff. | fconv_ext eff. | "
            + mem_head
            + " |",
            "|---|---|---|---|---|---|---|---|",
        ]
    )
    for preset, t in r["training"].items():
        mem = "peak_gpu_mb" if gpu else "peak_rss_mb"
        lines.append(
            f"| {preset} ({t['fconv'].get('updates', '?')} updates) | {t['fconv']['params'] / 1e6:.1f}M | "
            f"{t['fconv']['words_per_s']:.0f} | {t['fconv_ext']['words_per_s']:.0f} | {t['ratio_words_per_s']:.2f}x | "
            f"{_percent(t['fconv'].get('efficiency'))} | "
            f"{_percent(t['fconv_ext'].get('efficiency'))} | {t['fconv'][mem]:.0f} / {t['fconv_ext'][mem]:.0f} |"
        )
    for config, e in r["generation"].items():
        if config.endswith("batch1"):
            lines.append(
                f"\nLatency {config} (ms/sentence): "
                + ", ".join(f"{n} {s['ms_per_sentence']:.1f}" for n, s in e.items() if isinstance(s, dict))
                + "."
            )
    for where_failed, err in r.get("errors", {}).items():
        lines.append(f"\nFailed and dropped (--keep-going): {where_failed}: `{err.strip().splitlines()[-1][:300]}`")
    return "\n".join(lines) + "\n"
