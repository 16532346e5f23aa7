"""Group commit: many callers' small writes done in one store transaction.

Why: on SQLite through aiosqlite every statement costs several round trips to
the driver's thread, so a transaction per room poll or per delivery outcome
caps the daemon at a few hundred per second (measured in BENCHMARKS.md).
Writes queued while a flush runs go together in the next one: under load a
flush carries dozens of them; when idle a lone write goes at once, with no
added wait (or at most ``window``, when asked to gather writes that trickle in).
Each caller still gets its own result, after its write committed.

Why a failed batch is written again item by item: one item the store refuses (a
value too long for its column on PostgreSQL) would otherwise fail every other
caller of its batch, whose writes were fine.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["GroupCommit"]

T = TypeVar("T")
R = TypeVar("R")

# Items of a failed batch retried alone before concluding, none of them having gone
# in, that the store itself is failing: the rest then get the batch's error without
# a transaction each (an outage must not cost one store timeout per item).
_PROBES = 2


class GroupCommit(Generic[T, R]):
    """Hands every item submitted meanwhile to one ``flush`` call, in submission order.

    ``flush`` gets a list of items and returns one result per item, in order, and
    writes all of them or none (one transaction). If it raises, each item is flushed
    again alone: a caller gets its own result, or the exception of its own write.
    Only when the first items alone fail too (the store, not an item, is failing)
    do the rest get the batch's exception without a retry.
    """

    def __init__(
        self,
        flush: Callable[[list[T]], Awaitable[Sequence[R]]],
        *,
        max_batch: int = 500,
        window: float = 0.0,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if window < 0:
            raise ValueError("window must not be negative")
        self._flush = flush
        self._max_batch = max_batch
        # How long an item waits for company when no flush is running: writes that
        # trickle in (polls spread over the interval) then still share transactions.
        self._window = window
        self._last_flush = float("-inf")  # loop time the latest flush began
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._task: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        """Write ``item`` with whatever else is queued; return its result once committed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._queue.append((item, future))
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run(), name="group-commit")
        # A caller that is cancelled stops waiting; its write still goes with the batch.
        return await future

    async def drain(self) -> None:
        """Wait until everything submitted so far has been flushed (results or errors)."""
        while self._task is not None and not self._task.done():
            await asyncio.wait({self._task})

    async def _run(self) -> None:
        batch: list[tuple[T, asyncio.Future[R]]] = []
        loop = asyncio.get_running_loop()
        try:
            if self._window:
                await asyncio.sleep(self._window)
            while self._queue:
                # With a window, at most one flush per window unless a batch is full:
                # a steady trickle would otherwise keep flushing two or three at a time.
                wait = self._last_flush + self._window - loop.time()
                if wait > 0 and len(self._queue) < self._max_batch:
                    await asyncio.sleep(wait)
                self._last_flush = loop.time()
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                try:
                    results = await self._flush_all([item for item, _ in batch])
                except Exception as exc:
                    await self._one_by_one(batch, exc)
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        except BaseException:
            # Cancelled (the loop is shutting down): so are the waiting callers.
            for _, future in (*batch, *self._queue):
                future.cancel()
            self._queue.clear()
            raise

    async def _flush_all(self, items: list[T]) -> Sequence[R]:
        results = await self._flush(items)
        if len(results) != len(items):
            raise RuntimeError("flush returned a different number of results")
        return results

    async def _one_by_one(self, batch: list[tuple[T, asyncio.Future[R]]], error: Exception) -> None:
        """Settle the callers of a failed batch, each by a flush of its item alone."""
        went_in = False
        for index, (item, future) in enumerate(batch):
            if len(batch) == 1 or (not went_in and index >= _PROBES):
                if not future.done():
                    future.set_exception(error)
                continue
            try:
                (result,) = await self._flush_all([item])
            except Exception as exc:
                if not future.done():
                    future.set_exception(exc)
                continue
            went_in = True
            if not future.done():
                future.set_result(result)
