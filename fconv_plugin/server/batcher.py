"""Dynamic batching: the sentences of concurrent requests are decoded together, on one thread.

Requests put their sentences (source token ids) into one queue and wait for their results.  A
collector task on the event loop takes sentences from the queue, oldest first, into a batch of at
most ``max_tokens`` padded source tokens (``sentences x longest``, EOS included, as fairseq's
``--max-tokens`` counts), and hands the batch to the decoding thread.  While that thread decodes,
new sentences queue up and make the next batch.

``max_wait_ms`` is how long a batch may wait for company before it is decoded.  The collector waits
only when the previous batch held more than one sentence (other clients are active, more sentences
are likely on their way), and stops waiting as soon as as many sentences are queued as that batch had;
a lone client is never kept waiting, so batching costs it nothing.

The decoding thread is the only thread that runs the model (a ``ThreadPoolExecutor`` with one
worker); :meth:`Batcher.call` runs other model work (loading, the page's attention) there too, between
batches.  Faults stay local:

- a batch whose decoding raises is decoded again one sentence at a time, so that only the sentence
  that fails gets the error;
- a request that goes away (timeout, client disconnect) cancels its futures: sentences still queued
  are dropped, sentences being decoded finish and their results are dropped;
- the queue is bounded (``queue_sentences``): a request whose sentences do not fit is refused with
  :class:`QueueFull` (503 with ``Retry-After``) before anything of it is queued.
"""

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Deque, List, Optional, Sequence, TypeVar

import torch

from .limits import RequestError
from .metrics import Metrics

logger = logging.getLogger(__name__)
T = TypeVar("T")


class QueueFull(RequestError):
    def __init__(self, queued: int, limit: int, retry_after_s: int):
        super().__init__(
            503,
            f"Slowdown: the server is busy ({queued} sentences queued, limit {limit}); retry in {retry_after_s} s",
            headers={"Retry-After": str(retry_after_s)},
        )


class DecodeError(RequestError):
    """The decoding of one sentence failed (the server log has the traceback): 500 for its request."""

    def __init__(self):
        super().__init__(500, "Cannot translate text: decoding failed (the server log has the details)")


@dataclass
class _Item:
    tokens: torch.Tensor  # S source token ids, EOS last
    future: "asyncio.Future[Any]"
    arrival: float  # event-loop time


class Batcher:
    """Collects sentences into batches and decodes them with ``decode`` on one thread.

    ``decode(sources)`` takes a list of 1-D token tensors and returns one result per sentence, in
    order; it runs on the decoding thread."""

    def __init__(
        self,
        decode: Callable[[List[torch.Tensor]], Sequence[Any]],
        *,
        max_tokens: int,
        max_wait_ms: float,
        queue_sentences: int,
        retry_after_s: int = 1,
        metrics: Optional[Metrics] = None,
    ):
        self.decode = decode
        self.max_tokens = max_tokens
        self.max_wait_s = max_wait_ms / 1000.0
        self.queue_sentences = queue_sentences
        self.retry_after_s = retry_after_s
        self.metrics = metrics or Metrics()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fconv-decode")
        self._pending: Deque[_Item] = deque()
        self._arrived: Optional[asyncio.Event] = None
        self._collector: Optional["asyncio.Task[None]"] = None

    # -- lifecycle (on the event loop) -------------------------------------------------
    def start(self) -> None:
        self._arrived = asyncio.Event()
        self._collector = asyncio.get_running_loop().create_task(self._collect(), name="fconv-batcher")
        self._collector.add_done_callback(self._collector_ended)

    def _collector_ended(self, task: "asyncio.Task[None]") -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("the batch collector stopped: no more translations", exc_info=task.exception())

    def alive(self) -> bool:
        """Whether batches are still being collected (False before start, after stop or a crash)."""
        return self._collector is not None and not self._collector.done()

    async def stop(self) -> None:
        """Stop collecting (the server has answered its requests by now), fail whatever is still
        queued, and let the decoding thread finish its batch."""
        if self._collector is not None:
            self._collector.cancel()
            try:
                await self._collector
            except asyncio.CancelledError:
                logger.debug("batch collector stopped")
        for item in self._pending:
            if not item.future.done():
                item.future.set_exception(RequestError(503, "the server is shutting down"))
        self._pending.clear()
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown)

    # -- what requests call -----------------------------------------------------------
    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the decoding thread, between batches."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def queued(self) -> int:
        """Sentences waiting for a batch (cancelled ones not counted)."""
        return sum(1 for item in self._pending if not item.future.done())

    async def translate(self, sources: Sequence[torch.Tensor]) -> List[Any]:
        """The results of ``decode`` for ``sources``, decoded in batches with other requests'
        sentences.  Raises :class:`QueueFull` if they do not fit in the queue, :class:`DecodeError`
        if one of them failed; cancelling the call drops its sentences."""
        if self._arrived is None:
            raise RuntimeError("Batcher.start() was not called")
        queued = self.queued()
        if queued + len(sources) > self.queue_sentences:
            self.metrics.rejected.inc(len(sources))
            raise QueueFull(queued, self.queue_sentences, self.retry_after_s)
        loop = asyncio.get_running_loop()
        now = loop.time()
        futures = [loop.create_future() for _ in sources]
        self._pending.extend(_Item(tokens, future, now) for tokens, future in zip(sources, futures))
        self.metrics.queue_depth.set(queued + len(sources))
        self._arrived.set()
        results = await asyncio.gather(*futures, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results

    # -- the collector task --------------------------------------------------------------
    def _padded_tokens(self, items: Sequence[_Item]) -> int:
        return len(items) * max(item.tokens.numel() for item in items) if items else 0

    def _take_batch(self) -> List[_Item]:
        """The oldest live sentences that fit in ``max_tokens`` (at least one)."""
        batch: List[_Item] = []
        longest = 0
        while self._pending:
            item = self._pending[0]
            if item.future.done():  # its request went away
                self._pending.popleft()
                continue
            length = max(longest, item.tokens.numel())
            if batch and (len(batch) + 1) * length > self.max_tokens:
                break
            batch.append(self._pending.popleft())
            longest = length
        self.metrics.queue_depth.set(self.queued())
        return batch

    def _enough_waiting(self, last_batch: int) -> bool:
        """Whether the queue holds a full batch, or as many sentences as the last batch had (its
        clients are back: waiting longer only delays them)."""
        live = [item for item in self._pending if not item.future.done()]
        return len(live) >= last_batch or self._padded_tokens(live) >= self.max_tokens

    async def _collect(self) -> None:
        assert self._arrived is not None
        loop = asyncio.get_running_loop()
        last_batch = 0
        while True:
            while not any(not item.future.done() for item in self._pending):
                self._pending.clear()
                self._arrived.clear()
                await self._arrived.wait()
            if last_batch > 1 and self.max_wait_s > 0:
                deadline = self._pending[0].arrival + self.max_wait_s
                while not self._enough_waiting(last_batch) and loop.time() < deadline:
                    self._arrived.clear()
                    try:
                        await asyncio.wait_for(self._arrived.wait(), deadline - loop.time())
                    except asyncio.TimeoutError:
                        break
            batch = self._take_batch()
            if not batch:
                continue
            last_batch = len(batch)
            results = await loop.run_in_executor(self._executor, self._decode_batch, [i.tokens for i in batch])
            for item, result in zip(batch, results):
                if item.future.done():  # cancelled while it was being decoded
                    continue
                if isinstance(result, BaseException):
                    item.future.set_exception(result)
                else:
                    item.future.set_result(result)

    # -- on the decoding thread ------------------------------------------------------------
    def _decode_batch(self, sources: List[torch.Tensor]) -> List[Any]:
        """``decode(sources)``; if it raises, each sentence again alone, so that the error reaches
        only the sentences it belongs to.  Errors are returned in place of results."""
        start = time.perf_counter()
        try:
            results = list(self.decode(sources))
        except Exception:  # logged; each sentence is retried alone below
            if len(sources) == 1:
                logger.exception("decoding a sentence of %d tokens failed", sources[0].numel())
                self.metrics.decode_errors.inc()
                return [DecodeError()]
            logger.exception("decoding a batch of %d sentences failed: decoding them one at a time", len(sources))
            return [result for source in sources for result in self._decode_batch([source])]
        self.metrics.translated(len(sources), time.perf_counter() - start)
        return results
