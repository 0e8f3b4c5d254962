"""fconv-ext-serve (fconv_plugin/server/): LibreTranslate's API on a live server, bad input, limits,
dynamic batching, faults, SIGTERM, and the page in a real browser.

Two kinds of server run here, each a real uvicorn on 127.0.0.1 in a thread of this process:

- with a stand-in translator (no model: it "translates" by reversing the words, and is slow or fails
  on command): the HTTP behaviour, limits and faults, in milliseconds;
- with a real model, ``protected_tiny`` (fconv_ext_tiny trained on the gettext slice, tokenizer
  ``moses_protected``): translations equal ``hub.translate``'s, alone or batched, through a real
  LibreTranslate client; the attention endpoint; the page in headless Chromium; an ONNX export of the
  model served through fconv_runtime.  These skip without ``../shared``.

The SIGTERM test runs ``python -m fconv_plugin.server.cli`` as its own process.
"""

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
from typing import List

import pytest
import torch

from helpers import REPO

starlette = pytest.importorskip("starlette", reason="pip install 'fconv-ext[serve]'")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from fconv_plugin.server import cli  # noqa: E402
from fconv_plugin.server.app import Server, build_app  # noqa: E402
from fconv_plugin.server.limits import Limits  # noqa: E402
from fconv_plugin.server.translator import ExportedTranslator, Hypothesis, Translator, merge_subwords  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


# ------------------------------------------------------------------------------ helpers


class LiveServer:
    """uvicorn serving ``app`` on a free port of 127.0.0.1, in a thread; ``url`` ends with "/"."""

    def __init__(self, app):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5)
        self.uvicorn = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.uvicorn.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()

    def wait_ready(self, timeout=120.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "health").status_code == 200:
                    return self
            except httpx.TransportError:
                pass  # not listening yet
            time.sleep(0.05)
        raise AssertionError(f"{self.url} not ready after {timeout} s")

    def stop(self):
        self.uvicorn.should_exit = True
        self.thread.join(30)


class FakeTranslator:
    """A stand-in model: the translation of a sentence is its words reversed (its n-best: that
    with 1, 2... exclamation marks); a sentence with the word "slow" takes 0.4 s, one with "wait"
    waits until ``gate`` is set, one with "poison" makes its batch raise.  Records the batches it
    decoded."""

    source_lang, target_lang, beam, has_attention = "en", "de", 3, False

    def __init__(self):
        self.vocab: List[str] = ["<pad>", "</s>"]
        self.batches: List[List[str]] = []
        self.gate = threading.Event()

    def languages(self):
        return [{"code": "en", "name": "English", "targets": ["de"]}, {"code": "de", "name": "German", "targets": []}]

    def encode(self, sentence):
        ids = []
        for word in sentence.split():
            if word not in self.vocab:
                self.vocab.append(word)
            ids.append(self.vocab.index(word))
        return torch.tensor(ids + [1]), False

    def decode_batch(self, sources):
        sentences = [" ".join(self.vocab[i] for i in s.tolist()[:-1]) for s in sources]
        self.batches.append(sentences)
        if any("poison" in s.split() for s in sentences):
            raise RuntimeError("the model failed on this batch")
        if any("slow" in s.split() for s in sentences):
            time.sleep(0.4)
        if any("wait" in s.split() for s in sentences):
            assert self.gate.wait(10)
        return [
            [Hypothesis(" ".join(reversed(s.split())) + "!" * n, s, -1.0 - n) for n in range(self.beam)]
            for s in sentences
        ]


def fake_server(api_keys=(), **limits) -> LiveServer:
    """A live server on a FakeTranslator (beam 3: alternatives up to 2), with these limits."""
    fake = FakeTranslator()
    server = Server(
        lambda: fake,
        limits=Limits(**{"max_alternatives": 2, **limits}),
        max_tokens=64,
        max_wait_ms=5,
        api_keys=api_keys,
    )
    live = LiveServer(build_app(server))
    live.fake, live.server = fake, server
    return live.wait_ready()


@pytest.fixture
def fake():
    live = fake_server(max_chars=200, max_sentences=4, max_body_bytes=2000)
    yield live
    live.stop()


def post(url, **kwargs):
    return httpx.post(url + "translate", timeout=30, **kwargs)


async def until(condition, timeout=10.0):
    """Wait (on the event loop) until ``condition()`` holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def hold_the_decoder(client, live, text="wait here"):
    """A request (of ``text``, with the word "wait") whose batch holds the decoding thread until
    ``live.fake.gate`` is set; its task."""
    blocker = asyncio.ensure_future(client.post("translate", json={"source": "en", "target": "de", "q": text}))
    await until(lambda: [text] in live.fake.batches)
    return blocker


# ------------------------------------------------------------------------------ the API, no model


def test_translate_json_and_form_with_libretranslates_shapes(fake):
    body = {"q": "cannot open file", "source": "en", "target": "de"}
    assert post(fake.url, json=body).json() == {"translatedText": "file open cannot"}
    assert post(fake.url, data=body).json() == {"translatedText": "file open cannot"}  # form-encoded
    listed = post(fake.url, json={**body, "q": ["a b", "c d"], "alternatives": 2}).json()
    assert listed == {"translatedText": ["b a", "d c"], "alternatives": [["b a!", "b a!!"], ["d c!", "d c!!"]]}
    lines = post(fake.url, json={**body, "q": "a b\n\nc d"}).json()  # lines translated one by one
    assert lines == {"translatedText": "b a\n\nd c"}
    markup = post(
        fake.url,
        json={
            **body,
            "format": "html",
            "alternatives": 1,
            "q": '<p title="a b">open the <b>big</b> file &amp; go</p><script>x y</script>',
        },
    )
    assert markup.json() == {
        "translatedText": '<p title="a b">the open <b>big</b> go &amp; file</p><script>x y</script>',
        "alternatives": [],
    }  # text nodes translated, markup kept; no alternatives for html
    auto = post(fake.url, json={**body, "source": "auto"}).json()
    assert auto["detectedLanguage"] == {"confidence": 0.0, "language": "en"}
    assert httpx.get(fake.url + "languages").json() == fake.fake.languages()


BAD_INPUT = [  # (what, request keyword arguments, status, message)
    (
        "invalid JSON",
        dict(content=b'{"q": ', headers={"content-type": "application/json"}),
        400,
        "Invalid JSON format: Expecting value (line 1, column 7)",
    ),
    ("JSON that is not an object", dict(json=["q"]), 400, "Invalid JSON format: the body must be a JSON object"),
    (
        "invalid UTF-8",
        dict(content=b'{"q": "\xff"}', headers={"content-type": "application/json"}),
        400,
        "Invalid request: the body is not valid UTF-8 (byte 0xff at position 7)",
    ),
    (
        "invalid UTF-8 in a form",
        dict(content=b"q=%ff&source=en&target=de", headers={"content-type": "application/x-www-form-urlencoded"}),
        400,
        "Invalid request: a form field is not valid UTF-8 once percent-decoded",
    ),
    ("missing q", dict(json={"source": "en", "target": "de"}), 400, "Invalid request: missing q parameter"),
    ("empty q list", dict(json={"q": [], "source": "en", "target": "de"}), 400, "Invalid request: missing q parameter"),
    ("missing source", dict(json={"q": "a", "target": "de"}), 400, "Invalid request: missing source parameter"),
    ("missing target", dict(json={"q": "a", "source": "en"}), 400, "Invalid request: missing target parameter"),
    (
        "q a number",
        dict(json={"q": 3, "source": "en", "target": "de"}),
        400,
        "Invalid request: q must be a string or a list of strings",
    ),
    (
        "q a list with a number",
        dict(json={"q": ["a", 3], "source": "en", "target": "de"}),
        400,
        "Invalid request: q must be a string or a list of strings",
    ),
    (
        "source a list",
        dict(json={"q": "a", "source": ["en"], "target": "de"}),
        400,
        "Invalid request: source must be a string, not a list",
    ),
    (
        "unknown source",
        dict(json={"q": "a", "source": "fr", "target": "de"}),
        400,
        "fr is not supported (this model translates en to de)",
    ),
    (
        "unknown target",
        dict(json={"q": "a", "source": "en", "target": "es"}),
        400,
        "es is not supported (this model translates en to de)",
    ),
    (
        "unknown format",
        dict(json={"q": "a", "source": "en", "target": "de", "format": "pdf"}),
        400,
        "pdf format is not supported",
    ),
    (
        "alternatives not a number",
        dict(json={"q": "a", "source": "en", "target": "de", "alternatives": "x"}),
        400,
        "Invalid request: alternatives parameter is not a number",
    ),
    (
        "too many alternatives",
        dict(json={"q": "a", "source": "en", "target": "de", "alternatives": 3}),
        400,
        "Invalid request: alternatives parameter must be <= 2",
    ),
    (
        "too many characters",
        dict(json={"q": "a" * 201, "source": "en", "target": "de"}),
        400,
        "Invalid request: request (201) exceeds text limit (200)",
    ),
    (
        "too many sentences",
        dict(json={"q": ["a", "b\nc", "d", "e"], "source": "en", "target": "de"}),
        400,
        "Invalid request: request (5 sentences) exceeds sentence limit (4)",
    ),
    (
        "too many html text nodes",
        dict(json={"q": "<p>a</p><p>b</p><p>c<i>d</i>e</p>", "source": "en", "target": "de", "format": "html"}),
        400,
        "Invalid request: request (5 sentences) exceeds sentence limit (4)",
    ),
    (
        "a body over the size limit",
        dict(content=b"q=" + b"a" * 2000, headers={"content-type": "text/plain"}),
        413,
        "Invalid request: the body is larger than this server's limit (2000 bytes)",
    ),
    (
        "a chunked body over the size limit",
        dict(content=iter([b"q=" + b"a" * 1500, b"b" * 1500])),
        413,
        "Invalid request: the body is larger than this server's limit (2000 bytes)",
    ),
    (
        "an unsupported content type",
        dict(content=b"x", headers={"content-type": "image/png"}),
        415,
        "Invalid request: unsupported content type 'image/png' (send application/json or "
        "application/x-www-form-urlencoded)",
    ),
]


def test_bad_input_gets_its_status_and_message(fake):
    for what, request, status, message in BAD_INPUT:
        response = post(fake.url, **request)
        assert (response.status_code, response.json()) == (status, {"error": message}), what
    assert httpx.get(fake.url + "nowhere").json() == {"error": "Not Found"}
    assert httpx.get(fake.url + "translate").status_code == 405
    assert post(fake.url, json={"q": "still fine", "source": "en", "target": "de"}).status_code == 200


def test_api_keys(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# one per line\nsecret-1\n\nsecret-2\n")
    live = fake_server(api_keys=cli.read_api_keys(str(keys)))
    body = {"q": "a b", "source": "en", "target": "de"}
    try:
        assert (post(live.url, json=body).status_code, post(live.url, json=body).json()) == (
            403,
            {"error": "Invalid API key: this server needs an api_key field"},
        )
        wrong = post(live.url, json={**body, "api_key": "secret-3"})
        assert (wrong.status_code, wrong.json()) == (403, {"error": "Invalid API key"})
        assert post(live.url, data={**body, "api_key": "secret-2"}).json() == {"translatedText": "b a"}
        assert httpx.get(live.url + "frontend/settings").json()["apiKeys"] is True
    finally:
        live.stop()


def test_binds_127_0_0_1_unless_told():
    args = cli.parser().parse_args(["model.pt", "--data", "bin"])
    assert (args.host, args.port, args.cors_origin) == ("127.0.0.1", 5000, [])


def test_cross_origin_calls_only_from_the_origins_given():
    server = Server(FakeTranslator, limits=Limits(), max_tokens=64, max_wait_ms=5)
    live = LiveServer(build_app(server, cors_origins=["https://a.example"])).wait_ready()
    preflight = {
        "Origin": "https://a.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }
    try:
        allowed = httpx.options(live.url + "translate", headers=preflight)
        assert allowed.headers["access-control-allow-origin"] == "https://a.example"
        other = httpx.options(live.url + "translate", headers={**preflight, "Origin": "https://b.example"})
        assert "access-control-allow-origin" not in other.headers
    finally:
        live.stop()


def test_a_full_queue_answers_503_with_retry_after():
    live = fake_server(queue_sentences=2)
    body = {"source": "en", "target": "de"}

    async def run():
        async with httpx.AsyncClient(base_url=live.url, timeout=30) as client:
            blocker = asyncio.ensure_future(client.post("translate", json={**body, "q": "slow one"}))
            await asyncio.sleep(0.15)  # the decoding thread is busy with it
            queued = asyncio.ensure_future(client.post("translate", json={**body, "q": ["a", "b"]}))
            await asyncio.sleep(0.05)  # two sentences queued: the queue is full
            refused = await client.post("translate", json={**body, "q": "c"})
            return await blocker, await queued, refused

    try:
        blocker, queued, refused = asyncio.run(run())
        assert (blocker.status_code, queued.json()) == (200, {"translatedText": ["a", "b"]})
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert refused.json()["error"].startswith("Slowdown: the server is busy (2 sentences queued, limit 2)")
        assert httpx.get(live.url + "health").json() == {"status": "ready"}
    finally:
        live.stop()


def test_a_request_over_its_timeout_gets_504_and_its_sentences_are_dropped():
    live = fake_server(timeout_s=0.2)
    body = {"source": "en", "target": "de"}

    async def run():
        async with httpx.AsyncClient(base_url=live.url, timeout=30) as client:
            blocker = asyncio.ensure_future(client.post("translate", json={**body, "q": "slow slow"}))
            await asyncio.sleep(0.05)
            late = await client.post("translate", json={**body, "q": "never decoded"})
            return await blocker, late

    try:
        blocker, late = asyncio.run(run())
        assert blocker.status_code == 504  # 0.4 s of decoding > 0.2 s
        assert (late.status_code, late.json()) == (
            504,
            {"error": "Cannot translate text: no answer within this server's timeout (0.2 s)"},
        )
        time.sleep(0.5)
        assert all("never decoded" not in batch for batch in live.fake.batches)
    finally:
        live.stop()


def test_a_decoding_error_fails_only_its_own_request():
    live = fake_server()
    body = {"source": "en", "target": "de"}

    async def run():
        async with httpx.AsyncClient(base_url=live.url, timeout=30) as client:
            blocker = await hold_the_decoder(client, live)
            batch = [
                asyncio.ensure_future(client.post("translate", json={**body, "q": q}))
                for q in ("good one", "poison pill", "good two")
            ]
            await until(lambda: live.server.batcher.queued() == 3)  # the three make one batch
            live.fake.gate.set()
            return [await blocker] + list(await asyncio.gather(*batch))

    try:
        blocker, good1, bad, good2 = asyncio.run(run())
        # decoded together first (in the order the concurrent requests reached the queue)
        assert any(sorted(b) == ["good one", "good two", "poison pill"] for b in live.fake.batches)
        assert (good1.json(), good2.json()) == ({"translatedText": "one good"}, {"translatedText": "two good"})
        assert bad.status_code == 500
        assert bad.json() == {"error": "Cannot translate text: decoding failed (the server log has the details)"}
        assert "Traceback" not in bad.text
        metrics = httpx.get(live.url + "metrics").text
        assert "fconv_serve_decode_errors_total 1.0" in metrics
    finally:
        live.stop()


def _raw_post(port: int, body: dict) -> socket.socket:
    """A POST /translate sent on a raw socket (the caller closes it to disconnect)."""
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        b"POST /translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(data), data)
    )
    return sock


def test_a_client_that_disconnects_does_not_stall_or_poison_its_batch():
    live = fake_server()
    body = {"source": "en", "target": "de"}
    together = {"slow gone while decoding", "slow neighbour"}  # one batch, in the order they arrive
    try:

        async def run():
            async with httpx.AsyncClient(base_url=live.url, timeout=30) as client:
                # 1. disconnects while queued: its sentence is never decoded
                blocker = await hold_the_decoder(client, live)
                gone = _raw_post(live.port, {**body, "q": "gone while queued"})
                stays = asyncio.ensure_future(client.post("translate", json={**body, "q": "stays here"}))
                await until(lambda: live.server.batcher.queued() == 2)
                gone.close()
                await until(lambda: live.server.batcher.queued() == 1)  # dropped from the queue
                live.fake.gate.set()
                await blocker
                # 2. disconnects while its batch decodes: the others of the batch get their answers
                live.fake.gate.clear()
                blocker = await hold_the_decoder(client, live, "wait again")
                gone = _raw_post(live.port, {**body, "q": "slow gone while decoding"})
                neighbour = asyncio.ensure_future(client.post("translate", json={**body, "q": "slow neighbour"}))
                await until(lambda: live.server.batcher.queued() == 2)
                live.fake.gate.set()
                await until(lambda: together in map(set, live.fake.batches))
                gone.close()  # while the batch decodes (0.4 s)
                return await blocker, await stays, await neighbour

        blocker, stays, neighbour = asyncio.run(run())
        assert blocker.json() == {"translatedText": "again wait"}
        assert stays.json() == {"translatedText": "here stays"}
        assert neighbour.json() == {"translatedText": "neighbour slow"}
        assert all("gone while queued" not in batch for batch in live.fake.batches)
        assert together in map(set, live.fake.batches)
        assert "fconv_serve_client_disconnects_total 2.0" in httpx.get(live.url + "metrics").text
        assert post(live.url, json={**body, "q": "x y"}).json() == {"translatedText": "y x"}
    finally:
        live.stop()


def test_health_says_loading_until_the_model_is_loaded_and_metrics_are_prometheus_text():
    loaded = threading.Event()

    def load():
        loaded.wait(10)
        return FakeTranslator()

    server = Server(load, limits=Limits(), max_tokens=64, max_wait_ms=5)
    live = LiveServer(build_app(server))
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                health = httpx.get(live.url + "health")
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert (health.status_code, health.json()) == (503, {"status": "loading"})
        early = post(live.url, json={"q": "a", "source": "en", "target": "de"})
        assert (early.status_code, early.json()) == (503, {"error": "the model is still loading"})
        loaded.set()
        live.wait_ready(10)
        post(live.url, json={"q": "a b", "source": "en", "target": "de"})
        metrics = httpx.get(live.url + "metrics")
        assert metrics.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        for line in [
            'fconv_serve_requests_total{endpoint="/translate",status="200"} 1.0',
            'fconv_serve_requests_total{endpoint="/translate",status="503"} 1.0',
            "fconv_serve_batch_sentences_count 1.0",
            "fconv_serve_queue_sentences 0.0",
            "fconv_serve_sentences_total 1.0",
            "fconv_serve_ready 1.0",
            'fconv_serve_request_seconds_bucket{endpoint="/translate",le="+Inf"} 2.0',
        ]:
            assert line in metrics.text, line
        assert "fconv_serve_sentences_per_second 0.1" in metrics.text  # 1 sentence in the last 10 s
        assert "process_resident_memory_bytes" in metrics.text
    finally:
        loaded.set()
        live.stop()


def test_merge_subwords():
    assert merge_subwords(["Cann@@", "ot", "open", "fi@@", "l@@", "e", "</s>"]) == (
        ["Cannot", "open", "file", "</s>"],
        [[0, 1], [2], [3, 4, 5], [6]],
    )


# ------------------------------------------------------------------------------ a real model


@pytest.fixture(scope="module")
def model_server(protected_tiny):
    """A live server on protected_tiny (moses_protected, BPE), beam 5, and the same model's hub."""
    save, data, codes = protected_tiny
    options = dict(
        source_lang="en", target_lang="de", tokenizer="moses_protected", bpe="subword_nmt", bpe_codes=str(codes)
    )
    server = Server(
        lambda: Translator.load(str(save / "checkpoint_last.pt"), str(data), beam=5, **options),
        limits=Limits(max_alternatives=4),
        max_tokens=4096,
        max_wait_ms=20,
    )
    live = LiveServer(build_app(server))
    from fconv_plugin.models import FConvExtModel

    hub = FConvExtModel.from_pretrained(
        str(save), checkpoint_file="checkpoint_last.pt", data_name_or_path=str(data), **options
    )
    live.wait_ready()
    live.server, live.hub = server, hub
    yield live
    live.stop()


@pytest.fixture(scope="module")
def test_sentences(shared_gettext):
    with open(os.path.join(shared_gettext, "test.en"), encoding="utf-8") as f:
        return [next(f).rstrip("\n") for _ in range(16)]


def test_a_libretranslate_client_gets_the_hubs_translations(model_server, test_sentences):
    from libretranslatepy import LibreTranslateAPI

    client = LibreTranslateAPI(model_server.url)
    assert client.languages() == [
        {"code": "en", "name": "English", "targets": ["de"]},
        {"code": "de", "name": "German", "targets": []},
    ]
    sentence = "Cannot open file %s"
    assert client.translate(sentence, "en", "de") == model_server.hub.translate(sentence, beam=5)
    assert client.translate(test_sentences[0], "en", "de") == model_server.hub.translate(test_sentences[0], beam=5)
    with pytest.raises(urllib.error.HTTPError) as refused:
        client.translate("a", "en", "fr")
    assert (refused.value.code, json.loads(refused.value.read())) == (
        400,
        {"error": "fr is not supported (this model translates en to de)"},
    )


def test_a_sentence_gets_the_same_translation_alone_or_batched(model_server, test_sentences):
    """Each request alone (batch of 1), then all at once: batches of several requests' sentences;
    both equal hub.translate one sentence at a time."""
    expected = [model_server.hub.translate(s, beam=5) for s in test_sentences]
    body = {"source": "en", "target": "de"}
    alone = [post(model_server.url, json={**body, "q": s}).json()["translatedText"] for s in test_sentences]
    registry = model_server.server.metrics.registry

    def decoded():  # (sentences, batches) so far
        return (
            registry.get_sample_value("fconv_serve_batch_sentences_sum"),
            registry.get_sample_value("fconv_serve_batch_sentences_count"),
        )

    before = decoded()

    async def all_at_once():
        async with httpx.AsyncClient(base_url=model_server.url, timeout=60) as client:
            return await asyncio.gather(*[client.post("translate", json={**body, "q": s}) for s in test_sentences])

    together = [r.json()["translatedText"] for r in asyncio.run(all_at_once())]
    sentences, batches = (after - b for after, b in zip(decoded(), before))
    assert sentences == len(test_sentences) and batches < len(test_sentences) / 2, (sentences, batches)
    assert alone == expected
    assert together == expected
    listed = post(model_server.url, json={**body, "q": test_sentences[:5], "alternatives": 2}).json()
    assert listed["translatedText"] == expected[:5]
    assert all(len(alts) <= 2 and expected[i] not in alts for i, alts in enumerate(listed["alternatives"]))


def test_the_attention_endpoint_gives_each_layers_attention(model_server):
    body = {"q": "Cannot open file %s", "source": "en", "target": "de"}
    data = httpx.post(model_server.url + "attention", json=body, timeout=30).json()
    assert data["translatedText"] == model_server.hub.translate(body["q"], beam=5)
    assert data["hypotheses"][0] == data["translatedText"] and len(data["hypotheses"]) == 5
    assert "%s" in data["source"] and data["source"][-1] == "</s>"  # moses_protected: one word
    assert [m["layer"] for m in data["layers"]] == [1, 2]  # fconv_ext_tiny: 2 decoder layers, both attend
    for layer in data["layers"]:
        weights = torch.tensor(layer["weights"])  # target words x source words
        assert weights.shape == (len(data["target"]), len(data["source"]))
        assert torch.allclose(weights.sum(1), torch.ones(len(data["target"])), atol=1e-3)
    other = httpx.post(model_server.url + "attention", json={**body, "hypothesis": 2}, timeout=30).json()
    assert other["translatedText"] == data["hypotheses"][2]
    refused = httpx.post(model_server.url + "attention", json={**body, "q": "a\nb"}, timeout=30)
    assert refused.json() == {"error": "Invalid request: attention is shown for one sentence (one line of text)"}


@pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium on this machine (Debian: apt-get install chromium; .ci/run installs it)"
)
def test_the_page_draws_a_heatmap_per_layer_in_a_real_browser(model_server, tmp_path_factory):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    artifacts = os.environ.get("FCONV_EXT_TEST_ARTIFACTS") or str(tmp_path_factory.mktemp("artifacts"))
    os.makedirs(artifacts, exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            errors: List[str] = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(model_server.url)
            page.wait_for_selector("body[data-ready='1']", timeout=20_000)
            assert page.inner_text("#pair") == "English \u2192 German"
            page.fill("#source", "Cannot open file %s")
            page.click("#translate")
            page.wait_for_selector("body[data-drawn='2']", timeout=30_000)
            assert page.inner_text("#output") == model_server.hub.translate("Cannot open file %s", beam=5)
            assert page.locator("#nbest li").count() == 5
            # each canvas has cells of more than one colour: a heatmap, not a blank
            colours = page.evaluate("""() => [...document.querySelectorAll('canvas.heatmap')].map((c) => {
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data, seen = new Set();
                for (let i = 0; i < d.length; i += 4) seen.add(d[i] << 16 | d[i + 1] << 8 | d[i + 2]);
                return seen.size; })""")
            assert len(colours) == 2 and min(colours) > 10, colours
            page.screenshot(path=os.path.join(artifacts, "server_page.png"), full_page=True)
            page.click("#nbest li:nth-child(3)")  # another hypothesis: its own attention
            page.wait_for_function(
                "document.querySelector('#nbest li.chosen') === document.querySelector('#nbest li:nth-child(3)')",
                timeout=30_000,
            )
            assert not errors, errors
        finally:
            browser.close()
    assert os.path.getsize(os.path.join(artifacts, "server_page.png")) > 10_000


def test_an_exported_model_is_served_through_fconv_runtime(protected_tiny, test_sentences, tmp_path_factory):
    """A directory written by fconv-ext-export (ONNX): the server's translations, batched, are
    fconv_runtime's; the page's attention is refused with a message."""
    pytest.importorskip("onnxruntime", reason="pip install 'fconv-ext[export]'")
    from fconv_plugin.serving.export import export
    from fconv_runtime import Translator as Runtime

    save, data, codes = protected_tiny
    out = tmp_path_factory.mktemp("served_export") / "onnx"
    export(
        str(save / "checkpoint_last.pt"),
        str(out),
        "onnx",
        data=str(data),
        bpe_codes=str(codes),
        tokenizer="moses",
        source_lang="en",
        target_lang="de",
    )
    expected = Runtime(str(out)).translate(test_sentences[:8], beam=5)
    server = Server(
        lambda: ExportedTranslator(str(out), beam=5), limits=Limits(max_alternatives=4), max_tokens=4096, max_wait_ms=20
    )
    live = LiveServer(build_app(server)).wait_ready()
    body = {"source": "en", "target": "de"}

    async def together():
        async with httpx.AsyncClient(base_url=live.url, timeout=60) as client:
            return await asyncio.gather(*[client.post("translate", json={**body, "q": s}) for s in test_sentences[:8]])

    try:
        assert [r.json()["translatedText"] for r in asyncio.run(together())] == expected
        assert httpx.get(live.url + "languages").json()[0] == {"code": "en", "name": "English", "targets": ["de"]}
        refused = httpx.post(live.url + "attention", json={**body, "q": "a"})
        assert (refused.status_code, refused.json()) == (
            501,
            {"error": "attention is not available for an exported model: serve its PyTorch checkpoint to see it"},
        )
    finally:
        live.stop()


# ------------------------------------------------------------------------------ SIGTERM, its own process


def test_sigterm_under_load_answers_every_accepted_request_and_exits_0(protected_tiny, test_sentences):
    save, data, codes = protected_tiny
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fconv_plugin.server.cli",
            str(save / "checkpoint_last.pt"),
            "--data",
            str(data),
            "--tokenizer",
            "moses_protected",
            "--bpe",
            "subword_nmt",
            "--bpe-codes",
            str(codes),
            "--port",
            str(port),
            "--threads",
            "1",
            "--max-tokens",
            "256",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(url + "health").status_code == 200:
                    break
            except httpx.TransportError:
                pass  # still starting
            assert time.monotonic() < deadline, "the server did not get ready"
            time.sleep(0.2)
        body = {"source": "en", "target": "de", "q": test_sentences[:3]}

        async def load_then_sigterm():
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                requests = [asyncio.ensure_future(client.post("translate", json=body)) for _ in range(8)]
                while True:  # every request accepted (the server counts it in flight)
                    metrics = (await client.get("metrics")).text
                    if "fconv_serve_requests_in_flight 8.0" in metrics:
                        break
                    await asyncio.sleep(0.02)
                proc.send_signal(signal.SIGTERM)
                sent = time.monotonic()
                responses = await asyncio.gather(*requests)
                return responses, sent, time.monotonic()

        responses, sent, answered = asyncio.run(load_then_sigterm())
        assert [r.status_code for r in responses] == [200] * 8
        assert all(len(r.json()["translatedText"]) == 3 for r in responses)
        assert answered > sent + 0.05  # some answers came after the signal: they were in flight
        assert proc.wait(60) == 0
        log = proc.stdout.read()
        assert "stopped by SIGTERM after answering the requests in flight" in log
        assert "Traceback" not in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_wrong_checkpoint_or_data_path_stops_before_the_server_starts(tmp_path):
    from fconv_plugin.server.cli import main

    with pytest.raises(SystemExit, match="no checkpoint file or directory"):
        main([str(tmp_path / "missing.pt"), "--data", str(tmp_path)])
    (tmp_path / "model.pt").write_bytes(b"")
    with pytest.raises(SystemExit, match="is not a directory"):
        main([str(tmp_path / "model.pt"), "--data", str(tmp_path / "no-data")])
