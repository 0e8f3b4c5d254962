"""What fconv_plugin/cli/cpu_distributed.py and the fairseq_fixes entries ``torchrun`` and
``resume_broadcast`` change, against fairseq's own functions (the wrappers' ``__wrapped__``);
fconv-ext-train-cpu's torchrun command.  Training runs under torchrun: tests/integration/test_torchrun.py."""

import multiprocessing
import sys

import pytest
import torch
from fairseq import options
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.distributed import utils as distributed_utils
from omegaconf import OmegaConf

from helpers import BIN, USER_DIR
from fconv_plugin.cli import cpu_distributed
from fconv_plugin.cli.cpu_distributed import DistributedSetupError, use_torchrun_environment

TORCHRUN_ENV = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", "WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}


def fairseq_cfg(*extra):
    """fairseq-train's configuration for the tiny model on CPUs, as fairseq_cli.train builds it."""
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(
        parser, ["unused-data", "--arch", "fconv_ext_tiny", "--user-dir", USER_DIR, "--cpu", *extra]
    )
    return convert_namespace_to_omegaconf(args)


def clear_launcher_environment(monkeypatch):
    for name in list(TORCHRUN_ENV) + ["SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "TORCHELASTIC_ERROR_FILE"]:
        monkeypatch.delenv(name, raising=False)


# --- torchrun: fairseq's call_main ------------------------------------------------------------


def test_installed_in_front_of_fairseqs_call_main():
    assert distributed_utils.call_main._fconv_ext_fix == "torchrun"
    assert distributed_utils._broadcast_object_slow._fconv_ext_fix == "resume_broadcast"


def test_torchrun_workers_get_their_rank_where_fairseq_trains_each_alone(monkeypatch):
    clear_launcher_environment(monkeypatch)
    for name, value in TORCHRUN_ENV.items():
        monkeypatch.setenv(name, value)
    # fairseq: CPU default --distributed-world-size 1, so torchrun's environment is not read
    cfg = fairseq_cfg()
    assert cfg.distributed_training.distributed_world_size == 1
    distributed_utils.infer_init_method(cfg.distributed_training)
    assert cfg.distributed_training.distributed_init_method is None  # every worker trains alone
    # fairseq with --distributed-world-size 2: rank % torch.cuda.device_count()
    with pytest.raises(ZeroDivisionError):
        distributed_utils.infer_init_method(fairseq_cfg("--distributed-world-size", "2").distributed_training)
    # the plugin: torchrun's ranks, gloo and legacy_ddp on CPUs
    for extra in ([], ["--distributed-world-size", "2"]):
        cfg = fairseq_cfg(*extra)
        changed = use_torchrun_environment(cfg)
        dt = cfg.distributed_training
        assert (
            dt.distributed_init_method,
            dt.distributed_world_size,
            dt.distributed_rank,
            dt.device_id,
            dt.distributed_no_spawn,
            dt.ddp_backend,
            dt.distributed_backend,
        ) == ("env://", 2, 1, 1, True, "legacy_ddp", "gloo")
        assert "distributed_init_method=env://" in changed and "ddp_backend=legacy_ddp" in changed


def test_what_fairseq_runs_itself_is_left_alone(monkeypatch):
    clear_launcher_environment(monkeypatch)
    unchanged = OmegaConf.to_container(fairseq_cfg().distributed_training)
    cases = [
        ({}, []),  # one process, no launcher
        (dict(TORCHRUN_ENV, WORLD_SIZE="1", RANK="0", LOCAL_RANK="0"), []),  # torchrun, one worker
        (TORCHRUN_ENV, ["--distributed-init-method", "tcp://127.0.0.1:1234", "--distributed-rank", "1"]),
        ({"SLURM_JOB_NODELIST": "node1"}, ["--distributed-world-size", "2"]),
    ]  # fairseq's Slurm path
    for environ, extra in cases:
        cfg = fairseq_cfg(*extra)
        before = OmegaConf.to_container(cfg.distributed_training)
        assert use_torchrun_environment(cfg, environ) == []
        assert OmegaConf.to_container(cfg.distributed_training) == before, (environ, extra)
    assert OmegaConf.to_container(fairseq_cfg().distributed_training) == unchanged
    # other choices of the user are kept on CPUs
    cfg = fairseq_cfg("--ddp-backend", "no_c10d", "--distributed-backend", "mpi")
    use_torchrun_environment(cfg, TORCHRUN_ENV)
    assert (cfg.distributed_training.ddp_backend, cfg.distributed_training.distributed_backend) == ("no_c10d", "mpi")


def test_world_size_without_torchrun_says_what_to_run(monkeypatch):
    """fairseq-train --cpu --distributed-world-size 2: fairseq stops on an assertion about GPUs
    (or, with --distributed-port, trains one process configured for two); the plugin says
    to start the workers with torchrun."""
    clear_launcher_environment(monkeypatch)
    called = []
    fairseq_call_main = distributed_utils.call_main.__wrapped__
    with pytest.raises(AssertionError, match="world size is 2 but have 0 available devices"):
        fairseq_call_main(fairseq_cfg("--distributed-world-size", "2"), called.append)
    fairseq_call_main(fairseq_cfg("--distributed-world-size", "2", "--distributed-port", "12345"), called.append)
    assert len(called) == 1 and called[0].distributed_training.distributed_init_method is None
    for extra in ([], ["--distributed-port", "12345"]):
        with pytest.raises(DistributedSetupError, match=r"torchrun --nproc-per-node 2 \$\(which fairseq-train\)"):
            distributed_utils.call_main(fairseq_cfg("--distributed-world-size", "2", *extra), called.append)
    assert len(called) == 1
    distributed_utils.call_main(fairseq_cfg(), called.append)  # one process: fairseq's, main runs
    assert len(called) == 2


# --- resume_broadcast: rank 0's checkpoint state to the other ranks ---------------------------


def _broadcast_child(rank, store_path, state, queue):
    """One of two gloo ranks: rank 0 sends ``state`` twice, rank 1 receives it with fairseq's
    receiver and then with the plugin's; what rank 1 got goes into ``queue``."""
    torch.set_num_threads(1)
    store = torch.distributed.FileStore(store_path, 2)
    torch.distributed.init_process_group("gloo", store=store, rank=rank, world_size=2)
    group = torch.distributed.group.WORLD
    got = {}
    for label, receiver in (
        ("fairseq", distributed_utils._broadcast_object_slow.__wrapped__),
        ("plugin", distributed_utils._broadcast_object_slow),
    ):
        distributed_utils._broadcast_object_slow = receiver  # this child only
        try:
            obj = distributed_utils.broadcast_object(
                state if rank == 0 else None, src_rank=0, group=group, dist_device=torch.device("cpu")
            )
            got[label] = obj
        except Exception as err:  # what fairseq's receiver raises is the result here
            got[label] = f"{type(err).__name__}: {err}"
            if rank == 1:  # the tensors rank 0 sends after the object are still to be received
                distributed_utils.broadcast_tensors(None, 0, group, torch.device("cpu"))
        torch.distributed.barrier()
    if rank == 1:
        queue.put(
            {
                k: (
                    v
                    if isinstance(v, str)
                    else {
                        "cfg": OmegaConf.to_container(v["cfg"]),
                        "model": v["model"],
                        "cfg_type": type(v["cfg"]).__name__,
                    }
                )
                for k, v in got.items()
            }
        )
    torch.distributed.destroy_process_group()


@pytest.mark.skipif(sys.platform != "linux", reason="forks two gloo ranks")
def test_resumed_state_reaches_the_other_ranks(tmp_path):
    """What fairseq's load_checkpoint_to_cpu gives rank 0 (an omegaconf DictConfig, tensors):
    fairseq's receiver refuses it under torch's weights-only default, the plugin's gets it whole."""
    cfg = OmegaConf.create(
        {"model": {"_name": "fconv_ext", "dropout": 0.1}, "task": {"data": "x"}}, flags={"allow_objects": True}
    )  # as load_checkpoint_to_cpu makes it
    state = {"cfg": cfg, "model": {"w": torch.arange(6.0).view(2, 3)}, "extra_state": {"epoch": 2}}
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_broadcast_child, args=(rank, str(tmp_path / "store"), state, queue)) for rank in (0, 1)
    ]
    for p in procs:
        p.start()
    try:
        result = queue.get(timeout=180)
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    assert [p.exitcode for p in procs] == [0, 0]
    assert isinstance(result["fairseq"], str) and "Weights only load failed" in result["fairseq"]
    assert result["plugin"]["cfg_type"] == "DictConfig" and result["plugin"]["cfg"] == OmegaConf.to_container(cfg)
    assert torch.equal(result["plugin"]["model"]["w"], state["model"]["w"])


# --- fconv-ext-train-cpu: the torchrun command ------------------------------------------------


def test_train_cpu_is_the_torchrun_command():
    command, variables = cpu_distributed.torchrun_command(3, ["DATA", "--arch", "fconv_ext_tiny"], threads=2)
    assert command == [
        f"{BIN}/torchrun",
        "--standalone",
        "--nproc-per-node",
        "3",
        f"{BIN}/fairseq-train",
        "DATA",
        "--arch",
        "fconv_ext_tiny",
        "--user-dir",
        USER_DIR,
        "--cpu",
    ]
    assert variables == {"OMP_NUM_THREADS": "2"}
    command, _ = cpu_distributed.torchrun_command(2, ["DATA", "--user-dir", "mine", "--cpu"], threads=1)
    assert command[-4:] == ["DATA", "--user-dir", "mine", "--cpu"]
