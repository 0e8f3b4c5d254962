"""What the tests share besides fixtures: the tiny test dictionary, small models (fairseq fconv and its
fconv_ext twin with the same weights, small fconv_ext configurations), random batches, gettext messages,
the pieces of a published model archive, and the helpers that run this environment's command-line tools
and read fairseq-generate's output.  The fixtures built from them are in the conftest files."""

import argparse
import importlib
import io
import os
import sys
import tarfile

import pytest
import torch
from fairseq.data import Dictionary

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository root
SHARED_DATA = os.path.join(REPO, "..", "shared", "data")  # the corpora beside the repository
DEBIAN_DESCRIPTIONS = os.path.join(SHARED_DATA, "debian-descriptions")
needs_debian_descriptions = pytest.mark.skipif(
    not os.path.isdir(DEBIAN_DESCRIPTIONS), reason="../shared/data/debian-descriptions is not beside the repository"
)
if REPO not in sys.path:
    sys.path.insert(0, REPO)

importlib.import_module("fconv_plugin")  # registers fconv_ext and the rest with fairseq
from fconv_plugin.convert import convert_checkpoint
from fconv_plugin.models import build_model_from_config


def make_dictionary(size: int) -> Dictionary:
    """The tiny test dictionary: fairseq's 4 special symbols, then ``w0``, ``w1``, ... up to ``size`` entries."""
    d = Dictionary()
    for i in range(size - len(d)):
        d.add_symbol(f"w{i}")
    return d


class StubTask:
    def __init__(self, src_dict, tgt_dict):
        self.source_dictionary = src_dict
        self.target_dictionary = tgt_dict


#: a small fconv_ext config with the spec's features: width changes, residual 0 and 2 layers back, even
#: kernels, attention in 3 of 4 decoder layers (small_fconv_ext)
SMALL_FCONV_EXT = {
    "_name": "fconv_ext",
    "dropout": 0.1,
    "encoder_embed_dim": 16,
    "encoder_layers": "[(16, 3), (24, 2), (24, 3, 2)]",
    "decoder_embed_dim": 16,
    "decoder_layers": "[(16, 3), (24, 4), (24, 1, 0), (16, 2)]",
    "decoder_out_embed_dim": 12,
    "decoder_attention": "[True, False, True, True]",
    "share_input_output_embed": False,
    "max_source_positions": 64,
    "max_target_positions": 64,
}

#: the smallest fconv_ext config: two 16-channel layers on each side (beam search, shortlists)
MINI_FCONV_EXT = {
    "_name": "fconv_ext",
    "encoder_embed_dim": 16,
    "decoder_embed_dim": 16,
    "decoder_out_embed_dim": 16,
    "dropout": 0.1,
    "encoder_layers": "[(16, 3)] * 2",
    "decoder_layers": "[(16, 3)] * 2",
    "decoder_attention": "True",
    "share_input_output_embed": False,
    "max_source_positions": 64,
    "max_target_positions": 64,
}

#: small fconv_self_att configs with the features of fairseq's two presets (fconv_self_att, _wp)
SELF_ATT_BASE_SMALL = dict(
    encoder_embed_dim=24,
    encoder_layers="[(16, 3)] * 2 + [(32, 3)]",
    decoder_embed_dim=24,
    decoder_layers="[(16, 3)] * 2 + [(32, 3)]",
    decoder_out_embed_dim=20,
)
SELF_ATT_WP_SMALL = dict(
    encoder_embed_dim=24,
    encoder_layers="[(16, 3)] * 2 + [(32,3)] * 1",
    decoder_embed_dim=24,
    decoder_layers="[(32, 4)] * 2 + [(48, 4)] * 1 + [(16, 2)]",
    decoder_out_embed_dim=20,
)


def fairseq_wp_fusion(src_dict, tgt_dict, pretrained):
    """(encoder, decoder, model): fairseq's fconv_self_att fusion model at the sizes of
    SELF_ATT_WP_SMALL around ``pretrained`` (a fairseq fconv_self_att model), as fairseq's
    build_model makes it for ``--pretrained True``, without its checkpoint loading."""
    from fairseq.models.fconv_self_att import FConvDecoder, FConvEncoder, FConvModelSelfAtt

    encoder = FConvEncoder(
        src_dict,
        embed_dim=24,
        convolutions=[(16, 3)] * 2 + [(32, 3)],
        dropout=0.1,
        max_positions=64,
        attention=False,
        attention_nheads=1,
    )
    decoder = FConvDecoder(
        tgt_dict,
        embed_dim=24,
        convolutions=[(32, 4)] * 2 + [(48, 4)] + [(16, 2)],
        out_embed_dim=20,
        attention=True,
        dropout=0.1,
        max_positions=64,
        selfattention=True,
        attention_nheads=1,
        selfattention_nheads=4,
        project_input=True,
        gated_attention=True,
        downsample=True,
        pretrained=True,
        trained_decoder=pretrained.decoder.eval(),
    )
    return encoder, decoder, FConvModelSelfAtt(encoder, decoder, pretrained.encoder)


#: gettext messages with placeholders (%s, %1$s, {0}, %lu%%) and C++, the kind the gettext corpus is made of
MESSAGES_EN = ["Cannot open file %s", "Invalid value %1$s for {0} in C++: %lu%%", "Usage: %s [options] <file>"]
MESSAGES_DE = ["Datei »%s« kann nicht geöffnet werden", "Kann „%s“ nicht öffnen: %s", "Ungültiger Wert %d für %s"]


def small_fconv_ext(seed=0, **overrides):
    """A SMALL_FCONV_EXT model (source vocabulary 40, target 45) with perturbed weights (non-trivial
    biases and gains), in eval mode, and its dictionaries."""
    torch.manual_seed(seed)
    src_dict, tgt_dict = make_dictionary(40), make_dictionary(45)
    model = build_model_from_config({**SMALL_FCONV_EXT, **overrides}, src_dict, tgt_dict)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval(), src_dict, tgt_dict


def mini_fconv_ext_for_search(vocab: int, seed: int = 0, eos_bias: float = 3.0):
    """A MINI_FCONV_EXT model with strongly perturbed weights (noise 0.3) and EOS made likelier by
    ``eos_bias`` in ``fc3``, so that beam-search hypotheses end at different steps; in train mode
    (the caller sets eval), with its source and target dictionaries (both ``vocab`` symbols)."""
    torch.manual_seed(seed)
    src_dict, tgt_dict = make_dictionary(vocab), make_dictionary(vocab)
    model = build_model_from_config(MINI_FCONV_EXT, src_dict, tgt_dict)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
        model.decoder.fc3.bias[tgt_dict.eos()] += eos_bias
    return model, src_dict, tgt_dict


def fconv_args(arch: str, **overrides) -> argparse.Namespace:
    """fairseq fconv options for ``arch`` (its preset function fills the defaults)."""
    from fairseq.models import ARCH_CONFIG_REGISTRY

    args = argparse.Namespace(arch=arch, max_source_positions=1024, max_target_positions=1024, **overrides)
    ARCH_CONFIG_REGISTRY[arch](args)
    return args


def build_twins(arch: str, vocab: int = 60, noise: float = 0.02, seed: int = 0, **overrides):
    """A fairseq ``fconv`` model with perturbed weights (so biases are non-zero and
    g != ||v||) and its fconv_ext twin obtained through the converter.  Both in eval mode."""
    from fairseq.models.fconv import FConvModel

    torch.manual_seed(seed)
    src_dict, tgt_dict = make_dictionary(vocab), make_dictionary(vocab + 7)
    args = fconv_args(arch, **overrides)
    ref = FConvModel.build_model(args, StubTask(src_dict, tgt_dict))
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(noise * torch.randn_like(p))
    converted = convert_checkpoint({"cfg": {"model": args}, "model": ref.state_dict()})
    ext = build_model_from_config(converted["cfg"]["model"], src_dict, tgt_dict)
    ext.load_state_dict(converted["model"], strict=True)
    return ref.eval(), ext.eval(), src_dict, tgt_dict


def random_batch(dictionary, lengths, seed=1, left_pad=True):
    """B x T token ids ending with EOS, padded with the dictionary's pad (left by default)."""
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    out = torch.full((len(lengths), T), dictionary.pad(), dtype=torch.long)
    for i, n in enumerate(lengths):
        toks = torch.randint(dictionary.nspecial, len(dictionary), (n,), generator=g)
        toks[-1] = dictionary.eos()
        if left_pad:
            out[i, T - n :] = toks
        else:
            out[i, :n] = toks
    return out


def assert_padded_batch_equals_each_sentence_alone(model, src_dict, tgt_dict, lengths=(9, 4, 1)):
    """An encoder-decoder's output for each sentence of a left-padded batch equals its output for
    that sentence alone (no padding), to 1e-5."""
    src = random_batch(src_dict, list(lengths), seed=5)
    prev = random_batch(tgt_dict, [6, 3, 5][: len(lengths)], seed=6, left_pad=False)
    prev[:, 0] = tgt_dict.eos()
    with torch.no_grad():
        batched, _ = model(src, None, prev)
        for i, n in enumerate(lengths):
            tgt_len = int(prev[i].ne(tgt_dict.pad()).sum())
            alone, _ = model(src[i : i + 1, src.size(1) - n :], None, prev[i : i + 1, :tgt_len])
            assert torch.allclose(batched[i, :tgt_len], alone[0], atol=1e-5), f"sentence {i}"


def save_checkpoint(directory, model, src_dict, tgt_dict, config=MINI_FCONV_EXT):
    """A fairseq-style fconv_ext checkpoint with its dictionaries beside it (en -> de)."""
    os.makedirs(directory, exist_ok=True)
    src_dict.save(os.path.join(directory, "dict.en.txt"))
    tgt_dict.save(os.path.join(directory, "dict.de.txt"))
    path = os.path.join(directory, "model.pt")
    torch.save(
        {
            "cfg": {"model": dict(config), "task": {"source_lang": "en", "target_lang": "de"}},
            "model": model.state_dict(),
        },
        path,
    )
    return path


# --------------------------------------------------------------------------- a published model archive
# The conv.wmt14.en-fr kind of archive fairseq published: an fconv checkpoint as fairseq 0.6 wrote it, its
# dictionaries (of words) and BPE codes.

#: the words of the published dictionaries
PUBLISHED_WORDS = (
    "Hello world ! the a house is small big cat dog Bonjour le monde la maison est petite grand chat chien"
).split()
#: the small model of the published checkpoint
PUBLISHED_SMALL = dict(
    encoder_embed_dim=16,
    decoder_embed_dim=16,
    decoder_out_embed_dim=16,
    encoder_layers="[(32, 3)] * 2",
    decoder_layers="[(32, 3)] * 2",
)


def words_dictionary(extra: int = 0) -> Dictionary:
    """PUBLISHED_WORDS (each seen 5 times), then ``extra`` symbols ``w0``, ``w1``, ..."""
    d = Dictionary()
    for w in PUBLISHED_WORDS + [f"w{i}" for i in range(extra)]:
        d.add_symbol(w, n=5)
    return d


def perturb_(model, noise=0.05, seed=0):
    """Adds ``noise`` times Gaussian noise to every parameter (non-zero biases, g != ||v||)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(noise * torch.randn(p.shape, generator=g))


def old_fconv_state(src_dict, tgt_dict, seed=0, version=2, with_model=False):
    """A fairseq fconv checkpoint as fairseq 0.6 wrote it: args Namespace (max_positions, no task,
    data as a list, lr a float, options added later missing), top-level optimizer / best_loss / epoch,
    _linearized_weight buffers; ``version=1``: decoder.version 1 (fairseq < 0.5: weight norm of the decoder
    convolutions over dim 0; ``with_model``: also the fairseq model that computes with it)."""
    from fairseq.models import ARCH_CONFIG_REGISTRY
    from fairseq.models.fconv import FConvModel

    torch.manual_seed(seed)
    args = argparse.Namespace(
        arch="fconv_wmt_en_fr",
        max_positions=64,
        source_lang="en",
        target_lang="fr",
        data=["/checkpoint/wmt14_en_fr"],
        lr=0.5,
        min_lr=1e-4,
        raw_text=False,
        remove_bpe="@@ ",
        criterion="label_smoothed_cross_entropy",
        label_smoothing=0.1,
        optimizer="nag",
        clip_norm=0.1,
        left_pad_source="True",
        left_pad_target="False",
        dropout=0.2,
        **PUBLISHED_SMALL,
    )
    full = argparse.Namespace(**vars(args), max_source_positions=64, max_target_positions=64)
    ARCH_CONFIG_REGISTRY["fconv_wmt_en_fr"](full)
    model = FConvModel.build_model(full, StubTask(src_dict, tgt_dict))
    if version < 2:  # the old layout, as fairseq's FConvDecoder.upgrade_state_dict recreates it
        for i, conv in enumerate(model.decoder.convolutions):
            torch.nn.utils.remove_weight_norm(conv)
            model.decoder.convolutions[i] = torch.nn.utils.weight_norm(conv, dim=0)
    perturb_(model, seed=seed)
    weights = model.state_dict()
    weights["decoder.version"] = torch.Tensor([version])
    for i in range(len(model.decoder.convolutions)):
        weights[f"decoder.convolutions.{i}._linearized_weight"] = torch.zeros(3, 32)
    state = {
        "args": args,
        "model": weights,
        "optimizer": {"state": {}, "param_groups": []},
        "best_loss": 3.5,
        "epoch": 12,
        "batch_offset": 0,
        "val_loss": 3.5,
    }
    return (state, model.eval()) if with_model else state


def save_old(state, path):
    """``torch.save`` in the format of torch < 1.6."""
    torch.save(state, path, _use_new_zipfile_serialization=False)  # torch < 1.6's format


def write_tar(path, top, files, mode="w:bz2"):
    """A tar archive of {name: bytes} under the directory ``top`` (the published layout)."""
    with tarfile.open(path, mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{top}/{name}" if top else name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def dict_bytes(d: Dictionary) -> bytes:
    """The dictionary's dict.txt file."""
    buf = io.StringIO()
    d.save(buf)
    return buf.getvalue().encode()


BPECODES = b"#version: 0.2\nw o\nwo r\n"


# --------------------------------------------------------------------------- command-line tools
# The end-to-end fixtures and tests run fairseq's own command-line tools (this environment's, BIN) on a
# slice of the real gettext corpus; ``run`` and ``hypotheses`` are what they run and read those tools with.

BIN = os.path.dirname(sys.executable)  # fairseq-train, fairseq-generate, fconv-ext-* of this environment
#: fairseq-train's options of the tests' short trainings: NAG as the paper trains, two epochs, seed 1
SHORT_TRAINING = (
    "--optimizer nag --lr 0.25 --clip-norm 0.1 --max-tokens 3000 --max-epoch 2 --no-progress-bar --seed 1 "
    "--no-epoch-checkpoints"
).split()
USER_DIR = os.path.join(REPO, "fconv_plugin")
N_TEST = 37  # test sentences in data_bin: not a multiple of 8 on purpose (fairseq's batches drop N mod 8)


def run(cmd, cwd=None, stdin=None):
    """Run a command with one thread; its stdout + stderr.  A failure shows the command and both tails."""
    import subprocess

    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=cwd, input=stdin, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def hypotheses(output):
    """{sentence id: (hypothesis, score)} from fairseq-generate's H- lines."""
    hyps = {}
    for line in output.splitlines():
        if line.startswith("H-"):
            ident, score, text = line.split("\t")
            hyps[int(ident[2:])] = (text, float(score))
    return hyps


def binarized_slice(shared_gettext, root, tokenize_for):
    """``root / "bin"``: the first 1500 / 60 / N_TEST sentences of the gettext corpus's splits, tokenized by
    ``tokenize_for(lang)`` (a function of one line), a joint 500-merge subword-nmt BPE learnt on the training
    slice (its codes: ``root / "codes"``; the BPE'd text: ``root / "{split}.{lang}"``), fairseq-preprocess'd
    with a joined dictionary."""
    from subword_nmt.apply_bpe import BPE
    from subword_nmt.learn_bpe import learn_bpe

    tokenized = {}
    for split, n in [("train", 1500), ("valid", 60), ("test", N_TEST)]:
        for lang in ("en", "de"):
            tokenize = tokenize_for(lang)
            with open(os.path.join(shared_gettext, f"{split}.{lang}"), encoding="utf-8") as f:
                tokenized[split, lang] = [tokenize(next(f)) for _ in range(n)]
    with open(root / "codes", "w", encoding="utf-8") as f:
        learn_bpe(tokenized["train", "en"] + tokenized["train", "de"], f, 500)
    with open(root / "codes", encoding="utf-8") as f:
        bpe = BPE(f)
    for (split, lang), lines in tokenized.items():
        with open(root / f"{split}.{lang}", "w", encoding="utf-8") as f:
            f.writelines(bpe.process_line(line) + "\n" for line in lines)
    run(
        [
            f"{BIN}/fairseq-preprocess",
            "--source-lang",
            "en",
            "--target-lang",
            "de",
            "--joined-dictionary",
            "--trainpref",
            str(root / "train"),
            "--validpref",
            str(root / "valid"),
            "--testpref",
            str(root / "test"),
            "--destdir",
            str(root / "bin"),
            "--workers",
            "1",
        ]
    )
    return root / "bin"


def generate(data, checkpoint, *extra, user_dir=True, cwd=None, tool="fairseq-generate"):
    """fairseq-generate (or ``tool``) on the test split, beam 5, batches of 16, with --user-dir unless
    ``user_dir=False``.  fairseq's default --required-batch-size-multiple 8 would drop the last N mod 8
    sentences; the plugin keeps them (no flag needed)."""
    cmd = [f"{BIN}/{tool}", str(data), "--path", str(checkpoint), "--beam", "5", "--batch-size", "16", *extra]
    if user_dir:
        cmd += ["--user-dir", USER_DIR]
    return run(cmd, cwd=cwd)
