"""Concurrent calls gathered into batches: each call waits in a bounded queue, one worker takes whatever
has gathered (up to ``max_batch``, after at most ``max_delay`` seconds) and runs it as one batch in a
thread, then hands each caller its own result or error.

An idle batcher waits for company only when its last batch had some, so a lone caller never waits.
The queue is the service's backpressure: a call beyond ``max_queue`` waiting or running is refused at
once (``Overloaded``), one that waits longer than ``timeout`` is given up (``TimedOut``), and one whose
caller has gone is dropped before it runs. With batching off each call runs alone in a thread, under the
same bound and timeout: the baseline the benchmarks compare against.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from anyio import to_thread

from app.serving.errors import CallerGone, Overloaded, TimedOut

__all__ = ["Batcher", "BatcherStats"]

Item = TypeVar("Item")
Result = TypeVar("Result")
RETRY_AFTER_SECONDS = 1


@dataclass
class BatcherStats:
    """What the batcher has done since it started: batches run and the calls in them, refusals."""

    batches: int = 0
    calls: int = 0
    overloaded: int = 0
    timed_out: int = 0
    abandoned: int = 0


@dataclass
class _Waiting(Generic[Item, Result]):
    item: Item
    future: asyncio.Future[Result]


class Batcher(Generic[Item, Result]):
    """Runs ``run`` (items to one result or exception per item, in order) on batches of concurrent
    calls. Create and use it on one event loop; ``close`` stops its worker."""

    def __init__(
        self,
        run: Callable[[Sequence[Item]], Sequence[Result | Exception]],
        *,
        batching: bool = True,
        max_batch: int = 64,
        max_delay: float = 0.001,
        max_queue: int = 1024,
        timeout: float = 30.0,
    ) -> None:
        self.run, self.batching = run, batching
        self.max_batch, self.max_delay, self.max_queue, self.timeout = (
            max_batch,
            max_delay,
            max_queue,
            timeout,
        )
        self.stats = BatcherStats()
        self.in_flight = 0
        self._queue: collections.deque[_Waiting[Item, Result]] = collections.deque()
        self._arrived = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._last_size = 0

    @property
    def waiting(self) -> int:
        """Calls queued and not yet taken into a batch."""
        return len(self._queue)

    async def submit(self, item: Item, gone: Callable[[], Awaitable[object]] | None = None) -> Result:
        """The result of ``item`` (or its error, raised); ``gone`` completes if the caller disconnects,
        which drops the call."""
        if self.in_flight >= self.max_queue:
            self.stats.overloaded += 1
            raise Overloaded(
                f"{self.in_flight} calls are waiting or running; try again shortly", RETRY_AFTER_SECONDS
            )
        self.in_flight += 1
        try:
            return await self._wait(self._start(item), gone)
        finally:
            self.in_flight -= 1

    async def close(self) -> None:
        """Stop the worker; calls still queued fail with ``Overloaded``."""
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        while self._queue:
            waiting = self._queue.popleft()
            if not waiting.future.done():
                waiting.future.set_exception(Overloaded("the service is stopping", RETRY_AFTER_SECONDS))

    def _start(self, item: Item) -> asyncio.Future[Result]:
        if not self.batching:
            return asyncio.ensure_future(to_thread.run_sync(self._alone, item))
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.append(_Waiting(item, future))
        self._arrived.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work())
        return future

    async def _wait(
        self, future: asyncio.Future[Result], gone: Callable[[], Awaitable[object]] | None
    ) -> Result:
        """``future``'s result, unless the timeout or the caller's departure comes first: then the call is
        cancelled (dropped, if still queued) and the wait fails. Plain callbacks, not ``asyncio.wait``:
        this runs once per request on the event loop."""
        outcome: asyncio.Future[Result] = asyncio.get_running_loop().create_future()

        def settle(source: asyncio.Future[Result]) -> None:
            if outcome.done() or source.cancelled():
                return
            error = source.exception()
            if error is None:
                outcome.set_result(source.result())
            else:
                outcome.set_exception(error)

        def give_up(error: Exception) -> None:
            if not outcome.done():
                future.cancel()
                outcome.set_exception(error)

        future.add_done_callback(settle)
        timer = asyncio.get_running_loop().call_later(self.timeout, self._timed_out, give_up)
        watcher = None
        if gone is not None:
            watcher = asyncio.ensure_future(gone())
            watcher.add_done_callback(lambda w: None if w.cancelled() else self._abandoned(give_up))
        try:
            return await outcome
        finally:
            timer.cancel()
            if watcher is not None:
                watcher.cancel()

    def _timed_out(self, give_up: Callable[[Exception], None]) -> None:
        self.stats.timed_out += 1
        give_up(TimedOut(f"no answer within {self.timeout:g} s; the service is busy", RETRY_AFTER_SECONDS))

    def _abandoned(self, give_up: Callable[[Exception], None]) -> None:
        self.stats.abandoned += 1
        give_up(CallerGone("the caller disconnected before the answer"))

    def _alone(self, item: Item) -> Result:
        (result,) = self.run([item])
        self.stats.batches += 1
        self.stats.calls += 1
        if isinstance(result, Exception):
            raise result
        return result

    async def _work(self) -> None:
        """Take batches off the queue and run them, one at a time, until the queue stays empty."""
        loop = asyncio.get_running_loop()
        while self._queue:
            # Company is worth waiting for only under load, when the last batch had some: a lone caller
            # goes at once.
            deadline = loop.time() + (self.max_delay if self._last_size > 1 else 0.0)
            while len(self._queue) < self.max_batch and (left := deadline - loop.time()) > 0:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), left)
                except TimeoutError:
                    break
            batch = self._take()
            if batch:
                await self._run_batch(batch)

    def _take(self) -> list[_Waiting[Item, Result]]:
        """Up to ``max_batch`` queued calls whose callers still wait."""
        batch: list[_Waiting[Item, Result]] = []
        while self._queue and len(batch) < self.max_batch:
            waiting = self._queue.popleft()
            if not waiting.future.done():
                batch.append(waiting)
        return batch

    async def _run_batch(self, batch: list[_Waiting[Item, Result]]) -> None:
        try:
            results: Sequence[Result | Exception] = await to_thread.run_sync(
                self.run, [w.item for w in batch]
            )
        except Exception as error:  # the whole batch failed: every caller gets the error
            results = [error] * len(batch)
        self.stats.batches += 1
        self.stats.calls += len(batch)
        self._last_size = len(batch)
        for waiting, result in zip(batch, results, strict=True):
            if waiting.future.done():
                continue
            if isinstance(result, Exception):
                waiting.future.set_exception(result)
            else:
                waiting.future.set_result(result)
