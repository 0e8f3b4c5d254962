"""The fused criterion (fconv_plugin/criterions/fused_label_smoothed_cross_entropy.py) in training runs:
fairseq-train with --update-freq 2 makes the default criterion's first update; under torch's
DistributedDataParallel (2 processes) its gradients are the mean of fairseq's criterion's."""

import json
import os
import subprocess
import sys

import pytest
import torch
from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion

from helpers import BIN, REPO, StubTask, make_dictionary, random_batch
from fconv_plugin.models import build_model_from_config

TOL = dict(rtol=1e-5, atol=1e-5)
#: the model of the DistributedDataParallel test, built alike in its two processes and in the test
DDP_MODEL = {
    "_name": "fconv_ext",
    "encoder_embed_dim": 8,
    "encoder_layers": "[(8, 3)] * 2",
    "decoder_embed_dim": 8,
    "decoder_layers": "[(8, 3)] * 2",
    "decoder_out_embed_dim": 8,
    "dropout": 0.0,
    "max_source_positions": 64,
    "max_target_positions": 64,
}


@pytest.mark.slow
def test_fairseq_train_update_freq_first_update_equals_default_criterion(tmp_path):
    """Two fairseq-train runs, same seed, --update-freq 2, one update each (dropout on): the first
    update's loss (the unrounded meter in the checkpoint) and the updated parameters agree to 1e-5."""
    raw = tmp_path / "raw"
    raw.mkdir()
    g = torch.Generator().manual_seed(0)
    words = [f"w{i}" for i in range(40)]
    for split, n in (("train", 48), ("valid", 8)):
        for lang in ("en", "de"):
            lines = []
            for _ in range(n):  # a length, then its words (the generator's order)
                length = int(torch.randint(3, 12, (1,), generator=g))
                lines.append(" ".join(words[int(i)] for i in torch.randint(0, 40, (length,), generator=g)))
            (raw / f"{split}.{lang}").write_text("\n".join(lines) + "\n")
    data = tmp_path / "bin"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    subprocess.run(
        [
            os.path.join(BIN, "fairseq-preprocess"),
            "--source-lang",
            "en",
            "--target-lang",
            "de",
            "--trainpref",
            str(raw / "train"),
            "--validpref",
            str(raw / "valid"),
            "--destdir",
            str(data),
            "--workers",
            "1",
        ],
        check=True,
        capture_output=True,
        env=env,
    )
    runs = {}
    for crit in ("label_smoothed_cross_entropy", "fused_label_smoothed_cross_entropy"):
        save = tmp_path / crit
        cmd = [
            os.path.join(BIN, "fairseq-train"),
            str(data),
            "--user-dir",
            os.path.join(REPO, "fconv_plugin"),
            "--arch",
            "fconv_ext",
            "--encoder-embed-dim",
            "16",
            "--encoder-layers",
            "[(16, 3)] * 2",
            "--decoder-embed-dim",
            "16",
            "--decoder-layers",
            "[(16, 3)] * 2",
            "--decoder-out-embed-dim",
            "16",
            "--dropout",
            "0.2",
            "--criterion",
            crit,
            "--label-smoothing",
            "0.1",
            "--report-accuracy",
            "--optimizer",
            "nag",
            "--lr",
            "0.25",
            "--clip-norm",
            "0.1",
            "--max-tokens",
            "120",
            "--update-freq",
            "2",
            "--max-update",
            "1",
            "--seed",
            "3",
            "--cpu",
            "--num-workers",
            "0",
            "--save-dir",
            str(save),
            "--no-epoch-checkpoints",
            "--disable-validation",
            "--log-format",
            "json",
            "--log-interval",
            "1",
        ]
        runs[crit] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    results = {}
    for crit, proc in runs.items():
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out[-3000:]
        state = torch.load(tmp_path / crit / "checkpoint_last.pt", map_location="cpu", weights_only=False)
        results[crit] = (state, out)
    (ref, _), (fused, _) = results["label_smoothed_cross_entropy"], results["fused_label_smoothed_cross_entropy"]
    assert ref["optimizer_history"][-1]["num_updates"] == fused["optimizer_history"][-1]["num_updates"] == 1
    # fairseq's meters in the checkpoint hold the unrounded sums: (priority, name, type, state) per meter
    ref_meters = {m[1]: m[3] for m in ref["extra_state"]["metrics"]["train"]}
    fused_meters = {m[1]: m[3] for m in fused["extra_state"]["metrics"]["train"]}
    assert fused_meters.keys() == ref_meters.keys() >= {"loss", "nll_loss", "n_correct", "total", "gnorm"}
    # --update-freq 2 did sum two micro-batches: one batch of bsz sentences within --max-tokens 120 holds at
    # most 120 // bsz tokens per sentence, fewer target tokens than the update had
    bsz, wpb = ref_meters["bsz"]["sum"], ref_meters["wpb"]["sum"]
    assert wpb > (120 // bsz) * bsz, (bsz, wpb)
    for key in ("loss", "nll_loss", "gnorm"):
        assert float(ref_meters[key]["sum"]) > 0.3
        assert float(fused_meters[key]["sum"]) == pytest.approx(float(ref_meters[key]["sum"]), rel=1e-5), key
    for key in ("n_correct", "total", "bsz", "wpb"):
        assert fused_meters[key]["sum"] == ref_meters[key]["sum"], key
    for name, want in ref["model"].items():
        torch.testing.assert_close(fused["model"][name], want, **TOL, msg=name)


DDP_SCRIPT = r"""
import json, os, sys
import torch
import torch.distributed as dist
sys.path.insert(0, os.path.join(sys.argv[1], "tests"))
from helpers import StubTask, make_dictionary, random_batch  # noqa: E402
from fconv_plugin.criterions import FusedLabelSmoothedCrossEntropyCriterion  # noqa: E402
from fconv_plugin.models import build_model_from_config  # noqa: E402

rank, out, cfg = int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
dist.init_process_group("gloo", init_method="file://" + out + ".rdzv", rank=rank, world_size=2)
torch.manual_seed(0)
d = make_dictionary(40)
model = build_model_from_config(cfg, d, d).train()
src = random_batch(d, [5, 3], seed=10 + rank)
tgt = random_batch(d, [4, 6], seed=20 + rank, left_pad=False)
prev = torch.cat([torch.full((2, 1), d.eos()), tgt[:, :-1]], 1)
sample = {"net_input": {"src_tokens": src, "src_lengths": src.ne(d.pad()).sum(1), "prev_output_tokens": prev},
          "target": tgt, "ntokens": int(tgt.ne(d.pad()).sum())}
grads = {}
for find_unused in (False, True):
    model.zero_grad()
    ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=find_unused)
    loss, _, _ = FusedLabelSmoothedCrossEntropyCriterion(StubTask(d, d), False, 0.1)(ddp, sample)
    loss.backward()
    grads[find_unused] = {n: p.grad.clone() for n, p in model.named_parameters()}
if rank == 0:
    torch.save(grads, out)
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_torch_ddp_two_processes_average_fairseqs_gradients(tmp_path):
    """Through torch's DistributedDataParallel (gloo, 2 processes; with and without
    find_unused_parameters): rank 0's gradients are the mean of fairseq's criterion's gradients
    on the two ranks' batches."""
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    out = str(tmp_path / "grads.pt")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), REPO, str(r), out, json.dumps(DDP_MODEL)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(2)
    ]
    for p in procs:
        log, _ = p.communicate(timeout=120)
        assert p.returncode == 0, log[-3000:]
    got = torch.load(out, weights_only=True)

    torch.manual_seed(0)
    d = make_dictionary(40)
    model = build_model_from_config(DDP_MODEL, d, d).train()
    crit = LabelSmoothedCrossEntropyCriterion(StubTask(d, d), False, 0.1)
    for rank in range(2):
        src = random_batch(d, [5, 3], seed=10 + rank)
        tgt = random_batch(d, [4, 6], seed=20 + rank, left_pad=False)
        prev = torch.cat([torch.full((2, 1), d.eos()), tgt[:, :-1]], 1)
        sample = {
            "net_input": {"src_tokens": src, "src_lengths": src.ne(d.pad()).sum(1), "prev_output_tokens": prev},
            "target": tgt,
            "ntokens": int(tgt.ne(d.pad()).sum()),
        }
        (crit(model, sample)[0] / 2).backward()  # DDP averages over the 2 ranks
    for find_unused in (False, True):
        assert set(got[find_unused]) == {n for n, _ in model.named_parameters()}
        for name, p in model.named_parameters():
            torch.testing.assert_close(got[find_unused][name], p.grad, **TOL, msg=f"{name} {find_unused}")
