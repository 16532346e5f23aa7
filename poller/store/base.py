"""The store's common ground: one engine, this instance's id, and failures as StoreError."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import enum
import functools
import re
import sqlite3
import uuid
from collections.abc import Callable, Coroutine
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy import ColumnElement, Interval, exists, func, literal, type_coerce
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from poller.errors import StoreError, one_line
from poller.states import DeliveryState
from poller.store.db import schema_revisions
from poller.store.faults import Faults, StoreFile
from poller.store.models import UTCDateTime, instances

__all__ = [
    "StoreBase",
    "StoreClock",
    "db_now",
    "describe_store_error",
    "store_error",
    "translated",
]

PENDING, DELIVERED, DEAD = DeliveryState.PENDING, DeliveryState.DELIVERED, DeliveryState.DEAD

_P = ParamSpec("_P")
_R = TypeVar("_R")
_S = TypeVar("_S", bound="StoreBase")


def translated(
    method: Callable[Concatenate[_S, _P], Coroutine[Any, Any, _R]],
) -> Callable[Concatenate[_S, _P], Coroutine[Any, Any, _R]]:
    """Turn the driver's failures into StoreError, so callers need not know SQLAlchemy,
    and keep the store's ``faults`` (which operations fail now) up to date.

    The message is the driver's own first line: engines hide SQL parameters, which
    hold event bodies (presigned URLs are credentials).
    """
    operation = method.__name__

    @functools.wraps(method)
    async def wrapper(self: _S, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            result = await method(self, *args, **kwargs)
        # sqlite3.Error: what the driver raises from our BEGIN IMMEDIATE (poller.store.db),
        # which SQLAlchemy does not wrap ("database is locked" past busy_timeout).
        except (SQLAlchemyError, OSError, sqlite3.Error) as exc:
            error = store_error(exc)
            self.faults.failed(operation, str(error))
            raise error from None
        self.faults.succeeded(operation)
        return result

    return wrapper


def store_error(exc: BaseException) -> StoreError:
    """``exc`` as a StoreError: its one-line description, and its traceback to show where.

    Raise it ``from None``. Why not chained: a logged traceback renders every chained
    exception in full, and the driver's quotes what it was given (PostgreSQL's DETAIL
    names the offending row, SQLAlchemy's message the statement), which may be an
    event body, whose presigned URLs are credentials.
    """
    return StoreError(describe_store_error(exc)).with_traceback(exc.__traceback__)


def describe_store_error(exc: BaseException) -> str:
    """One bounded line naming a store failure: the driver's words, not the statement."""
    orig = exc.orig if isinstance(exc, DBAPIError) else None
    return _without_argument_value(one_line(orig if orig is not None else exc))


# asyncpg's words for a value it cannot encode quote the value's start ("invalid input
# for query argument $1: '{"id": ...' (reason)"): a parameter after all.
_ARGUMENT = re.compile(r"invalid input for query argument \$\d+")
_REASON = re.compile(r" (\([^()]*\))$")


def _without_argument_value(line: str) -> str:
    found = _ARGUMENT.search(line)
    if found is None:
        return line
    reason = _REASON.search(line, found.end())
    return line[: found.end()] + (reason.group() if reason else "")


class StoreClock(enum.Enum):
    """Whose clock times leases, claims, heartbeats and the outbox's schedule."""

    # PostgreSQL's now(): every instance on the store reads the same clock, so an
    # instance whose own clock is off can neither take a live lease or claim nor
    # look dead. now(), not clock_timestamp(): it is the instant the transaction
    # began, the same for every statement of one method (a heartbeat's write and its
    # "who is live" read agree), and it is never later than the commit, so a lease
    # written as now() + ttl ends no earlier than the caller's own deadline (taken
    # before it asked).
    DATABASE = "database"
    # The ``now`` each call passes: SQLite, one file on one host, has one clock anyway
    # (and no interval arithmetic on its text timestamps).
    CALLER = "caller"

    @classmethod
    def for_dialect(cls, dialect: str) -> StoreClock:
        """The database's clock where several hosts share the store (PostgreSQL)."""
        return cls.DATABASE if dialect == "postgresql" else cls.CALLER


class StoreBase:
    """What every part of the store shares. Every public method is one transaction (or
    one read) and raises StoreError when the database fails.

    Every ``now`` parameter is the caller's clock. With ``StoreClock.DATABASE`` (the
    default on PostgreSQL) the store times what it compares and writes by the
    database's clock instead, and keeps only durations from the caller.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        instance_id: str,
        clock: StoreClock | None = None,
        incarnation: str | None = None,
    ) -> None:
        self._engine = engine
        self.instance_id = instance_id
        self._dialect = engine.dialect.name
        self.clock = clock or StoreClock.for_dialect(self._dialect)
        # This process, among any that ever ran (or run) under the same instance_id.
        self.incarnation = incarnation or uuid.uuid4().hex
        self.faults = Faults()
        # The SQLite file, once open_store knows it: checked for deletion from outside.
        self.file: StoreFile | None = None

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

    def _at(self, now: dt.datetime) -> ColumnElement[dt.datetime]:
        """The store's "now" for this transaction, as SQL (``now`` is the caller's)."""
        if self.clock is StoreClock.DATABASE:
            return db_now()
        return literal(now, UTCDateTime())

    def _after(self, now: dt.datetime, seconds: float) -> ColumnElement[dt.datetime]:
        """``seconds`` after the store's "now", as SQL (negative: before it)."""
        delta = dt.timedelta(seconds=seconds)
        if self.clock is StoreClock.DATABASE:
            # Computed by the database: Python's now + ttl would be this host's clock.
            return db_now() + literal(delta, Interval())
        return literal(now + delta, UTCDateTime())

    def _holds_id(self) -> ColumnElement[bool]:
        """No other process holds this instance's id (see ``Leases.heartbeat``).

        Why on the writes that take or hand back work: a process whose id another one
        took over (it was silent past the TTL) must neither take rooms and claims under
        the shared id nor release the other's, until it notices and stops. One
        primary-key lookup inside the statement, no round trip.
        """
        return ~exists().where(
            instances.c.id == self.instance_id,
            instances.c.incarnation.is_distinct_from(self.incarnation),
        )

    def _insert(self, table: Any) -> Any:
        # ON CONFLICT DO NOTHING lives in the dialects' own insert constructs.
        if self._dialect == "postgresql":
            return postgresql.insert(table)
        return sqlite.insert(table)


def db_now() -> ColumnElement[dt.datetime]:
    """PostgreSQL's now(): when the current transaction began, by the database's clock."""
    return type_coerce(func.now(), UTCDateTime())


def aware(value: Any) -> dt.datetime | None:
    # Aggregates bypass the column type, so SQLite hands back a naive value or text.
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    assert isinstance(value, dt.datetime)
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value
