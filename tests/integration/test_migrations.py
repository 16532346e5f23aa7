"""Alembic migrations on SQLite and PostgreSQL: idempotent, complete, reversible, serialised."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from poller.store.db import _alembic_config, create_engine, migrate, schema_revisions
from poller.store.models import events, metadata

TABLES = set(metadata.tables)


def head() -> str:
    heads = ScriptDirectory.from_config(_alembic_config()).get_heads()
    assert len(heads) == 1, f"migrations must have a single head, got {heads}"
    return heads[0]


def revisions_oldest_first() -> list[str]:
    script = ScriptDirectory.from_config(_alembic_config())
    return [r.revision for r in reversed(list(script.walk_revisions()))]


def _diff(conn: Connection) -> list[Any]:
    context = MigrationContext.configure(
        conn, opts={"compare_type": True, "target_metadata": metadata}
    )
    return list(compare_metadata(context, metadata))


async def schema_diff(engine: AsyncEngine) -> list[Any]:
    """What autogenerate would change to make the database match the models (nothing ignored)."""
    async with engine.connect() as conn:
        return await conn.run_sync(_diff)


async def table_names(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))


async def alembic(engine: AsyncEngine, action: str, revision: str) -> None:
    """Run an Alembic command on our own connection, as poller.store.db does."""

    def run(conn: Connection) -> None:
        cfg: AlembicConfig = _alembic_config()
        cfg.attributes["connection"] = conn
        getattr(command, action)(cfg, revision)

    async with engine.begin() as conn:
        await conn.run_sync(run)


@pytest.fixture
async def engine(store_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(store_url)
    yield eng
    await eng.dispose()


async def test_fresh_store_has_no_revision(engine: AsyncEngine) -> None:
    assert await schema_revisions(engine) == (None, head())
    assert await table_names(engine) & TABLES == set()


async def test_migrate_twice_is_a_no_op(engine: AsyncEngine) -> None:
    await migrate(engine)
    assert await schema_revisions(engine) == (head(), head())
    async with engine.begin() as conn:
        await conn.execute(
            events.insert().values(
                id="e1",
                room_id="r",
                type="t",
                timestamp="ts",
                seen_at=dt.datetime.now(dt.UTC),
                body="{}",
            )
        )
    await migrate(engine)
    assert await schema_revisions(engine) == (head(), head())
    async with engine.connect() as conn:
        assert (await conn.execute(select(events.c.id))).scalars().all() == ["e1"]
        versions = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
    assert versions == [(head(),)]


async def test_migrated_schema_matches_the_models(engine: AsyncEngine) -> None:
    await migrate(engine)
    assert await table_names(engine) >= TABLES
    assert await schema_diff(engine) == []


async def test_downgrade_to_base_and_upgrade_again(engine: AsyncEngine) -> None:
    await migrate(engine)
    await alembic(engine, "downgrade", "base")
    assert await table_names(engine) & TABLES == set()
    assert await schema_revisions(engine) == (None, head())
    await alembic(engine, "upgrade", "head")
    assert await schema_revisions(engine) == (head(), head())
    assert await schema_diff(engine) == []
    # And poller's own migrate() agrees there is nothing left to do.
    await migrate(engine)
    assert await schema_revisions(engine) == (head(), head())


async def test_every_revision_steps_down_and_up(engine: AsyncEngine) -> None:
    """The stairway: each revision's downgrade undoes its upgrade, one step at a time."""
    for revision in revisions_oldest_first():
        await alembic(engine, "upgrade", revision)
        assert (await schema_revisions(engine))[0] == revision
        await alembic(engine, "downgrade", "-1")
        await alembic(engine, "upgrade", revision)
        assert (await schema_revisions(engine))[0] == revision
    assert await schema_diff(engine) == []


async def test_migrate_leaves_logging_alone(engine: AsyncEngine) -> None:
    # Alembic's stock env.py calls fileConfig(), which disables existing loggers.
    logger = logging.getLogger("poller.test_migrations")
    root_handlers = list(logging.getLogger().handlers)
    root_level = logging.getLogger().level
    await migrate(engine)
    assert not logger.disabled
    assert logging.getLogger().handlers == root_handlers
    assert logging.getLogger().level == root_level


async def test_sqlite_store_directory_is_created(tmp_path: Path) -> None:
    path = tmp_path / "state" / "nested" / "poller.db"
    eng = create_engine(f"sqlite+aiosqlite:///{path}")
    try:
        await migrate(eng)
        assert path.exists()
        assert await schema_revisions(eng) == (head(), head())
        async with eng.connect() as conn:
            mode = (await conn.execute(text("PRAGMA journal_mode"))).scalar()
            fks = (await conn.execute(text("PRAGMA foreign_keys"))).scalar()
        assert (mode, fks) == ("wal", 1)
    finally:
        await eng.dispose()


# --- PostgreSQL: several instances starting at once ---------------------------------


@pytest.mark.postgres
async def test_concurrent_migrations_on_postgresql(pg_url: str) -> None:
    engines = [create_engine(pg_url) for _ in range(4)]
    try:
        await asyncio.gather(*(migrate(e) for e in engines))
        for e in engines:
            assert await schema_revisions(e) == (head(), head())
        async with engines[0].connect() as conn:
            versions = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
        assert versions == [(head(),)]
        assert await schema_diff(engines[0]) == []
        # Again, now that the schema exists: still fine.
        await asyncio.gather(*(migrate(e) for e in engines))
        assert await schema_revisions(engines[0]) == (head(), head())
    finally:
        for e in engines:
            await e.dispose()
