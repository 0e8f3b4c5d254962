"""End to end through fairseq's own CLIs, on a slice of the real gettext corpus: fairseq-preprocess,
fairseq-train --user-dir fconv_plugin, fairseq-generate (--print-alignment), fairseq-interactive, the
hub interface, the plots, and fconv-ext-convert on a fairseq fconv model.  One feature per test; the
training run and the generate run they read are session fixtures (tests/integration/conftest.py)."""

import re
import subprocess

import pytest
import torch

from helpers import BIN, N_TEST, SHORT_TRAINING, USER_DIR, generate, hypotheses, run

pytestmark = pytest.mark.slow
TINY = [
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
]


# ---------------------------------------------------------------- fairseq-train --user-dir
def test_training_with_user_dir_builds_fconv_ext_and_learns(fconv_ext_tiny_run):
    log = (fconv_ext_tiny_run / "train.log").read_text()
    assert "FConvExtModel" in log and (fconv_ext_tiny_run / "checkpoint_best.pt").exists()
    losses = [float(m) for m in re.findall(r"\| train \| epoch \d+ \| loss ([\d.]+)", log)]
    assert len(losses) == 2 and losses[1] < losses[0]


def test_validation_bleu_chooses_the_best_checkpoint(fconv_ext_tiny_run):
    log = (fconv_ext_tiny_run / "train.log").read_text()
    assert "validation BLEU: nrefs:1|case:mixed|eff:no|tok:13a" in log  # sacreBLEU, signature logged
    bleus = [float(m) for m in re.findall(r"\| valid \| epoch \d+ .*?\| bleu ([\d.]+)", log)]
    assert len(bleus) == 2
    best = [float(m) for m in re.findall(r"best_bleu ([\d.]+)", log)]
    assert best and best[-1] == max(bleus)


@pytest.mark.parametrize(
    "cost_args,expected",
    [
        ([], "expected_bleu"),
        (["--risk-cost", "rougeL", "--risk-max-len-a", "0", "--risk-max-len-b", "5"], "expected_rougeL"),
    ],
)
def test_sequence_risk_fine_tunes_from_a_checkpoint(data_bin, fconv_ext_tiny_run, tmp_path, cost_args, expected):
    log = run(
        [
            f"{BIN}/fairseq-train",
            str(data_bin),
            "--user-dir",
            USER_DIR,
            "--arch",
            "fconv_ext_tiny",
            "--task",
            "fconv_translation",
            "--eval-bleu-detok",
            "space",
            "--eval-bleu-args",
            '{"beam": 1}',
            "--criterion",
            "sequence_risk",
            "--risk-candidates",
            "2",
            "--risk-beam",
            "2",
            "--restore-file",
            str(fconv_ext_tiny_run / "checkpoint_best.pt"),
            "--reset-optimizer",
            "--reset-dataloader",
            "--reset-meters",
            "--save-dir",
            str(tmp_path / "risk"),
            "--optimizer",
            "adam",
            "--lr",
            "1e-4",
            "--max-tokens",
            "1000",
            "--max-update",
            "3",
            "--log-interval",
            "1",
            "--no-progress-bar",
            *cost_args,
        ]
    )
    assert re.search(rf"train_inner .*risk=[\d.]+, {expected}=[\d.]+", log), log[-2000:]


# ---------------------------------------------------------------- fairseq-generate
def test_generate_decodes_every_test_sentence(fconv_ext_tiny_generated):
    assert sorted(hypotheses(fconv_ext_tiny_generated)) == list(range(N_TEST))  # N_TEST is not a multiple of 8
    assert "BLEU4" in fconv_ext_tiny_generated


def test_print_alignment_gives_an_alignment_per_sentence(fconv_ext_tiny_generated):
    alignments = [line for line in fconv_ext_tiny_generated.splitlines() if line.startswith("A-")]
    assert len(alignments) == N_TEST
    pairs = [p for a in alignments for p in a.split("\t")[1].split()]
    assert pairs and all(re.fullmatch(r"\d+-\d+", p) for p in pairs)


def test_console_script_adds_the_user_dir_itself(data_bin, fconv_ext_tiny_run, fconv_ext_tiny_generated, tmp_path):
    out = generate(
        data_bin, fconv_ext_tiny_run / "checkpoint_best.pt", user_dir=False, cwd=tmp_path, tool="fconv-ext-generate"
    )  # from a directory without fconv_plugin
    assert hypotheses(out) == hypotheses(fconv_ext_tiny_generated)


def test_too_long_input_fails_with_fairseqs_message(data_bin, fconv_ext_tiny_run, tmp_path):
    checkpoint = fconv_ext_tiny_run / "checkpoint_best.pt"
    proc = subprocess.run(
        [
            f"{BIN}/fairseq-generate",
            str(data_bin),
            "--path",
            str(checkpoint),
            "--user-dir",
            USER_DIR,
            "--max-source-positions",
            "6",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode != 0
    assert "max_positions=(6" in proc.stderr and "--skip-invalid-size-inputs-valid-test" in proc.stderr
    assert "IndexError" not in proc.stderr


def test_too_long_input_is_skipped_on_request(data_bin, fconv_ext_tiny_run, tmp_path):
    skipped = hypotheses(
        generate(
            data_bin,
            fconv_ext_tiny_run / "checkpoint_best.pt",
            "--max-source-positions",
            "6",
            "--skip-invalid-size-inputs-valid-test",
            cwd=tmp_path,
        )
    )
    assert 0 < len(skipped) < N_TEST


# ---------------------------------------------------------------- fairseq-interactive
def interactive(data_bin, checkpoint, *extra, cwd, stdin=None):
    return run(
        [
            f"{BIN}/fairseq-interactive",
            str(data_bin),
            "--path",
            str(checkpoint),
            "--user-dir",
            USER_DIR,
            "--source-lang",
            "en",
            "--target-lang",
            "de",
            *extra,
        ],
        cwd=cwd,
        stdin=stdin,
    )


def test_interactive_applies_and_removes_bpe(data_bin, fconv_ext_tiny_run, tmp_path):
    # raw text in, detokenized text out: fairseq's moses tokenizer and subword-nmt BPE
    out = interactive(
        data_bin,
        fconv_ext_tiny_run / "checkpoint_best.pt",
        "--beam",
        "5",
        "--tokenizer",
        "moses",
        "--bpe",
        "subword_nmt",
        "--bpe-codes",
        str(data_bin.parent / "codes"),
        cwd=tmp_path,
        stdin="Cannot open file\nzzzqqq xxyyzz\nThe file %s does not exist\n",
    )
    lines = out.splitlines()
    assert len([line for line in lines if line.startswith("H-")]) == 3
    assert [line.split("\t")[1] for line in lines if line.startswith("S-")][0].count("@@") > 0  # BPE applied
    assert not any("@@" in line for line in lines if line.startswith("D-"))  # and removed


def test_interactive_translates_every_line_of_careless_input(data_bin, fconv_ext_tiny_run, tmp_path):
    # empty, unknown words, longer than the model's positions, not UTF-8: every line still gets a
    # translation (with --task fconv_translation)
    hostile = tmp_path / "hostile.txt"
    hostile.write_bytes(
        b"Cannot open file\n\nzzqx qqzz\n" + b" ".join([b"file"] * 1100) + b"\nbad \xff\xfe bytes\nThe end\n"
    )
    out = interactive(
        data_bin,
        fconv_ext_tiny_run / "checkpoint_best.pt",
        "--task",
        "fconv_translation",
        "--beam",
        "2",
        "--input",
        str(hostile),
        cwd=tmp_path,
    )
    assert sorted(int(line.split("\t")[0][2:]) for line in out.splitlines() if line.startswith("H-")) == list(range(6))
    assert "longer than the model's 1024 positions" in out and "not utf-8" in out.lower()  # warned, not stopped


# ---------------------------------------------------------------- Python: hub interface and plots
def test_hub_interface_translates_raw_text(fconv_ext_tiny_hub):
    translations = fconv_ext_tiny_hub.translate(["Cannot open file", "The file %s does not exist"], beam=5)
    assert len(translations) == 2 and all(isinstance(t, str) and t and "@@" not in t for t in translations)


def test_plot_attention_writes_a_png(data_bin, fconv_ext_tiny_run, tmp_path):
    from fconv_plugin.cli.plots import plot_attention

    png = tmp_path / "attention.png"
    assert (
        plot_attention(
            [
                str(fconv_ext_tiny_run),
                "--data",
                str(data_bin),
                "--sentence",
                "Cannot open file",
                "--source-lang",
                "en",
                "--target-lang",
                "de",
                "--out",
                str(png),
            ]
        )
        == 0
    )
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_layer_attention_gives_a_distribution_per_layer(fconv_ext_tiny_hub):
    from fconv_plugin.cli.plots import layer_attention

    src = fconv_ext_tiny_hub.encode("Cannot open file")
    hyp = fconv_ext_tiny_hub.generate([src], beam=5)[0][0]["tokens"]
    per_layer = layer_attention(fconv_ext_tiny_hub.models[0], src, hyp)
    assert len(per_layer) == 2  # fconv_ext_tiny: attention in both decoder layers
    assert all(torch.allclose(a.sum(-1), torch.ones(a.size(0))) for a in per_layer)


def test_plot_curves_from_a_training_log(fconv_ext_tiny_run, tmp_path):
    from fconv_plugin.cli.plots import plot_curves

    assert plot_curves([str(fconv_ext_tiny_run / "train.log"), "--out", str(tmp_path / "curves.png")]) == 0
    assert (tmp_path / "curves.png").stat().st_size > 10000


# ---------------------------------------------------------------- fconv-ext-convert
def test_converted_fconv_checkpoint_decodes_identically(data_bin, tmp_path):
    save = tmp_path / "fconv"
    run([f"{BIN}/fairseq-train", str(data_bin), "--arch", "fconv", *TINY, "--save-dir", str(save), *SHORT_TRAINING])
    converted = tmp_path / "converted.pt"
    run([f"{BIN}/fconv-ext-convert", str(save / "checkpoint_best.pt"), str(converted)])
    # fconv's own checkpoint needs the plugin imported to load weights-only on torch >= 2.6
    ref = hypotheses(generate(data_bin, save / "checkpoint_best.pt"))
    ext = hypotheses(generate(data_bin, converted))
    assert sorted(ref) == sorted(ext) == list(range(N_TEST))
    for i in ref:
        assert ref[i][0] == ext[i][0], f"sentence {i}"
        assert abs(ref[i][1] - ext[i][1]) < 1e-4
