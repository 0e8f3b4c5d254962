"""The server's Prometheus metrics (``GET /metrics``, prometheus_client's text format).

One registry per server (not prometheus_client's global one), so that several servers in one
process (the tests) count apart.  Names start with ``fconv_serve_``; the process collector adds
``process_resident_memory_bytes`` and the other ``process_*`` metrics.
"""

import threading
import time
from collections import deque
from typing import Deque, Optional, Tuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.exposition import choose_encoder

#: request latency buckets, seconds
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
#: sentences per decoded batch
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class RecentRate:
    """Events per second over the last ``window_s`` seconds (thread-safe: the decoding thread adds,
    the event loop reads)."""

    def __init__(self, window_s: float = 10.0):
        self.window_s = window_s
        self._events: Deque[Tuple[float, int]] = deque()  # (monotonic time, count)
        self._lock = threading.Lock()

    def add(self, count: int) -> None:
        with self._lock:
            self._events.append((time.monotonic(), count))

    def per_second(self) -> float:
        now = time.monotonic()
        with self._lock:
            while self._events and self._events[0][0] < now - self.window_s:
                self._events.popleft()
            return sum(n for _, n in self._events) / self.window_s


class Metrics:
    """Counters, gauges and histograms the app and the batcher update."""

    def __init__(self):
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        r = self.registry
        self.requests = Counter(
            "fconv_serve_requests", "HTTP requests answered, by endpoint and status", ["endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "fconv_serve_request_seconds",
            "Time from a request's arrival to its answer",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("fconv_serve_requests_in_flight", "Requests being answered", registry=r)
        self.queue_depth = Gauge("fconv_serve_queue_sentences", "Sentences waiting for a batch", registry=r)
        self.batch_sentences = Histogram(
            "fconv_serve_batch_sentences", "Sentences per decoded batch", buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            "fconv_serve_batch_seconds", "Decoding time of a batch", buckets=LATENCY_BUCKETS, registry=r
        )
        self.sentences = Counter("fconv_serve_sentences", "Sentences translated", registry=r)
        self.recent = RecentRate()
        Gauge(
            "fconv_serve_sentences_per_second",
            f"Sentences translated per second over the last {self.recent.window_s:g} s",
            registry=r,
        ).set_function(self.recent.per_second)
        self.truncated = Counter(
            "fconv_serve_truncated_sentences", "Sentences cut to the token limit before translation", registry=r
        )
        self.rejected = Counter(
            "fconv_serve_rejected_sentences", "Sentences refused because the queue was full", registry=r
        )
        self.disconnects = Counter(
            "fconv_serve_client_disconnects", "Requests whose client went away before the answer", registry=r
        )
        self.decode_errors = Counter("fconv_serve_decode_errors", "Sentences whose decoding failed", registry=r)
        self.ready = Gauge("fconv_serve_ready", "1 once the model is loaded", registry=r)

    def translated(self, sentences: int, seconds: float) -> None:
        """A batch of ``sentences`` decoded in ``seconds`` (called from the decoding thread)."""
        self.batch_sentences.observe(sentences)
        self.batch_seconds.observe(seconds)
        self.sentences.inc(sentences)
        self.recent.add(sentences)

    def render(self, accept: Optional[str]) -> Tuple[bytes, str]:
        """The metrics in the format the scraper's Accept header asks for (Prometheus text format 0.0.4
        by default, OpenMetrics when asked), and its content type."""
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type
