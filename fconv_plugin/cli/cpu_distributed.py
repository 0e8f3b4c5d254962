"""Data-parallel fairseq-train on CPUs: N worker processes, gloo, one machine.

    fconv-ext-train-cpu --nproc 2 DATA --arch fconv_ext_iwslt_de_en ...   # fairseq-train options

fairseq's own launcher does not do this: ``--cpu --distributed-world-size 2`` spawns
zero workers and exits 0, and its default ``--ddp-backend c10d`` hands GPU device ids
to DistributedDataParallel (REFERENCE.md problem 9).  This launcher starts one
``fairseq-train`` per rank with what works on CPUs: ``--ddp-backend legacy_ddp
--distributed-backend gloo --distributed-no-spawn``, a TCP rendezvous on a free
localhost port, ``--distributed-world-size N --distributed-rank R``, the plugin as
``--user-dir``, and the available cores split between the workers.  Rank 0 prints
fairseq's log; the others log to ``SAVE_DIR/worker-R.log``.  It waits for all workers
and stops them all when one fails.

Gradients are averaged over workers exactly as over ``--update-freq`` steps, so N
workers train like one process with ``--update-freq N`` on the same batches.
"""

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from typing import List

from .fairseq_wrap import PLUGIN_DIR

FORBIDDEN = ("--distributed-world-size", "--distributed-rank", "--distributed-init-method",
             "--distributed-backend", "--ddp-backend", "--distributed-no-spawn", "--distributed-port")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _option(argv: List[str], name: str, default=None):
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return default


def worker_commands(nproc: int, train_args: List[str], port: int) -> List[List[str]]:
    for a in train_args:
        if a.split("=")[0] in FORBIDDEN:
            raise SystemExit(f"fconv-ext-train-cpu: error: {a.split('=')[0]} is set by the launcher; remove it")
    args = list(train_args)
    if _option(args, "--user-dir") is None:
        args += ["--user-dir", PLUGIN_DIR]
    if "--cpu" not in args:
        args.append("--cpu")
    base = [sys.executable, "-m", "fairseq_cli.train"] + args + [
        "--ddp-backend", "legacy_ddp", "--distributed-backend", "gloo", "--distributed-no-spawn",
        "--distributed-init-method", f"tcp://127.0.0.1:{port}", "--distributed-world-size", str(nproc),
    ]
    return [base + ["--distributed-rank", str(rank)] for rank in range(nproc)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fconv-ext-train-cpu", description=__doc__.split("\n\n")[0],
                                     usage="fconv-ext-train-cpu --nproc N DATA [fairseq-train options]")
    parser.add_argument("--nproc", type=int, required=True, help="number of worker processes (ranks)")
    parser.add_argument("--threads-per-worker", type=int, default=None,
                        help="torch threads per worker (default: cores / nproc, at least 1)")
    args, train_args = parser.parse_known_args(argv)
    if args.nproc < 1:
        parser.error("--nproc must be >= 1")
    threads = args.threads_per_worker or max(1, (os.cpu_count() or 1) // args.nproc)
    save_dir = _option(train_args, "--save-dir", "checkpoints")
    os.makedirs(save_dir, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    procs = []
    for rank, cmd in enumerate(worker_commands(args.nproc, train_args, free_port())):
        out = None if rank == 0 else open(os.path.join(save_dir, f"worker-{rank}.log"), "w")
        procs.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT if out else None))
    failed = 0
    try:
        while any(p.poll() is None for p in procs):
            failed = next((p.returncode for p in procs if p.returncode not in (None, 0)), 0)
            if failed:
                break
            time.sleep(0.2)
        failed = failed or next((p.returncode for p in procs if p.returncode), 0)
    except KeyboardInterrupt:
        failed = 130
    if failed:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait()
        print(f"fconv-ext-train-cpu: a worker failed (exit {failed}); logs of ranks > 0 are in "
              f"{save_dir}/worker-*.log", file=sys.stderr)
    return failed


if __name__ == "__main__":
    sys.exit(main())
