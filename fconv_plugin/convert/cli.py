"""``fconv-ext-convert INPUT OUTPUT`` (also ``python -m fconv_plugin.convert``): convert a fairseq
checkpoint file, or a model directory (an extracted published archive: checkpoints, dictionaries,
bpecodes; :mod:`.archive`)."""

import argparse
import os
import sys

import torch

from ..checkpoint import CheckpointError, load_checkpoint_file
from .common import ConversionError
from .dispatch import convert_checkpoint


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="fconv-ext-convert",
        description="Convert a fairseq fconv, fconv_lm or fconv_self_att checkpoint into an fconv_ext, "
        "fconv_ext_lm or fconv_ext_self_att checkpoint (same outputs; load with --user-dir fconv_plugin). "
        "INPUT may also be a model directory (an extracted fairseq model archive: *.pt, dict.*.txt, bpecodes): "
        "OUTPUT is then a new directory of the same layout.",
    )
    parser.add_argument("input", help="fairseq checkpoint (.pt), or a directory holding the model's files")
    parser.add_argument("output", help="where to write the converted checkpoint (a new directory for a directory)")
    args = parser.parse_args(argv)
    if os.path.isdir(args.input):
        return _convert_directory(args.input, args.output)
    try:
        state = load_checkpoint_file(args.input)
        converted = convert_checkpoint(state)
    except (CheckpointError, ConversionError) as err:
        print(f"fconv-ext-convert: error: {err}", file=sys.stderr)
        return 2
    torch.save(converted, args.output)
    model_name = converted["cfg"]["model"]["_name"]  # fconv_ext, fconv_ext_lm, ...
    print(f"wrote {args.output} ({model_name}, {sum(v.numel() for v in converted['model'].values())} values)")
    return 0


def _convert_directory(src: str, out: str) -> int:
    from .archive import convert_directory

    try:
        written = convert_directory(src, out)
    except (CheckpointError, ConversionError) as err:
        print(f"fconv-ext-convert: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}: {', '.join(os.path.basename(w) for w in written)} and the model's other files")
    return 0
