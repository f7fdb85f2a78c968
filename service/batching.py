"""Group commit: writes that arrive while one is in flight go to MongoDB together.

Every driver call costs a MongoDB round trip and its share of the event loop's
CPU (encoding, the socket, the reply), however many documents it carries. Under
load, Login spent most of its CPU there (bench/README.md): 64 concurrent logins
meant 128 separate writes. A GroupCommit sends the first item at once, so an
idle service adds no latency, and everything that arrives while that write is
out as one batch when it returns.

When the event loop itself is saturated, that is not enough: writes still go out
back to back, each costing CPU that the logins waiting behind them need. So
after each write the writer yields once and times how long the loop takes to
come back. Longer than `busy_lag` means the CPU is the bottleneck, and the next
write waits until `min_interval` after the previous one started, carrying
everything that arrived meanwhile. Measured on the bench machine: ~1.4x the
logins per core at 64 concurrent calls, with lower latency there (less queueing
for the CPU), and no change at 4 to 16 concurrent calls, where the loop is not
saturated and nothing waits.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

# pymongo's own timeouts (10 s socket, one retry) end a write well before this.
_CLOSE_SECONDS = 30.0

Item = TypeVar("Item")
Result = TypeVar("Result")

# `write` answers each item with its result or with the exception for that item
# alone; an exception raised by `write` itself fails the whole batch.
BatchWrite = Callable[[Sequence[Item]], Awaitable[Sequence[Result | Exception]]]


class QueueFull(Exception):
    """Too many items already wait behind a write in flight; the caller should shed this one."""


class GroupCommit(Generic[Item, Result]):
    """Coalesces concurrent `submit()`s into calls of `write` with up to `max_batch` items.

    `max_waiting`: while a write is out, every queued item counts against it; with
    none out, the `max_batch` items the next write takes at once do not. Past it,
    submissions raise QueueFull, so the queue never holds more than
    `max_batch + max_waiting`.
    `min_interval`: while the event loop is saturated (it takes longer than
    `busy_lag` to come back to the writer), writes start at most once per this
    many seconds. An item that finds the writer idle is written at once.
    `on_batch`: called with each batch's size just before it is written.
    """

    def __init__(
        self,
        write: BatchWrite[Item, Result],
        *,
        max_batch: int = 256,
        max_waiting: int | None = None,
        min_interval: float = 0.0,
        busy_lag: float = 0.001,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        # Items waiting behind a write in flight beyond this are refused (QueueFull):
        # a stalled database must not grow the queue, and the memory behind it,
        # without end (at most max_batch + max_waiting are ever queued).
        self._max_waiting = max_waiting
        self._write = write
        self._max_batch = max_batch
        self._min_interval = min_interval
        self._busy_lag = busy_lag
        # Told each batch's size before it is written (the batch-size histogram).
        self._on_batch = on_batch
        self._queue: deque[tuple[Item, asyncio.Future[Result]]] = deque()
        self._writer: asyncio.Task[None] | None = None
        self._writing = False  # a write is out (what QueueFull's bound waits behind)
        self._closed = False

    async def submit(self, item: Item) -> Result:
        """Write `item` with whatever else is waiting; its own result or exception.

        A caller cancelled before its batch is taken is dropped from it; one
        cancelled later cannot call the write back, but nobody gets its result.
        """
        return await self.enqueue(item)

    def enqueue(self, item: Item) -> asyncio.Future[Result]:
        """`submit` without a coroutine: the future of `item`'s result.

        For a caller with many items at once (await them with asyncio.gather, which
        wraps no future in a task). Cancelling the future drops the item like
        cancelling `submit` does. Raises QueueFull, or RuntimeError once closed.
        """
        if self._closed:
            raise RuntimeError("GroupCommit is closed")
        if self._max_waiting is not None and self._behind_a_write() >= self._max_waiting:
            raise QueueFull(f"{self._behind_a_write()} items already wait behind a write")
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._writer is None:
            # Started on the next loop iteration, so that submissions made in
            # this one already share the first batch.
            # A context of its own: the writer serves many calls, and must not
            # carry (and log as) the request id of the call that happened to start it.
            self._writer = asyncio.create_task(self._drain(), context=contextvars.Context())
            self._writer.add_done_callback(self._writer_done)
        return future

    def _writer_done(self, writer: asyncio.Task[None]) -> None:
        """A writer cancelled before its first step never ran _drain's `finally`; do it here.

        Otherwise `_writer` would name a dead task, no writer would ever start again, and
        every item queued would wait forever (loop shutdown cancels every task at once).
        """
        if self._writer is writer:  # else _drain's `finally` already let go of it
            self._writer = None
            self._fail_leftovers()

    def _behind_a_write(self) -> int:
        """Queued items that must wait for a write to finish before theirs can start.

        With no write out, the next one takes up to max_batch of the queue at once:
        those wait for no other write (at most the pacing interval), and shedding
        them (a burst reaching an idle writer) would refuse work the database is
        ready for.
        """
        queued = len(self._queue)
        return queued if self._writing else max(0, queued - self._max_batch)

    @property
    def waiting(self) -> int:
        """Items submitted and not yet taken into a write."""
        return len(self._queue)

    async def aclose(self) -> None:
        """Refuse new items; wait (bounded, like every shutdown step) for what was submitted."""
        self._closed = True
        if self._writer is not None:
            # wait(), not await: never raises the writer's own outcome into a shutdown.
            _, pending = await asyncio.wait([self._writer], timeout=_CLOSE_SECONDS)
            if pending:
                log.error("batched writes still running after %.0fs; not waiting", _CLOSE_SECONDS)

    async def _drain(self) -> None:
        try:
            while batch := self._take_batch():
                started = time.perf_counter()
                if self._on_batch is not None:
                    self._on_batch(len(batch))
                self._writing = True
                try:
                    await self._commit(batch)
                finally:
                    self._writing = False
                if self._queue and self._min_interval > 0:
                    await self._pace(started)
        finally:
            self._writer = None
            self._fail_leftovers()

    def _fail_leftovers(self) -> None:
        # Only on cancellation of the writer (loop shutdown) can items remain.
        while self._queue:
            _, future = self._queue.popleft()
            if not future.done():
                future.set_exception(RuntimeError("GroupCommit writer stopped"))

    async def _pace(self, started: float) -> None:
        """Before the next write: wait out the interval if the loop is saturated."""
        # perf_counter, not loop.time(): uvloop's clock moves in whole milliseconds, so
        # a 0.2 ms turn of the loop could read as 1 ms, i.e. "busy" (busy_lag is 1 ms).
        yielded = time.perf_counter()
        await asyncio.sleep(0)  # comes back after everything else that is ready
        if time.perf_counter() - yielded > self._busy_lag:
            wait = started + self._min_interval - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)

    def _take_batch(self) -> list[tuple[Item, asyncio.Future[Result]]]:
        batch: list[tuple[Item, asyncio.Future[Result]]] = []
        while self._queue and len(batch) < self._max_batch:
            item, future = self._queue.popleft()
            if not future.cancelled():
                batch.append((item, future))
        return batch

    async def _commit(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        try:
            results: Sequence[Result | Exception] = await self._write([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"write answered {len(results)} results for {len(batch)} items")
        except asyncio.CancelledError:
            for _, future in batch:
                if not future.done():
                    future.set_exception(RuntimeError("GroupCommit writer stopped"))
            raise
        except Exception as error:
            log.exception("batch write of %d items failed", len(batch))
            # One exception object per caller: each re-raise rewrites its traceback.
            results = [_batch_failed(error) for _ in batch]
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue  # its caller was cancelled meanwhile
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)


def _batch_failed(cause: Exception) -> Exception:
    failure = RuntimeError("batch write failed")
    failure.__cause__ = cause
    return failure
