"""The ASGI app (Starlette): LibreTranslate's API on an fconv_ext model, the page, health, metrics.

    POST /translate          LibreTranslate's: q (string or list), source, target, format (text, or html:
                             markup.py), alternatives, api_key; JSON or form-encoded;
                             {"translatedText": ...} or {"error": ...}
    GET  /languages          LibreTranslate's: [{"code", "name", "targets"}]
    GET  /frontend/settings  LibreTranslate's (what the page reads: languages, limits, whether keys are needed)
    POST /attention          the page's: one sentence's translation, n-best, and each decoder layer's attention
    GET  /                   the page (page.py)
    GET  /health             200 {"status": "ready"} once the model is loaded, 503 {"status": "loading"} before
    GET  /metrics            Prometheus text format (metrics.py)

The model loads on the decoding thread after the server starts, so /health answers at once.  A
request's sentences go through the batcher (batcher.py); the request waits for them with its
timeout, and gives them up if its client disconnects.  Every error reaches the client as
``{"error": message}`` with its status; an unexpected exception is logged with its traceback and
reaches the client as a 500 without it.
"""

import asyncio
import contextlib
import logging
import time
from typing import Any, Awaitable, Callable, Dict, List, Optional, Sequence

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from . import page
from .markup import join_html, split_html, texts_to_translate
from .batcher import Batcher
from .limits import BodyLimitMiddleware, Limits, RequestError, check_api_key, decode_body, parse_translate, split_lines
from .metrics import Metrics
from .translator import Hypothesis, Translator

logger = logging.getLogger(__name__)


class Server:
    """What the routes share: the translator (once loaded), the batcher, limits, keys, metrics."""

    def __init__(
        self,
        load: Callable[[], Translator],
        *,
        limits: Limits,
        max_tokens: int,
        max_wait_ms: float,
        api_keys: Sequence[str] = (),
    ):
        self.load = load
        self.limits = limits
        self.api_keys = tuple(api_keys)
        self.metrics = Metrics()
        self.translator: Optional[Translator] = None
        self.load_error: Optional[str] = None
        self.batcher = Batcher(
            self._decode,
            max_tokens=max_tokens,
            max_wait_ms=max_wait_ms,
            queue_sentences=limits.queue_sentences,
            retry_after_s=limits.retry_after_s,
            metrics=self.metrics,
        )

    def _decode(self, sources):
        assert self.translator is not None
        return self.translator.decode_batch(sources)

    async def load_model(self) -> None:
        """Load the model on the decoding thread; /health says ready afterwards."""
        try:
            self.translator = await self.batcher.call(self.load)
        except Exception as err:  # reported by /health and the log; the server stays up
            logger.exception("the model could not be loaded")
            self.load_error = f"{type(err).__name__}: {err}"
            return
        self.metrics.ready.set(1)
        logger.info(
            "model loaded: %s -> %s, beam %d",
            self.translator.source_lang,
            self.translator.target_lang,
            self.translator.beam,
        )

    def ready_translator(self) -> Translator:
        if self.translator is None:
            raise RequestError(
                503,
                "the model is still loading"
                if self.load_error is None
                else "the model could not be loaded (the server log says why)",
                headers={"Retry-After": str(self.limits.retry_after_s)},
            )
        return self.translator

    async def read_request(self, request: Request) -> Dict[str, Any]:
        return decode_body(await request.body(), request.headers.get("content-type", ""))

    async def translate_texts(self, request: Request, texts: List[str]) -> List[List[List[Hypothesis]]]:
        """For each text, for each of its lines, the n-best list (an empty list for an empty line);
        all sentences of all texts go to the batcher together."""
        translator = self.ready_translator()
        layout = [split_lines(text) for text in texts]
        sources = []
        for lines, sentence_lines in layout:
            for i in sentence_lines:
                tokens, cut = translator.encode(lines[i])
                if cut:
                    self.metrics.truncated.inc()
                sources.append(tokens)
        answers = iter(await self.until_done(request, self.batcher.translate(sources)))
        per_text = []
        for lines, sentence_lines in layout:
            translated = set(sentence_lines)
            per_text.append([next(answers) if i in translated else [] for i in range(len(lines))])
        return per_text

    async def until_done(self, request: Request, work: Awaitable[Any]) -> Any:
        """``work``'s result, unless the request's timeout (counted from its arrival) passes first
        (504) or its client disconnects; either way the work is cancelled (its queued sentences are
        dropped)."""
        arrived = getattr(request.state, "arrived", time.perf_counter())
        task = asyncio.ensure_future(work)
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            done, _ = await asyncio.wait(
                {task, gone},
                timeout=max(0.0, arrived + self.limits.timeout_s - time.perf_counter()),
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            gone.cancel()
        if task in done:
            return task.result()
        task.cancel()
        if gone in done:
            self.metrics.disconnects.inc()
            raise RequestError(499, "the client closed the request")  # nobody reads it; logged as 499
        raise RequestError(
            504, f"Cannot translate text: no answer within this server's timeout ({self.limits.timeout_s:g} s)"
        )


async def _disconnected(request: Request) -> None:
    """Returns when the client disconnects (after the body has been read, ASGI's receive yields
    ``http.disconnect`` only then)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _join(lines: List[List[Hypothesis]], n: int) -> str:
    """The ``n``-th hypothesis of each line (the best when a line has fewer), lines joined by ``\\n``."""
    return "\n".join(hyps[min(n, len(hyps) - 1)].text if hyps else "" for hyps in lines)


def _alternatives(lines: List[List[Hypothesis]], best: str, count: int) -> List[str]:
    """Up to ``count`` other translations of a text, distinct from the best and from each other
    (LibreTranslate's): the n-th alternative takes each line's (n+1)-th hypothesis."""
    out: List[str] = []
    depth = max((len(h) for h in lines), default=1)
    for n in range(1, depth):
        text = _join(lines, n)
        if text != best and text not in out:
            out.append(text)
        if len(out) == count:
            break
    return out


def build_app(server: Server, cors_origins: Sequence[str] = ()) -> Starlette:
    """The app; ``cors_origins``: web origins whose pages may call the API from a browser (``*``: any,
    as LibreTranslate allows; none by default)."""
    limits = server.limits
    metrics = server.metrics

    def endpoint(name: str, handler: Callable[[Request], Awaitable[Response]]):
        """``handler`` with the request counted, timed, and its errors answered as JSON."""

        async def run(request: Request) -> Response:
            start = request.state.arrived = time.perf_counter()
            metrics.in_flight.inc()
            try:
                response = await handler(request)
            except RequestError as err:
                response = JSONResponse({"error": err.message}, status_code=err.status, headers=err.headers)
            except Exception:  # the traceback goes to the log, never to the client
                logger.exception("%s %s failed", request.method, request.url.path)
                response = JSONResponse(
                    {"error": "Cannot translate text: internal server error (the server log has the details)"},
                    status_code=500,
                )
            finally:
                metrics.in_flight.dec()
            metrics.requests.labels(name, str(response.status_code)).inc()
            metrics.latency.labels(name).observe(time.perf_counter() - start)
            return response

        return run

    async def translate(request: Request) -> Response:
        fields = await server.read_request(request)
        check_api_key(fields.get("api_key") if isinstance(fields.get("api_key"), str) else None, server.api_keys)
        translator = server.ready_translator()
        req = parse_translate(fields, limits, translator.source_lang, translator.target_lang)
        if req.format == "html":  # the text nodes are translated, the markup is kept; no alternatives
            pieces = [split_html(text) for text in req.texts]
            nodes = [texts_to_translate(p) for p in pieces]
            per_node = iter(await server.translate_texts(request, [node for ns in nodes for node in ns]))
            best = [join_html(p, [_join(next(per_node), 0) for _ in ns]) for p, ns in zip(pieces, nodes)]
            alts: List[List[str]] = [[] for _ in best]
        else:
            per_text = await server.translate_texts(request, req.texts)
            best = [_join(lines, 0) for lines in per_text]
            alts = [_alternatives(lines, b, req.alternatives) for lines, b in zip(per_text, best)]
        result: Dict[str, Any] = {"translatedText": best if req.batch else best[0]}
        if req.alternatives > 0:
            result["alternatives"] = alts if req.batch else alts[0]
        if req.auto:  # one source language: not detected, the model's
            detected = {"confidence": 0.0, "language": translator.source_lang}
            result["detectedLanguage"] = [detected] * len(best) if req.batch else detected
        return JSONResponse(result)

    async def attention(request: Request) -> Response:
        fields = await server.read_request(request)
        check_api_key(fields.get("api_key") if isinstance(fields.get("api_key"), str) else None, server.api_keys)
        translator = server.ready_translator()
        if not translator.has_attention:
            raise RequestError(
                501, "attention is not available for an exported model: serve its PyTorch checkpoint to see it"
            )
        fields = {
            "source": translator.source_lang,
            "target": translator.target_lang,
            "alternatives": limits.max_alternatives,
            **fields,
        }
        req = parse_translate(fields, limits, translator.source_lang, translator.target_lang)
        if req.batch or len(split_lines(req.texts[0])[1]) != 1:
            raise RequestError(400, "Invalid request: attention is shown for one sentence (one line of text)")
        choice = fields.get("hypothesis", 0)
        if isinstance(choice, bool) or not isinstance(choice, int) or not 0 <= choice <= req.alternatives:
            raise RequestError(400, f"Invalid request: hypothesis must be a number from 0 to {req.alternatives}")
        sentence = req.texts[0].strip()
        source, _ = translator.encode(sentence)
        (nbest,) = await server.until_done(request, server.batcher.translate([source]))
        chosen = nbest[min(choice, len(nbest) - 1)]
        maps = await server.until_done(request, server.batcher.call(translator.layer_attention, source, chosen.tokens))
        return JSONResponse(
            {
                "translatedText": chosen.text,
                "hypothesis": choice,
                "hypotheses": [h.text for h in nbest[: req.alternatives + 1]],
                **maps,
            }
        )

    async def languages(request: Request) -> Response:
        return JSONResponse(server.ready_translator().languages())

    async def settings(request: Request) -> Response:
        translator = server.ready_translator()
        names = {entry["code"]: entry["name"] for entry in translator.languages()}
        return JSONResponse(
            {
                "charLimit": limits.max_chars,
                "frontendTimeout": int(limits.timeout_s * 1000),
                "apiKeys": bool(server.api_keys),
                "keyRequired": bool(server.api_keys),
                "suggestions": False,
                "filesTranslation": False,
                "supportedFilesFormat": [],
                "maxAlternatives": limits.max_alternatives,
                "attention": translator.has_attention,
                "language": {
                    "source": {"code": translator.source_lang, "name": names[translator.source_lang]},
                    "target": {"code": translator.target_lang, "name": names[translator.target_lang]},
                },
            }
        )

    async def health(request: Request) -> Response:
        if not server.batcher.alive():
            return JSONResponse({"status": "failed", "error": "the batcher has stopped"}, status_code=503)
        if server.translator is not None:
            return JSONResponse({"status": "ready"})
        if server.load_error is not None:
            return JSONResponse({"status": "failed", "error": "the model could not be loaded"}, status_code=503)
        return JSONResponse({"status": "loading"}, status_code=503)

    async def metrics_page(request: Request) -> Response:
        body, content_type = metrics.render(request.headers.get("accept"))
        return Response(body, headers={"Content-Type": content_type})

    async def index(request: Request) -> Response:
        return HTMLResponse(page.html())

    async def http_error(request: Request, exc: HTTPException) -> Response:
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        server.batcher.start()
        loading = asyncio.get_running_loop().create_task(server.load_model())
        yield
        await loading
        await server.batcher.stop()

    routes = [
        Route("/translate", endpoint("/translate", translate), methods=["POST"]),
        Route("/attention", endpoint("/attention", attention), methods=["POST"]),
        Route("/languages", endpoint("/languages", languages), methods=["GET", "POST"]),
        Route("/frontend/settings", endpoint("/frontend/settings", settings), methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics_page, methods=["GET"]),
        Route("/", index, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error})
    app.add_middleware(BodyLimitMiddleware, limit=limits.max_body_bytes)
    if cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
            max_age=86400,
        )
    app.state.server = server
    return app
