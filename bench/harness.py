"""What a benchmark run needs around the daemon: configs, stores, the daemon process."""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import signal
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from bench.events import backlog, compact
from bench.procs import Child, Children, NotifySocket

DEFAULT_PG = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
TOKEN = "bench-management-token"  # the fake API takes any bearer token


@dataclass(frozen=True, slots=True)
class Hook:
    """A webhook of the benchmark: its name and Standard Webhooks secret."""

    name: str
    secret: str

    def matches(self, room_id: str, event_type: str) -> bool:  # a WebhookFilter
        return True

    @property
    def spec(self) -> str:
        return f"{self.name}={self.secret}"


def new_hooks(count: int) -> list[Hook]:
    return [
        Hook(f"h{i}", "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode())
        for i in range(count)
    ]


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


MAX_BUDGET = 10_000.0  # hms.max_requests_per_second at most


def _daemon_has_budget() -> bool:
    """Whether the poller under test ($BENCH_POLLER_SRC, or this one) knows the budget key."""
    src = os.environ.get("BENCH_POLLER_SRC")
    if not src:
        return True
    schema = Path(src) / "poller" / "config" / "schema.py"
    return schema.exists() and "max_requests_per_second" in schema.read_text()


def daemon_config(
    *,
    api_url: str,
    sink_url: str,
    store_url: str,
    rooms: Iterable[str],
    hooks: list[Hook],
    interval: float,
    backfill: bool = True,
    poll_concurrency: int = 32,
    delivery_concurrency: int = 64,
    log_level: str = "info",
    poll_extra: Sequence[str] = (),
    max_requests_per_second: float | None = None,
) -> str:
    """A poller config.toml for one benchmark (JSON logs at ``log_level``, no HTTP server);
    ``poll_extra`` are more ``key = value`` lines of [poll].

    The API request budget is not what these scenarios measure: unless one is given, it is
    set to its maximum (``MAX_BUDGET``), so that the default 50/s does not cap what the
    daemon is asked to do; a daemon under test that has no budget yet gets no key.
    """
    if max_requests_per_second is None and _daemon_has_budget():
        max_requests_per_second = MAX_BUDGET
    lines = [
        'shutdown_grace = "10s"',
        "[hms]",
        f"base_url = {_toml_str(api_url)}",
        f"management_token = {_toml_str(TOKEN)}",
        *(
            [f"max_requests_per_second = {max_requests_per_second!r}"]
            if max_requests_per_second is not None
            else []
        ),
        "[poll]",
        f"interval = {interval!r}",
        f"backfill = {'true' if backfill else 'false'}",
        f"max_concurrency = {poll_concurrency}",
        *poll_extra,
        "[store]",
        f"url = {_toml_str(store_url)}",
        "[delivery]",
        'timeout = "10s"',
        'retry_schedule = ["1s", "2s"]',
        f"max_concurrency = {delivery_concurrency}",
        "[log]",
        f"level = {_toml_str(log_level)}",
        'format = "json"',
    ]
    for room in rooms:
        lines += ["[[rooms]]", f"id = {_toml_str(room)}"]
    for hook in hooks:
        lines += [
            "[[webhooks]]",
            f"name = {_toml_str(hook.name)}",
            f"url = {_toml_str(f'{sink_url}/hooks/{hook.name}')}",
            f"secret = {_toml_str(hook.secret)}",
        ]
    return "\n".join(lines) + "\n"


@dataclass
class DaemonRun:
    """The real daemon (``python -m poller run``) as a child process."""

    child: Child
    spawned_at: float  # monotonic
    ready_at: float  # monotonic, when READY=1 arrived

    @property
    def startup_s(self) -> float:
        return self.ready_at - self.spawned_at

    def stop(self) -> int | None:
        """SIGTERM, as systemd would; the group is killed if it does not exit in time."""
        return self.child.stop(signal.SIGTERM, timeout=20.0)


def start_daemon(children: Children, name: str, config: str, timeout: float = 60.0) -> DaemonRun:
    """Write ``config``, start the daemon with our NOTIFY_SOCKET and wait for READY=1."""
    path = children.workdir / f"{name}.toml"
    path.write_text(config)
    notify = NotifySocket(children.workdir / f"{name}.notify")
    try:
        spawned = time.monotonic()
        env = {"NOTIFY_SOCKET": str(notify.path)}
        # $BENCH_POLLER_SRC: run another checkout's poller (e.g. the code before a change).
        src = os.environ.get("BENCH_POLLER_SRC")
        if src:
            env["PYTHONPATH"] = src
        child = children.spawn(
            name,
            ["-m", "poller", "run", "-c", str(path)],
            env=env,
            stdout=False,
            cwd=Path(src) if src else None,
        )
        ready = notify.wait_for("READY=1", timeout, child)
    finally:
        notify.close()
    return DaemonRun(child, spawned, ready)


def sqlite_url(workdir: Path, name: str) -> str:
    return f"sqlite+aiosqlite:///{workdir / name}.db"


async def _seed(url: str, rooms: list[str], count: int, hooks: list[Hook], seed: int) -> None:
    from poller.events import Event
    from poller.store.db import create_engine, migrate
    from poller.store.repo import Store
    from poller.timeutil import utcnow

    engine = create_engine(url)
    try:
        await migrate(engine)
        store = Store(engine, instance_id="bench-seed")
        by_room: dict[str, list[Event]] = {}
        for room, event in backlog(rooms, count, seed):
            by_room.setdefault(room, []).append(
                Event(event["id"], event["type"], event["timestamp"], room, compact(event))
            )
        for room, room_events in by_room.items():
            it = iter(room_events)
            while page := list(islice(it, 100)):
                await store.record_page(room, page, hooks, deliver=True, now=utcnow())
    finally:
        await engine.dispose()


def seed_backlog(url: str, rooms: list[str], count: int, hooks: list[Hook], seed: int = 1) -> None:
    """Put ``count`` events and their outbox rows in the store with poller's own ``record_page``."""
    asyncio.run(_seed(url, rooms, count, hooks, seed))


class PgDatabases:
    """Throw-away databases ``bench_<pid>_<n>`` on a PostgreSQL server, dropped on close."""

    def __init__(self, admin_url: str) -> None:
        from sqlalchemy.engine import make_url

        self._admin = make_url(admin_url)
        self._created: list[str] = []

    async def _execute(self, sql: str) -> None:
        from sqlalchemy import text
        from sqlalchemy.ext.asyncio import create_async_engine

        engine = create_async_engine(self._admin, isolation_level="AUTOCOMMIT")
        try:
            async with asyncio.timeout(30), engine.connect() as conn:
                await conn.execute(text(sql))
        finally:
            await engine.dispose()

    def create(self) -> str:
        name = f"bench_{os.getpid()}_{len(self._created)}"
        asyncio.run(self._execute(f'CREATE DATABASE "{name}"'))
        self._created.append(name)
        return self._admin.set(database=name).render_as_string(hide_password=False)

    def close(self) -> None:
        while self._created:
            name = self._created.pop()
            asyncio.run(self._execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def pg_reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether ``url`` accepts a connection within ``timeout`` seconds."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    async def probe() -> None:
        engine = create_async_engine(url)
        try:
            async with asyncio.timeout(timeout), engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        finally:
            await engine.dispose()

    try:
        asyncio.run(probe())
    except Exception:
        return False
    return True


def profile(children: Children, name: str, pid: int, seconds: float) -> Child | None:
    """With ``$BENCH_PYSPY=<dir>``, sample ``pid`` with py-spy for ``seconds`` (raw stacks).

    Summarise the output with ``python -m bench.profsum <dir>/<name>.txt``.
    """
    out = os.environ.get("BENCH_PYSPY")
    spy = Path(sys.executable).with_name("py-spy")
    if not out or not spy.exists():
        return None
    Path(out).mkdir(parents=True, exist_ok=True)
    return children.spawn_exe(
        f"py-spy-{name}",
        [
            str(spy),
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, int(seconds))),
            "--rate",
            "200",
            "--gil",  # only what holds the GIL: the Python work, not idle waits
            "--format",
            "raw",
            "--output",
            str(Path(out) / f"{name}.txt"),
        ],
    )
