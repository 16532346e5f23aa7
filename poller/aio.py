"""Small asyncio helpers shared by the parts that drain work on shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import Any


async def finish_or_cancel(tasks: Collection[asyncio.Task[Any]], timeout: float) -> int:
    """Give ``tasks`` up to ``timeout`` seconds, then cancel the rest; return how many were."""
    if not tasks:
        return 0
    _, unfinished = await asyncio.wait(tasks, timeout=max(0.0, timeout))
    for task in unfinished:
        task.cancel()
    if unfinished:
        await asyncio.wait(unfinished)
    return len(unfinished)
