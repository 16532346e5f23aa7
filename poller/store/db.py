"""Engine setup (SQLite pragmas, single writer) and Alembic migrations on our own connection."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, event, text
from sqlalchemy.engine import AdaptedConnection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

# Any constant works; it only has to be the same for every poller instance.
_MIGRATION_LOCK_KEY = 0x706F6C6C6572  # "poller"
SQLITE_BUSY_TIMEOUT_MS = 10_000


def create_engine(url: str) -> AsyncEngine:
    """Create the async engine; SQLite gets WAL, busy_timeout and one writer connection."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_async_engine(
            url, pool_pre_ping=True, pool_size=10, max_overflow=5, hide_parameters=True
        )
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    # One connection serialises writers inside the process; BEGIN IMMEDIATE
    # makes a writer in another process (a CLI command) wait on busy_timeout
    # instead of failing with "database is locked" half-way through.
    # hide_parameters: a failed statement's error would otherwise quote event bodies
    # (presigned recording URLs, whose signatures are credentials) into logs.
    engine = create_async_engine(
        url, pool_size=1, max_overflow=0, pool_timeout=60, hide_parameters=True
    )
    _install_sqlite_hooks(engine)
    return engine


def _install_sqlite_hooks(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event emit BEGIN itself (pysqlite's own
        # transaction handling would defer it and cannot say IMMEDIATE).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Why: straight on the aiosqlite connection it is one round trip to the
        # driver's thread instead of three (cursor, execute, close), about a fifth of
        # a small transaction's cost (BENCHMARKS.md).
        dbapi = conn.connection.dbapi_connection
        if isinstance(dbapi, AdaptedConnection):
            dbapi.run_async(lambda driver: driver.execute("BEGIN IMMEDIATE"))
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")


def _alembic_config() -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(resources.files("poller.migrations")))
    return cfg


def _upgrade(conn: Connection, cfg: AlembicConfig) -> None:
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, "head")


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to head, serialised across instances on PostgreSQL."""
    cfg = _alembic_config()
    async with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            # Transaction-scoped: released by the commit, or by the server if we die.
            await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
        await conn.run_sync(_upgrade, cfg)


def _revisions(conn: Connection) -> tuple[str | None, str | None]:
    current = MigrationContext.configure(conn).get_current_revision()
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    return current, head


async def schema_revisions(engine: AsyncEngine) -> tuple[str | None, str | None]:
    """Return (current revision in the store, head revision shipped with this version)."""
    async with engine.connect() as conn:
        return await conn.run_sync(_revisions)
