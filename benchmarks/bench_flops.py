"""The FLOP model of ``bench.py``'s efficiency column: analytic matmul FLOPs per layer, one formula for
fairseq's fconv and for fconv_ext (``torch.utils.flop_counter`` does not count fairseq's ConvTBC, so it
would undercount fconv).

Counted, per position (a source token for the encoder, a target token of one beam for the decoder):

* embedding -> first conv width and last conv width -> embedding projections;
* each convolution as ``k * in`` x ``out`` multiply-adds (``out`` = 2 x channels: the GLU's two halves;
  a dilated convolution does the same work), and the residual width projection where there is one;
* each attention layer: the two projections (conv width <-> embedding) and the scores and context
  products against ``src_len`` source positions;
* fc2 (conv width -> out_embed) and the vocabulary projection fc3.

A multiply-add is 2 FLOPs.  Generation: the encoder once per sentence, the decoder once per generated
token for each beam.  Training: 3 x forward (forward, and backward's two products per layer).
"""


def _stack(part):
    """The module holding an encoder's or decoder's ``convolutions`` and ``projections``: fconv_ext's
    ``ConvStack`` (``part.stack``, modules/conv_stack.py), fairseq fconv's encoder/decoder itself."""
    return getattr(part, "stack", part)


def is_conv(model):
    """True for fconv and fconv_ext models (what this FLOP model describes)."""
    dec = getattr(model, "decoder", None)
    return dec is not None and hasattr(_stack(dec), "convolutions") and hasattr(dec, "fc3")


def conv_arch(model):
    """(E_enc, enc convs [(in, out, k)], E_dec, dec convs, attention flags, out_embed, V) for either side."""
    from fairseq.modules import ConvTBC

    enc, dec = model.encoder, model.decoder
    enc_stack, dec_stack = _stack(enc), _stack(dec)

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
        "enc_embed": enc.embed_tokens.embedding_dim,
        "enc_convs": conv_shapes(enc_stack.convolutions),
        "dec_embed": dec.embed_tokens.embedding_dim,
        "dec_convs": conv_shapes(dec_stack.convolutions),
        "attention": [a is not None for a in dec.attention],
        "out_embed": dec.fc2.weight.shape[0],
        "vocab": len(dec.dictionary),
        "enc_proj": [p.weight.shape[::-1] if p is not None else None for p in enc_stack.projections],
        "dec_proj": [p.weight.shape[::-1] if p is not None else None for p in dec_stack.projections],
    }


def matmul_flops(m, k, n):
    """FLOPs of an (m x k) @ (k x n) product."""
    return 2.0 * m * k * n


def forward_flops(model, n_src_tokens, n_tgt_tokens, src_len):
    """Matmul FLOPs of one full forward pass: n_* tokens (padding included, as computed), attention
    over ``src_len`` source positions."""
    a = conv_arch(model)
    f = matmul_flops(n_src_tokens, a["enc_embed"], a["enc_convs"][0][0]) + matmul_flops(
        n_src_tokens, a["enc_convs"][-1][1] // 2, a["enc_embed"]
    )
    for (cin, cout, k), proj in zip(a["enc_convs"], a["enc_proj"]):
        f += matmul_flops(n_src_tokens, k * cin, cout) + (matmul_flops(n_src_tokens, *proj) if proj is not None else 0)
    f += matmul_flops(n_tgt_tokens, a["dec_embed"], a["dec_convs"][0][0])
    for (cin, cout, k), proj, att in zip(a["dec_convs"], a["dec_proj"], a["attention"]):
        f += matmul_flops(n_tgt_tokens, k * cin, cout) + (matmul_flops(n_tgt_tokens, *proj) if proj is not None else 0)
        if att:
            c = cout // 2
            f += 2 * matmul_flops(n_tgt_tokens, c, a["dec_embed"]) + 2 * matmul_flops(
                n_tgt_tokens, a["dec_embed"], src_len
            )
    f += matmul_flops(n_tgt_tokens, a["dec_convs"][-1][1] // 2, a["out_embed"]) + matmul_flops(
        n_tgt_tokens, a["out_embed"], a["vocab"]
    )
    return f


def generation_flops(model, batches, hyps, beam):
    """Encoder once per sentence; the decoder once per hypothesis token for each of ``beam`` beams."""
    total = 0.0
    for b in batches:
        src = b["net_input"]["src_tokens"]
        s_len = src.size(1)
        n_steps = sum(len(hyps[i]) for i in b["id"].tolist())
        enc_only = forward_flops(model, src.numel(), 0, s_len)
        # decoder part of forward_flops for beam * steps target positions
        dec = forward_flops(model, 0, beam * n_steps, s_len)
        total += enc_only + dec
    return total


def training_flops(model, batches):
    """3 x forward FLOPs of ``batches`` (forward, and the backward pass's two products per layer)."""
    return 3 * sum(
        forward_flops(
            model, b["net_input"]["src_tokens"].numel(), b["target"].numel(), b["net_input"]["src_tokens"].size(1)
        )
        for b in batches
    )


def decoding_shapes(model, rows=320):
    """The (m, k, n) products of one decoder step at ``rows`` rows (64 sentences x beam 5): the vocabulary
    projection and each decoder convolution; the shapes ``matmul_rate`` measures the machine at."""
    a = conv_arch(model)
    return [(rows, a["out_embed"], a["vocab"])] + [(rows, k * cin, cout) for cin, cout, k in a["dec_convs"]]
