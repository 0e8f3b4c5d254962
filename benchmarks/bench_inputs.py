"""The checkpoints and data ``bench.py`` measures, made in the parent before any measurement: the
fconv_ext conversion of an fconv checkpoint, untrained preset checkpoints for training speed, a shortlist
file (``fconv-ext-shortlist``, timed), and the ``--smoke`` model and data."""

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def fairseq_cli(name):
    """Command for a fairseq console script (``fairseq-train``...): the script beside this Python, or,
    where fairseq is only on PYTHONPATH (the GPU bundle), ``python -m fairseq_cli.<module>``."""
    script = os.path.join(os.path.dirname(sys.executable), name)
    if os.path.exists(script):
        return [script]
    return [sys.executable, "-m", "fairseq_cli." + name.split("-", 1)[1]]


def convert_to(fconv_checkpoint, out):
    """``fconv_checkpoint`` converted to fconv_ext (fconv-ext-convert's code), written to ``out``."""
    import torch

    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    from fconv_plugin.checkpoint import load_checkpoint_file
    from fconv_plugin.convert import convert_checkpoint

    torch.save(convert_checkpoint(load_checkpoint_file(fconv_checkpoint)), out)
    return out


def untrained_checkpoint(arch, data, out_dir, extra=()):
    """A fairseq checkpoint of ``arch`` for the data's dictionaries (one update at lr 1e-9:
    the weights are the initialisation), for training-speed measurements."""
    subprocess.run(
        [
            *fairseq_cli("fairseq-train"),
            data,
            "--arch",
            arch,
            "--optimizer",
            "nag",
            "--lr",
            "1e-9",
            "--max-update",
            "1",
            "--max-tokens",
            "500",
            "--save-dir",
            out_dir,
            "--no-epoch-checkpoints",
            "--no-save-optimizer-state",
            "--disable-validation",
            "--no-progress-bar",
            *extra,
        ],
        check=True,
        capture_output=True,
    )
    return os.path.join(out_dir, "checkpoint_last.pt")


def smoke_setup(workdir):
    """A tiny fconv model trained on a slice of the gettext corpus: (data, checkpoint).  150 updates:
    enough for varied, several-token hypotheses (after 20 every sentence decoded to the same one or two
    tokens, which made the identical-hypotheses check nearly empty)."""
    src = os.path.join(REPO, "..", "shared", "data", "gettext-en-de")
    bin_dir = os.path.join(workdir, "bin")
    for split, n in [("train", 400), ("valid", 30), ("test", 40)]:
        for lang in ("en", "de"):
            with open(os.path.join(src, f"{split}.{lang}"), encoding="utf-8") as f_in, open(
                os.path.join(workdir, f"{split}.{lang}"), "w", encoding="utf-8"
            ) as f_out:
                f_out.writelines(next(f_in) for _ in range(n))
    subprocess.run(
        [
            *fairseq_cli("fairseq-preprocess"),
            "--source-lang",
            "en",
            "--target-lang",
            "de",
            "--joined-dictionary",
            "--trainpref",
            f"{workdir}/train",
            "--validpref",
            f"{workdir}/valid",
            "--testpref",
            f"{workdir}/test",
            "--destdir",
            bin_dir,
            "--workers",
            "1",
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            *fairseq_cli("fairseq-train"),
            bin_dir,
            "--arch",
            "fconv",
            "--encoder-embed-dim",
            "32",
            "--decoder-embed-dim",
            "32",
            "--decoder-out-embed-dim",
            "32",
            "--encoder-layers",
            "[(32, 3)] * 2",
            "--decoder-layers",
            "[(32, 3)] * 2",
            "--optimizer",
            "nag",
            "--lr",
            "0.25",
            "--clip-norm",
            "0.1",
            "--max-update",
            "150",
            "--max-tokens",
            "2000",
            "--save-dir",
            f"{workdir}/ck",
            "--no-epoch-checkpoints",
            "--no-progress-bar",
            "--disable-validation",
        ],
        check=True,
        capture_output=True,
    )
    return bin_dir, f"{workdir}/ck/checkpoint_last.pt"


def data_languages(data):
    """(source, target) languages of a fairseq-preprocess'd directory, from its test split's file names."""
    pairs = {name.split(".")[1] for name in os.listdir(data) if name.startswith("test.") and name.endswith(".idx")}
    if len(pairs) != 1:
        raise SystemExit(
            f"{data}: cannot tell the language pair from the test split's files ({sorted(pairs)}); "
            "pass --shortlist FILE built with fconv-ext-shortlist"
        )
    src, tgt = pairs.pop().split("-")
    return src, tgt


def build_shortlist(data, out, extra_args="", threads=None):
    """Build a shortlist for ``data``'s dictionaries from its train split with ``fconv-ext-shortlist``
    (``extra_args``: more of its options, one string); what was run and how long it took (seconds, wall)."""
    import shlex
    import time

    src, tgt = data_languages(data)
    script = os.path.join(os.path.dirname(sys.executable), "fconv-ext-shortlist")
    cmd = [script] if os.path.exists(script) else [sys.executable, "-m", "fconv_plugin.cli.shortlist"]
    cmd += [data, "--source-lang", src, "--target-lang", tgt, "--out", out, *shlex.split(extra_args)]
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    env["PYTHONPATH"] = os.pathsep.join([REPO, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"building the shortlist failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return {"command": " ".join(shlex.quote(c) for c in cmd), "seconds": seconds, "bytes": os.path.getsize(out)}
