"""End to end through fairseq's own CLIs, on a slice of the real gettext corpus:
fairseq-preprocess, fairseq-train --user-dir fconv_plugin, fairseq-generate
(--print-alignment), fairseq-interactive, and fconv-ext-convert on a fairseq fconv model."""

import os
import re
import subprocess
import sys

import pytest
import torch

from conftest import REPO

pytestmark = pytest.mark.slow
BIN = os.path.dirname(sys.executable)
TINY = ["--encoder-embed-dim", "32", "--decoder-embed-dim", "32", "--decoder-out-embed-dim", "32",
        "--encoder-layers", "[(32, 3)] * 2", "--decoder-layers", "[(32, 3)] * 2"]
TRAIN = ["--optimizer", "nag", "--lr", "0.25", "--clip-norm", "0.1", "--max-tokens", "3000",
         "--max-epoch", "2", "--no-progress-bar", "--seed", "1", "--no-epoch-checkpoints"]
N_TEST = 37  # not a multiple of 8 on purpose


def run(cmd, cwd=None, stdin=None):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=cwd, input=stdin, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def hypotheses(output):
    """{sentence id: (hypothesis, score)} from fairseq-generate's H- lines."""
    hyps = {}
    for line in output.splitlines():
        if line.startswith("H-"):
            ident, score, text = line.split("\t")
            hyps[int(ident[2:])] = (text, float(score))
    return hyps


@pytest.fixture(scope="module")
def data_bin(tmp_path_factory, request):
    src = os.path.join(REPO, "..", "shared", "data", "gettext-en-de")
    if not os.path.isfile(os.path.join(src, "train.en")):
        pytest.skip("../shared/data/gettext-en-de is not beside the repository")
    root = tmp_path_factory.mktemp("gettext")
    # the usual preparation, in small: sacremoses tokenization, a joint subword-nmt BPE
    from sacremoses import MosesTokenizer
    from subword_nmt.apply_bpe import BPE
    from subword_nmt.learn_bpe import learn_bpe

    tokenized = {}
    for split, n in [("train", 1500), ("valid", 60), ("test", N_TEST)]:
        for lang in ("en", "de"):
            tok = MosesTokenizer(lang=lang)
            with open(os.path.join(src, f"{split}.{lang}"), encoding="utf-8") as f:
                tokenized[split, lang] = [tok.tokenize(next(f), return_str=True, escape=False) for _ in range(n)]
    with open(root / "codes", "w", encoding="utf-8") as f:
        learn_bpe(tokenized["train", "en"] + tokenized["train", "de"], f, 500)
    with open(root / "codes", encoding="utf-8") as f:
        bpe = BPE(f)
    for (split, lang), lines in tokenized.items():
        with open(root / f"{split}.{lang}", "w", encoding="utf-8") as f:
            f.writelines(bpe.process_line(line) + "\n" for line in lines)
    run([f"{BIN}/fairseq-preprocess", "--source-lang", "en", "--target-lang", "de", "--joined-dictionary",
         "--trainpref", str(root / "train"), "--validpref", str(root / "valid"), "--testpref", str(root / "test"),
         "--destdir", str(root / "bin"), "--workers", "1"])
    return root / "bin"


def generate(data, checkpoint, *extra, user_dir=True, cwd=None, tool="fairseq-generate"):
    # fairseq's default --required-batch-size-multiple 8 drops the last N mod 8 sentences;
    # the plugin keeps them (no flag needed), see test_every_test_sentence_is_decoded
    cmd = [f"{BIN}/{tool}", str(data), "--path", str(checkpoint), "--beam", "5", "--batch-size", "16", *extra]
    if user_dir:
        cmd += ["--user-dir", os.path.join(REPO, "fconv_plugin")]
    return run(cmd, cwd=cwd)


def test_train_generate_interactive_with_user_dir(data_bin, tmp_path):
    save = tmp_path / "ck"
    # from the repository root, with the relative --user-dir the README shows
    log = run([f"{BIN}/fairseq-train", str(data_bin), "--user-dir", "fconv_plugin", "--arch", "fconv_ext_tiny",
               "--task", "fconv_translation", "--eval-bleu-detok", "space", "--eval-bleu-args", '{"beam": 1}',
               "--best-checkpoint-metric", "bleu", "--maximize-best-checkpoint-metric",
               "--save-dir", str(save), *TRAIN], cwd=REPO)
    assert "FConvExtModel" in log and (save / "checkpoint_best.pt").exists()
    losses = [float(m) for m in re.findall(r"\| train \| epoch \d+ \| loss ([\d.]+)", log)]
    assert len(losses) == 2 and losses[1] < losses[0]  # it learns
    # validation BLEU (sacreBLEU, signature logged) picks the best checkpoint
    assert "validation BLEU: nrefs:1|case:mixed|eff:no|tok:13a" in log
    bleus = [float(m) for m in re.findall(r"\| valid \| epoch \d+ .*?\| bleu ([\d.]+)", log)]
    assert len(bleus) == 2
    best = [float(m) for m in re.findall(r"best_bleu ([\d.]+)", log)]
    assert best and best[-1] == max(bleus)

    # fine-tune with sequence_risk for a few updates, from that checkpoint
    risk_log = run([f"{BIN}/fairseq-train", str(data_bin), "--user-dir", "fconv_plugin", "--arch", "fconv_ext_tiny",
                    "--task", "fconv_translation", "--eval-bleu-detok", "space", "--eval-bleu-args", '{"beam": 1}',
                    "--criterion", "sequence_risk", "--risk-candidates", "2", "--risk-beam", "2",
                    "--restore-file", str(save / "checkpoint_best.pt"), "--reset-optimizer", "--reset-dataloader",
                    "--reset-meters", "--save-dir", str(tmp_path / "risk"), "--optimizer", "adam", "--lr", "1e-4",
                    "--max-tokens", "1000", "--max-update", "3", "--log-interval", "1", "--no-progress-bar"], cwd=REPO)
    assert re.search(r"train_inner .*risk=[\d.]+, expected_bleu=[\d.]+", risk_log), risk_log[-2000:]

    out = generate(data_bin, save / "checkpoint_best.pt", "--print-alignment", cwd=tmp_path)
    hyps = hypotheses(out)
    assert sorted(hyps) == list(range(N_TEST))  # every test sentence decoded
    alignments = [line for line in out.splitlines() if line.startswith("A-")]
    assert len(alignments) == N_TEST
    pairs = [p for a in alignments for p in a.split("\t")[1].split()]
    assert pairs and all(re.fullmatch(r"\d+-\d+", p) for p in pairs)
    assert "BLEU4" in out

    # raw text in, detokenized text out: fairseq's moses tokenizer and subword-nmt BPE
    codes = str(data_bin.parent / "codes")
    lines = "Cannot open file\nzzzqqq xxyyzz\nThe file %s does not exist\n"
    out = run([f"{BIN}/fairseq-interactive", str(data_bin), "--path", str(save / "checkpoint_best.pt"),
               "--user-dir", os.path.join(REPO, "fconv_plugin"), "--beam", "5", "--source-lang", "en",
               "--target-lang", "de", "--tokenizer", "moses", "--bpe", "subword_nmt", "--bpe-codes", codes],
              cwd=tmp_path, stdin=lines)
    assert len([l for l in out.splitlines() if l.startswith("H-")]) == 3
    assert [l.split("\t")[1] for l in out.splitlines() if l.startswith("S-")][0].count("@@") > 0  # BPE applied
    assert not any("@@" in l for l in out.splitlines() if l.startswith("D-"))  # and removed

    # careless input: empty, unknown words, longer than the model's positions, not UTF-8;
    # every line still gets a translation (with --task fconv_translation)
    hostile = tmp_path / "hostile.txt"
    hostile.write_bytes(b"Cannot open file\n\nzzqx qqzz\n" + b" ".join([b"file"] * 1100) + b"\nbad \xff\xfe bytes\nThe end\n")
    out = run([f"{BIN}/fairseq-interactive", str(data_bin), "--path", str(save / "checkpoint_best.pt"),
               "--user-dir", os.path.join(REPO, "fconv_plugin"), "--task", "fconv_translation", "--beam", "2",
               "--source-lang", "en", "--target-lang", "de", "--input", str(hostile)], cwd=tmp_path)
    assert sorted(int(l.split("\t")[0][2:]) for l in out.splitlines() if l.startswith("H-")) == list(range(6))
    assert "longer than the model's 1024 positions" in out and "not UTF-8" in out

    # too-long inputs: fairseq's clear error naming the limit, or skipping on request
    ck = save / "checkpoint_best.pt"
    proc = subprocess.run([f"{BIN}/fairseq-generate", str(data_bin), "--path", str(ck), "--user-dir",
                           os.path.join(REPO, "fconv_plugin"), "--max-source-positions", "6"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode != 0
    assert "max_positions=(6" in proc.stderr and "--skip-invalid-size-inputs-valid-test" in proc.stderr
    assert "IndexError" not in proc.stderr
    skipped = hypotheses(generate(data_bin, ck, "--max-source-positions", "6",
                                  "--skip-invalid-size-inputs-valid-test", cwd=tmp_path))
    assert 0 < len(skipped) < N_TEST

    # Python: fairseq's hub interface on raw text
    from fconv_plugin.models import FConvExtModel

    hub = FConvExtModel.from_pretrained(str(save), checkpoint_file="checkpoint_best.pt",
                                        data_name_or_path=str(data_bin), source_lang="en", target_lang="de",
                                        bpe="subword_nmt", bpe_codes=codes, tokenizer="moses")
    translations = hub.translate(["Cannot open file", "The file %s does not exist"], beam=5)
    assert len(translations) == 2 and all(isinstance(t, str) and t and "@@" not in t for t in translations)

    # pictures: per-layer attention heatmaps and training curves
    from fconv_plugin.cli.plots import layer_attention, plot_attention, plot_curves

    png = tmp_path / "attention.png"
    assert plot_attention([str(save), "--data", str(data_bin), "--sentence", "Cannot open file",
                           "--source-lang", "en", "--target-lang", "de", "--out", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    src = hub.encode("Cannot open file")
    per_layer = layer_attention(hub.models[0], src, hub.generate([src], beam=5)[0][0]["tokens"])
    assert len(per_layer) == 2  # fconv_ext_tiny: attention in both decoder layers
    assert all(torch.allclose(a.sum(-1), torch.ones(a.size(0))) for a in per_layer)
    (tmp_path / "train.log").write_text(log)
    assert plot_curves([str(tmp_path / "train.log"), "--out", str(tmp_path / "curves.png")]) == 0
    assert (tmp_path / "curves.png").stat().st_size > 10000

    # the installed console script adds --user-dir itself, from any directory
    out = generate(data_bin, save / "checkpoint_best.pt", user_dir=False, cwd=tmp_path, tool="fconv-ext-generate")
    assert hypotheses(out) == hyps


def test_converted_fconv_checkpoint_decodes_identically(data_bin, tmp_path):
    save = tmp_path / "fconv"
    run([f"{BIN}/fairseq-train", str(data_bin), "--arch", "fconv", *TINY, "--save-dir", str(save), *TRAIN])
    converted = tmp_path / "converted.pt"
    run([f"{BIN}/fconv-ext-convert", str(save / "checkpoint_best.pt"), str(converted)])
    # fconv's own checkpoint needs the plugin imported to load weights-only on torch >= 2.6
    ref = hypotheses(generate(data_bin, save / "checkpoint_best.pt"))
    ext = hypotheses(generate(data_bin, converted))
    assert sorted(ref) == sorted(ext) == list(range(N_TEST))
    for i in ref:
        assert ref[i][0] == ext[i][0], f"sentence {i}"
        assert abs(ref[i][1] - ext[i][1]) < 1e-4
