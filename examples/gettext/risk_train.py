"""Fine-tune a trained model for a fixed number of updates with a progress bar (``make demo-risk``).

    python examples/gettext/risk_train.py --updates 40 --restore checkpoints/checkpoint_last.pt \\
        --save-dir risk --log risk/train.log --record risk/plan.json -- DATA --user-dir fconv_plugin \\
        --arch ... --criterion sequence_risk --lr 0.0001 ...

Runs ``fairseq-train`` once: from ``--restore`` with a fresh optimizer, schedule, data order and
update count (``--reset-*``), the learning rate decaying linearly from ``--lr`` to 0 at ``--updates``
(``polynomial_decay``, no warm-up). The bar is the demo's training bar (``fconv_plugin/cli/demo_plan.py``:
the same fairseq log parsing and tqdm bar with its ETA), with ``sequence_risk``'s expected sentence
BLEU of the candidates beside the loss. The JSON record has the updates done and the seconds taken.
Like ``demo_plan.py``, it imports neither torch nor fairseq.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "fconv_plugin", "cli"))
import demo_plan  # noqa: E402

#: options this script sets; passing them through as well would contradict it
OWNED = (
    "--restore-file",
    "--save-dir",
    "--max-update",
    "--total-num-update",
    "--lr-scheduler",
    "--warmup-updates",
    "--log-format",
    "--log-interval",
    "--save-interval",
)


class StatsLog:
    """The fairseq log file, which also keeps the last ``expected_bleu`` that sequence_risk logged
    (demo_plan's Update holds loss and words/s only)."""

    def __init__(self, path: str):
        self.file = open(path, "w", encoding="utf-8")
        self.expected_bleu = None

    def write(self, line: str):
        self.file.write(line)
        if "| train_inner |" in line and '"expected_bleu"' in line:
            stats = json.loads(line[line.index("{") :])
            self.expected_bleu = float(stats["expected_bleu"])

    def flush(self):
        self.file.flush()

    def close(self):
        self.file.close()


def main(argv=None) -> int:
    from tqdm import tqdm

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, required=True, help="fine-tuning updates (the decay ends there)")
    parser.add_argument("--restore", required=True, help="the checkpoint to fine-tune")
    parser.add_argument("--save-dir", required=True)
    parser.add_argument("--log", required=True, help="where fairseq's own log goes")
    parser.add_argument("--record", required=True, help="JSON file: updates done, seconds, words/s")
    parser.add_argument("fairseq_args", nargs=argparse.REMAINDER, help="-- then fairseq-train's data and options")
    args = parser.parse_args(argv)
    passthrough = list(args.fairseq_args)
    if passthrough and passthrough[0] == "--":
        passthrough = passthrough[1:]
    clash = [a for a in passthrough if a.split("=", 1)[0] in OWNED]
    if clash:
        print(f"risk_train: error: {', '.join(clash)} are set by this script; leave them out", file=sys.stderr)
        return 2
    if not os.path.isfile(args.restore):
        print(f"risk_train: error: no checkpoint {args.restore} (run `make demo` first)", file=sys.stderr)
        return 2
    cmd = (
        [sys.executable, "-m", "fairseq_cli.train"]
        + passthrough
        + [
            "--restore-file",
            os.path.abspath(args.restore),
            "--reset-optimizer",
            "--reset-dataloader",
            "--reset-meters",
            "--reset-lr-scheduler",
            "--save-dir",
            args.save_dir,
            "--save-interval",
            "1000000",
            "--lr-scheduler",
            "polynomial_decay",
            "--warmup-updates",
            "0",
            "--total-num-update",
            str(args.updates),
            "--max-update",
            str(args.updates),
            "--log-format",
            "json",
            "--log-interval",
            "1",
        ]
    )
    os.makedirs(args.save_dir, exist_ok=True)
    log = StatsLog(args.log)
    seen = []
    bar = tqdm(total=args.updates, desc="fine-tuning", unit="upd", dynamic_ncols=True, file=sys.stderr)

    def on_update(update: demo_plan.Update):
        seen.append(update)
        bar.update(update.num_updates - bar.n)
        postfix = {}
        if update.loss is not None:
            postfix["loss"] = f"{update.loss:.2f}"
        if log.expected_bleu is not None:
            postfix["expected BLEU"] = f"{log.expected_bleu:.1f}"
        if update.wps:  # fairseq logs 0 for the first update (no interval to measure yet)
            postfix["words/s"] = f"{update.wps:,.0f}"
        bar.set_postfix(postfix, refresh=False)

    start = time.monotonic()
    rc, trained = demo_plan.run_fairseq(cmd, log, on_update)
    seconds = time.monotonic() - start
    bar.close()
    log.close()
    if rc != 0:
        print(f"risk_train: fairseq-train failed (exit {rc}); see {args.log}", file=sys.stderr)
        return rc
    record = {
        "updates": args.updates,
        "updates_done": seen[-1].num_updates if seen else 0,
        "seconds": round(seconds, 1),
        "train_seconds": trained,
        "words_per_second": round(sum(u.words for u in seen) / max(1e-9, seconds), 1),
        "expected_bleu_last": log.expected_bleu,
        "command": cmd,
    }
    with open(args.record, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
    print(
        f"fine-tuned {record['updates_done']} updates in {seconds / 60:.1f} minutes "
        f"({record['words_per_second']:,.0f} words/s including start-up and the checkpoint)",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
