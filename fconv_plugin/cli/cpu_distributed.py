"""Data-parallel fairseq-train under torchrun, on CPUs and GPUs, one machine or several.

torchrun (``torch.distributed.run``) starts the workers, joins machines (``--nnodes``,
``--rdzv-backend c10d``) and restarts the whole group when a worker dies
(``--max-restarts``); fairseq-train does the training:

    torchrun --nproc-per-node 2 $(which fairseq-train) DATA --user-dir fconv_plugin --cpu ...

What fairseq needs for that is :func:`call_main`, which the plugin installs in front of
fairseq's ``call_main`` (``fconv_plugin.fairseq_fixes``, entry ``torchrun``): fairseq
reads torchrun's environment only when ``--distributed-world-size`` is above 1 (its CPU
default is 1, so every worker trained alone) and then divides by
``torch.cuda.device_count()`` (zero on CPUs).  Resuming needs the entry
``resume_broadcast`` too, and restarts (``--max-restarts``) need
``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` in torchrun's environment: torch's rendezvous
keeps one store for all attempts, and a restarted worker can read the address a worker
of the previous attempt published there (pytorch/pytorch#135712, #167288).

``fconv-ext-train-cpu --nproc N DATA ...`` is that torchrun command for one machine, with the
settings easy to get wrong filled in: it prints it (``--standalone``, the plugin as
``--user-dir``, ``--cpu``, ``OMP_NUM_THREADS`` = cores / N so that N workers do not share cores)
and replaces itself with it.
"""

import argparse
import logging
import os
import shlex
import sys
from typing import List, Mapping, Optional, Tuple

from .fairseq_wrap import PLUGIN_DIR

logger = logging.getLogger("fconv_plugin.torchrun")

# what torchrun (and torch.distributed.launch before it) puts in every worker's environment;
# fairseq's infer_init_method looks for the same four
TORCHRUN_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK")
SLURM_VARIABLES = ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST")
# DistributedDataParallel and NCCL need GPUs; on CPUs fairseq's legacy_ddp and gloo work
GPU_ONLY_DDP_BACKENDS = ("c10d", "pytorch_ddp")


class DistributedSetupError(ValueError):
    """A data-parallel setting fairseq cannot run here; the message says what to run instead."""


def started_by_torchrun(environ: Optional[Mapping[str, str]] = None) -> bool:
    env = os.environ if environ is None else environ
    return all(name in env for name in TORCHRUN_VARIABLES)


def _on_cpu(cfg) -> bool:
    import torch

    return bool(cfg.common.cpu) or not torch.cuda.is_available()


def use_torchrun_environment(cfg, environ: Optional[Mapping[str, str]] = None) -> List[str]:
    """Before fairseq's ``call_main``: take the ranks from torchrun's environment.

    In a process started by torchrun with ``WORLD_SIZE`` > 1 and no
    ``--distributed-init-method``: ``env://``, world size and rank from torchrun, the GPU
    from ``LOCAL_RANK``, no processes spawned by fairseq, and on CPUs ``--ddp-backend
    legacy_ddp --distributed-backend gloo`` in place of the GPU-only ``c10d`` /
    ``pytorch_ddp`` and ``nccl`` (neither can run on CPUs; other choices are kept).  Returns
    the settings changed, as ``name=value``.  Without torchrun and with a
    ``--distributed-world-size`` larger than the number of GPUs (fairseq spawns one worker
    per GPU, so this always fails), raises :class:`DistributedSetupError` saying to start
    the workers with torchrun.  Everything else (Slurm, TPUs, pipelines, an explicit
    init method, one process) is left to fairseq.
    """
    import torch

    env = os.environ if environ is None else environ
    dt = cfg.distributed_training
    if dt.distributed_init_method is not None or cfg.common.tpu or dt.pipeline_model_parallel:
        return []
    if not started_by_torchrun(env):
        if any(name in env for name in SLURM_VARIABLES):
            return []
        gpus = torch.cuda.device_count()
        if dt.distributed_world_size > max(1, gpus):
            raise DistributedSetupError(_world_size_message(dt.distributed_world_size, gpus))
        return []
    world_size = int(env["WORLD_SIZE"])
    if world_size <= 1:
        return []  # one worker: fairseq trains it as a single process
    changes = [
        ("distributed_init_method", "env://"),
        ("distributed_world_size", world_size),
        ("distributed_rank", int(env["RANK"])),
        ("device_id", int(env.get("LOCAL_RANK", int(env["RANK"]) % max(1, torch.cuda.device_count())))),
        ("distributed_no_spawn", True),
    ]
    if _on_cpu(cfg):
        if dt.ddp_backend in GPU_ONLY_DDP_BACKENDS:
            changes.append(("ddp_backend", "legacy_ddp"))
        if dt.distributed_backend == "nccl":
            changes.append(("distributed_backend", "gloo"))
    said = []
    for name, value in changes:
        if getattr(dt, name) != value:
            setattr(dt, name, value)
            said.append(f"{name}={value}")
    if said and int(env["RANK"]) == 0:
        logger.info("started by torchrun (%d workers): %s", world_size, ", ".join(said))
    return said


def call_main(fairseq_call_main, cfg, main, **kwargs):
    """fairseq's ``call_main`` after :func:`use_torchrun_environment`.  Under torchrun, fairseq's
    process group is made as soon as the ranks have met (:func:`_create_fairseqs_group_now`),
    and an exception is also written where torchrun's failure report reads it
    (torchelastic's ``record``, which fairseq-train does not use), so the report names the
    cause, not only the rank."""
    if use_torchrun_environment(cfg):
        previous = kwargs.get("after_distributed_init_fn")

        def after_distributed_init(cfg):
            _create_fairseqs_group_now()
            return previous(cfg) if previous is not None else cfg

        kwargs["after_distributed_init_fn"] = after_distributed_init
    if started_by_torchrun() and os.environ.get("TORCHELASTIC_ERROR_FILE"):
        from torch.distributed.elastic.multiprocessing.errors import record

        return record(fairseq_call_main)(cfg, main, **kwargs)
    return fairseq_call_main(cfg, main, **kwargs)


def _create_fairseqs_group_now() -> None:
    """fairseq makes its process group (``dist.new_group()``, which every rank must join) when
    it builds the trainer, after loading the data and building the model.  A rank that failed
    before that (a missing data directory on one machine) left the others waiting to join for
    torch's timeout, 30 minutes.  Made right after the process group starts, while every rank
    is alive, the group's connections exist and the others' next collective fails at once
    when a rank ends ("Connection closed by peer")."""
    from fairseq.distributed import utils as distributed_utils

    distributed_utils.get_global_group()


def _world_size_message(world_size: int, gpus: int) -> str:
    return (
        f"--distributed-world-size {world_size}: fairseq-train starts one worker per GPU and this machine has "
        f"{gpus}, so no worker would run. Start the {world_size} workers with torchrun instead and leave out "
        f"--distributed-world-size (torchrun tells fairseq the world size):\n"
        f"    torchrun --nproc-per-node {world_size} $(which fairseq-train) DATA --user-dir fconv_plugin "
        f"--cpu ...\n"
        f"(several machines: torchrun --nnodes; README.md, 'Several processes')"
    )


# --- fconv-ext-train-cpu: the torchrun command for one machine --------------------------------


def _has_option(argv: List[str], name: str) -> bool:
    return any(a == name or a.startswith(name + "=") for a in argv)


def torchrun_command(nproc: int, train_args: List[str], threads: int) -> Tuple[List[str], Mapping[str, str]]:
    """The command and the environment variables that train ``train_args`` with ``nproc`` CPU workers."""
    bindir = os.path.dirname(sys.executable)
    torchrun = os.path.join(bindir, "torchrun")
    launcher = [torchrun] if os.access(torchrun, os.X_OK) else [sys.executable, "-m", "torch.distributed.run"]
    fairseq_train = os.path.join(bindir, "fairseq-train")
    program = [fairseq_train] if os.path.isfile(fairseq_train) else ["-m", "fairseq_cli.train"]
    args = list(train_args)
    if not _has_option(args, "--user-dir"):
        args += ["--user-dir", PLUGIN_DIR]
    if "--cpu" not in args:
        args.append("--cpu")
    command = launcher + ["--standalone", "--nproc-per-node", str(nproc)] + program + args
    return command, {"OMP_NUM_THREADS": str(threads)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="fconv-ext-train-cpu",
        usage="fconv-ext-train-cpu --nproc N DATA [fairseq-train options]",
        description="Data-parallel fairseq-train on this machine's CPUs: prints the torchrun command that does it "
        "and runs it in its place. For several machines or restarts after a failure, run torchrun "
        "yourself (README.md, 'Several processes').",
    )
    parser.add_argument("--nproc", type=int, required=True, help="number of worker processes (ranks)")
    parser.add_argument(
        "--threads-per-worker",
        type=int,
        default=None,
        help="OMP_NUM_THREADS of each worker (default: cores / nproc, at least 1)",
    )
    args, train_args = parser.parse_known_args(argv)
    if args.nproc < 1:
        parser.error("--nproc must be >= 1")
    if args.threads_per_worker is not None and args.threads_per_worker < 1:
        parser.error("--threads-per-worker must be >= 1")
    threads = args.threads_per_worker or max(1, (os.cpu_count() or 1) // args.nproc)
    command, variables = torchrun_command(args.nproc, train_args, threads)
    shown = " ".join(f"{k}={v}" for k, v in variables.items()) + " " + shlex.join(command)
    print(f"fconv-ext-train-cpu: running {shown}", file=sys.stderr, flush=True)
    os.environ.update(variables)
    os.execv(command[0], command)
    return 1  # not reached: execv replaces this process or raises


if __name__ == "__main__":
    sys.exit(main())
