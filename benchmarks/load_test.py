"""Load test of fconv-ext-serve against hub.translate called serially, on 127.0.0.1 only.

    python benchmarks/load_test.py CHECKPOINT --data DATA_BIN --sentences TEST.en \\
        [--tokenizer moses_protected --bpe subword_nmt --bpe-codes CODES] [--threads 2] \\
        [--concurrency 1 8 32 64] [--requests 400] [--time-limit 60] [--soak 600] \\
        [--overload 256 --overload-queue 32] [--json /tmp/load_results.json]

1. Serial baseline: ``hub.translate(sentence)`` on the first ``--serial`` sentences, one call at a time,
   in this process with ``--threads`` torch threads (then the model is freed).
2. The server (``python -m fconv_plugin.server.cli``, its own process, ``--threads`` threads) on a free
   port; for each concurrency C, C clients in a closed loop (each sends its next request when the
   previous one is answered), one sentence per request (the baseline's sentences, in turn), until
   ``--requests`` requests or ``--time-limit`` seconds.  Reported: sentences/s, p50/p95/p99 latency, errors (any answer
   but 200, or no answer), lost requests (sent but neither answered nor failed), the server's RSS.
3. Soak: concurrency 32 for ``--soak`` seconds, the server's RSS sampled every 5 s; growth is the last
   sample against the first one after a warm-up of a tenth of the soak.
4. Over-load: a second server with ``--queue-size --overload-queue``, ``--overload`` concurrent
   clients, one request each wave; reported: answers by status, 503s with Retry-After, client
   timeouts, and whether /health and a translation still work afterwards.

The load generator is one asyncio process (httpx) on the same machine as the server: on a 2-core
machine it takes CPU from the server, so the numbers are a floor.
"""

import importlib
import argparse
import asyncio
import gc
import json
import logging
import os
import socket
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from bench_common import machine


def percentile(values: List[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation; nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmRSS for process {pid}")


def model_options(args) -> Dict[str, Optional[str]]:
    return {
        "tokenizer": args.tokenizer,
        "bpe": args.bpe,
        "bpe_codes": args.bpe_codes,
        "source_lang": args.source_lang,
        "target_lang": args.target_lang,
    }


# ------------------------------------------------------------------------------ serial baseline


def load_hub(args):
    """The hub interface on the model, in this process, with ``--threads`` torch threads."""
    import torch

    sys.path.insert(0, REPO)
    importlib.import_module("fconv_plugin")
    from fconv_plugin.server.translator import resolve_checkpoint
    from fconv_plugin.models import FConvExtModel

    torch.set_num_threads(args.threads)
    model_dir, checkpoint_file = resolve_checkpoint(args.checkpoint)
    hub = FConvExtModel.from_pretrained(
        model_dir,
        checkpoint_file=checkpoint_file,
        data_name_or_path=args.data,
        **{k: v for k, v in model_options(args).items() if v},
    )
    return hub.eval()


def serial_baseline(args, sentences: List[str]) -> Dict[str, float]:
    hub = load_hub(args)
    max_len = {"max_len_a": args.max_len_a, "max_len_b": args.max_len_b}
    for sentence in sentences[:3]:  # warm-up
        hub.translate(sentence, beam=args.beam, **max_len)
    latencies = []
    translations = []
    start = time.perf_counter()
    for sentence in sentences:
        t = time.perf_counter()
        translations.append(hub.translate(sentence, beam=args.beam, **max_len))
        latencies.append(time.perf_counter() - t)
    wall = time.perf_counter() - start
    del hub
    gc.collect()
    result = {
        "sentences": len(sentences),
        "seconds": wall,
        "sentences_per_s": len(sentences) / wall,
        "p50_ms": 1000 * percentile(latencies, 50),
        "p95_ms": 1000 * percentile(latencies, 95),
        "p99_ms": 1000 * percentile(latencies, 99),
        "mean_words_out": statistics.mean(len(t.split()) for t in translations),
        "mean_words_in": statistics.mean(len(s.split()) for s in sentences),
    }
    if args.references:  # how good the model is: sacreBLEU of these translations
        import sacrebleu

        with open(args.references, encoding="utf-8") as f:
            references = [line.rstrip("\n") for line in f][: len(sentences)]
        result["bleu"] = round(sacrebleu.corpus_bleu(translations, [references]).score, 1)
    return result


def direct_vs_server(args, url: str, sentences: List[str], source: str, target: str) -> Dict:
    """One request at a time, alternating: ``hub.translate`` in this process, then the same sentence
    through the server (which then decodes it alone), so that both see the same machine load."""
    import httpx

    hub = load_hub(args)
    max_len = {"max_len_a": args.max_len_a, "max_len_b": args.max_len_b}
    direct: List[float] = []
    served: List[float] = []
    same = 0
    with httpx.Client(base_url=url, timeout=120) as client:
        for sentence in sentences:
            start = time.perf_counter()
            expected = hub.translate(sentence, beam=args.beam, **max_len)
            direct.append(time.perf_counter() - start)
            start = time.perf_counter()
            response = client.post("translate", json={"q": sentence, "source": source, "target": target})
            served.append(time.perf_counter() - start)
            same += response.json()["translatedText"] == expected
    del hub
    gc.collect()
    return {
        "sentences": len(sentences),
        "same_translation": same,
        "direct_p50_ms": 1000 * percentile(direct, 50),
        "server_p50_ms": 1000 * percentile(served, 50),
        "direct_mean_ms": 1000 * statistics.mean(direct),
        "server_mean_ms": 1000 * statistics.mean(served),
        "p50_ratio": percentile(served, 50) / percentile(direct, 50),
    }


# ------------------------------------------------------------------------------ the server


class ServerProcess:
    def __init__(self, args, *extra: str):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        cmd = [
            sys.executable,
            "-m",
            "fconv_plugin.server.cli",
            args.checkpoint,
            "--data",
            args.data,
            "--port",
            str(self.port),
            "--threads",
            str(args.threads),
            "--beam",
            str(args.beam),
            "--max-tokens",
            str(args.max_tokens),
            "--max-wait-ms",
            str(args.max_wait_ms),
            "--log-level",
            "warning",
            "--max-len-a",
            str(args.max_len_a),
            "--max-len-b",
            str(args.max_len_b),
            *extra,
        ]
        for name, value in model_options(args).items():
            if value:
                cmd += ["--" + name.replace("_", "-"), value]
        self.log = open(os.path.join(args.log_dir, f"server-{self.port}.log"), "w")
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout=300.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}: see {self.log.name}")
            try:
                if httpx.get(self.url + "health").status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)  # not listening yet
                continue
            time.sleep(0.2)
        raise RuntimeError(f"the server was not ready after {timeout} s")

    def stop(self) -> int:
        self.proc.terminate()
        code = self.proc.wait(120)
        self.log.close()
        return code


async def closed_loop(
    url: str,
    sentences: List[str],
    concurrency: int,
    requests: int,
    time_limit: float,
    source: str,
    target: str,
    client_timeout: float = 60.0,
) -> Dict:
    """``concurrency`` clients, each sending its next request when its previous one is answered."""
    import httpx

    latencies: List[float] = []
    statuses: Dict[str, int] = {}
    retry_after = 0
    sent = answered = 0
    next_index = 0
    deadline = time.monotonic() + time_limit
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def client_loop(client):
        nonlocal sent, answered, next_index, retry_after
        while sent < requests and time.monotonic() < deadline:
            sentence = sentences[next_index % len(sentences)]
            next_index += 1
            sent += 1
            start = time.perf_counter()
            try:
                response = await client.post("translate", json={"q": sentence, "source": source, "target": target})
                key = str(response.status_code)
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - start)
                    response.json()["translatedText"]
                elif response.status_code == 503 and "retry-after" in response.headers:
                    retry_after += 1
            except httpx.TimeoutException:
                key = "client timeout"
            except httpx.TransportError as err:
                key = type(err).__name__
            statuses[key] = statuses.get(key, 0) + 1
            answered += 1

    async with httpx.AsyncClient(base_url=url, timeout=client_timeout, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*[client_loop(client) for _ in range(concurrency)])
        wall = time.perf_counter() - start
    ok = statuses.get("200", 0)
    return {
        "concurrency": concurrency,
        "sent": sent,
        "ok": ok,
        "errors": sent - ok,
        "lost": sent - answered,
        "statuses": statuses,
        "retry_after_503": retry_after,
        "seconds": wall,
        "sentences_per_s": ok / wall,
        "p50_ms": 1000 * percentile(latencies, 50),
        "p95_ms": 1000 * percentile(latencies, 95),
        "p99_ms": 1000 * percentile(latencies, 99),
    }


async def soak(server: ServerProcess, sentences, seconds: float, source, target) -> Dict:
    samples = []

    async def sample_rss():
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            samples.append((time.monotonic() - start, rss_mib(server.proc.pid)))
            await asyncio.sleep(5)

    sampler = asyncio.ensure_future(sample_rss())
    result = await closed_loop(server.url, sentences, 32, 10**9, seconds, source, target)
    await sampler
    warm = [rss for t, rss in samples if t >= seconds / 10] or [samples[-1][1]]
    result.update(
        {
            "rss_samples_mib": [round(r, 1) for _, r in samples],
            "rss_after_warmup_mib": warm[0],
            "rss_end_mib": warm[-1],
            "rss_growth_pct": 100.0 * (warm[-1] - warm[0]) / warm[0],
        }
    )
    return result


def overload(args, sentences, source, target) -> Dict:
    import httpx

    server = ServerProcess(args, "--queue-size", str(args.overload_queue))
    try:
        server.wait_ready()
        result = asyncio.run(
            closed_loop(
                server.url,
                sentences,
                args.overload,
                args.overload * 4,
                args.time_limit,
                source,
                target,
                client_timeout=args.overload_client_timeout,
            )
        )
        result["health_after"] = httpx.get(server.url + "health").status_code
        after = httpx.post(
            server.url + "translate", json={"q": sentences[0], "source": source, "target": target}, timeout=60
        )
        result["translate_after"] = after.status_code
        result["rss_mib"] = rss_mib(server.proc.pid)
    finally:
        result_exit = server.stop()
    result["exit_status"] = result_exit
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--data", required=True)
    p.add_argument("--sentences", required=True, help="source sentences, one per line (the gettext test set)")
    p.add_argument("--references", default=None, help="their reference translations: sacreBLEU of the serial run")
    p.add_argument("--source-lang", default=None)
    p.add_argument("--target-lang", default=None)
    p.add_argument("--tokenizer", default=None)
    p.add_argument("--bpe", default=None)
    p.add_argument("--bpe-codes", default=None)
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--max-len-a", type=float, default=0.0, help="output length cap, serial and server alike")
    p.add_argument("--max-len-b", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=2048)
    p.add_argument("--max-wait-ms", type=float, default=10.0)
    p.add_argument("--serial", type=int, default=200, help="sentences of the serial baseline")
    p.add_argument(
        "--ab",
        type=int,
        default=0,
        help="sentences of a one-at-a-time A/B: hub.translate here, then "
        "the server, alternating (the concurrency-1 latency under the same machine load)",
    )
    p.add_argument("--concurrency", type=int, nargs="*", default=[1, 8, 32, 64])
    p.add_argument("--requests", type=int, default=400, help="requests per concurrency level")
    p.add_argument("--time-limit", type=float, default=60.0, help="seconds per concurrency level")
    p.add_argument("--soak", type=float, default=600.0, help="seconds of the soak at concurrency 32 (0: none)")
    p.add_argument("--overload", type=int, default=256, help="clients of the over-load test (0: none)")
    p.add_argument("--overload-queue", type=int, default=32, help="--queue-size of the over-load server")
    p.add_argument("--overload-client-timeout", type=float, default=60.0)
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--log-dir", default="/tmp", help="where the servers' logs go")
    args = p.parse_args(argv)
    for name in ("httpx", "httpcore"):  # a log line per request would slow the load generator down
        logging.getLogger(name).setLevel(logging.WARNING)

    with open(args.sentences, encoding="utf-8") as f:
        sentences = [line.strip() for line in f]  # kept aligned with --references
    results: Dict = {
        "machine": machine(threads=args.threads),
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
    }
    if args.serial > 0:
        print(f"serial hub.translate on {args.serial} sentences ...", flush=True)
        results["serial"] = serial_baseline(args, sentences[: args.serial])
        print(json.dumps(results["serial"]), flush=True)
    sentences = [s for s in sentences[: max(args.serial, args.ab)] if s]  # the server gets the same, in turn

    server = ServerProcess(args)
    try:
        server.wait_ready()
        import httpx

        languages = httpx.get(server.url + "languages").json()
        source, target = languages[0]["code"], languages[0]["targets"][0]
        asyncio.run(closed_loop(server.url, sentences, 4, 20, 60, source, target))  # warm-up
        if args.ab > 0:
            print(f"direct hub.translate and the server, alternating, on {args.ab} sentences ...", flush=True)
            results["direct_vs_server"] = direct_vs_server(args, server.url, sentences[: args.ab], source, target)
            print(json.dumps(results["direct_vs_server"]), flush=True)
        results["levels"] = []
        for concurrency in args.concurrency:
            level = asyncio.run(
                closed_loop(server.url, sentences, concurrency, args.requests, args.time_limit, source, target)
            )
            level["rss_mib"] = rss_mib(server.proc.pid)
            results["levels"].append(level)
            print(json.dumps(level), flush=True)
        if args.soak > 0:
            print(f"soak: concurrency 32 for {args.soak:g} s ...", flush=True)
            results["soak"] = asyncio.run(soak(server, sentences, args.soak, source, target))
            print(json.dumps(results["soak"]), flush=True)
        results["metrics_tail"] = [
            line
            for line in httpx.get(server.url + "metrics").text.splitlines()
            if line.startswith(("fconv_serve_batch_sentences_sum", "fconv_serve_batch_sentences_count"))
        ]
    finally:
        results["exit_status"] = server.stop()
    if args.overload > 0:
        print(f"over-load: {args.overload} clients, queue {args.overload_queue} ...", flush=True)
        results["overload"] = overload(args, sentences, source, target)
        print(json.dumps(results["overload"]), flush=True)

    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    if args.serial == 0:
        return 0
    serial = results["serial"]
    print("\n| concurrency | sentences/s | x serial | p50 ms | p95 ms | p99 ms | errors | lost | server RSS MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(
        f"| serial hub.translate | {serial['sentences_per_s']:.1f} | 1.00 | {serial['p50_ms']:.0f} | "
        f"{serial['p95_ms']:.0f} | {serial['p99_ms']:.0f} | 0 | 0 | |"
    )
    for level in results["levels"]:
        print(
            f"| {level['concurrency']} | {level['sentences_per_s']:.1f} | "
            f"{level['sentences_per_s'] / serial['sentences_per_s']:.2f} | {level['p50_ms']:.0f} | "
            f"{level['p95_ms']:.0f} | {level['p99_ms']:.0f} | {level['errors']} | {level['lost']} | "
            f"{level['rss_mib']:.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
