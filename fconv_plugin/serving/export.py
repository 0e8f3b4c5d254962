"""``fconv-ext-export CHECKPOINT OUTDIR --format onnx|aoti``: an fconv_ext model as two graphs that
run without fairseq (``fconv_runtime``, ``fconv-ext-translate``).

    fconv-ext-export checkpoints/checkpoint_best.pt exported/ --format onnx \\
        --bpe-codes data/codes --tokenizer moses --source-lang en --target-lang de

OUTDIR gets (``fconv_runtime/artifact.py`` reads it):

* ``encoder.onnx`` / ``encoder.pt2``: :class:`~.step.SourceEncoder`, ``src_tokens -> keys, values,
  source_mask, length_scale``;
* ``step.onnx`` / ``step.pt2``: :class:`~.beam_graph.BeamStep`, one decoder step and fairseq's beam
  search step around it;
* ``dict.<src>.txt``, ``dict.<tgt>.txt``: the dictionaries, copied; ``bpe.codes`` with ``--bpe-codes``;
* ``manifest.json`` (written last): format version, the model config, the graphs' inputs and outputs,
  the tokenizer settings, and the sha256 of every file.

Dynamic shapes (``torch.export.Dim``): sentences, beams and source length; one export serves any batch,
beam (up to half the vocabulary, at most :data:`MAX_BEAM`) and source length (up to the model's
positions).  ONNX goes through ``torch.onnx.export(..., dynamo=True)`` (the torch.export-based
exporter, opset :data:`OPSET`); AOTInductor through ``torch._inductor.aoti_compile_and_package`` (gcc
compiles the graphs: minutes for a large model).

Dictionaries: ``--data DIR`` (``DIR/dict.<lang>.txt``); without it the checkpoint's own directory when
it holds them (a converted or published model), else the data directory recorded in the checkpoint
(``cfg.task.data``: where fairseq-train read them).  Languages: ``--source-lang/--target-lang``, else the
checkpoint's task config, else fairseq's inference from the directory's binarized file names.

``--int8``: ONNX: onnxruntime's dynamic quantization of the exported float graphs
(``quantize_dynamic``: int8 weights with one scale per output channel, activations quantized per
tensor at run time; embeddings, softmaxes and scores stay float32).  AOTI: the int8 of
:mod:`.int8` (per-row weight scales, per-token activation scales), traced into the package; if it does
not trace, the export stops and says so.
"""

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from fconv_runtime.artifact import write_manifest

from ..checkpoint import CheckpointError, load_checkpoint_file
from .beam_graph import (
    ENCODER_INPUTS,
    ENCODER_OUTPUTS,
    STEP_INPUTS,
    STEP_OUTPUTS,
    BeamStep,
    ShortlistBeamStep,
)
from .step import DecoderStep, SourceEncoder, unsupported_reason

logger = logging.getLogger("fconv_plugin.serving.export")

OPSET = 18
FORMATS = ("onnx", "aoti")
TOKENIZERS = ("none", "moses")
#: the largest beam the exported graphs accept (the shapes' upper bound; also at most half the vocabulary)
MAX_BEAM = 64
#: the sizes the graphs are traced at: not 0 or 1 (torch.export would specialize those), beams < sentences
SAMPLE_SENTENCES, SAMPLE_BEAMS, SAMPLE_SOURCE = 3, 2, 7


class ExportError(RuntimeError):
    """A model or option the exporter cannot use; the message says what to do."""


# ---------------------------------------------------------------------------------------- the model


def _plain(value: Any) -> Any:
    """A config value as JSON (non-JSON values become strings)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _config_section(state: Dict[str, Any], section: str) -> Dict[str, Any]:
    """``state["cfg"][section]`` as a dict (fconv_ext checkpoints keep plain dicts there; {} if absent)."""
    cfg = state.get("cfg")
    value = cfg.get(section) if isinstance(cfg, dict) else None
    return dict(value) if isinstance(value, dict) else {}


def _dictionaries(
    checkpoint: str, data: Optional[str], task: Dict[str, Any], langs: Tuple[Optional[str], Optional[str]]
) -> Tuple[str, Tuple[str, str]]:
    """(directory, (source, target) languages) of the model's dictionaries: the first of ``--data``, the
    checkpoint's directory, the checkpoint's ``cfg.task.data`` that holds ``dict.<lang>.txt`` for both.
    Languages not given or recorded are inferred from the directory's binarized files, as fairseq does."""
    from fairseq.data.data_utils import infer_language_pair

    candidates = (
        [data]
        if data
        else [os.path.dirname(os.path.abspath(checkpoint)), str(task.get("data") or "").split(os.pathsep)[0]]
    )
    for directory in filter(None, candidates):
        pair = langs if all(langs) else infer_language_pair(directory)
        pair = (langs[0] or pair[0], langs[1] or pair[1])
        if all(pair) and all(os.path.isfile(os.path.join(directory, f"dict.{lang}.txt")) for lang in pair):
            return directory, pair
    looked = ", ".join(repr(d) for d in candidates if d)
    if not all(langs):
        raise ExportError(
            f"{checkpoint!r} does not record its languages and none of {looked} shows them: pass "
            "--source-lang and --target-lang (and --data DIR, the directory with dict.<lang>.txt)"
        )
    raise ExportError(
        f"no dict.{langs[0]}.txt and dict.{langs[1]}.txt in {looked}: pass the model's data directory "
        "with --data DIR (fairseq-preprocess's --destdir)"
    )


def load_model(
    checkpoint: str, data: Optional[str] = None, source_lang: Optional[str] = None, target_lang: Optional[str] = None
):
    """``(model in eval mode, model config dict, (source dict path, target dict path), (src, tgt) langs)``
    for an fconv_ext checkpoint.  Refuses models without a decoder step (``unsupported_reason``)."""
    from fairseq.data import Dictionary

    from ..models.build import build_model_from_config

    state = load_checkpoint_file(checkpoint)
    model_cfg = _config_section(state, "model")
    if not model_cfg.get("_name"):
        raise ExportError(
            f"{checkpoint!r} has no model config (cfg.model): a fairseq fconv checkpoint? "
            "convert it first: fconv-ext-convert CHECKPOINT OUT.pt"
        )
    # fairseq-train records the architecture (``fconv_ext_tiny``) as the name; its preset values are
    # already in the config, so the registered model it belongs to is the one to build
    from fairseq.models import ARCH_MODEL_NAME_REGISTRY

    model_cfg = dict(model_cfg, _name=ARCH_MODEL_NAME_REGISTRY.get(model_cfg["_name"], model_cfg["_name"]))
    task = _config_section(state, "task")
    langs = (source_lang or task.get("source_lang"), target_lang or task.get("target_lang"))
    directory, langs = _dictionaries(checkpoint, data, task, langs)
    paths = tuple(os.path.join(directory, f"dict.{lang}.txt") for lang in langs)
    src_dict, tgt_dict = (Dictionary.load(p) for p in paths)
    try:
        model = build_model_from_config(model_cfg, src_dict, tgt_dict, data=directory)
    except ValueError as err:
        raise ExportError(f"cannot build the model of {checkpoint!r}: {err}") from None
    reason = unsupported_reason(model)
    if reason is not None:
        raise ExportError(f"cannot export {checkpoint!r}: {reason}")
    try:
        model.load_state_dict(state["model"], strict=True)
    except RuntimeError as err:
        raise ExportError(
            f"{checkpoint!r} does not fit its config with these dictionaries ({str(err)[:400]}): "
            "are --data / the languages the ones it was trained with?"
        ) from None
    return model.eval(), _plain(model_cfg), paths, langs


def serving_modules(model: nn.Module, shortlist: bool = False) -> Tuple[SourceEncoder, BeamStep]:
    """The two modules that are exported: the encoder and the beam-search step (no attention output;
    ``shortlist``: the step over a per-batch vocabulary shortlist, :class:`ShortlistBeamStep`).
    Weight norm is folded into ``model`` first (``make_generation_fast_``): building both modules from an
    unfolded model fails (the second fold of step.py's copy finds the first one's parametrization gone)."""
    model.make_generation_fast_(beamable_mm_beam_size=None, need_attn=False)
    encoder = SourceEncoder(model).eval()
    step_class = ShortlistBeamStep if shortlist else BeamStep
    step = step_class(DecoderStep(model, need_attn=False), eos=model.decoder.dictionary.eos()).eval()
    return encoder, step


# ---------------------------------------------------------------------------------------- graph inputs


def sample_inputs(
    encoder: SourceEncoder,
    step: BeamStep,
    sentences: int = SAMPLE_SENTENCES,
    beams: int = SAMPLE_BEAMS,
    source: int = SAMPLE_SOURCE,
    seed: int = 0,
):
    """(encoder inputs, step inputs): a random left-padded batch and the step's inputs after it (random
    tokens, scores, origins; zero windows), at the given sizes."""
    g = torch.Generator().manual_seed(seed)
    vocabulary = encoder.embed_tokens.size(0)
    src = torch.randint(4, vocabulary, (sentences, source), generator=g)  # B x S
    src[:, -1] = 2  # EOS
    for row in range(1, sentences):  # left padding of different lengths
        src[row, : min(row, source - 2)] = encoder.padding_idx
    with torch.no_grad():
        keys, values, mask, scale = encoder(src)
    target_vocabulary = step.vocabulary
    windows = tuple(torch.randn(sentences, beams, *w.shape[2:], generator=g) for w in step.step.initial_windows(1, 1))
    bias = torch.zeros(target_vocabulary)
    bias[1] = float("-inf")  # pad
    step_inputs = (
        torch.randint(4, target_vocabulary, (sentences, beams), generator=g),  # tokens
        torch.tensor([3]),  # position
        keys,
        values,
        mask,
        scale,
        -torch.rand(sentences, beams, generator=g) * 5,  # scores
        bias,
        torch.randint(0, beams, (sentences, beams), generator=g),  # origin
        torch.zeros(sentences, beams, dtype=torch.bool),  # ignore
    )
    if isinstance(step, ShortlistBeamStep):  # words: the specials and every third word
        words = torch.cat([torch.arange(4), torch.arange(5, target_vocabulary, 3)])
        bias = torch.zeros(words.numel())
        bias[1] = float("-inf")
        step_inputs = step_inputs[:7] + (bias,) + step_inputs[8:] + (words,)
    return (src,), step_inputs + windows


def dynamic_shapes(step: BeamStep, max_source: int):
    """torch.export's dynamic shapes of the two graphs: sentences, beams, source length."""
    batch = torch.export.Dim("batch", min=1, max=65536)
    beams = torch.export.Dim("beams", min=1, max=max(1, min(MAX_BEAM, step.vocabulary // 2)))
    source = torch.export.Dim("source", min=1, max=max_source)
    by_hypothesis = {0: batch, 1: beams}
    by_position = {0: batch, 1: source}
    windows = tuple(by_hypothesis for _ in step.step.initial_windows(1, 1))
    encoder_shapes = ({0: batch, 1: source},)
    # tokens, position, keys, values, source_mask, length_scale, scores, bias, origin, ignore, [words,] windows
    step_shapes = (
        by_hypothesis,
        None,
        by_position,
        by_position,
        by_position,
        {0: batch},
        by_hypothesis,
        None,
        by_hypothesis,
        by_hypothesis,
    )
    if isinstance(step, ShortlistBeamStep):
        columns = torch.export.Dim("columns", min=2, max=step.vocabulary)
        step_shapes = step_shapes[:7] + ({0: columns},) + step_shapes[8:] + ({0: columns},)
    return encoder_shapes, step_shapes + (windows,)


def window_names(step: BeamStep) -> Tuple[List[str], List[str]]:
    count = len(step.step.initial_windows(1, 1))
    return [f"window_{i}" for i in range(count)], [f"new_window_{i}" for i in range(count)]


# ---------------------------------------------------------------------------------------- exporters


def export_onnx(
    module: nn.Module, args: Sequence, shapes, path: str, input_names: List[str], output_names: List[str]
) -> None:
    """``module`` as an ONNX graph at ``path`` through torch.export (``dynamo=True``)."""
    for name in ("onnx_ir", "onnxscript", "torch.onnx"):  # the exporter's per-pass INFO/DEBUG lines
        logging.getLogger(name).setLevel(logging.WARNING)
    with torch.no_grad(), warnings.catch_warnings():
        # "The axis name: batch will not be used, since it shares the same shape constraints": harmless
        warnings.filterwarnings("ignore", message="# The axis name", category=UserWarning)
        program = torch.onnx.export(
            module,
            tuple(args),
            dynamo=True,
            dynamic_shapes=shapes,
            opset_version=OPSET,
            input_names=input_names,
            output_names=output_names,
            external_data=False,
            verbose=False,
        )
    program.save(path)


def export_aoti(module: nn.Module, args: Sequence, shapes, path: str) -> None:
    """``module`` as an AOTInductor package at ``path`` (compiled C++: takes a while)."""
    with torch.no_grad():
        program = torch.export.export(module, tuple(args), dynamic_shapes=shapes)
        torch._inductor.aoti_compile_and_package(program, package_path=path)


def shortlist_tables(path: str, dict_paths: Tuple[str, str]):
    """``(table, base, header)`` of a shortlist file for these dictionaries (checked by
    :class:`~.shortlist.Shortlist`, which refuses one built for other dictionaries): ``table``
    ``len(src_dict) x n_best`` int64 target ids (no entry: 0, a special), ``base`` ``len(tgt_dict)`` bool
    (the specials and the frequent words), what ``fconv_runtime`` turns into a batch's words."""
    from fairseq.data import Dictionary

    from .shortlist import Shortlist, ShortlistError, frequent_targets, read

    src_dict, tgt_dict = (Dictionary.load(p) for p in dict_paths)
    try:
        loaded = Shortlist.load(path, src_dict, tgt_dict)  # the checks: format, dictionaries, shapes
    except ShortlistError as err:
        raise ExportError(f"--shortlist: {err}") from None
    content = read(path)
    table = np.clip(content["best_targets"][:, : loaded.n_best].astype(np.int64), 0, None)  # -1 -> 0 (BOS)
    base = np.zeros(len(tgt_dict), dtype=bool)
    base[: tgt_dict.nspecial] = True
    base[frequent_targets(content["target_counts"], tgt_dict.nspecial, loaded.n_frequent)] = True
    return table, base, {"n_best": loaded.n_best, "n_frequent": loaded.n_frequent}


def quantize_onnx(path: str) -> None:
    """onnxruntime's dynamic int8 quantization of the graph at ``path``, in place: per-channel int8
    weights of every MatMul/Gemm, activations quantized at run time."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        raise ExportError("--int8 with --format onnx needs onnxruntime: pip install onnxruntime") from None
    quantized = path + ".int8"
    quantize_dynamic(
        path, quantized, per_channel=True, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"]
    )
    os.replace(quantized, path)


def quantize_aoti(encoder: nn.Module, step: BeamStep) -> None:
    """The int8 of :mod:`.int8` on both modules (for AOTI)."""
    from .int8 import quantize_int8_

    quantize_int8_(encoder)
    quantize_int8_(step.step)


# ---------------------------------------------------------------------------------------- the command


def export(
    checkpoint: str,
    outdir: str,
    fmt: str = "onnx",
    int8: bool = False,
    data: Optional[str] = None,
    source_lang: Optional[str] = None,
    target_lang: Optional[str] = None,
    bpe_codes: Optional[str] = None,
    tokenizer: str = "none",
    moses_escape: bool = True,
    shortlist: Optional[str] = None,
    force: bool = False,
) -> Dict[str, Any]:
    """Export ``checkpoint`` into ``outdir`` (module docstring); returns the manifest."""
    if fmt not in FORMATS:
        raise ExportError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if tokenizer not in TOKENIZERS:
        raise ExportError(f"--tokenizer must be one of {', '.join(TOKENIZERS)}, not {tokenizer!r}")
    if bpe_codes is not None and not os.path.isfile(bpe_codes):
        raise ExportError(f"--bpe-codes {bpe_codes!r} does not exist")
    if os.path.exists(outdir) and os.listdir(outdir) and not force:
        raise ExportError(f"{outdir!r} exists and is not empty: choose another OUTDIR, or pass --force to replace it")
    started = time.time()
    model, model_cfg, dict_paths, langs = load_model(checkpoint, data, source_lang, target_lang)
    shortlist_arrays = None if shortlist is None else shortlist_tables(shortlist, dict_paths)
    encoder, step = serving_modules(model, shortlist=shortlist is not None)
    if int8 and fmt == "aoti":
        try:
            quantize_aoti(encoder, step)
        except (ImportError, ValueError, RuntimeError) as err:
            raise ExportError(
                f"--int8 --format aoti: the int8 modules cannot be prepared ({err}); "
                "export with --format onnx --int8 instead"
            ) from None
    encoder_args, step_args = sample_inputs(encoder, step)
    encoder_shapes, step_shapes = dynamic_shapes(step, encoder.max_positions)
    window_in, window_out = window_names(step)
    step_inputs = list(STEP_INPUTS) + (["words"] if shortlist else []) + window_in

    # everything is written into a fresh directory beside OUTDIR, which then takes OUTDIR's place
    parent = os.path.dirname(os.path.abspath(outdir))
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix=os.path.basename(os.path.abspath(outdir)) + ".exporting-", dir=parent)
    try:
        suffix = "onnx" if fmt == "onnx" else "pt2"
        files = {"encoder": f"encoder.{suffix}", "step": f"step.{suffix}"}
        if fmt == "onnx":
            export_onnx(
                encoder,
                encoder_args,
                encoder_shapes,
                os.path.join(work, files["encoder"]),
                list(ENCODER_INPUTS),
                list(ENCODER_OUTPUTS),
            )
            export_onnx(
                step,
                step_args,
                step_shapes,
                os.path.join(work, files["step"]),
                step_inputs,
                list(STEP_OUTPUTS) + window_out,
            )
            if int8:
                for name in files.values():
                    quantize_onnx(os.path.join(work, name))
        else:
            try:
                export_aoti(encoder, encoder_args, encoder_shapes, os.path.join(work, files["encoder"]))
                export_aoti(step, step_args, step_shapes, os.path.join(work, files["step"]))
            except (
                Exception
            ) as err:  # torch.export / inductor raise many types: re-raised, with the cause, as ExportError
                if not int8:
                    raise
                raise ExportError(
                    f"--int8 --format aoti: the int8 modules do not trace into an AOTInductor "
                    f"package ({type(err).__name__}: {str(err)[:300]}); export with --format onnx "
                    "--int8 instead, or without --int8"
                ) from err

        dictionaries = {}
        for side, path, lang in zip(("source", "target"), dict_paths, langs):
            name = f"dict.{lang}.txt" if langs[0] != langs[1] else f"dict.{side}.{lang}.txt"
            shutil.copyfile(path, os.path.join(work, name))
            dictionaries[side] = name
        shortlist_entry = None
        if shortlist_arrays is not None:
            table, base, header = shortlist_arrays
            np.savez(os.path.join(work, "shortlist.npz"), table=table, base=base)
            shortlist_entry = {
                "file": "shortlist.npz",
                "source": os.path.basename(shortlist),
                "n_best": header["n_best"],
                "n_frequent": header["n_frequent"],
            }
        bpe = None
        if bpe_codes is not None:
            shutil.copyfile(bpe_codes, os.path.join(work, "bpe.codes"))
            bpe = {"name": "subword_nmt", "codes": "bpe.codes", "separator": "@@"}
        windows = [list(w.shape[2:]) for w in step.step.initial_windows(1, 1)]  # (k-1)d x C_in each
        manifest = {
            "runtime": fmt,
            "int8": int8,
            "quantization": None
            if not int8
            else (
                "onnxruntime quantize_dynamic: int8 weights per output channel, int8 activations per tensor"
                if fmt == "onnx"
                else "int8 weights per row (torchao), int8 activations per token"
            ),
            "source_lang": langs[0],
            "target_lang": langs[1],
            "model": {
                "config": model_cfg,
                "source_vocabulary": int(encoder.embed_tokens.size(0)),
                "target_vocabulary": int(step.vocabulary),
                "max_source_positions": int(encoder.max_positions),
                "max_target_positions": int(step.step.max_positions),
                "special_symbols": {"bos": 0, "pad": 1, "eos": 2, "unk": 3},
            },
            "encoder": {"file": files["encoder"], "inputs": list(ENCODER_INPUTS), "outputs": list(ENCODER_OUTPUTS)},
            "step": {
                "file": files["step"],
                "inputs": step_inputs,
                "outputs": list(STEP_OUTPUTS) + window_out,
                "window_shapes": windows,
                "max_beam": int(min(MAX_BEAM, step.vocabulary // 2)),
            },
            "dynamic_dimensions": ["batch", "beams", "source"],
            "dictionaries": dictionaries,
            "bpe": bpe,
            "shortlist": shortlist_entry,
            "tokenizer": {"name": tokenizer, "source_lang": langs[0], "target_lang": langs[1], "escape": moses_escape}
            if tokenizer != "none"
            else {"name": "none"},
            "exporter": {
                "torch": torch.__version__,
                "opset": OPSET if fmt == "onnx" else None,
                "checkpoint": os.path.basename(checkpoint),
            },
        }
        write_manifest(work, manifest)
        if os.path.exists(outdir):
            shutil.rmtree(outdir)
        os.replace(work, outdir)
    finally:
        if os.path.isdir(work):
            shutil.rmtree(work, ignore_errors=True)
    logger.info(f"exported {checkpoint} to {outdir} ({fmt}{' int8' if int8 else ''}) in {time.time() - started:.0f} s")
    with open(os.path.join(outdir, "manifest.json"), encoding="utf-8") as f:
        return json.load(f)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="fconv-ext-export", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="an fconv_ext checkpoint (fconv-ext-convert turns fairseq's fconv into one)")
    p.add_argument("outdir", help="the directory to write (must not exist or be empty, unless --force)")
    p.add_argument("--format", choices=FORMATS, default="onnx", help="onnx (onnxruntime) or aoti (AOTInductor)")
    p.add_argument("--int8", action="store_true", help="int8 matrix products (see the module documentation)")
    p.add_argument(
        "--data",
        help="directory with dict.<lang>.txt (default: beside the checkpoint, else the data directory recorded in it)",
    )
    p.add_argument("--source-lang", help="default: the checkpoint's task config")
    p.add_argument("--target-lang", help="default: the checkpoint's task config")
    p.add_argument("--bpe-codes", help="subword-nmt BPE codes, applied to the input and removed from the output")
    p.add_argument(
        "--tokenizer",
        choices=TOKENIZERS,
        default="none",
        help="moses: sacremoses tokenization of the "
        "input and detokenization of the output (fairseq's --tokenizer moses)",
    )
    p.add_argument(
        "--moses-no-escape",
        action="store_true",
        help="do not escape special characters (fairseq's "
        "--moses-no-escape); must match how the training data was tokenized",
    )
    p.add_argument(
        "--shortlist",
        help="a vocabulary shortlist file (fconv-ext-shortlist) for these dictionaries: "
        "the step scores each batch's candidate words only (docs/shortlists.md)",
    )
    p.add_argument("--force", action="store_true", help="replace a non-empty OUTDIR")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(format="fconv-ext-export: %(message)s", level=logging.INFO, stream=sys.stderr)
    try:
        export(
            args.checkpoint,
            args.outdir,
            args.format,
            int8=args.int8,
            data=args.data,
            source_lang=args.source_lang,
            target_lang=args.target_lang,
            bpe_codes=args.bpe_codes,
            tokenizer=args.tokenizer,
            moses_escape=not args.moses_no_escape,
            shortlist=args.shortlist,
            force=args.force,
        )
    except (ExportError, CheckpointError) as err:
        print(f"fconv-ext-export: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
