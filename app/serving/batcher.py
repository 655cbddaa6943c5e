"""Concurrent calls gathered into batches: each call waits in a bounded queue, one worker takes whatever
has gathered (up to ``max_batch``, after at most ``max_delay`` seconds) and runs it as one batch in a
thread, then hands each caller its own result or error.

An idle batcher waits for company only when its last batch had some, so a lone caller never waits.
The queue is the service's backpressure: a call beyond ``max_queue`` waiting or running is refused at
once (``Overloaded``), one that waits longer than ``timeout`` is given up (``TimedOut``), and one whose
caller has gone (watched for once it has waited ``WATCH_AFTER_SECONDS``) is dropped before it runs.
With batching off each call runs alone in a thread, under the same bound and timeout: the baseline the
benchmarks compare against.
"""

from __future__ import annotations

import asyncio
import collections
import functools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from anyio import to_thread

from app.serving.errors import CallerGone, Overloaded, TimedOut

__all__ = ["Batcher", "BatcherStats"]

Item = TypeVar("Item")
Result = TypeVar("Result")
RETRY_AFTER_SECONDS = 1
WATCH_AFTER_SECONDS = 0.05
"""How long a call waits before its caller's departure is watched for, and how often the batcher checks
its calls' timeouts. A watcher is a task that reads the connection: one per call would cost more than a
quick call's answer, and a call answered sooner than this never needs one."""


@dataclass
class BatcherStats:
    """What the batcher has done since it started: batches run and the calls in them, refusals."""

    batches: int = 0
    calls: int = 0
    overloaded: int = 0
    timed_out: int = 0
    abandoned: int = 0


@dataclass(eq=False, slots=True)
class _Call(Generic[Item, Result]):
    """One submitted call: its item, the future its caller awaits (set by its batch, or failed when it is
    given up), when it came, and what tells of its caller's departure; hashed by identity."""

    item: Item
    future: asyncio.Future[Result]
    came: float
    gone: Callable[[], Awaitable[object]] | None
    running: asyncio.Future[None] | None = None  # its batch of one, with batching off
    watcher: asyncio.Future[object] | None = None


class Batcher(Generic[Item, Result]):
    """Runs ``run`` (items to one result or exception per item, in order) on batches of concurrent
    calls. Create and use it on one event loop; ``close`` stops its worker.

    A call costs no timer or task of its own: one tick while calls are out gives up those past the timeout
    and watches for the departure of callers that have waited ``WATCH_AFTER_SECONDS``. Per-call timers
    lingered in the loop's heap for the whole timeout, and the garbage collector's full passes over them
    cost a batched /predict as much as its answer (bench/README.md)."""

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
        self._queue: collections.deque[_Call[Item, Result]] = collections.deque()
        self._out: dict[_Call[Item, Result], None] = {}  # every call not yet answered, oldest first
        self._full: asyncio.Future[None] | None = None  # the worker's wait for company, if it waits
        self._worker: asyncio.Task[None] | None = None
        self._tick: asyncio.TimerHandle | None = None
        self._last_size = 0

    @property
    def waiting(self) -> int:
        """Calls queued and not yet taken into a batch."""
        return len(self._queue)

    @property
    def in_flight(self) -> int:
        """Calls waiting or running: what ``max_queue`` bounds."""
        return len(self._out)

    async def submit(self, item: Item, gone: Callable[[], Awaitable[object]] | None = None) -> Result:
        """The result of ``item`` (or its error, raised); ``gone`` completes if the caller disconnects,
        which drops the call."""
        if self.in_flight >= self.max_queue:
            self.stats.overloaded += 1
            raise Overloaded(
                f"{self.in_flight} calls are waiting or running; try again shortly", RETRY_AFTER_SECONDS
            )
        loop = asyncio.get_running_loop()
        call = _Call(item, loop.create_future(), loop.time(), gone)
        self._out[call] = None
        if self._tick is None:
            self._tick = loop.call_later(WATCH_AFTER_SECONDS, self._check)
        try:
            self._start(call)
            return await call.future
        finally:
            del self._out[call]
            if call.watcher is not None:
                call.watcher.cancel()

    async def close(self) -> None:
        """Stop the worker; calls still queued fail with ``Overloaded``."""
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None
        while self._queue:
            self._give_up(self._queue.popleft(), Overloaded("the service is stopping", RETRY_AFTER_SECONDS))

    def _start(self, call: _Call[Item, Result]) -> None:
        if not self.batching:
            call.running = asyncio.ensure_future(self._run_batch([call]))
            return
        self._queue.append(call)
        if self._full is not None and len(self._queue) >= self.max_batch:
            _settle_none(self._full)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work())

    def _check(self) -> None:
        """The tick: give up calls past the timeout, watch callers that have waited long enough, and tick
        again while calls are out. Calls are in the order they came, so the young ones are never read."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        for call in self._out:  # giving up or watching a call leaves it there until its caller is answered
            if now - call.came < WATCH_AFTER_SECONDS:
                break
            if now - call.came >= self.timeout:
                self.stats.timed_out += 1
                self._give_up(
                    call,
                    TimedOut(
                        f"no answer within {self.timeout:g} s; the service is busy", RETRY_AFTER_SECONDS
                    ),
                )
            elif call.gone is not None and call.watcher is None:
                call.watcher = asyncio.ensure_future(call.gone())
                call.watcher.add_done_callback(functools.partial(self._abandoned, call))
        self._tick = loop.call_later(WATCH_AFTER_SECONDS, self._check) if self._out else None

    def _abandoned(self, call: _Call[Item, Result], watcher: asyncio.Future[object]) -> None:
        if not watcher.cancelled() and not call.future.done():
            self.stats.abandoned += 1
            self._give_up(call, CallerGone("the caller disconnected before the answer"))

    @staticmethod
    def _give_up(call: _Call[Item, Result], error: Exception) -> None:
        """Fail the call with ``error``; a queued call is then skipped, one running alone is cancelled."""
        if not call.future.done():
            call.future.set_exception(error)
        if call.running is not None:
            call.running.cancel()

    async def _work(self) -> None:
        """Take batches off the queue and run them, one at a time, until the queue stays empty."""
        loop = asyncio.get_running_loop()
        while self._queue:
            # Company is worth waiting for only under load, when the last batch had some: a lone caller
            # goes at once. One timer per batch, not a wake-up per arriving call.
            if self._last_size > 1 and len(self._queue) < self.max_batch:
                self._full = loop.create_future()
                timer = loop.call_later(self.max_delay, _settle_none, self._full)
                try:
                    await self._full
                finally:
                    timer.cancel()
                    self._full = None
            batch = self._take()
            if batch:
                await self._run_batch(batch)

    def _take(self) -> list[_Call[Item, Result]]:
        """Up to ``max_batch`` queued calls whose callers still wait."""
        batch: list[_Call[Item, Result]] = []
        while self._queue and len(batch) < self.max_batch:
            call = self._queue.popleft()
            if not call.future.done():
                batch.append(call)
        return batch

    async def _run_batch(self, batch: list[_Call[Item, Result]]) -> None:
        try:
            results: Sequence[Result | Exception] = await to_thread.run_sync(
                self.run, [call.item for call in batch]
            )
        except Exception as error:  # the whole batch failed: every caller gets the error
            results = [error] * len(batch)
        self.stats.batches += 1
        self.stats.calls += len(batch)
        self._last_size = len(batch)
        for call, result in zip(batch, results, strict=True):
            if call.future.done():
                continue
            if isinstance(result, Exception):
                call.future.set_exception(result)
            else:
                call.future.set_result(result)


def _settle_none(future: asyncio.Future[None]) -> None:
    """End the worker's wait for company (a full batch, or its delay spent), once."""
    if not future.done():
        future.set_result(None)
