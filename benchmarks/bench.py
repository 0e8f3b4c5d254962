"""Side-by-side benchmark: fconv_ext vs fairseq's fconv, same weights, same data, same threads.

    python benchmarks/bench.py --data /tmp/gt/bin --fconv-checkpoint CK.pt [--reps 3] [--out benchmarks/results]
        [--context lstm=CK_LSTM.pt transformer=CK_TRANSFORMER.pt] [--train-presets checkpoint fconv_wmt_en_de]
    python benchmarks/bench.py --smoke            # seconds: tiny model, tiny data, no claims
    python benchmarks/bench.py --device cuda --dtypes fp16 bf16 ...   # on a GPU (benchmarks/gpu_run.sh)

The fairseq fconv checkpoint is converted to fconv_ext in this run (fconv-ext-convert's code), so both
sides decode the same model; hypotheses are compared and must be identical.  Every measurement runs in
its own child process (one process tree), the sides alternating, ``--reps`` times; the medians and
the ratios (side / fconv) are written to ``OUT.json`` and ``OUT.md`` with the machine's description.

Sides:
* ``fconv``: fairseq's fconv checkpoint; ``fconv_ext``: its conversion; ``fconv_ext_bf16``: the conversion
  with ``inference_dtype=bfloat16`` (opt-in, not exact: its BLEU is reported next to the others);
* ``--dtypes fp16``: ``fconv_fp16`` and ``fconv_ext_fp16``, both cast with ``model.half()`` as
  ``fairseq-generate --fp16`` does (meant for GPUs; hypotheses compared, not required to match);
* ``--context NAME=CK``: other fairseq models (lstm, transformer) on the same data, generation only.

``--device cuda``: models and batches on the GPU (batches moved before the clock starts), the clock read
after ``torch.cuda.synchronize()``, one untimed warm-up batch per generation child, peak GPU memory
(``torch.cuda.max_memory_allocated``) next to peak RSS, and the matmul rate measured with torch.mm on the
GPU.  ``--device cpu`` (the default) measures exactly as before (no warm-up batch for generation).
The parent rewrites ``OUT.json`` / ``OUT.md`` after every configuration, so a run cut short leaves the
finished ones (marked partial; efficiencies are filled in at the end).

Every side decodes with the generator ``fairseq-generate`` would use for it (``task.build_generator``:
fairseq's SequenceGenerator for fconv and the context models, fconv_ext's FConvBeamSearch for fconv_ext)
after ``make_generation_fast_``, with max_len_a 1.2, max_len_b 10.

Measured per side:
* generation: beam 5 batch 64, beam 1 batch 64 on the test set, beam 5 batch 1 on --latency-sentences
  sentences spread evenly over the length-sorted test set (ms per sentence); sentences/s, target tokens/s,
  BLEU of the test set (sacrebleu on the BPE-removed tokenized text, tokenize=none);
* training: target words/s over --train-updates updates (forward, backward, NAG step) on the same
  batches, for the checkpoint's architecture and each ``--train-presets`` preset (random weights,
  the data's dictionaries);
* peak resident memory of the child process (and on CUDA its peak allocated GPU memory);
* efficiency (float32 sides): analytic matmul FLOPs of the work (per layer, same formula for both
  sides) divided by the machine's measured fp32 matmul rate for the model's shapes, over the time.
"""

import argparse
import hashlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
GEN_CONFIGS = [("beam5_batch64", 5, 64), ("beam1_batch64", 1, 64), ("beam5_batch1", 5, 1)]
MAX_LEN_A, MAX_LEN_B = 1.2, 10
# --dtypes name -> (the sides it adds, the child's --dtype); float32 fconv and fconv_ext always run
LOW_PRECISION_SIDES = {
    "fp16": [("fconv_fp16", "fconv", "float16"), ("fconv_ext_fp16", "fconv_ext", "float16")],
    "bf16": [("fconv_ext_bf16", "fconv_ext", "bfloat16")],
}


# --------------------------------------------------------------------------- child side
def _load(checkpoint, data, dtype="float32"):
    """Model, config and task of ``checkpoint`` on the CPU.  ``dtype``: ``float32``; ``bfloat16``
    (fconv_ext's own ``inference_dtype`` override, applied by its ``make_generation_fast_``); or
    ``float16`` (``model.half()``, what ``fairseq-generate --fp16`` does, for any model)."""
    sys.path.insert(0, REPO)
    import fconv_plugin  # noqa: F401  (registers fconv_ext; allow-lists fconv's Namespace)
    from fairseq import checkpoint_utils

    overrides = {"data": data}
    if dtype not in ("float32", "float16"):  # nested form: also reaches checkpoints whose config predates the field
        overrides["model"] = {"inference_dtype": dtype}
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([checkpoint], arg_overrides=overrides)
    if dtype == "float16":
        models[0].half()
    return models[0], cfg, task


def _synchronize(device):
    """Wait for the GPU's queued work (so that the clock covers it); nothing to wait for on the CPU."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _peak_gpu_mb(device):
    """Peak GPU memory allocated by this process (MB), ``None`` on the CPU."""
    if device != "cuda":
        return None
    import torch

    return torch.cuda.max_memory_allocated() / 2**20


def tokenized_bleu(task, hyps):
    """BLEU of ``hyps`` (id -> token ids) against the test targets, BPE removed, tokenize=none."""
    import sacrebleu
    import torch

    d, dataset = task.target_dictionary, task.dataset("test")
    ids = sorted(hyps)
    sys_out = [d.string(torch.tensor(hyps[i]), "subword_nmt") for i in ids]
    refs = [d.string(dataset.tgt[i], "subword_nmt") for i in ids]
    return sacrebleu.corpus_bleu(sys_out, [refs], tokenize="none").score


def child_generate(args):
    import torch
    from fairseq import utils

    torch.set_num_threads(args.threads)
    model, cfg, task = _load(args.checkpoint, args.data, args.dtype)
    model.eval()
    if args.device == "cuda":  # fairseq-generate's order: half (in _load), cuda, then make_generation_fast_
        model.cuda()
    model.make_generation_fast_(beamable_mm_beam_size=args.beam, need_attn=False)
    task.load_dataset("test")
    dataset = task.dataset("test")
    itr = task.get_batch_iterator(
        dataset=dataset, max_sentences=args.batch, required_batch_size_multiple=1,
        max_positions=utils.resolve_max_positions(task.max_positions(), model.max_positions()),
    ).next_epoch_itr(shuffle=False)
    batches = [b for b in itr]
    if args.max_sentences and args.max_sentences < len(batches):
        # batches come in length order: take evenly spaced ones so that all lengths are represented
        stride = len(batches) / args.max_sentences
        batches = [batches[int(i * stride)] for i in range(args.max_sentences)]
    gen = task.build_generator([model], argparse.Namespace(beam=args.beam, max_len_a=MAX_LEN_A, max_len_b=MAX_LEN_B))
    if args.device == "cuda":
        batches = [utils.move_to_cuda(b) for b in batches]
        with torch.no_grad():  # warm-up (CUDA context, kernels, allocator), not timed
            gen.generate([model], batches[0])
    hyps, tokens = {}, 0
    _synchronize(args.device)
    start = time.perf_counter()
    with torch.no_grad():
        for b in batches:
            for i, out in zip(b["id"].tolist(), gen.generate([model], b)):
                hyps[i] = out[0]["tokens"].tolist()
                tokens += len(hyps[i])
    _synchronize(args.device)
    seconds = time.perf_counter() - start
    steps = sum(len(h) for h in hyps.values())
    flops = generation_flops(model, batches, hyps, args.beam) if _is_conv(model) and args.dtype == "float32" else None
    digest = hashlib.sha1(json.dumps(sorted(hyps.items())).encode()).hexdigest()
    return {"seconds": seconds, "sentences": len(hyps), "tokens": tokens, "hyp_sha1": digest,
            "flops": flops, "decoder_steps": steps, "peak_rss_mb": peak_rss_mb(), "generator": type(gen).__name__,
            "peak_gpu_mb": _peak_gpu_mb(args.device),
            "bleu": tokenized_bleu(task, hyps), "params": sum(p.numel() for p in model.parameters())}


def child_train(args):
    import torch
    from fairseq import utils

    torch.set_num_threads(args.threads)
    model, cfg, task = _load(args.checkpoint, args.data)
    if args.device == "cuda":
        model.cuda()
    model.train()
    task.load_dataset("train")
    dataset = task.dataset("train")
    itr = task.get_batch_iterator(
        dataset=dataset, max_tokens=args.train_max_tokens, seed=1, required_batch_size_multiple=1,
        max_positions=utils.resolve_max_positions(task.max_positions(), model.max_positions()),
    ).next_epoch_itr(shuffle=True)
    if len(itr) < args.train_updates + 1:
        raise SystemExit(f"the training set has {len(itr)} batches of {args.train_max_tokens} tokens; "
                         f"{args.train_updates} updates and a warm-up need {args.train_updates + 1}")
    batches = [next(itr) for _ in range(args.train_updates + 1)]
    if args.device == "cuda":
        batches = [utils.move_to_cuda(b) for b in batches]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.25, momentum=0.99, nesterov=True)  # the paper's NAG
    torch.manual_seed(1)

    def step(b):
        opt.zero_grad()
        out = model(**b["net_input"])
        lprobs = model.get_normalized_probs(out, log_probs=True)
        loss = torch.nn.functional.nll_loss(lprobs.view(-1, lprobs.size(-1)), b["target"].view(-1),
                                            ignore_index=task.target_dictionary.pad(), reduction="sum")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.1)
        opt.step()
        return loss.item()

    step(batches[0])  # warm-up, not timed
    words = 0
    _synchronize(args.device)
    start = time.perf_counter()
    losses = []
    for b in batches[1:]:
        losses.append(step(b))
        words += int(b["ntokens"])
    _synchronize(args.device)
    seconds = time.perf_counter() - start
    flops = 3 * sum(forward_flops(model, b["net_input"]["src_tokens"].numel(), b["target"].numel(),
                                  b["net_input"]["src_tokens"].size(1), b["target"].size(1)) for b in batches[1:])
    return {"seconds": seconds, "words": words, "losses": losses, "flops": flops, "peak_rss_mb": peak_rss_mb(),
            "peak_gpu_mb": _peak_gpu_mb(args.device), "params": sum(p.numel() for p in params)}


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _is_conv(model):
    return hasattr(model, "decoder") and hasattr(model.decoder, "convolutions") and hasattr(model.decoder, "fc3")


# --------------------------------------------------------------------------- FLOP model
def _arch(model):
    """(E_enc, enc convs [(in, out, k)], E_dec, dec convs, attention flags, out_embed, V) for either side."""
    enc, dec = model.encoder, model.decoder

    from fairseq.modules import ConvTBC

    def conv_shapes(convs):
        shapes = []
        for c in convs:
            w, k = c.weight, c.kernel_size[0]
            if isinstance(c, ConvTBC):
                cin, cout = w.shape[1], w.shape[2]  # fairseq ConvTBC: k x in x out
            else:
                cout, cin = w.shape[0], w.shape[1]  # Conv1d: out x in x k
            shapes.append((cin, cout, k))
        return shapes

    return {
        "enc_embed": enc.embed_tokens.embedding_dim, "enc_convs": conv_shapes(enc.convolutions),
        "dec_embed": dec.embed_tokens.embedding_dim, "dec_convs": conv_shapes(dec.convolutions),
        "attention": [a is not None for a in dec.attention], "out_embed": dec.fc2.weight.shape[0],
        "vocab": len(dec.dictionary),
        "enc_proj": [p.weight.shape[::-1] if p is not None else None for p in enc.projections],
        "dec_proj": [p.weight.shape[::-1] if p is not None else None for p in dec.projections],
    }


def _matmul(m, k, n):
    return 2.0 * m * k * n


def forward_flops(model, n_src_tokens, n_tgt_tokens, src_len, tgt_len):
    """Matmul FLOPs of one full forward pass: n_* tokens (padding included, as computed)."""
    a = _arch(model)
    f = _matmul(n_src_tokens, a["enc_embed"], a["enc_convs"][0][0]) + _matmul(n_src_tokens, a["enc_convs"][-1][1] // 2, a["enc_embed"])
    for (cin, cout, k), proj in zip(a["enc_convs"], a["enc_proj"]):
        f += _matmul(n_src_tokens, k * cin, cout) + (_matmul(n_src_tokens, *proj) if proj is not None else 0)
    f += _matmul(n_tgt_tokens, a["dec_embed"], a["dec_convs"][0][0])
    for (cin, cout, k), proj, att in zip(a["dec_convs"], a["dec_proj"], a["attention"]):
        f += _matmul(n_tgt_tokens, k * cin, cout) + (_matmul(n_tgt_tokens, *proj) if proj is not None else 0)
        if att:
            c = cout // 2
            f += 2 * _matmul(n_tgt_tokens, c, a["dec_embed"]) + 2 * _matmul(n_tgt_tokens, a["dec_embed"], src_len)
    f += _matmul(n_tgt_tokens, a["dec_convs"][-1][1] // 2, a["out_embed"]) + _matmul(n_tgt_tokens, a["out_embed"], a["vocab"])
    return f


def generation_flops(model, batches, hyps, beam):
    """Encoder once per sentence; the decoder once per hypothesis token for each of ``beam`` beams."""
    total = 0.0
    for b in batches:
        src = b["net_input"]["src_tokens"]
        s_len = src.size(1)
        n_steps = sum(len(hyps[i]) for i in b["id"].tolist())
        enc_only = forward_flops(model, src.numel(), 0, s_len, 0)
        # decoder part of forward_flops for beam * steps target positions
        dec = forward_flops(model, 0, beam * n_steps, s_len, 1)
        total += enc_only + dec
    return total


def matmul_rate(model, threads, seconds=1.0, device="cpu"):
    """fp32 FLOP/s of torch.mm for the model's own shapes (64 x 5 rows, as in decoding).

    On CUDA the products are queued ``inner`` at a time and the clock is read after
    ``torch.cuda.synchronize()`` (torch's default fp32 matmul precision, no TF32 unless the
    process enabled it); on the CPU one product at a time, as before."""
    import torch

    torch.set_num_threads(threads)
    a = _arch(model)
    shapes = [(320, a["out_embed"], a["vocab"])] + [(320, k * cin, cout) for cin, cout, k in a["dec_convs"]]
    inner = 20 if device == "cuda" else 1
    flops, spent = 0.0, 0.0
    for m, k, n in shapes:
        x, w = torch.randn(m, k, device=device), torch.randn(k, n, device=device)
        torch.mm(x, w)
        _synchronize(device)
        reps = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds / len(shapes):
            for _ in range(inner):
                torch.mm(x, w)
            _synchronize(device)
            reps += inner
        spent += time.perf_counter() - start
        flops += reps * _matmul(m, k, n)
    return flops / spent


# --------------------------------------------------------------------------- parent side
class ChildFailed(RuntimeError):
    """A measurement process exited with an error; the message has its command and stderr's tail."""


def run_child(mode, checkpoint, data, threads, log=False, **kw):
    """One measurement in a fresh process (``--child MODE``); its result dict.  ``log``: print the
    command's options and its wall time (start-up included) to stderr, for long GPU runs."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    options = [f"--{k.replace('_', '-')}={v}" for k, v in kw.items()]
    cmd = [sys.executable, __file__, "--child", mode, "--checkpoint", checkpoint, "--data", data,
           "--threads", str(threads), "--child-out", out] + options
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        os.unlink(out)
        raise ChildFailed(f"benchmark child failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    with open(out) as f:
        result = json.load(f)
    os.unlink(out)
    if log:
        print(f"  {mode} {os.path.basename(checkpoint)} {' '.join(options)}: {result['seconds']:.2f} s timed, "
              f"{time.perf_counter() - started:.1f} s wall", file=sys.stderr, flush=True)
    return result


def alternate(sides, reps, measure):
    """``measure(name, checkpoint, dtype)`` for every side, ``reps`` times, the order reversed every
    other repetition so that no side always runs first.  A side whose ``measure`` returns ``None``
    (it failed and the caller chose to go on) is not measured again and is left out of the result."""
    runs = {name: [] for name in sides}
    failed = set()
    for rep in range(reps):
        for name in (list(sides) if rep % 2 == 0 else list(sides)[::-1]):
            if name in failed:
                continue
            result = measure(name, *sides[name])
            if result is None:
                failed.add(name)
            else:
                runs[name].append(result)
    return {name: rs for name, rs in runs.items() if name not in failed}


def machine(device="cpu"):
    info = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    import fairseq
    import torch

    info.update(torch=torch.__version__, fairseq=fairseq.__version__)
    if device == "cuda":
        info.update(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda,
                    float32_matmul_precision=torch.get_float32_matmul_precision(),
                    cudnn_allow_tf32=torch.backends.cudnn.allow_tf32)
    return info


def _fairseq_cli(name):
    """Command for a fairseq console script (``fairseq-train``...): the script beside this Python, or,
    where fairseq is only on PYTHONPATH (the GPU bundle), ``python -m fairseq_cli.<module>``."""
    script = os.path.join(os.path.dirname(sys.executable), name)
    if os.path.exists(script):
        return [script]
    return [sys.executable, "-m", "fairseq_cli." + name.split("-", 1)[1]]


def untrained_checkpoint(arch, data, out_dir, extra=()):
    """A fairseq checkpoint of ``arch`` for the data's dictionaries (one update at lr 1e-9:
    the weights are the initialisation), for training-speed measurements."""
    subprocess.run([*_fairseq_cli("fairseq-train"), data, "--arch", arch, "--optimizer", "nag", "--lr", "1e-9",
                    "--max-update", "1", "--max-tokens", "500", "--save-dir", out_dir, "--no-epoch-checkpoints",
                    "--no-save-optimizer-state", "--disable-validation", "--no-progress-bar", *extra],
                   check=True, capture_output=True)
    return os.path.join(out_dir, "checkpoint_last.pt")


def smoke_setup(workdir):
    """A tiny fconv model trained for a few updates on a slice of the gettext corpus."""
    src = os.path.join(REPO, "..", "shared", "data", "gettext-en-de")
    bin_dir = os.path.join(workdir, "bin")
    for split, n in [("train", 400), ("valid", 30), ("test", 40)]:
        for lang in ("en", "de"):
            with open(os.path.join(src, f"{split}.{lang}"), encoding="utf-8") as f_in, \
                    open(os.path.join(workdir, f"{split}.{lang}"), "w", encoding="utf-8") as f_out:
                f_out.writelines(next(f_in) for _ in range(n))
    subprocess.run([*_fairseq_cli("fairseq-preprocess"), "--source-lang", "en", "--target-lang", "de", "--joined-dictionary",
                    "--trainpref", f"{workdir}/train", "--validpref", f"{workdir}/valid", "--testpref", f"{workdir}/test",
                    "--destdir", bin_dir, "--workers", "1"], check=True, capture_output=True)
    subprocess.run([*_fairseq_cli("fairseq-train"), bin_dir, "--arch", "fconv", "--encoder-embed-dim", "32",
                    "--decoder-embed-dim", "32", "--decoder-out-embed-dim", "32", "--encoder-layers", "[(32, 3)] * 2",
                    "--decoder-layers", "[(32, 3)] * 2", "--optimizer", "nag", "--lr", "0.25", "--clip-norm", "0.1",
                    "--max-update", "20", "--max-tokens", "2000", "--save-dir", f"{workdir}/ck", "--no-epoch-checkpoints",
                    "--no-progress-bar", "--disable-validation"], check=True, capture_output=True)
    return bin_dir, f"{workdir}/ck/checkpoint_last.pt"


def convert_to(fconv_checkpoint, out):
    import torch

    from fconv_plugin.checkpoint import load_checkpoint_file
    from fconv_plugin.convert import convert_checkpoint

    torch.save(convert_checkpoint(load_checkpoint_file(fconv_checkpoint)), out)
    return out


def summarize_generation(runs):
    """Medians and ratios of one generation config's runs (side -> list of child results)."""
    def same_hypotheses(a, b):
        return {r["hyp_sha1"] for r in runs[a]} == {r["hyp_sha1"] for r in runs[b]}

    entry = {}
    for name, rs in runs.items():
        sec = median([r["seconds"] for r in rs])
        entry[name] = {"seconds": sec, "sentences": rs[0]["sentences"], "sentences_per_s": rs[0]["sentences"] / sec,
                       "tokens_per_s": rs[0]["tokens"] / sec, "ms_per_sentence": 1000 * sec / rs[0]["sentences"],
                       "peak_rss_mb": max(r["peak_rss_mb"] for r in rs), "flops": rs[0]["flops"],
                       "bleu": rs[0]["bleu"], "generator": rs[0]["generator"], "params": rs[0]["params"],
                       "same_hypotheses_every_rep": len({r["hyp_sha1"] for r in rs}) == 1,
                       "same_hypotheses_as_fconv": same_hypotheses(name, "fconv")}
        if rs[0].get("peak_gpu_mb") is not None:
            entry[name]["peak_gpu_mb"] = max(r["peak_gpu_mb"] for r in rs)
    for name in entry:
        entry[name]["ratio_sentences_per_s"] = entry[name]["sentences_per_s"] / entry["fconv"]["sentences_per_s"]
    entry["identical_hypotheses"] = entry["fconv_ext"]["same_hypotheses_as_fconv"]
    if "fconv_fp16" in entry and "fconv_ext_fp16" in entry:  # half precision against half precision
        ext16 = entry["fconv_ext_fp16"]
        ext16["ratio_vs_fconv_fp16"] = ext16["sentences_per_s"] / entry["fconv_fp16"]["sentences_per_s"]
        ext16["same_hypotheses_as_fconv_fp16"] = same_hypotheses("fconv_ext_fp16", "fconv_fp16")
        entry["identical_hypotheses_fp16"] = ext16["same_hypotheses_as_fconv_fp16"]
    return entry


def summarize_training(runs, updates):
    """Medians and the fconv_ext / fconv ratio of one training preset's runs."""
    entry = {}
    for name, rs in runs.items():
        sec = median([r["seconds"] for r in rs])
        entry[name] = {"seconds": sec, "words_per_s": rs[0]["words"] / sec, "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
                       "flops": rs[0]["flops"], "first_losses": rs[0]["losses"][:3], "params": rs[0]["params"],
                       "updates": updates}
        if rs[0].get("peak_gpu_mb") is not None:
            entry[name]["peak_gpu_mb"] = max(r["peak_gpu_mb"] for r in rs)
    entry["ratio_words_per_s"] = entry["fconv_ext"]["words_per_s"] / entry["fconv"]["words_per_s"]
    return entry


def write_report(report, out, complete):
    """(Re)write ``OUT.json`` and ``OUT.md``; ``complete=False`` marks a run still going (or cut short)."""
    report["complete"] = complete
    with open(out + ".json", "w") as f:
        json.dump(report, f, indent=1)
    with open(out + ".md", "w") as f:
        f.write(markdown(report))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="binarized data directory with train/test splits")
    p.add_argument("--fconv-checkpoint", help="a trained fairseq fconv checkpoint")
    p.add_argument("--context", nargs="*", default=[], metavar="NAME=CHECKPOINT",
                   help="other fairseq models on the same data (e.g. lstm=..., transformer=...), generation only")
    p.add_argument("--train-presets", nargs="*", default=["checkpoint"],
                   help="'checkpoint' (the fconv checkpoint's architecture) and/or fairseq fconv presets, "
                        "e.g. fconv_wmt_en_de (random weights); PRESET:N times N updates instead of --train-updates")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="where the models run (cuda: synchronized clock, a warm-up batch, peak GPU memory)")
    p.add_argument("--dtypes", nargs="*", choices=sorted(LOW_PRECISION_SIDES), default=["bf16"],
                   help="low-precision generation sides next to float32 fconv and fconv_ext (always run): "
                        "fp16 = fconv_fp16 and fconv_ext_fp16 (model.half(), fairseq-generate --fp16), "
                        "bf16 = fconv_ext_bf16 (inference_dtype=bfloat16)")
    p.add_argument("--no-bf16", action="store_true", help="skip the fconv_ext_bf16 side")
    p.add_argument("--gen-configs", nargs="*", choices=[c[0] for c in GEN_CONFIGS], default=[c[0] for c in GEN_CONFIGS],
                   help="generation configurations to run (default: all)")
    p.add_argument("--reps", type=int, default=3, help="repetitions per measurement (median reported)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads, the same for every side")
    p.add_argument("--latency-sentences", type=int, default=200, help="sentences decoded at batch 1 (evenly spaced by length)")
    p.add_argument("--train-updates", type=int, default=20, help="timed training updates")
    p.add_argument("--train-max-tokens", type=int, default=4000, help="tokens per training batch")
    p.add_argument("--out", default=os.path.join(HERE, "results"), help="output prefix (.json and .md)")
    p.add_argument("--train-first", action="store_true",
                   help="measure training before generation (a run cut short by a time limit then has training)")
    p.add_argument("--keep-going", action="store_true",
                   help="a failing side other than fconv / fconv_ext is reported and dropped instead of ending the run")
    p.add_argument("--log-children", action="store_true", help="print every child's options and times to stderr")
    p.add_argument("--smoke", action="store_true", help="tiny model and data, seconds; for CI")
    # child options
    p.add_argument("--child", choices=["generate", "train"], help=argparse.SUPPRESS)
    p.add_argument("--checkpoint", help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    p.add_argument("--beam", type=int, default=5, help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=64, help=argparse.SUPPRESS)
    p.add_argument("--max-sentences", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.child:
        result = child_generate(args) if args.child == "generate" else child_train(args)
        with open(args.child_out, "w") as f:
            json.dump(result, f)
        return 0

    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            p.error("--device cuda: torch.cuda.is_available() is False (torch %s, built for CUDA %s)"
                    % (torch.__version__, torch.version.cuda))
    work = tempfile.mkdtemp(prefix="fconv-bench-")
    if args.smoke:
        args.data, args.fconv_checkpoint = smoke_setup(work)
        args.reps, args.latency_sentences, args.train_updates, args.train_max_tokens = 1, 10, 3, 500
    if not (args.data and args.fconv_checkpoint):
        p.error("--data and --fconv-checkpoint are required (or --smoke)")
    sys.path.insert(0, REPO)

    converted = convert_to(args.fconv_checkpoint, os.path.join(work, "fconv_ext.pt"))
    sides = {"fconv": (args.fconv_checkpoint, "float32"), "fconv_ext": (converted, "float32")}
    for precision in args.dtypes:
        if precision == "bf16" and args.no_bf16:
            continue
        for name, base, dtype in LOW_PRECISION_SIDES[precision]:
            sides[name] = (sides[base][0], dtype)
    for spec in args.context:
        name, _, path = spec.partition("=")
        sides[name] = (path, "float32")

    report = {"machine": machine(args.device), "threads": args.threads, "reps": args.reps, "train_max_tokens": args.train_max_tokens, "date": time.strftime("%Y-%m-%d"),
              "command": " ".join(sys.argv), "device": args.device, "generation": {}, "training": {}, "errors": {}}

    def measure(mode, name, checkpoint, label, **kw):
        """One child run; with --keep-going a failure of a side other than fconv / fconv_ext is
        recorded in the report and gives None (the side is dropped), otherwise it ends the run."""
        try:
            return run_child(mode, checkpoint, args.data, args.threads, log=args.log_children, device=args.device, **kw)
        except ChildFailed as err:
            if not args.keep_going or name in ("fconv", "fconv_ext"):
                raise SystemExit(str(err)) from None
            print(f"{label}: side {name} failed and is dropped:\n{err}", file=sys.stderr, flush=True)
            report["errors"][f"{label}/{name}"] = str(err)[-3000:]
            return None

    def generation():
        for config, beam, batch in GEN_CONFIGS:
            if config in args.gen_configs:
                generation_config(config, beam, batch)

    def generation_config(config, beam, batch):
        """All generation sides on one config, alternating; the report rewritten after it."""
        limit = args.latency_sentences if batch == 1 else 0
        runs = alternate(sides, args.reps, lambda name, ck, dtype: measure(
            "generate", name, ck, config, dtype=dtype, beam=beam, batch=batch, max_sentences=limit))
        for name in set(sides) - set(runs):  # failed (--keep-going): not run again
            del sides[name]
        entry = summarize_generation(runs)
        report["generation"][config] = entry
        line = f"{config}: " + ", ".join(f"{n} {e['seconds']:.2f}s ({e['ratio_sentences_per_s']:.2f}x, BLEU {e['bleu']:.2f})"
                                         for n, e in entry.items() if isinstance(e, dict))
        line += f"; fconv_ext identical={entry['identical_hypotheses']}"
        if "identical_hypotheses_fp16" in entry:
            line += (f"; fconv_ext_fp16 vs fconv_fp16 {entry['fconv_ext_fp16']['ratio_vs_fconv_fp16']:.2f}x, "
                     f"identical={entry['identical_hypotheses_fp16']}")
        print(line, flush=True)
        write_report(report, args.out, complete=False)

    def training():
        for spec in args.train_presets:
            training_preset(spec)

    def training_preset(spec):
        """fconv and fconv_ext training on one preset (PRESET[:UPDATES]); the report rewritten after it."""
        preset, _, updates = spec.partition(":")
        updates = int(updates or args.train_updates)
        if preset == "checkpoint":
            train_sides = {"fconv": (args.fconv_checkpoint, "float32"), "fconv_ext": (converted, "float32")}
        else:
            fresh = untrained_checkpoint(preset, args.data, os.path.join(work, preset))
            train_sides = {"fconv": (fresh, "float32"),
                           "fconv_ext": (convert_to(fresh, os.path.join(work, preset + "_ext.pt")), "float32")}
        runs = alternate(train_sides, args.reps, lambda name, ck, dtype: measure(
            "train", name, ck, "train_" + preset, train_updates=updates, train_max_tokens=args.train_max_tokens))
        entry = summarize_training(runs, updates)
        report["training"][preset] = entry
        print(f"training {preset}: fconv {entry['fconv']['words_per_s']:.0f} w/s, fconv_ext "
              f"{entry['fconv_ext']['words_per_s']:.0f} w/s, ratio {entry['ratio_words_per_s']:.2f}x", flush=True)
        write_report(report, args.out, complete=False)

    for phase in ((training, generation) if args.train_first else (generation, training)):
        phase()

    # the machine's matmul rate for these shapes, in this process tree
    from fairseq import checkpoint_utils

    import fconv_plugin  # noqa: F401

    model = checkpoint_utils.load_model_ensemble([converted], arg_overrides={"data": args.data})[0][0]
    rate = matmul_rate(model, args.threads, device=args.device)
    report["matmul_gflops"] = rate / 1e9
    for entry in report["generation"].values():
        for side in entry.values():
            if isinstance(side, dict):
                side["efficiency"] = side["flops"] / rate / side["seconds"] if side["flops"] else None
    for entry in report["training"].values():
        for side in ("fconv", "fconv_ext"):
            entry[side]["efficiency"] = entry[side]["flops"] / rate / entry[side]["seconds"]

    write_report(report, args.out, complete=True)
    print(markdown(report))
    return 0


def median(values):
    return statistics.median(values)


def _percent(x):
    return f"{x:.0%}" if x is not None else "-"


def markdown(r):
    """The report as markdown.  CPU runs keep the committed results.md layout; CUDA runs add the GPU,
    peak GPU memory and (with fp16 sides) a half-precision table."""
    m, gpu = r["machine"], r.get("device", "cpu") == "cuda"
    rate = (f"fp32 matmul rate {r['matmul_gflops']:.0f} GFLOP/s" if r.get("matmul_gflops") is not None
            else "fp32 matmul rate not measured yet (it is measured last)")
    if gpu:
        rate += (f" (torch.mm on the GPU at the model's decoding shapes, float32 matmul precision "
                 f"'{m.get('float32_matmul_precision')}')")
        where = f"{m['gpu']} (CUDA {m['cuda']}; host {m['cpu']}, {m['cpus']} CPUs)"
    else:
        where = f"{m['cpu']} ({m['cpus']} CPUs)"
    lines = [f"Benchmark {r['date']} on {where}, {r['threads']} threads, torch {m['torch']}, "
             f"fairseq {m['fairseq']}; median of {r['reps']}; {rate}.",
             f"Command: `{r['command']}`", ""]
    if not r.get("complete", True):
        lines += ["**Partial results**: the run had not finished when this was written.", ""]
    if gpu:
        lines += ["On CUDA: models and batches on the GPU, the clock read after torch.cuda.synchronize(), one untimed "
                  "warm-up batch per process; peak GPU MB = torch.cuda.max_memory_allocated.", ""]
    mem_head, mem_rule = ("peak GPU MB | peak RSS MB |", "---|---|") if gpu else ("peak RSS MB |", "---|")
    lines += ["Generation (max_len_a 1.2, max_len_b 10; BLEU: test set, BPE removed, tokenized, sacrebleu tokenize=none; "
              "ratio = sentences/s over fconv's; eff. = FLOP floor / time, fp32 conv models only):", "",
              "| config | model | generator | params | s | sent/s | ratio vs fconv | eff. | BLEU | same hyps as fconv | " + mem_head,
              "|---|---|---|---|---|---|---|---|---|---|" + mem_rule]
    for config, e in r["generation"].items():
        for name, s in e.items():
            if not isinstance(s, dict):
                continue
            eff = f"{s['efficiency']:.0%}" if s.get("efficiency") else "-"
            mem = f"{s['peak_gpu_mb']:.0f} | {s['peak_rss_mb']:.0f} |" if gpu else f"{s['peak_rss_mb']:.0f} |"
            lines.append(f"| {config} | {name} | {s['generator']} | {s['params'] / 1e6:.1f}M | {s['seconds']:.2f} | "
                         f"{s['sentences_per_s']:.1f} | {s['ratio_sentences_per_s']:.2f}x | {eff} | {s['bleu']:.2f} | "
                         f"{s['same_hypotheses_as_fconv']} | " + mem)
    half = [(config, e) for config, e in r["generation"].items() if "identical_hypotheses_fp16" in e]
    if half:
        lines += ["", "Half precision (model.half(), as fairseq-generate --fp16), fconv_ext_fp16 against fconv_fp16 "
                  "(hypotheses may legitimately differ from float32 and between the two):", "",
                  "| config | fconv_fp16 s | fconv_ext_fp16 s | ratio vs fconv_fp16 | ratio vs fconv (fp32) | "
                  "BLEU fconv_fp16 / fconv_ext_fp16 | same hyps |", "|---|---|---|---|---|---|---|"]
        for config, e in half:
            a, b = e["fconv_fp16"], e["fconv_ext_fp16"]
            lines.append(f"| {config} | {a['seconds']:.2f} | {b['seconds']:.2f} | {b['ratio_vs_fconv_fp16']:.2f}x | "
                         f"{b['ratio_sentences_per_s']:.2f}x | {a['bleu']:.2f} / {b['bleu']:.2f} | "
                         f"{e['identical_hypotheses_fp16']} |")
    mem_head = "peak GPU MB (fconv / ext)" if gpu else "peak RSS MB (fconv / ext)"
    lines += ["", f"Training: NAG, batches of {r.get('train_max_tokens', 4000)} tokens, the same batches and seed on both sides; "
              "eff. = 3 x forward FLOPs / matmul rate / time.", "", "| training | params | fconv words/s | fconv_ext words/s | ratio | fconv eff. | fconv_ext eff. | " + mem_head + " |",
              "|---|---|---|---|---|---|---|---|"]
    for preset, t in r["training"].items():
        mem = "peak_gpu_mb" if gpu else "peak_rss_mb"
        lines.append(f"| {preset} ({t['fconv'].get('updates', '?')} updates) | {t['fconv']['params'] / 1e6:.1f}M | {t['fconv']['words_per_s']:.0f} | "
                     f"{t['fconv_ext']['words_per_s']:.0f} | {t['ratio_words_per_s']:.2f}x | {_percent(t['fconv'].get('efficiency'))} | "
                     f"{_percent(t['fconv_ext'].get('efficiency'))} | {t['fconv'][mem]:.0f} / {t['fconv_ext'][mem]:.0f} |")
    for config, e in r["generation"].items():
        if config.endswith("batch1"):
            lines.append(f"\nLatency {config} (ms/sentence): " + ", ".join(
                f"{n} {s['ms_per_sentence']:.1f}" for n, s in e.items() if isinstance(s, dict)) + ".")
    for where_failed, err in r.get("errors", {}).items():
        lines.append(f"\nFailed and dropped (--keep-going): {where_failed}: `{err.strip().splitlines()[-1][:300]}`")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
