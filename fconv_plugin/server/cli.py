"""``fconv-ext-serve``: the translation server's command line.

    fconv-ext-serve CHECKPOINT --data DATA_BIN [--tokenizer moses|moses_protected]
        [--bpe subword_nmt --bpe-codes CODES] [--source-lang L --target-lang L] [--beam 5]
        [--host 127.0.0.1 --port 5000] [--threads N] [--max-tokens N --max-wait-ms MS] [limits...]

CHECKPOINT is a checkpoint file, or a directory with ``model.pt`` / ``checkpoint_best.pt`` /
``checkpoint_last.pt``; the other model options are those of the hub interface (README).  A directory
written by ``fconv-ext-export`` is served through ``fconv_runtime`` (its manifest has the dictionaries,
BPE codes, tokenizer and languages: no other model option applies; the page shows no attention).  uvicorn
serves the app; SIGTERM or Ctrl-C stops accepting connections, answers the requests already
accepted, and exits 0.
"""

import importlib
import argparse
import logging
import os
import signal
import sys
from typing import List, Optional

from .limits import Limits, read_api_keys

logger = logging.getLogger("fconv_plugin.server")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fconv-ext-serve",
        description="Serve an fconv_ext model over HTTP with "
        "LibreTranslate's API, dynamic batching, a page with the attention of each layer, "
        "health and Prometheus metrics.",
    )
    p.add_argument(
        "checkpoint",
        help="checkpoint file, a directory holding model.pt / checkpoint_best.pt, or a "
        "directory written by fconv-ext-export",
    )
    model = p.add_argument_group("model (as the hub interface takes it)")
    model.add_argument(
        "--data",
        default=None,
        help="binarized data directory with the dictionaries (needed unless CHECKPOINT is an export)",
    )
    model.add_argument("--source-lang", default=None, help="source language code (default: the model task's)")
    model.add_argument("--target-lang", default=None, help="target language code (default: the model task's)")
    model.add_argument("--tokenizer", default=None, help="e.g. moses, moses_protected (placeholders kept whole)")
    model.add_argument("--bpe", default=None, help="e.g. subword_nmt")
    model.add_argument("--bpe-codes", default=None, help="BPE codes file for --bpe subword_nmt")
    model.add_argument("--beam", type=int, default=5, help="beam size; alternatives go up to beam - 1")
    model.add_argument(
        "--max-len-a",
        type=float,
        default=0.0,
        help="a translation has at most max_len_a * source tokens + max_len_b tokens (fairseq's option and default)",
    )
    model.add_argument("--max-len-b", type=int, default=200, help="(fairseq's option and default)")
    model.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads for decoding (default: torch's, usually the number of cores)",
    )

    serve = p.add_argument_group("serving")
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 for every interface)",
    )
    serve.add_argument("--port", type=int, default=5000)
    serve.add_argument(
        "--max-tokens",
        type=int,
        default=2048,
        help="padded source tokens per decoded batch (sentences x longest, EOS included)",
    )
    serve.add_argument(
        "--max-wait-ms",
        type=float,
        default=10.0,
        help="how long a batch may wait for more sentences while other clients are active",
    )
    serve.add_argument(
        "--api-keys",
        default=None,
        help="file with one API key per line: requests without one of them get 403 (default: no keys needed)",
    )
    serve.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a web origin (https://example.org) whose pages may call the API from a browser; "
        "repeat for several, '*' for any (LibreTranslate's default); none by default",
    )
    serve.add_argument(
        "--graceful-timeout",
        type=float,
        default=60.0,
        help="seconds SIGTERM waits for accepted requests before closing their connections",
    )
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    d = Limits()
    lim = p.add_argument_group("limits")
    lim.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes, help="request body size (413 beyond)")
    lim.add_argument("--char-limit", type=int, default=d.max_chars, help="characters per request (400 beyond)")
    lim.add_argument(
        "--sentence-limit",
        type=int,
        default=d.max_sentences,
        help="sentences (non-empty lines) per request (400 beyond)",
    )
    lim.add_argument(
        "--max-sentence-tokens",
        type=int,
        default=None,
        help="subword tokens per sentence, longer ones cut with a warning (default: the model's source positions)",
    )
    lim.add_argument(
        "--queue-size",
        type=int,
        default=d.queue_sentences,
        help="sentences waiting for a batch; beyond, 503 with Retry-After",
    )
    lim.add_argument("--timeout", type=float, default=d.timeout_s, help="seconds per request (504 beyond)")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", force=True
    )  # importing fairseq may have configured logging already
    if args.beam < 1:
        sys.exit("--beam must be at least 1")
    from .translator import is_export

    exported = is_export(args.checkpoint)
    if exported and any((args.data, args.tokenizer, args.bpe, args.bpe_codes, args.source_lang, args.target_lang)):
        sys.exit(
            f"{args.checkpoint} is an export: its manifest fixes the dictionaries, tokenizer, BPE and "
            "languages (drop --data, --tokenizer, --bpe, --bpe-codes, --source-lang, --target-lang)"
        )
    if not exported and args.data is None:
        sys.exit("--data DATA_BIN is needed (the binarized data directory with the model's dictionaries)")
    # paths checked before the server starts, not found by the model loader behind a running server
    if not os.path.exists(args.checkpoint):
        sys.exit(
            f"no checkpoint file or directory {args.checkpoint!r}: give a checkpoint .pt file, a directory "
            "holding one, or an fconv-ext-export directory"
        )
    if args.data is not None and not os.path.isdir(args.data):
        sys.exit(
            f"--data {args.data!r} is not a directory: give the binarized data directory (fairseq-preprocess's "
            "--destdir) that holds the model's dict.*.txt"
        )
    api_keys = ()
    if args.api_keys:
        try:
            api_keys = read_api_keys(args.api_keys)
        except (OSError, ValueError) as err:
            sys.exit(f"--api-keys: {err}")

    import torch
    import uvicorn

    importlib.import_module("fconv_plugin")  # registers fconv_ext, applies the fairseq fixes
    from .app import Server, build_app
    from .translator import ExportedTranslator, Translator

    if args.threads:
        torch.set_num_threads(args.threads)
    limits = Limits(
        max_body_bytes=args.max_body_bytes,
        max_chars=args.char_limit,
        max_sentences=args.sentence_limit,
        max_sentence_tokens=args.max_sentence_tokens,
        max_alternatives=args.beam - 1,
        queue_sentences=args.queue_size,
        timeout_s=args.timeout,
    )

    def load():
        if exported:
            return ExportedTranslator(
                args.checkpoint,
                beam=args.beam,
                threads=args.threads,
                max_sentence_tokens=args.max_sentence_tokens,
                max_len_a=args.max_len_a,
                max_len_b=args.max_len_b,
            )
        return Translator.load(
            args.checkpoint,
            args.data,
            source_lang=args.source_lang,
            target_lang=args.target_lang,
            tokenizer=args.tokenizer,
            bpe=args.bpe,
            bpe_codes=args.bpe_codes,
            beam=args.beam,
            max_sentence_tokens=args.max_sentence_tokens,
            max_len_a=args.max_len_a,
            max_len_b=args.max_len_b,
        )

    server = Server(load, limits=limits, max_tokens=args.max_tokens, max_wait_ms=args.max_wait_ms, api_keys=api_keys)
    app = build_app(server, cors_origins=args.cors_origin)
    logger.info(
        "serving on http://%s:%d/ (%d torch threads); the model loads in the background, /health says when it is ready",
        args.host,
        args.port,
        torch.get_num_threads(),
    )

    # uvicorn handles SIGTERM/SIGINT while it serves (stop accepting, finish the requests in flight), then
    # raises the signal again with the handlers that were there before it started: these, so that a
    # requested stop ends with exit status 0.
    def stopped(signum, frame):
        logger.info("stopped by %s after answering the requests in flight", signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, stopped)
    signal.signal(signal.SIGINT, stopped)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=False,
        timeout_graceful_shutdown=args.graceful_timeout,
        lifespan="on",
    )
    uvicorn.Server(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
