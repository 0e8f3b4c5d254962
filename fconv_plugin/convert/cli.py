"""``fconv-ext-convert INPUT OUTPUT``: convert a fairseq checkpoint file."""

import argparse
import sys

import torch

from ..checkpoint import CheckpointError, load_checkpoint_file
from .common import ConversionError
from .dispatch import convert_checkpoint


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="fconv-ext-convert",
        description="Convert a fairseq fconv, fconv_lm or fconv_self_att checkpoint into an fconv_ext, "
        "fconv_ext_lm or fconv_ext_self_att checkpoint (same outputs; load with --user-dir fconv_plugin).",
    )
    parser.add_argument("input", help="fairseq checkpoint (.pt)")
    parser.add_argument("output", help="where to write the converted checkpoint")
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
