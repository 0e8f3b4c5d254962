"""One measurement of ``bench.py`` in a fresh process: decode the test set or time training updates.

    python benchmarks/bench_child.py JOB.json OUT.json     # what run_child() starts

The parent (``run_child``) writes the job as JSON, so the measurement has no command-line options of
its own (the options are ``bench.py``'s, defined once).  Job keys:

* every job: ``mode`` (``generate`` or ``train``), ``checkpoint`` (for generation also several
  joined by ``:``, an ensemble, as ``fairseq-generate --path a.pt:b.pt``), ``data``, ``threads``, ``device``
  (``cpu`` / ``cuda``);
* generate: ``dtype`` (``float32``, ``bfloat16``: fconv_ext's ``inference_dtype``, ``float16``:
  ``model.half()``), ``beam``, ``batch``, ``max_batches`` (0: the whole test set, else that many
  batches evenly spaced over the length-sorted test set; at batch 1 these are sentences);
  optional ``overrides`` (model config overrides, e.g. ``{"shortlist": FILE, "inference_dtype": "int8"}``:
  what ``--model-overrides "{'model': {...}}"`` passes) and ``references`` (the raw, untokenized
  test targets, one line per sentence id, for detokenized BLEU; absent: the binarized references,
  detokenized); ``max_len_a`` / ``max_len_b`` (default 1.2 / 10; fairseq-generate's are 0 / 200);
* train: ``train_updates``, ``train_max_tokens``.

The child's environment is the parent's with ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` set to the
threads, plus the side's own variables (``fconv_ext_seqgen``: ``FCONV_EXT_BEAM_SEARCH=fairseq``).

Generation decodes with ``task.build_generator`` (what ``fairseq-generate`` would use) after
``make_generation_fast_``, max_len_a 1.2, max_len_b 10, and reports the time, the hypotheses (and
their hash), BLEU (tokenized, and detokenized sacreBLEU) and peak memory.  Training times ``train_updates``
NAG updates after one untimed
warm-up update on the same shuffled batches (seed 1) for every side.  On CUDA the clock is read after
``torch.cuda.synchronize()``, and generation decodes one untimed warm-up batch first.
"""

import importlib
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
MAX_LEN_A, MAX_LEN_B = 1.2, 10


# --------------------------------------------------------------------------- parent side
class ChildFailed(RuntimeError):
    """A measurement process exited with an error; the message has its command and stderr's tail."""


def run_child(job, env=None, log=False):
    """Run ``job`` (see the module docstring) in a fresh process; its result dict.  ``env``: variables
    added to the child's environment.  ``log``: print the job and its wall time (start-up included)
    to stderr, for long GPU runs."""
    work = tempfile.mkdtemp(prefix="fconv-bench-child-")
    job_file, out = os.path.join(work, "job.json"), os.path.join(work, "out.json")
    with open(job_file, "w") as f:
        json.dump(job, f)
    cmd = [sys.executable, os.path.abspath(__file__), job_file, out]
    threads = str(job["threads"])
    child_env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, **(env or {}))
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=child_env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ChildFailed(
                f"benchmark child failed: {json.dumps(job)} {json.dumps(env or {})}\n{proc.stderr[-3000:]}"
            )
        with open(out) as f:
            result = json.load(f)
    finally:
        for path in (job_file, out):
            if os.path.exists(path):
                os.unlink(path)
        os.rmdir(work)
    if log:
        shown = {k: v for k, v in job.items() if k not in ("data", "threads", "device")}
        shown["checkpoint"] = os.path.basename(job["checkpoint"])
        print(
            f"  {shown} {env or ''}: {result['seconds']:.2f} s timed, {time.perf_counter() - started:.1f} s wall",
            file=sys.stderr,
            flush=True,
        )
    return result


# --------------------------------------------------------------------------- child side
def load_models(checkpoint, data, dtype="float32", model_overrides=None):
    """Models (one per ``:``-separated path: an ensemble), config and task of ``checkpoint`` on the CPU.
    ``dtype``: ``float32``; ``bfloat16`` (fconv_ext's own ``inference_dtype`` override, applied by its
    ``make_generation_fast_``); or ``float16`` (``model.half()``, what ``fairseq-generate --fp16`` does,
    for any model).  ``model_overrides``: more model config overrides (``shortlist``, ``inference_dtype``
    ...), passed as ``--model-overrides "{'model': {...}}"`` would pass them."""
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    importlib.import_module("fconv_plugin")  # registers fconv_ext; allow-lists fconv's Namespace
    from fairseq import checkpoint_utils

    model = dict(model_overrides or {})
    if dtype not in ("float32", "float16"):  # nested form: also reaches checkpoints whose config predates the field
        model.setdefault("inference_dtype", dtype)
    overrides = {"data": data, **({"model": model} if model else {})}
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        checkpoint.split(os.pathsep), arg_overrides=overrides
    )
    if dtype == "float16":
        for m in models:
            m.half()
    return models, cfg, task


def load_model(checkpoint, data, dtype="float32", model_overrides=None):
    """The first model of :func:`load_models`, its config and task."""
    models, cfg, task = load_models(checkpoint, data, dtype, model_overrides)
    return models[0], cfg, task


def synchronize(device):
    """Wait for the GPU's queued work (so that the clock covers it); nothing to wait for on the CPU."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def peak_gpu_mb(device):
    """Peak GPU memory allocated by this process (MB), ``None`` on the CPU."""
    if device != "cuda":
        return None
    import torch

    return torch.cuda.max_memory_allocated() / 2**20


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def tokenized_bleu(task, hyps):
    """BLEU of ``hyps`` (id -> token ids) against the test targets, BPE removed, tokenize=none."""
    import sacrebleu
    import torch

    d, dataset = task.target_dictionary, task.dataset("test")
    ids = sorted(hyps)
    sys_out = [d.string(torch.tensor(hyps[i]), "subword_nmt") for i in ids]
    refs = [d.string(dataset.tgt[i], "subword_nmt") for i in ids]
    return sacrebleu.corpus_bleu(sys_out, [refs], tokenize="none").score


def detokenized_bleu(task, hyps, references=None):
    """sacreBLEU (its default 13a tokenizer) of ``hyps`` (id -> token ids), BPE removed and detokenized
    with sacremoses for the target language, against ``references`` (raw test targets, line = sentence
    id) or, without them, the binarized references detokenized the same way."""
    import sacrebleu
    import torch
    from sacremoses import MosesDetokenizer

    detok = MosesDetokenizer(lang=task.cfg.target_lang)
    d, ids = task.target_dictionary, sorted(hyps)

    def text(tokens):
        return detok.detokenize(d.string(tokens, "subword_nmt").split())

    sys_out = [text(torch.tensor(hyps[i])) for i in ids]
    if references:
        with open(references, encoding="utf-8") as f:
            raw = [line.rstrip("\n") for line in f]
        if len(raw) != len(task.dataset("test")):
            raise SystemExit(
                f"--references {references}: {len(raw)} lines, the test set has {len(task.dataset('test'))} sentences"
            )
        refs = [raw[i] for i in ids]
    else:
        refs = [text(task.dataset("test").tgt[i]) for i in ids]
    return sacrebleu.corpus_bleu(sys_out, [refs]).score


def prepare_ensemble_decoding(job):
    """(models, task, generator, batches) for decoding the test set as ``fairseq-generate`` would:
    the models (one, or an ensemble) in eval mode after ``make_generation_fast_``, the generator
    ``task.build_generator``
    gives it, and the test set's batches in length order (``job.max_batches`` of them evenly spaced,
    0: all).  Batches stay on the CPU."""
    import argparse

    from fairseq import utils

    models, cfg, task = load_models(job.checkpoint, job.data, job.dtype, getattr(job, "overrides", None))
    for model in models:
        model.eval()
        if job.device == "cuda":  # fairseq-generate's order: half (in load_model), cuda, then make_generation_fast_
            model.cuda()
        model.make_generation_fast_(beamable_mm_beam_size=job.beam, need_attn=False)
    model = models[0]
    task.load_dataset("test")
    itr = task.get_batch_iterator(
        dataset=task.dataset("test"),
        max_sentences=job.batch,
        required_batch_size_multiple=1,
        max_positions=utils.resolve_max_positions(task.max_positions(), model.max_positions()),
    ).next_epoch_itr(shuffle=False)
    batches = list(itr)
    if job.max_batches and job.max_batches < len(batches):
        # batches come in length order: take evenly spaced ones so that all lengths are represented
        stride = len(batches) / job.max_batches
        batches = [batches[int(i * stride)] for i in range(job.max_batches)]
    gen = task.build_generator(
        models,
        argparse.Namespace(
            beam=job.beam,
            max_len_a=getattr(job, "max_len_a", MAX_LEN_A),
            max_len_b=getattr(job, "max_len_b", MAX_LEN_B),
        ),
    )
    return models, task, gen, batches


def prepare_decoding(job):
    """(model, task, generator, batches) of a single-model job (``profile_decode.py``):
    :func:`prepare_ensemble_decoding`'s first model."""
    models, task, gen, batches = prepare_ensemble_decoding(job)
    return models[0], task, gen, batches


def child_generate(job):
    import torch
    from fairseq import utils

    from bench_flops import generation_flops, is_conv

    torch.set_num_threads(job.threads)
    models, task, gen, batches = prepare_ensemble_decoding(job)
    model = models[0]
    if job.device == "cuda":
        batches = [utils.move_to_cuda(b) for b in batches]
        with torch.no_grad():  # warm-up (CUDA context, kernels, allocator), not timed
            gen.generate(models, batches[0])
    hyps, tokens = {}, 0
    synchronize(job.device)
    start = time.perf_counter()
    with torch.no_grad():
        for b in batches:
            for i, out in zip(b["id"].tolist(), gen.generate(models, b)):
                hyps[i] = out[0]["tokens"].tolist()
                tokens += len(hyps[i])
    synchronize(job.device)
    seconds = time.perf_counter() - start
    steps = sum(len(h) for h in hyps.values())
    exact = job.dtype == "float32" and not getattr(job, "overrides", None) and len(models) == 1
    flops = generation_flops(model, batches, hyps, job.beam) if is_conv(model) and exact else None
    digest = hashlib.sha1(json.dumps(sorted(hyps.items())).encode()).hexdigest()
    return {
        "seconds": seconds,
        "sentences": len(hyps),
        "tokens": tokens,
        "hyp_sha1": digest,
        "distinct_hypotheses": len({tuple(h) for h in hyps.values()}),
        "flops": flops,
        "decoder_steps": steps,
        "peak_rss_mb": peak_rss_mb(),
        "generator": type(gen).__name__,
        "peak_gpu_mb": peak_gpu_mb(job.device),
        "bleu": tokenized_bleu(task, hyps),
        "params": sum(p.numel() for m in models for p in m.parameters()),
        "detok_bleu": detokenized_bleu(task, hyps, getattr(job, "references", None)),
        "hyps": {str(i): h for i, h in hyps.items()},
    }  # for the share of identical sentences (not reported)


def child_train(job):
    import torch
    from fairseq import utils

    from bench_flops import training_flops

    torch.set_num_threads(job.threads)
    model, cfg, task = load_model(job.checkpoint, job.data)
    if job.device == "cuda":
        model.cuda()
    model.train()
    task.load_dataset("train")
    dataset = task.dataset("train")
    itr = task.get_batch_iterator(
        dataset=dataset,
        max_tokens=job.train_max_tokens,
        seed=1,
        required_batch_size_multiple=1,
        max_positions=utils.resolve_max_positions(task.max_positions(), model.max_positions()),
    ).next_epoch_itr(shuffle=True)
    if len(itr) < job.train_updates + 1:
        raise SystemExit(
            f"the training set has {len(itr)} batches of {job.train_max_tokens} tokens; "
            f"{job.train_updates} updates and a warm-up need {job.train_updates + 1}"
        )
    batches = [next(itr) for _ in range(job.train_updates + 1)]
    if job.device == "cuda":
        batches = [utils.move_to_cuda(b) for b in batches]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.25, momentum=0.99, nesterov=True)  # the paper's NAG
    torch.manual_seed(1)

    def step(b):
        opt.zero_grad()
        out = model(**b["net_input"])
        lprobs = model.get_normalized_probs(out, log_probs=True)
        loss = torch.nn.functional.nll_loss(
            lprobs.view(-1, lprobs.size(-1)),
            b["target"].view(-1),
            ignore_index=task.target_dictionary.pad(),
            reduction="sum",
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.1)
        opt.step()
        return loss.item()

    step(batches[0])  # warm-up, not timed
    words = 0
    synchronize(job.device)
    start = time.perf_counter()
    losses = []
    for b in batches[1:]:
        losses.append(step(b))
        words += int(b["ntokens"])
    synchronize(job.device)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "words": words,
        "losses": losses,
        "flops": training_flops(model, batches[1:]),
        "peak_rss_mb": peak_rss_mb(),
        "peak_gpu_mb": peak_gpu_mb(job.device),
        "params": sum(p.numel() for p in params),
    }


# --------------------------------------------------------------------------- the machine's rate
def matmul_rate(model, threads, seconds=1.0, device="cpu"):
    """fp32 FLOP/s of torch.mm for the model's own shapes (64 x 5 rows, as in decoding).

    On CUDA the products are queued ``inner`` at a time and the clock is read after
    ``torch.cuda.synchronize()`` (torch's default fp32 matmul precision, no TF32 unless the
    process enabled it); on the CPU one product at a time, as before."""
    import torch

    from bench_flops import decoding_shapes, matmul_flops

    torch.set_num_threads(threads)
    shapes = decoding_shapes(model)
    inner = 20 if device == "cuda" else 1
    flops, spent = 0.0, 0.0
    for m, k, n in shapes:
        x, w = torch.randn(m, k, device=device), torch.randn(k, n, device=device)
        torch.mm(x, w)
        synchronize(device)
        reps = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds / len(shapes):
            for _ in range(inner):
                torch.mm(x, w)
            synchronize(device)
            reps += inner
        spent += time.perf_counter() - start
        flops += reps * matmul_flops(m, k, n)
    return flops / spent


def main(argv):
    job_file, out = argv
    with open(job_file) as f:
        job = SimpleNamespace(**json.load(f))
    result = child_generate(job) if job.mode == "generate" else child_train(job)
    with open(out, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
