"""Train for a wall-clock budget with a schedule that ends on time (the demo's training stage).

    python fconv_plugin/cli/demo_plan.py train --minutes 12 --save-dir checkpoints \\
        --log train.log --plan plan.json -- DATA --user-dir fconv_plugin --arch ... --lr 0.004 ...
    python fconv_plugin/cli/demo_plan.py summary --plan plan.json --bleu bleu.json

(Run as a file, it imports neither torch nor fairseq: ``python -m fconv_plugin.cli.demo_plan``
works too but loads the plugin, torch and fairseq first.)

A budget in minutes buys a different number of updates on every machine, and a schedule sized
for one machine is wrong on the others: too long, and training stops while the learning rate is
still high (or still warming up); too short, and the machine idles.  So ``train`` runs
``fairseq-train`` in steps:

1. **measure**: the first updates of the real run (linear warm-up, ``--warmup`` updates, of
   which at most a few; at most ``--measure-seconds`` of training), timed one by one from
   fairseq's log;
2. **plan and finish**: from the measured updates/s and the time left, ``N`` updates fit in the
   budget; it prints ``~N updates in M minutes on this machine`` and resumes from
   ``checkpoint_last.pt`` (fairseq's own resumption: optimizer, data order and update count
   continue) with ``--lr-scheduler polynomial_decay --total-num-update N --max-update N``: the
   learning rate decays linearly to 0 exactly when the time is up.  ``--stop-time-hours`` stays
   on as a safety net if the machine slows down.

The warm-up depends only on the update count, so it is the same in every process and a restart
during it does not change the learning rate.  Progress is a tqdm bar over the planned updates with
loss, words/s and ETA; the raw fairseq log goes to ``--log``.  ``plan.json`` records what was
planned and what was done (updates, seconds, words/s) for ``summary``.
"""

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, List, Optional, Sequence

# fairseq's --log-format json lines: "... | INFO | train_inner | {...}" and "... | INFO | train | {...}"
_LOG_LINE = re.compile(r"\| (train_inner|train) \| (\{.*\})\s*$")

#: options the plan owns; passing them through as well would contradict it
OWNED_OPTIONS = (
    "--lr-scheduler",
    "--max-update",
    "--total-num-update",
    "--warmup-updates",
    "--stop-time-hours",
    "--log-format",
    "--log-interval",
    "--save-dir",
    "--end-learning-rate",
    "--power",
    "--save-interval",
)


@dataclass
class Update:
    """One ``train_inner`` line: its update number, when it was read, and its numbers."""

    num_updates: int
    time: float
    words: float  # target words in the update (fairseq's wpb with --log-interval 1)
    loss: Optional[float] = None
    wps: Optional[float] = None


@dataclass
class Plan:
    minutes: float
    warmup: int
    measured_updates: int = 0
    updates_per_second: float = 0.0
    words_per_second: float = 0.0
    planned_updates: int = 0
    first_planned_updates: int = 0
    updates_done: int = 0
    train_seconds: float = 0.0
    words_per_second_overall: float = 0.0
    deadline_missed_by: float = 0.0
    replanned_updates: int = 0
    commands: List[List[str]] = field(default_factory=list)


def parse_line(line: str, now: float) -> Optional[Update]:
    match = _LOG_LINE.search(line)
    if not match or match.group(1) != "train_inner":
        return None
    stats = json.loads(match.group(2))
    if "num_updates" not in stats:
        return None

    def num(key):
        return float(stats[key]) if key in stats else None

    return Update(int(float(stats["num_updates"])), now, num("wpb") or 0.0, num("loss"), num("wps"))


def measure(updates: Sequence[Update], skip: int = 2):
    """updates/s and words/s from the timed log lines, leaving out the first ``skip`` updates
    (allocator warm-up, first-batch costs) where there are enough to leave out."""
    if len(updates) < 2:
        raise ValueError("need at least two timed updates to measure the speed")
    skip = min(skip, len(updates) - 2)
    first, rest = updates[skip], updates[skip + 1 :]
    seconds = rest[-1].time - first.time
    if seconds <= 0:
        raise ValueError("timed updates do not advance in time")
    n = rest[-1].num_updates - first.num_updates
    return n / seconds, sum(u.words for u in rest) / seconds


def plan_updates(
    done: int, updates_per_second: float, seconds_left: float, restart_seconds: float, margin: float = 0.95
) -> int:
    """The last update of a schedule that ends within ``seconds_left`` (after a restart that
    costs ``restart_seconds``): at least one more update than ``done``."""
    more = math.floor(max(0.0, seconds_left - restart_seconds) * updates_per_second * margin)
    return done + max(1, more)


def decay_from(lr: float, warmup: int, total: int, reached: int, new_total: int) -> float:
    """The peak learning rate that makes polynomial_decay (power 1, to 0) with ``new_total`` updates give,
    at update ``reached``, the learning rate that ``lr`` with ``total`` updates gives there: the schedule
    goes on from where it is, in a straight line to 0 at ``new_total``.  fairseq's formula after the
    warm-up: lr * (total - n) / (total - warmup)."""
    return lr * (total - reached) / (total - warmup) * (new_total - warmup) / (new_total - reached)


def lr_of(args: Sequence[str]) -> Optional[float]:
    """The single ``--lr`` among fairseq-train's options, or None (absent, or one per epoch)."""
    for i, arg in enumerate(args):
        value = (
            arg.split("=", 1)[1]
            if arg.startswith("--lr=")
            else args[i + 1]
            if arg == "--lr" and i + 1 < len(args)
            else None
        )
        if value is not None:
            try:
                return float(value)
            except ValueError:
                return None
    return None


def with_lr(args: Sequence[str], lr: float) -> List[str]:
    out, skip = [], False
    for i, arg in enumerate(args):
        if skip:
            skip = False
        elif arg == "--lr":
            out += ["--lr", f"{lr:.8g}"]
            skip = True
        elif arg.startswith("--lr="):
            out.append(f"--lr={lr:.8g}")
        else:
            out.append(arg)
    return out


def _owned(args: Sequence[str]) -> List[str]:
    return [a for a in args if a.split("=", 1)[0] in OWNED_OPTIONS]


_DONE = re.compile(r"done training in ([0-9.]+) seconds")


def run_fairseq(cmd: List[str], log, on_update: Callable[[Update], None]):
    """Run fairseq-train, its output appended to ``log``; ``on_update`` for every train_inner line.
    Returns its exit status and the training time it reports ("done training in N seconds"), which is
    what its ``--stop-time-hours`` counts, summed over resumed runs."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, bufsize=1)
    assert proc.stdout is not None
    trained = 0.0
    for line in proc.stdout:
        log.write(line)
        update = parse_line(line, time.monotonic())
        if update is not None:
            on_update(update)
        done = _DONE.search(line)
        if done:
            trained = float(done.group(1))
    log.flush()
    return proc.wait(), trained


def train(args) -> int:
    from tqdm import tqdm

    passthrough = list(args.fairseq_args)
    if passthrough and passthrough[0] == "--":
        passthrough = passthrough[1:]
    clash = _owned(passthrough)
    if clash:
        print(f"demo_plan: error: {', '.join(clash)} are set by the plan; leave them out", file=sys.stderr)
        return 2
    budget = args.minutes * 60.0
    start = time.monotonic()
    deadline = start + budget
    plan = Plan(minutes=args.minutes, warmup=args.warmup)
    owned = [
        # the checkpoint is written when each process stops (fairseq saves on --max-update / stop time),
        # not at epoch ends, which the measured speed does not include
        "--save-dir",
        args.save_dir,
        "--save-interval",
        "1000000",
        "--log-format",
        "json",
        "--log-interval",
        "1",
        "--lr-scheduler",
        "polynomial_decay",
        "--warmup-updates",
        str(args.warmup),
    ]
    base = [sys.executable, "-m", "fairseq_cli.train"] + passthrough + owned
    log = open(args.log, "w", encoding="utf-8")

    # 1. measure: the first updates of the run itself, within the warm-up (the decay's end does not
    # matter there: polynomial_decay only warms up until update --warmup-updates)
    first_updates = max(3, min(args.warmup, args.measure_updates))
    measure_seconds = min(args.measure_seconds, 0.25 * budget)
    cmd1 = base + [
        "--max-update",
        str(first_updates),
        "--total-num-update",
        str(args.warmup + 1),
        "--stop-time-hours",
        f"{measure_seconds / 3600:.6f}",
    ]
    plan.commands.append(cmd1)
    timed: List[Update] = []
    bar = tqdm(total=first_updates, desc="measuring speed", unit="upd", dynamic_ncols=True, file=sys.stderr)

    def first(update: Update):
        timed.append(update)
        bar.update(update.num_updates - bar.n)

    t_launch = time.monotonic()
    rc, trained = run_fairseq(cmd1, log, first)
    t_exit = time.monotonic()
    bar.close()
    if rc != 0:
        print(f"demo_plan: fairseq-train failed (exit {rc}); see {args.log}", file=sys.stderr)
        return rc
    if len(timed) < 2:
        print(
            f"demo_plan: error: fairseq-train logged {len(timed)} update(s) in the first "
            f"{measure_seconds:.0f} s; too slow to plan (see {args.log})",
            file=sys.stderr,
        )
        return 2
    ups, wps = measure(timed)
    done = timed[-1].num_updates
    # a restart costs what the first process spent before its first update and after its last one
    per_update = 1.0 / ups
    restart = max(0.0, timed[0].time - t_launch - per_update) + (t_exit - timed[-1].time)
    total = plan_updates(done, ups, deadline - time.monotonic(), restart, args.margin)
    plan.measured_updates, plan.updates_per_second, plan.words_per_second = done, ups, wps
    plan.planned_updates = plan.first_planned_updates = total
    minutes = f"{args.minutes:g} minute{'' if args.minutes == 1 else 's'}"
    print(
        f"~{total} updates in {minutes} on this machine ({ups:.2f} updates/s, {wps:,.0f} words/s over the "
        f"first {done} updates, {restart:.0f} s to restart fairseq-train); warm-up {args.warmup} updates, "
        f"then the learning rate decays linearly to 0 at update {total}",
        flush=True,
    )
    if total <= args.warmup:
        print(
            f"note: the budget ends inside the warm-up ({args.warmup} updates): a longer DEMO_MINUTES, or a "
            "shorter DEMO_WARMUP, gives the learning rate time to decay",
            flush=True,
        )

    # 2. finish: resume from checkpoint_last.pt with the schedule sized to the time left.  With time enough,
    # stop halfway, measure again and re-plan: a machine shared with other work, or one that throttles,
    # changes speed.  The new schedule continues from the learning rate reached (decay_from).
    lr0 = lr_of(passthrough)
    replan = args.replan_minutes > 0 and lr0 is not None and deadline - time.monotonic() >= args.replan_minutes * 60
    # fairseq's --stop-time-hours counts its own training time, summed over resumed runs (not start-ups)
    previous = trained
    seen: List[Update] = []
    bar = tqdm(total=total, initial=done, desc="training", unit="upd", dynamic_ncols=True, file=sys.stderr)

    def rest(update: Update):
        seen.append(update)
        bar.update(update.num_updates - bar.n)
        postfix = {}
        if update.loss is not None:
            postfix["loss"] = f"{update.loss:.2f}"
        if update.wps is not None:
            postfix["words/s"] = f"{update.wps:,.0f}"
        bar.set_postfix(postfix, refresh=False)

    def finish_cmd(fairseq_args, stop_update, total_update, time_share=1.0):
        stop_hours = (previous + time_share * max(1.0, deadline - time.monotonic())) / 3600
        return (
            [sys.executable, "-m", "fairseq_cli.train"]
            + fairseq_args
            + owned
            + [
                "--max-update",
                str(stop_update),
                "--total-num-update",
                str(total_update),
                "--stop-time-hours",
                f"{stop_hours:.6f}",
            ]
        )

    if replan:
        # halfway in time, not in updates: a first plan that was off (by a speed that changed, or a
        # measurement too short) is still corrected with half of the time left; and at the latest three
        # quarters of the way to the planned end, so that a faster machine has learning rate left to go on from
        cmd2 = finish_cmd(passthrough, total - (total - done) // 4, total, time_share=0.5)
        plan.commands.append(cmd2)
        t_launch = time.monotonic()
        rc, trained = run_fairseq(cmd2, log, rest)
        t_exit = time.monotonic()
        if rc != 0:
            bar.close()
            print(f"demo_plan: fairseq-train failed (exit {rc}); see {args.log}", file=sys.stderr)
            return rc
        previous += trained
        if len(seen) >= 4:
            ups2, _ = measure(seen)
            reached = seen[-1].num_updates
            restart2 = max(0.0, seen[0].time - t_launch - 1.0 / ups2) + (t_exit - seen[-1].time)
            new_total = plan_updates(reached, ups2, deadline - time.monotonic(), restart2, args.margin)
            # in the warm-up (a short budget) the warm-up goes on as it was; after it, the decay goes on from
            # the learning rate reached
            new_lr = lr0 if reached <= args.warmup else decay_from(lr0, args.warmup, total, reached, new_total)
            bar.write(
                f"re-planned at update {reached}: ~{new_total} updates ({ups2:.2f} updates/s since update "
                f"{done}); the learning rate decays linearly to 0 at update {new_total}"
            )
            plan.replanned_updates, plan.planned_updates = new_total, new_total
            total, passthrough = new_total, with_lr(passthrough, new_lr)
            bar.total = total
            bar.refresh()
    cmd2 = finish_cmd(passthrough, total, total)
    plan.commands.append(cmd2)
    rc, _ = run_fairseq(cmd2, log, rest)
    bar.close()
    log.close()
    end = time.monotonic()
    if rc != 0:
        print(f"demo_plan: fairseq-train failed (exit {rc}); see {args.log}", file=sys.stderr)
        return rc
    plan.updates_done = seen[-1].num_updates if seen else done
    plan.train_seconds = end - start
    plan.deadline_missed_by = max(0.0, end - deadline)
    all_updates = timed + seen
    plan.words_per_second_overall = sum(u.words for u in all_updates) / max(1e-9, plan.train_seconds)
    with open(args.plan, "w", encoding="utf-8") as f:
        json.dump(asdict(plan), f, indent=1)
    late = f", {plan.deadline_missed_by:.0f} s over the budget" if plan.deadline_missed_by >= 1 else ""
    print(
        f"trained {plan.updates_done} of ~{total} planned updates in {plan.train_seconds / 60:.1f} minutes "
        f"({plan.words_per_second_overall:,.0f} words/s including start-up and checkpoints{late})",
        flush=True,
    )
    return 0


def generate(args) -> int:
    """fairseq-generate with its hypotheses (stdout) in ``--out``, its log in ``--out``.err, and a tqdm bar
    over the ``--total`` sentences (counted from the H- lines as they come) instead of fairseq's log."""
    from tqdm import tqdm

    passthrough = list(args.fairseq_args)
    if passthrough and passthrough[0] == "--":
        passthrough = passthrough[1:]
    cmd = [sys.executable, "-m", "fairseq_cli.generate"] + passthrough + ["--log-format", "simple"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    bar = tqdm(total=args.total, desc="translating", unit="sent", dynamic_ncols=True, file=sys.stderr)
    with open(args.out, "w", encoding="utf-8") as out, open(args.out + ".err", "w", encoding="utf-8") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env, bufsize=1)
        assert proc.stdout is not None
        for text in proc.stdout:
            out.write(text)
            if text.startswith("H-"):
                bar.update(1)
        rc = proc.wait()
    bar.close()
    if rc != 0:
        with open(args.out + ".err", encoding="utf-8") as f:
            sys.stderr.write(f.read()[-3000:])
        print(f"demo_plan: fairseq-generate failed (exit {rc}); its log: {args.out}.err", file=sys.stderr)
    return rc


def summary(args) -> int:
    with open(args.plan, encoding="utf-8") as f:
        plan = json.load(f)
    with open(args.bleu, encoding="utf-8") as f:
        bleu = json.load(f)
    print(f"BLEU {bleu['score']:.1f} (sacreBLEU, detokenized; {bleu.get('signature', '')})")
    print(
        f"updates: {plan['updates_done']} in {plan['train_seconds'] / 60:.1f} minutes of training "
        f"(planned ~{plan['planned_updates']} for a {plan['minutes']:g}-minute budget)"
    )
    print(
        f"this machine: {plan['words_per_second']:,.0f} words/s ({plan['updates_per_second']:.2f} updates/s; "
        "words = target subword tokens, fairseq's wps)"
    )
    if args.longer:
        print(f"train longer: DEMO_MINUTES=30 make demo   ({args.longer})")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fconv_plugin.cli.demo_plan", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="fairseq-train for --minutes with a schedule that ends on time")
    t.add_argument("--minutes", type=float, required=True, help="wall-clock budget of the whole training stage")
    t.add_argument("--warmup", type=int, default=40, help="linear warm-up updates (polynomial_decay)")
    t.add_argument("--save-dir", required=True, help="fairseq's --save-dir")
    t.add_argument("--log", required=True, help="where fairseq's own log goes")
    t.add_argument("--plan", required=True, help="JSON file: the plan and what was done")
    t.add_argument("--measure-updates", type=int, default=20, help="updates timed before planning (within the warm-up)")
    t.add_argument(
        "--measure-seconds",
        type=float,
        default=90.0,
        help="at most this much training before planning (and at most a quarter of the budget)",
    )
    t.add_argument("--margin", type=float, default=0.95, help="plan this fraction of the updates that fit")
    t.add_argument(
        "--replan-minutes",
        type=float,
        default=4.0,
        help="with at least this much time left after planning, stop halfway, measure again and re-plan (0: never)",
    )
    t.add_argument("fairseq_args", nargs=argparse.REMAINDER, help="-- then fairseq-train's data and options")
    g = sub.add_parser("generate", help="fairseq-generate with a progress bar over the test sentences")
    g.add_argument("--out", required=True, help="fairseq-generate's output (S-/H-/P- lines); its log goes to OUT.err")
    g.add_argument("--total", type=int, required=True, help="sentences to translate (for the bar and its ETA)")
    g.add_argument("fairseq_args", nargs=argparse.REMAINDER, help="-- then fairseq-generate's data and options")
    s = sub.add_parser("summary", help="the end-of-demo lines from plan.json and sacrebleu's JSON")
    s.add_argument("--plan", required=True)
    s.add_argument("--bleu", required=True)
    s.add_argument("--longer", default="", help="what a longer budget gave, for the 'train longer' line")
    args = parser.parse_args(argv)
    return {"train": train, "generate": generate, "summary": summary}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
