"""The store's common ground: one engine, this instance's id, and failures as StoreError."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from poller.errors import StoreError, one_line
from poller.states import DeliveryState
from poller.store.db import schema_revisions

__all__ = ["StoreBase", "describe_store_error", "translated"]

PENDING, DELIVERED, DEAD = DeliveryState.PENDING, DeliveryState.DELIVERED, DeliveryState.DEAD

_P = ParamSpec("_P")
_R = TypeVar("_R")


def translated(
    method: Callable[_P, Coroutine[Any, Any, _R]],
) -> Callable[_P, Coroutine[Any, Any, _R]]:
    """Turn the driver's failures into StoreError, so callers need not know SQLAlchemy.

    The message is the driver's own first line: engines hide SQL parameters, which
    hold event bodies (presigned URLs are credentials).
    """

    @functools.wraps(method)
    async def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return await method(*args, **kwargs)
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(describe_store_error(exc)) from exc

    return wrapper


def describe_store_error(exc: BaseException) -> str:
    """One bounded line naming a store failure: the driver's words, not the statement."""
    orig = exc.orig if isinstance(exc, DBAPIError) else None
    return one_line(orig if orig is not None else exc)


class StoreBase:
    """What every part of the store shares. Every public method is one transaction (or
    one read) and raises StoreError when the database fails."""

    def __init__(self, engine: AsyncEngine, *, instance_id: str) -> None:
        self._engine = engine
        self.instance_id = instance_id
        self._dialect = engine.dialect.name

    @property
    def single_instance(self) -> bool:
        """SQLite: one instance per file, so what another run left is ours to take over."""
        return self._dialect == "sqlite"

    @translated
    async def schema_revisions(self) -> tuple[str | None, str | None]:
        """(current revision in the store, head revision shipped with this version)."""
        return await schema_revisions(self._engine)

    async def close(self, timeout: float = 5.0) -> None:
        """Close every connection of the engine, giving up after ``timeout`` seconds.

        Why bounded: disposing waits on the driver, which waits on a locked SQLite
        file or a PostgreSQL that stopped answering; a stop must not wait with it.
        """
        with contextlib.suppress(TimeoutError, SQLAlchemyError, OSError):
            async with asyncio.timeout(timeout):
                await self._engine.dispose()

    def _insert(self, table: Any) -> Any:
        # ON CONFLICT DO NOTHING lives in the dialects' own insert constructs.
        if self._dialect == "postgresql":
            return postgresql.insert(table)
        return sqlite.insert(table)


def aware(value: Any) -> dt.datetime | None:
    # Aggregates bypass the column type, so SQLite hands back a naive value or text.
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    assert isinstance(value, dt.datetime)
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value
