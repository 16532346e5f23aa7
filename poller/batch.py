"""Group commit: many callers' small writes done in one store transaction.

Why: on SQLite through aiosqlite every statement costs several round trips to
the driver's thread, so a transaction per room poll or per delivery outcome
caps the daemon at a few hundred per second (measured in BENCHMARKS.md).
Writes queued while a flush runs go together in the next one: under load a
flush carries dozens of them; when idle a lone write goes at once, with no
added wait (or at most ``window``, when asked to gather writes that trickle in).
Each caller still gets its own result, after its write committed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["GroupCommit"]

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    """Hands every item submitted meanwhile to one ``flush`` call, in submission order.

    ``flush`` gets a list of items and returns one result per item, in order; if it
    raises, every caller of that batch gets the exception.
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
                    results = await self._flush([item for item, _ in batch])
                    if len(results) != len(batch):
                        raise RuntimeError("flush returned a different number of results")
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
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
