"""Opening the store: the engine, its migrations, and a Store over it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.exc import SQLAlchemyError

from poller.store.db import create_engine, migrate
from poller.store.faults import StoreFile
from poller.store.repo import Store, store_error
from poller.store.runlock import sqlite_file

__all__ = ["open_store"]


@asynccontextmanager
async def open_store(
    url: str, *, instance_id: str, apply_migrations: bool = True, close_timeout: float = 5.0
) -> AsyncIterator[Store]:
    """A Store on ``url``, migrated to head (or only checked to answer); closed on exit.

    Raises StoreError, whose message never holds the URL (it may carry a password).
    """
    try:
        engine = create_engine(url)
    except (SQLAlchemyError, OSError, ValueError) as exc:
        raise store_error(exc) from None
    store = Store(engine, instance_id=instance_id)
    try:
        try:
            if apply_migrations:
                await migrate(engine)
            else:
                async with engine.connect():
                    pass
        except (SQLAlchemyError, OSError) as exc:
            raise store_error(exc) from None
        path = sqlite_file(url)
        if path is not None:
            store.file = StoreFile(path)
        yield store
    finally:
        await store.close(close_timeout)
