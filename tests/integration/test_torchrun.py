"""Data-parallel training under torchrun (fconv_plugin/cli/cpu_distributed.py and the
fairseq_fixes entries ``torchrun`` and ``resume_broadcast``), each run bounded in time, on CPUs with
gloo: 2 torchrun workers train like one process with ``--update-freq 2`` (weights, validation loss
and BLEU), so do 2 torchrun "nodes" on localhost; a worker killed with SIGKILL is restarted with its
group and the run ends with the weights of an uninterrupted one; a rank that keeps failing ends the
run with its error.  What the plugin changes, without training: tests/unit/cli/test_cpu_distributed.py."""

import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from helpers import BIN, USER_DIR, run

TIMEOUT = 600  # seconds, for each command of the slow tests (helpers.run's limit too)


# --- training runs under torchrun ------------------------------------------------------------


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def weights(path):
    return torch.load(path, weights_only=True)["model"]


def max_difference(a_path, b_path):
    a, b = weights(a_path), weights(b_path)
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def validation(log):
    """(loss, bleu) of the last validation that fairseq-train logged."""
    found = re.findall(r"\| valid \| epoch \d+ \| valid on 'valid' subset \| loss ([\d.]+) .*?\| bleu ([\d.]+)", log)
    assert found, log[-3000:]
    return tuple(float(x) for x in found[-1])


TORCHRUN = [f"{BIN}/torchrun", "--monitor-interval", "0.5"]
TRAIN = f"{BIN}/fairseq-train"
RESTART_ENV = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}  # torch's shared rendezvous store and restarts


def fine_tuning(data_bin, fconv_ext_tiny_run, criterion="bleu"):
    """fconv_ext_tiny_run's model trained 4 more updates, validation BLEU at the end (a model that
    translates a little, so that the BLEU compared is not 0); dropout off, as data-parallel
    workers and --update-freq steps draw different dropout masks."""
    args = [
        str(data_bin),
        "--user-dir",
        USER_DIR,
        "--arch",
        "fconv_ext_tiny",
        "--cpu",
        "--task",
        "fconv_translation",
        "--restore-file",
        str(fconv_ext_tiny_run / "checkpoint_best.pt"),
        "--reset-optimizer",
        "--reset-dataloader",
        "--reset-meters",
        "--optimizer",
        "nag",
        "--lr",
        "0.25",
        "--clip-norm",
        "0.1",
        "--max-tokens",
        "1000",
        "--dropout",
        "0",
        "--max-update",
        "4",
        "--seed",
        "3",
        "--no-progress-bar",
        "--log-interval",
        "1",
        "--no-epoch-checkpoints",
    ]
    if criterion == "bleu":
        return args + ["--eval-bleu-detok", "space", "--eval-bleu-args", '{"beam": 1}']
    return args + [
        "--no-eval-bleu",
        "--disable-validation",
        "--criterion",
        "sequence_risk",
        "--risk-candidates",
        "2",
        "--risk-beam",
        "2",
        "--risk-max-len-b",
        "8",
    ]


@pytest.fixture(scope="module")
def update_freq_two(data_bin, fconv_ext_tiny_run, tmp_path_factory):
    """One process, --update-freq 2: (save dir, log) for each of fine_tuning's two setups."""
    out = {}
    for criterion in ("bleu", "sequence_risk"):
        save = tmp_path_factory.mktemp(f"update_freq_two_{criterion}")
        out[criterion] = (
            save,
            run(
                [
                    TRAIN,
                    *fine_tuning(data_bin, fconv_ext_tiny_run, criterion),
                    "--update-freq",
                    "2",
                    "--save-dir",
                    str(save),
                ]
            ),
        )
    return out


@pytest.mark.slow
def test_two_torchrun_workers_train_like_update_freq_two(data_bin, fconv_ext_tiny_run, update_freq_two, tmp_path):
    """Plain torchrun and fairseq-train with the plugin: same weights (to float summation order),
    same validation loss and BLEU (fconv_translation decodes its shard of the validation set on
    each rank)."""
    log = run(
        [
            *TORCHRUN,
            "--standalone",
            "--nproc-per-node",
            "2",
            TRAIN,
            *fine_tuning(data_bin, fconv_ext_tiny_run),
            "--save-dir",
            str(tmp_path),
        ]
    )
    assert "started by torchrun (2 workers)" in log and "distributed init (rank 1): env://" in log
    assert "num_updates=4," in log and "num_updates=5," not in log
    save, single = update_freq_two["bleu"]
    assert max_difference(tmp_path / "checkpoint_last.pt", save / "checkpoint_last.pt") <= 1e-5
    (loss, bleu), (single_loss, single_bleu) = validation(log), validation(single)
    assert bleu > 0 and bleu == single_bleu and abs(loss - single_loss) <= 0.002  # loss: 3 decimals logged


@pytest.mark.slow
def test_train_cpu_runs_torchrun_and_sequence_risk_trains_like_update_freq_two(
    data_bin, fconv_ext_tiny_run, update_freq_two, tmp_path
):
    """fconv-ext-train-cpu prints the torchrun command it runs; the sequence_risk criterion
    (candidates decoded on every rank) under it trains like --update-freq 2."""
    log = run(
        [
            f"{BIN}/fconv-ext-train-cpu",
            "--nproc",
            "2",
            "--threads-per-worker",
            "1",
            *fine_tuning(data_bin, fconv_ext_tiny_run, "sequence_risk"),
            "--save-dir",
            str(tmp_path),
        ]
    )
    printed = re.search(
        r"fconv-ext-train-cpu: running OMP_NUM_THREADS=1 (\S+) --standalone --nproc-per-node 2 (\S+) ", log
    )
    assert printed and printed.groups() == (f"{BIN}/torchrun", TRAIN), log[:2000]
    assert re.search(r"train_inner .*risk=[\d.]+, expected_bleu=[\d.]+.*num_updates=4,", log)
    save, _ = update_freq_two["sequence_risk"]
    assert max_difference(tmp_path / "checkpoint_last.pt", save / "checkpoint_last.pt") <= 1e-5


def start_nodes(commands, tmp_path, env=None):
    """Start one torchrun per command (the "nodes"), each logging to tmp_path/node-N.log."""
    procs = []
    for node, cmd in enumerate(commands):
        log = open(tmp_path / f"node-{node}.log", "w")
        procs.append(
            subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
            )
        )
        log.close()
    return procs


def wait_all(procs, timeout=TIMEOUT):
    deadline = time.time() + timeout
    try:
        return [p.wait(timeout=max(1, deadline - time.time())) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def nodes_command(port, run_id, nnodes=2):
    return [
        *TORCHRUN,
        "--nnodes",
        str(nnodes),
        "--nproc-per-node",
        "1",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{port}",
        "--rdzv-id",
        run_id,
    ]


@pytest.mark.slow
def test_two_nodes_on_localhost_train_like_update_freq_two(data_bin, fconv_ext_tiny_run, update_freq_two, tmp_path):
    """Two torchrun "machines" (--nnodes 2, c10d rendezvous on 127.0.0.1, one worker each)."""
    cmd = [
        *nodes_command(free_port(), "two-nodes"),
        TRAIN,
        *fine_tuning(data_bin, fconv_ext_tiny_run),
        "--save-dir",
        str(tmp_path / "save"),
    ]
    assert wait_all(start_nodes([cmd, cmd], tmp_path)) == [0, 0]
    logs = [(tmp_path / f"node-{n}.log").read_text() for n in (0, 1)]
    assert sorted(re.search(r"distributed init \(rank (\d)\): env://", log).group(1) for log in logs) == ["0", "1"]
    save, single = update_freq_two["bleu"]
    assert max_difference(tmp_path / "save" / "checkpoint_last.pt", save / "checkpoint_last.pt") <= 1e-5
    assert validation("".join(logs))[1] == validation(single)[1]


def torchrun_workers(agent_pid):
    """{rank: (pid, restart count)} of the workers that the torchrun process agent_pid started."""
    workers = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
            if parent != agent_pid:
                continue
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v)
        except (FileNotFoundError, ProcessLookupError):  # the process ended while we looked
            continue
        if b"RANK" in env:
            workers[int(env[b"RANK"])] = (int(entry), int(env.get(b"TORCHELASTIC_RESTART_COUNT", b"0")))
    return workers


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="finds torchrun's workers in /proc")
def test_sigkill_of_a_worker_restart_resumes_to_the_uninterrupted_weights(data_bin, tmp_path):
    """torchrun --max-restarts 1, checkpoints every 3 updates: rank 1 killed with SIGKILL after
    the checkpoint at update 6; the group restarts, resumes from checkpoint_last.pt (mid-epoch)
    and ends bit-identical to the same command uninterrupted."""
    args = [
        str(data_bin),
        "--user-dir",
        USER_DIR,
        "--arch",
        "fconv_ext_tiny",
        "--cpu",
        "--task",
        "fconv_translation",
        "--no-eval-bleu",
        "--disable-validation",
        "--optimizer",
        "adam",
        "--lr",
        "0.001",
        "--max-tokens",
        "1000",
        "--max-update",
        "12",
        "--save-interval-updates",
        "3",
        "--seed",
        "3",
        "--no-progress-bar",
        "--log-interval",
        "1",
    ]
    torchrun = [*TORCHRUN, "--standalone", "--nproc-per-node", "2", "--max-restarts", "1", TRAIN, *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", **RESTART_ENV)
    full = subprocess.run(
        [*torchrun, "--save-dir", str(tmp_path / "full")], capture_output=True, text=True, env=env, timeout=TIMEOUT
    )
    assert full.returncode == 0, full.stdout[-3000:] + full.stderr[-3000:]

    save = tmp_path / "killed"
    log_path = tmp_path / "killed.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([*torchrun, "--save-dir", str(save)], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.time() + TIMEOUT
        while not list(save.glob("checkpoint_*_6.pt")) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        workers = torchrun_workers(proc.pid)
        assert sorted(workers) == [0, 1] and workers[1][1] == 0, workers
        os.kill(workers[1][0], signal.SIGKILL)
        assert proc.wait(timeout=max(1, deadline - time.time())) == 0, log_path.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = log_path.read_text()
    assert "failed (exitcode: -9) local_rank: 1" in log  # torchrun saw the kill
    resumed = re.findall(r"Loaded checkpoint \S+checkpoint_last.pt \(epoch \d+ @ (\d+) updates\)", log)
    assert resumed and int(resumed[-1]) >= 6, log[-3000:]  # the restarted group resumed from a checkpoint
    assert max_difference(tmp_path / "full" / "checkpoint_last.pt", save / "checkpoint_last.pt") == 0


@pytest.mark.slow
def test_a_rank_that_keeps_failing_ends_the_run_with_its_error(data_bin, tmp_path):
    """Two nodes, --max-restarts 1, one given a data directory that does not exist: both
    torchruns end (no hang), and the failing node's report names its rank and the cause."""
    port = free_port()
    train = [
        "--user-dir",
        USER_DIR,
        "--arch",
        "fconv_ext_tiny",
        "--cpu",
        "--optimizer",
        "adam",
        "--lr",
        "0.001",
        "--max-update",
        "5",
        "--max-tokens",
        "1000",
        "--disable-validation",
        "--no-progress-bar",
        "--save-dir",
        str(tmp_path / "save"),
    ]
    missing = tmp_path / "no-such-data"
    torchrun = [*nodes_command(port, "failing-rank"), "--max-restarts", "1"]
    procs = start_nodes(
        [[*torchrun, TRAIN, str(data_bin), *train], [*torchrun, TRAIN, str(missing), *train]], tmp_path, RESTART_ENV
    )
    codes = wait_all(procs, timeout=300)  # without the plugin's early group: 30 minutes (torch's timeout)
    assert codes[0] != 0 and codes[1] != 0, codes
    report = (tmp_path / "node-1.log").read_text()
    failure = report[report.index("Root Cause (first observed failure)") :]
    assert re.search(r"rank\s+: \d \(local_rank: 0\)", failure), failure
    assert f"FileNotFoundError: [Errno 2] No such file or directory: '{missing}" in failure, failure
