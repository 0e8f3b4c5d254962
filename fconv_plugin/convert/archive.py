"""Convert a whole model directory: fairseq's published archive layout, extracted.

    fconv-ext-convert wmt14.en-fr.fconv-py/ wmt14.en-fr.fconv_ext/

A published ConvS2S archive (``conv.wmt14.en-fr``, ..., :mod:`fconv_plugin.hub`) holds
``model.pt`` (or ``pretrained_checkpoint.pt`` + ``fusion_checkpoint.pt`` for the stories
pair), ``dict.<lang>.txt`` per language and ``bpecodes``.  :func:`convert_directory` writes a
directory of the same layout that fairseq loads with ``--user-dir fconv_plugin``
(``fairseq-generate DATA --path OUT/model.pt``, ``FConvExtModel.from_pretrained(OUT)``):

* every fairseq checkpoint (``*.pt``) converted under its own name (old layouts upgraded
  first, :mod:`.legacy`); one already converted is copied;
* a fusion checkpoint's ``pretrained_checkpoint`` pointed at the converted pretrained
  checkpoint in the output directory (its absolute path), when the directory holds one of
  that name: the path it was trained with (``/checkpoint/...``) exists nowhere else;
* every other file (dictionaries, ``bpecodes``, ...) copied, except that a dictionary
  shorter than its embedding table by fairseq's padding (below) is padded;
* a marker file (:data:`COMPLETE`) written last: the output is whole exactly when it is
  there.  Everything is written to a temporary directory beside the output, renamed at
  the end.

Dictionaries and embedding rows (fairseq issue #258).  fairseq pads the embedding tables
of a model to a multiple of 8 rows (``--padding-factor 8``, ``Dictionary.pad_to_multiple_``:
``madeupword0000``, ...).  Archives whose ``dict.<lang>.txt`` holds the words without that
padding give a dictionary up to 7 symbols shorter than the table, and fairseq's loading
fails with a size mismatch.  The converter then pads the dictionary the same way fairseq
does (those symbols are never in the data; the model computes what it computed in
training) and logs it.  Any other difference (the dictionary longer than the table, or
shorter by 8 or more, or a table whose rows are not a multiple of 8) is not padding: it
is the wrong dictionary, and :class:`~.common.ConversionError` names both files.
"""

import argparse
import logging
import os
import shutil
import tempfile
from typing import Any, Dict, List, Mapping, Optional

import torch
from fairseq.data import Dictionary

from ..checkpoint import load_checkpoint_file
from ..hub import COMPLETE, is_converted_directory
from .common import ConversionError, checkpoint_arch, model_options
from .dispatch import CONVERTERS, upgraded_checkpoint

logger = logging.getLogger(__name__)

#: fairseq's --padding-factor for dictionaries (fairseq-preprocess's default)
PADDING_FACTOR = 8


def convert_directory(src: str, out: str, pretrained_checkpoint: Optional[str] = None) -> List[str]:
    """Convert the model directory ``src`` (an extracted archive) into ``out``, which must
    not exist yet.  ``pretrained_checkpoint``: for a fusion checkpoint, the pretrained
    checkpoint's name inside ``src`` when it differs from the basename in its args (the
    hub's ``"./pretrained_checkpoint.pt"``).  Returns the checkpoint files written."""
    if not os.path.isdir(src):
        raise ConversionError(f"{src!r} is not a directory")
    if os.path.exists(out):
        raise ConversionError(f"{out!r} exists already: give a new output directory")
    names = sorted(n for n in os.listdir(src) if os.path.isfile(os.path.join(src, n)))
    checkpoints = [n for n in names if n.endswith(".pt")]
    if not checkpoints:
        raise ConversionError(f"{src!r} holds no checkpoint (*.pt): not a model archive")
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(out) + ".tmp-", dir=parent)
    try:
        states = {n: load_checkpoint_file(os.path.join(src, n)) for n in checkpoints}
        # fusion checkpoints after the models they fuse with (they read them while converting)
        order = sorted(checkpoints, key=lambda n: _is_fusion(states[n]))
        padded: Dict[str, Dictionary] = {}
        for name in order:
            state = states[name]
            if checkpoint_arch(state) in CONVERTERS:
                pretrained = None
                if _is_fusion(state):
                    state, pretrained = _with_pretrained_path(state, name, src, tmp, pretrained_checkpoint or "")
                state = upgraded_checkpoint(state)
                padded.update(_checked_dictionaries(src, name, state))
                converted = CONVERTERS[checkpoint_arch(state)].convert(state)
                if pretrained is not None:  # where it is once tmp is renamed to out
                    converted["cfg"]["model"]["pretrained_checkpoint"] = os.path.abspath(os.path.join(out, pretrained))
                torch.save(converted, os.path.join(tmp, name))
                logger.info(
                    f"converted {name}: fairseq {checkpoint_arch(state)} -> {converted['cfg']['model']['_name']}"
                )
            else:  # one of this plugin's (or unknown: fairseq says so when it loads it)
                shutil.copy2(os.path.join(src, name), os.path.join(tmp, name))
        for name in names:
            if name in padded:
                padded[name].save(os.path.join(tmp, name))
            elif not name.endswith(".pt"):
                shutil.copy2(os.path.join(src, name), os.path.join(tmp, name))
        with open(os.path.join(tmp, COMPLETE), "w", encoding="utf-8") as f:
            f.write(f"converted from {os.path.abspath(src)} by fconv-ext-convert: {', '.join(order)}\n")
        try:
            os.rename(tmp, out)
        except OSError:
            if not is_converted_directory(out):  # another process converted it meanwhile: use that
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [os.path.join(out, n) for n in order]


def converts(state: Mapping[str, Any]) -> bool:
    """Whether :func:`convert_directory` converts the loaded checkpoint ``state`` (one of
    fairseq's fconv, fconv_lm, fconv_self_att)."""
    return checkpoint_arch(state) in CONVERTERS


def _is_fusion(state: Mapping[str, Any]) -> bool:
    return str(model_options(state).get("pretrained", False)).lower() == "true"


def _with_pretrained_path(state, name: str, src: str, tmp: str, hint: str):
    """``(state with its pretrained_checkpoint read from tmp, the file's final name)``: the
    pretrained checkpoint inside ``src`` (by ``hint``'s name, else by the basename in the
    checkpoint's args), converted already into ``tmp`` (fusion checkpoints come last);
    ``(state, None)`` when ``src`` has none but the path it was trained with exists."""
    trained_with = str(model_options(state).get("pretrained_checkpoint") or "")
    candidates = [os.path.basename(p) for p in (hint, trained_with) if p]
    inside = next((c for c in candidates if os.path.isfile(os.path.join(src, c))), None)
    if inside is None:
        if trained_with and os.path.isfile(trained_with):
            return state, None
        raise ConversionError(
            f"{name} is a fusion model: it needs its pretrained model {trained_with!r} (its pretrained_checkpoint), "
            f"which is not in {src!r}. Put that checkpoint into the directory and convert again"
        )
    new = dict(state)
    reading = os.path.join(tmp, inside)
    if new.get("cfg") is not None:
        new["cfg"] = dict(new["cfg"])
        new["cfg"]["model"] = _set_option(new["cfg"]["model"], "pretrained_checkpoint", reading)
    else:
        new["args"] = _set_option(new["args"], "pretrained_checkpoint", reading)
    return new, inside


def _set_option(options, name: str, value):
    if isinstance(options, argparse.Namespace):
        copy = argparse.Namespace(**vars(options))
        setattr(copy, name, value)
        return copy
    copy = dict(options)
    copy[name] = value
    return copy


def _checked_dictionaries(src: str, name: str, state: Mapping[str, Any]) -> Dict[str, Dictionary]:
    """The dictionaries of ``src`` that checkpoint ``name`` reads, checked against its
    embedding rows; returns those to write padded (file name -> padded Dictionary)."""
    converter = CONVERTERS[checkpoint_arch(state)]
    options = model_options(state)
    if len(converter.vocab_keys) == 2:
        langs = [options.get("source_lang"), options.get("target_lang")]
        if not all(langs):
            logger.info(f"{name}: no source_lang/target_lang in its args: dictionaries not checked")
            return {}
        files = [f"dict.{lang}.txt" for lang in langs]
    else:
        files = ["dict.txt"]
    padded = {}
    for file, key in zip(files, converter.vocab_keys):
        path = os.path.join(src, file)
        if not os.path.isfile(path):
            logger.info(f"{name}: {file} is not beside it (give the data directory when loading)")
            continue
        rows = state["model"][key].size(0)
        d = Dictionary.load(path)
        if len(d) == rows:
            continue
        if len(d) < rows and rows % PADDING_FACTOR == 0 and rows - len(d) < PADDING_FACTOR:
            added = rows - len(d)
            d.pad_to_multiple_(PADDING_FACTOR)  # adds madeupword0000, ... up to the next multiple: rows
            logger.warning(
                f"{file}: {added} symbols added (madeupword0000, ...) as fairseq's --padding-factor "
                f"{PADDING_FACTOR} does, to match the {rows} embedding rows of {name}"
            )
            padded[file] = d
            continue
        raise ConversionError(
            f"{path} has {len(d)} symbols (fairseq's 4 special ones included) but {name} has {rows} embedding rows "
            f"for it ({key}); that is not fairseq's padding to a multiple of {PADDING_FACTOR}: it is not the "
            "dictionary this model was trained with. Use the dict files of the model's own archive (or data-bin)"
        )
    return padded
