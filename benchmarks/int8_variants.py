"""BLEU and speed of int8 variants on the full test set (beam 5, batch 64, 2 threads), one run each:
what the vocabulary projection in float32 and 8-bit (instead of 7-bit) activations change.

    python benchmarks/int8_variants.py VARIANT --checkpoint CK.pt --data /tmp/gt/bin \\
        [--shortlist FILE] [--references ../shared/data/gettext-en-de/test.de]

VARIANT: ``exact``, ``int8``, or ``int8`` plus any of ``_sl`` (with ``--shortlist``), ``_fc3float`` (every
product in int8 but the vocabulary projection), ``_full8`` (activations on 8 bits: ``REDUCE_RANGE``
off), ``_rowscale`` (each input row scaled to max |x| = 1 before the per-tensor activation quantization and the
output row scaled back: per-row activation scales), e.g. ``int8_sl_fc3float``.  Prints seconds, detokenized and tokenized BLEU (bench_child's).
"""

import argparse
import os
import sys
import types

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("variant")
    p.add_argument("--checkpoint", required=True, help="an fconv_ext checkpoint")
    p.add_argument("--data", required=True)
    p.add_argument("--shortlist")
    p.add_argument("--references", default=os.path.join(HERE, "..", "..", "shared", "data", "gettext-en-de", "test.de"))
    args = p.parse_args()

    import bench_child
    import fconv_plugin.models.fconv_ext as fconv_ext
    from fconv_plugin.modules import int8

    overrides = {}
    if args.variant.startswith("int8"):
        overrides["inference_dtype"] = "int8"
    if "_sl" in args.variant:
        overrides["shortlist"] = args.shortlist
    if "_fc3float" in args.variant:
        def all_but_fc3(model):  # quantize_int8_, then the float vocabulary projection back
            fc3 = model.decoder.fc3
            products = int8.quantize_int8_(model)
            model.decoder.fc3 = fc3
            return products - 1

        fconv_ext.quantize_int8_ = all_but_fc3
    if "_full8" in args.variant:
        int8.REDUCE_RANGE = False
    if "_rowscale" in args.variant:
        import torch

        def pack_without_bias(self):  # the bias is added after the rows are scaled back
            bias, self.bias = self.bias, None
            try:
                original_pack(self)
            finally:
                self.bias = bias

        def forward(self, x):  # (D x) W^T = D (x W^T) for a diagonal D: per-row activation scales
            x = x.float()
            scale = x.abs().amax(dim=-1, keepdim=True).clamp_min(1e-12)  # ... x 1
            y = torch.ops.quantized.linear_dynamic(x / scale, self._packed, int8.REDUCE_RANGE) * scale
            return y if self.bias is None else y + self.bias

        original_pack = int8.Int8Linear._pack
        int8.Int8Linear._pack = pack_without_bias
        int8.Int8Linear.forward = forward
    job = types.SimpleNamespace(checkpoint=args.checkpoint, data=args.data, dtype="float32", beam=5, batch=64,
                                max_batches=0, device="cpu", overrides=overrides or None, threads=2,
                                references=args.references)
    r = bench_child.child_generate(job)
    print(f"{args.variant}: {r['seconds']:.2f} s, detokenized BLEU {r['detok_bleu']:.2f}, tokenized {r['bleu']:.2f}")


if __name__ == "__main__":
    main()
