"""Pictures: multi-step attention heatmaps and training curves (matplotlib, PNG).

    fconv-ext-plot-attention MODEL_DIR --data DATA_BIN --sentence "Cannot open file" \\
        [--checkpoint checkpoint_best.pt --tokenizer moses --bpe subword_nmt --bpe-codes CODES] \\
        --out attention.png
    fconv-ext-plot-curves train.log [more.log ...] --out curves.png

The attention picture has one heatmap per decoder layer that attends (the paper's
"multi-step" attention), plus their average, for the model's own beam-search
translation of the sentence.  The curves picture reads fairseq's logs written with
``--log-format json`` or the default formats (train loss per logging interval, train/valid loss per epoch,
and BLEU if the log has it).
"""

import argparse
import json
import logging
import os
import sys
from typing import Dict, List

import torch


def _pyplot():
    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # fairseq's DEBUG root logger
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("matplotlib is needed for plots: pip install 'fconv-ext[plots]' (or pip install matplotlib)")
    return plt


def layer_attention(model, src_tokens: torch.Tensor, tgt_tokens: torch.Tensor) -> List[torch.Tensor]:
    """Teacher-forced attention of every attention layer: a list of T x S tensors.

    ``tgt_tokens`` ends with EOS; the decoder input is EOS followed by all but the last."""
    captured: List[torch.Tensor] = []
    hooks = [
        att.register_forward_hook(lambda _m, _i, out: captured.append(out[1][0].detach()))
        for att in model.decoder.attention
        if att is not None
    ]
    prev = torch.cat([tgt_tokens.new_tensor([model.decoder.dictionary.eos()]), tgt_tokens[:-1]])
    try:
        with torch.no_grad():
            model(src_tokens.unsqueeze(0), torch.tensor([src_tokens.numel()]), prev.unsqueeze(0))
    finally:
        for h in hooks:
            h.remove()
    return captured


def plot_attention(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="fconv-ext-plot-attention", description="Heatmap of each decoder layer's attention"
    )
    parser.add_argument("model_dir", help="directory with the checkpoint")
    parser.add_argument("--checkpoint", default="checkpoint_best.pt", help="checkpoint file in MODEL_DIR")
    parser.add_argument("--data", required=True, help="binarized data directory (for the dictionaries)")
    parser.add_argument("--sentence", required=True, help="source sentence, raw text")
    parser.add_argument("--source-lang", default=None)
    parser.add_argument("--target-lang", default=None)
    parser.add_argument("--tokenizer", default=None, help="e.g. moses")
    parser.add_argument("--bpe", default=None, help="e.g. subword_nmt")
    parser.add_argument("--bpe-codes", default=None, help="BPE codes file for --bpe subword_nmt")
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--out", default="attention.png", help="PNG to write")
    args = parser.parse_args(argv)

    from ..models import FConvExtModel

    extra = {
        k: v
        for k, v in {
            "tokenizer": args.tokenizer,
            "bpe": args.bpe,
            "bpe_codes": args.bpe_codes,
            "source_lang": args.source_lang,
            "target_lang": args.target_lang,
        }.items()
        if v
    }
    hub = FConvExtModel.from_pretrained(
        args.model_dir, checkpoint_file=args.checkpoint, data_name_or_path=args.data, **extra
    )
    hub.eval()
    src = hub.encode(args.sentence)
    hypo = hub.generate([src], beam=args.beam)[0][0]["tokens"]
    attentions = layer_attention(hub.models[0], src, hypo)
    if not attentions:
        sys.exit("this model has no attention layers")
    src_labels = [hub.src_dict[i] for i in src.tolist()]
    tgt_labels = [hub.tgt_dict[i] for i in hypo.tolist()]
    panels = attentions + [torch.stack(attentions).mean(0)]
    titles = [f"decoder layer {i + 1}" for i, a in enumerate(hub.models[0].decoder.attention) if a is not None]
    titles.append("average")

    plt = _pyplot()
    cols = min(3, len(panels))
    rows = (len(panels) + cols - 1) // cols
    size = 0.35 * max(len(src_labels), len(tgt_labels)) + 2
    fig, axes = plt.subplots(rows, cols, figsize=(cols * size, rows * size), squeeze=False)
    for ax, att, title in zip(axes.flat, panels, titles):
        ax.imshow(att.numpy(), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_title(title)
        ax.set_xticks(range(len(src_labels)), src_labels, rotation=90, fontsize=8)
        ax.set_yticks(range(len(tgt_labels)), tgt_labels, fontsize=8)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(f"{args.sentence}\n-> {hub.decode(hypo)}", fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out} ({len(attentions)} attention layers)")
    return 0


def _number(text: str):
    try:
        return float(text)
    except ValueError:
        return None


def read_log(path: str) -> List[Dict]:
    """The statistics records of a fairseq-train log, each with its tag under ``_tag``
    (``train_inner``, ``train``, ``valid``).

    Reads both ``--log-format json`` lines (``... | train | {"train_loss": ...}``) and the
    simple/tqdm summary lines (``... | valid | epoch 001 | valid on 'valid' subset | loss 8.7 | ...``),
    whose keys get the tag as prefix like the JSON ones have."""
    records = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            start = line.find("{")
            if start >= 0:
                try:
                    record = json.loads(line[start:])
                except json.JSONDecodeError:
                    record = None
                if isinstance(record, dict):
                    parts = [p.strip() for p in line[:start].split("|")]
                    record["_tag"] = parts[-2] if len(parts) >= 2 else ""
                    records.append(record)
                    continue
            if "| train_inner |" in line:  # "epoch 001:  50 / 169 loss=11.8, nll_loss=11.6, ..."
                record = {"_tag": "train_inner"}
                for kv in line.split("| train_inner |", 1)[1].replace(",", " ").split():
                    key, eq, value = kv.partition("=")
                    if eq and _number(value) is not None:
                        record[key] = _number(value)
                records.append(record)
                continue
            parts = [p.strip() for p in line.split(" | ")]
            for i, part in enumerate(parts):
                if part in ("train", "valid") and i + 1 < len(parts) and parts[i + 1].startswith("epoch"):
                    record = {"_tag": part}
                    for kv in parts[i + 1 :]:
                        key, _, value = kv.partition(" ")
                        if _number(value) is not None:
                            record[f"{part}_{key}"] = _number(value)
                    records.append(record)
                    break
    return records


def plot_curves(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="fconv-ext-plot-curves", description="Training/validation curves from fairseq JSON logs"
    )
    parser.add_argument("logs", nargs="+", help="fairseq-train logs written with --log-format json")
    parser.add_argument("--out", default="curves.png", help="PNG to write")
    args = parser.parse_args(argv)

    plt = _pyplot()
    fig, (ax_loss, ax_bleu) = plt.subplots(1, 2, figsize=(12, 4.5))
    plotted = 0
    for path in args.logs:
        name = os.path.basename(path)
        records = read_log(path)
        inner = [
            (float(r["num_updates"]), float(r["loss"])) for r in records if r["_tag"] == "train_inner" and "loss" in r
        ]
        train = [
            (float(r["train_num_updates"]), float(r["train_loss"]))
            for r in records
            if "train_loss" in r and "train_num_updates" in r
        ]
        valid = [
            (float(r["valid_num_updates"]), float(r["valid_loss"]))
            for r in records
            if "valid_loss" in r and "valid_num_updates" in r
        ]
        bleu = [
            (float(r["valid_num_updates"]), float(r["valid_bleu"]))
            for r in records
            if "valid_bleu" in r and "valid_num_updates" in r
        ]
        for points, label, style in [
            (inner, "train (interval)", "-"),
            (train, "train (epoch)", "o-"),
            (valid, "valid", "s-"),
        ]:
            if points:
                ax_loss.plot(*zip(*points), style, label=f"{name}: {label}", alpha=0.8)
                plotted += 1
        if bleu:
            ax_bleu.plot(*zip(*bleu), "s-", label=name)
    if not plotted:
        sys.exit(
            "no training statistics found in the log(s): pass the output of fairseq-train "
            "(e.g. saved with tee or --log-file)"
        )
    ax_loss.set_xlabel("updates")
    ax_loss.set_ylabel("loss (base 2)")
    ax_loss.legend(fontsize=8)
    ax_loss.grid(alpha=0.3)
    ax_bleu.set_xlabel("updates")
    ax_bleu.set_ylabel("validation BLEU")
    ax_bleu.grid(alpha=0.3)
    if ax_bleu.lines:
        ax_bleu.legend(fontsize=8)
    else:
        ax_bleu.text(0.5, 0.5, "no validation BLEU in the log", ha="center", va="center", transform=ax_bleu.transAxes)
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")
    return 0
