"""What a request may be, and what it is refused with: the limits, the body size guard, and the
parsing of ``POST /translate`` into a :class:`TranslateRequest`.

Every refusal is a :class:`RequestError` with an HTTP status and a message for the client, in
LibreTranslate's words where LibreTranslate has them ("Invalid request: missing q parameter",
"xx is not supported", ...).  Nothing here touches the model.
"""

import hmac
import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import parse_qs

from .markup import split_html, texts_to_translate


@dataclass(frozen=True)
class Limits:
    """The server's limits (command-line options of ``fconv-ext-serve``)."""

    max_body_bytes: int = 100_000  # bytes of one request body (413 beyond)
    max_chars: int = 5_000  # characters of all texts of one request together (400 beyond)
    max_sentences: int = 128  # sentences (non-empty lines of all texts) of one request (400 beyond)
    #: subword tokens of one sentence, EOS included; longer ones are cut with a warning (the model's
    #: source positions when None)
    max_sentence_tokens: Optional[int] = None
    max_alternatives: int = 4  # n-best beyond the best translation: beam - 1 at most
    queue_sentences: int = 1_024  # sentences waiting for a batch; 503 with Retry-After beyond
    timeout_s: float = 30.0  # per request, from accepted to answered (504 beyond)
    retry_after_s: int = 1  # what a 503 tells the client to wait


class RequestError(Exception):
    """A request refused: ``status`` and ``message`` go to the client as ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: Optional[Mapping[str, str]] = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


class BodyTooLarge(RequestError):
    def __init__(self, limit: int):
        super().__init__(413, f"Invalid request: the body is larger than this server's limit ({limit} bytes)")


class BodyLimitMiddleware:
    """ASGI middleware: a request body over ``limit`` bytes is refused with 413, whether it says
    its size (Content-Length, refused before it is read) or not (chunked: refused when the
    ``limit``-th byte arrives, as :class:`BodyTooLarge` from ``receive``)."""

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            error = BodyTooLarge(self.limit)
            body = json.dumps({"error": error.message}).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 413,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"connection", b"close"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return None
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        return await self.app(scope, limited_receive, send)


@dataclass
class TranslateRequest:
    """A parsed ``/translate`` (or ``/attention``) request."""

    texts: List[str]  # q as a list (one element when q was a string)
    batch: bool  # q was a list: the answer is a list too
    source: str
    target: str
    format: str = "text"  # or "html": the text nodes are translated (markup.py)
    alternatives: int = 0  # n-best beyond the best, per text
    api_key: Optional[str] = None
    auto: bool = False  # source was "auto"
    extra: Dict[str, Any] = field(default_factory=dict)  # other fields (the page's "hypothesis")


def decode_body(body: bytes, content_type: str) -> Dict[str, Any]:
    """The fields of a JSON or form-encoded body (LibreTranslate takes both).

    ``application/x-www-form-urlencoded`` (and a body without a content type) is read with the first
    value of each field, like LibreTranslate's ``request.values``."""
    media = content_type.split(";")[0].strip().lower()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RequestError(
            400, f"Invalid request: the body is not valid UTF-8 (byte 0x{body[err.start]:02x} at position {err.start})"
        ) from None
    if media == "application/json" or media.endswith("+json"):
        try:
            fields = json.loads(text)
        except json.JSONDecodeError as err:
            raise RequestError(400, f"Invalid JSON format: {err.msg} (line {err.lineno}, column {err.colno})") from None
        if not isinstance(fields, dict):
            raise RequestError(400, "Invalid JSON format: the body must be a JSON object")
        return fields
    if media in ("application/x-www-form-urlencoded", ""):
        try:
            values = parse_qs(text, keep_blank_values=True, encoding="utf-8", errors="strict")
        except UnicodeDecodeError:
            raise RequestError(400, "Invalid request: a form field is not valid UTF-8 once percent-decoded") from None
        return {name: vals[0] for name, vals in values.items()}
    raise RequestError(
        415,
        f"Invalid request: unsupported content type {media!r} (send application/json "
        "or application/x-www-form-urlencoded)",
    )


def _string_field(fields: Mapping[str, Any], name: str, required: bool = True) -> Optional[str]:
    value = fields.get(name)
    if value is None or value == "":
        if required:
            raise RequestError(400, f"Invalid request: missing {name} parameter")
        return None
    if not isinstance(value, str):
        raise RequestError(400, f"Invalid request: {name} must be a string, not {_json_type(value)}")
    return value


def _json_type(value: Any) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", list: "a list", dict: "an object"}.get(
        type(value), type(value).__name__
    )


def parse_translate(
    fields: Mapping[str, Any],
    limits: Limits,
    source_lang: str,
    target_lang: str,
) -> TranslateRequest:
    """Check the fields of a translation request against the model's languages and the limits."""
    q = fields.get("q")
    if q is None or q == "" or q == []:
        raise RequestError(400, "Invalid request: missing q parameter")
    batch = isinstance(q, list)
    texts = q if batch else [q]
    if not all(isinstance(t, str) for t in texts):
        raise RequestError(400, "Invalid request: q must be a string or a list of strings")
    source = _string_field(fields, "source")
    target = _string_field(fields, "target")
    auto = source == "auto"
    if not auto and source != source_lang:
        raise RequestError(400, f"{source} is not supported (this model translates {source_lang} to {target_lang})")
    if target != target_lang:
        raise RequestError(400, f"{target} is not supported (this model translates {source_lang} to {target_lang})")
    text_format = _string_field(fields, "format", required=False) or "text"
    if text_format not in ("text", "html"):
        raise RequestError(400, f"{text_format} format is not supported")
    alternatives = fields.get("alternatives", 0)
    if isinstance(alternatives, bool) or not isinstance(alternatives, (int, str)):
        raise RequestError(400, "Invalid request: alternatives parameter is not a number")
    try:
        alternatives = max(0, int(alternatives or 0))
    except ValueError:
        raise RequestError(400, "Invalid request: alternatives parameter is not a number") from None
    if alternatives > limits.max_alternatives:
        raise RequestError(400, f"Invalid request: alternatives parameter must be <= {limits.max_alternatives}")
    chars = sum(len(t) for t in texts)
    if chars > limits.max_chars:
        raise RequestError(400, f"Invalid request: request ({chars}) exceeds text limit ({limits.max_chars})")
    sentences = sum(
        len(split_lines(t)[1])
        for t in (
            texts if text_format == "text" else [node for t in texts for node in texts_to_translate(split_html(t))]
        )
    )
    if sentences > limits.max_sentences:
        raise RequestError(
            400, f"Invalid request: request ({sentences} sentences) exceeds sentence limit ({limits.max_sentences})"
        )
    return TranslateRequest(
        texts=list(texts),
        batch=batch,
        source=source_lang,
        target=target,
        format=text_format,
        alternatives=alternatives,
        api_key=_string_field(fields, "api_key", required=False),
        auto=auto,
    )


def split_lines(text: str) -> Tuple[List[str], List[int]]:
    """A text's lines (``\\r\\n`` and ``\\r`` read as ``\\n``) and the indices of those that hold
    words: each of these is translated as one sentence; empty lines stay empty."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return lines, [i for i, line in enumerate(lines) if line.strip()]


# ------------------------------------------------------------------------------ API keys


def read_api_keys(path: str) -> Tuple[str, ...]:
    """The keys of an API-key file: one per line; blank lines and ``#`` comments ignored."""
    with open(path, encoding="utf-8") as f:
        keys = tuple(line.strip() for line in f if line.strip() and not line.lstrip().startswith("#"))
    if not keys:
        raise ValueError(f"{path} holds no API key (one key per line)")
    return keys


def check_api_key(key: Optional[str], keys: Sequence[str]) -> None:
    """403 unless ``keys`` is empty (no keys required) or ``key`` is one of them (constant-time
    comparisons, so timing does not tell how much of a key is right)."""
    if not keys:
        return
    if key is None:
        raise RequestError(403, "Invalid API key: this server needs an api_key field")
    encoded = key.encode("utf-8")
    if not any(hmac.compare_digest(encoded, k.encode("utf-8")) for k in keys):
        raise RequestError(403, "Invalid API key")
