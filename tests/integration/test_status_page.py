"""The status page (``GET /``) over a real store on both backends: what it shows, its
headers, escaping of hostile text, no secrets, and a 503 page while the store hangs."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import json
import re
import sqlite3
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from poller.config import Config, load_config
from poller.events import Event
from poller.health import Check
from poller.metrics import Metrics
from poller.parts import build
from poller.redaction import redactor_of
from poller.server import HealthServer
from poller.snapshot import Snapshot, snapshot
from poller.states import WebhookMode
from poller.status_page import DELIVERIES, STYLE
from poller.store.db import create_engine
from poller.store.repo import Store
from poller.timeutil import utcnow
from tests.conftest import ConfigWriter, make_secret
from tests.storeops import finish_poll, mark_delivered, mark_failed

HOSTILE_ROOM = "<script>alert('room')</script>"
HOSTILE_TYPE = '<script>alert("type")</script>'
HOSTILE_ERROR = "HTTP 500 <img src=x onerror=alert(1)>"
HEADER_SECRET = "header-secret-value-1234"
URL_PASSWORD = "url-password-5678"
URL_TOKEN = "query-token-9012"
PATH_TOKEN = "path-token-3456"
SECRET = make_secret()
HOOK_URL = f"http://hookuser:{URL_PASSWORD}@127.0.0.1:9/hooks/{PATH_TOKEN}?token={URL_TOKEN}"
SECRETS = [SECRET, SECRET.removeprefix("whsec_"), HEADER_SECRET, URL_PASSWORD, URL_TOKEN]


def event(n: int, room: str, type: str = "beam.recording.success") -> Event:
    event_id = f"00000000-0000-4000-8000-{n:012d}"
    body = {"version": "2.0", "id": event_id, "timestamp": "t", "type": type, "data": {}}
    return Event(event_id, type, "2025-03-01T12:00:00Z", room, json.dumps(body))


@pytest.fixture
def config(store_url: str, write_config: ConfigWriter) -> Config:
    """Four webhooks, one in each state; the first one's URL and headers hold secrets."""

    def hook(name: str) -> dict[str, object]:
        return {"name": name, "url": f"http://127.0.0.1:9/{name}", "secret": make_secret()}

    return load_config(
        write_config(
            hms={"base_url": "http://127.0.0.1:9", "management_token": "token-value-0123"},
            store={"url": store_url},
            server={"listen": "127.0.0.1:0"},
            rooms=[{"id": "room-a"}, {"id": "room-b"}, {"id": HOSTILE_ROOM}],
            webhooks=[
                {
                    "name": "all",
                    "url": HOOK_URL,
                    "secret": SECRET,
                    "headers": {"X-Api-Key": HEADER_SECRET},
                },
                hook("flaky"),
                hook("gone"),
                hook("held"),
            ],
        )
    )


@dataclass(frozen=True)
class Removed:
    """A webhook that was in the config when its deliveries were made."""

    name: str = "removed"

    def matches(self, room_id: str, event_type: str) -> bool:
        return True


@dataclass(frozen=True)
class Filled:
    """What the store holds: per webhook of ``all``'s deliveries, which one is which."""

    delivered: int
    dead: int
    pending: int


async def fill(store: Store, config: Config) -> Filled:
    """room-a polled fine, room-b failing, the hostile room never polled; ``all`` has a
    delivered, a dead and a pending delivery; the other three are in breaker, 410 and pause."""
    now = utcnow()
    await store.heartbeat(ttl=30, now=now, started_at=now - dt.timedelta(minutes=5))
    await store.update_rooms(acquire=[("room-a", True), ("room-b", True)], ttl=30, now=now)
    page = [event(1, "room-a"), event(2, "room-a", HOSTILE_TYPE), event(3, "room-a")]
    await store.record_page("room-a", page, config.webhooks[:1], deliver=True, now=now)
    await finish_poll(store, "room-a", error=None, now=now)
    await finish_poll(store, "room-b", error=f"{HOSTILE_ERROR} echoing {HEADER_SECRET}", now=now)
    first, second, third = await store.claim("all", 3, ttl=30, now=now)
    await mark_delivered(store, first, status=204, now=now)
    error = f"HTTP 503 {HOSTILE_ERROR}"
    await mark_failed(store, second, status=503, error=error, retry_at=None, now=now)
    retry_at = now + dt.timedelta(minutes=5)
    await mark_failed(store, third, status=None, error="timeout", retry_at=retry_at, now=now)
    await store.ensure_webhooks([w.name for w in config.webhooks])
    await store.webhook_failing("flaky", error="HTTP 502 <b>bad gateway</b>", now=now)
    await store.open_breaker("flaky", error="HTTP 502 <b>bad gateway</b>", probe_after=30, now=now)
    gone = "the receiver answered 410 Gone at 2026-12-03T13:32:37Z"
    await store.set_webhook_mode("gone", WebhookMode.DISABLED, reason=gone, now=now)
    held = "paused by hand at 2026-12-03T13:32:46Z"
    await store.set_webhook_mode("held", WebhookMode.PAUSED, reason=held, now=now)
    # Owed to the paused webhook: due at once, and waiting.
    await store.record_page(
        "room-b", [event(4, "room-b")], config.webhooks[3:], deliver=True, now=now
    )
    # Owed to a webhook since removed from the config.
    await store.record_page("room-b", [event(5, "room-b")], [Removed()], deliver=True, now=now)
    return Filled(first.delivery_id, second.delivery_id, third.delivery_id)


def server_for(
    store: Store, config: Config, *, reads: list[float] | None = None, **options: float
) -> HealthServer:
    """The server as parts.build makes it; each read of the store is noted in ``reads``."""

    async def status() -> Snapshot:
        if reads is not None:
            reads.append(asyncio.get_running_loop().time())
        return await snapshot(store, config, utcnow(), deliveries=DELIVERIES)

    async def nothing() -> None:
        return None

    async def no_checks() -> list[Check]:
        return []

    return HealthServer(
        "127.0.0.1",
        0,
        metrics=Metrics(instance=store.instance_id, version="test"),
        refresh_metrics=nothing,
        live=list,
        ready=no_checks,
        status=status,
        redact=redactor_of(config),
        **options,
    )


@contextlib.asynccontextmanager
async def serving(server: HealthServer) -> AsyncIterator[str]:
    await server.start()
    try:
        yield f"http://127.0.0.1:{server.port}/"
    finally:
        await server.stop()


async def fetch(url: str, method: str = "GET") -> tuple[int, dict[str, str], str]:
    async with aiohttp.ClientSession() as session, session.request(method, url) as resp:
        return resp.status, dict(resp.headers), await resp.text()


class Tables(HTMLParser):
    """Each section's table rows (cell texts), by the section's id."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, list[list[str]]] = {}
        self._section = ""
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "section":
            self._section = dict(attrs).get("id") or ""
            self.rows[self._section] = []
        elif tag == "tr":
            self._row = []
        elif tag == "td":
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._row is not None and self._cell is not None:
            # Elements of one cell read as words: "all" then its URL, "pending" then "next ...".
            self._row.append(" ".join(" ".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row:
            self.rows[self._section].append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def tables(body: str) -> dict[str, list[list[str]]]:
    parser = Tables()
    parser.feed(body)
    return parser.rows


def by_first(rows: list[list[str]]) -> dict[str, list[str]]:
    return {row[0]: row for row in rows}


def assert_safe_headers(headers: dict[str, str]) -> None:
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["Cache-Control"] == "no-store"
    policy = dict(
        [*d.split(" ", 1), ""][:2] for d in headers["Content-Security-Policy"].split("; ")
    )
    assert policy["default-src"] == "'none'"
    assert policy["frame-ancestors"] == "'none'"


def assert_style_allowed(headers: dict[str, str], body: str) -> None:
    """The CSP's one style hash is the hash of the page's one inline style."""
    (style,) = re.findall(r"<style>(.*?)</style>", body, flags=re.S)
    assert style == STYLE
    digest = base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
    assert f"style-src 'sha256-{digest}';" in headers["Content-Security-Policy"]


async def test_page_shows_rooms_webhooks_and_deliveries_escaped_and_without_secrets(
    store: Store, config: Config
) -> None:
    filled = await fill(store, config)
    async with serving(server_for(store, config)) as url:
        status, headers, body = await fetch(url)

    assert status == 200, body
    assert_safe_headers(headers)
    assert_style_allowed(headers, body)
    assert body.startswith("<!DOCTYPE html>")
    # Hostile text is shown, as text: no element of it survives, and nothing runs.
    assert "<script" not in body.lower()
    assert "<img" not in body
    assert "<b>" not in body
    assert "&lt;script&gt;alert(&#x27;room&#x27;)&lt;/script&gt;" in body
    assert "&lt;script&gt;alert(&quot;type&quot;)&lt;/script&gt;" in body
    assert "&lt;img src=x onerror=alert(1)&gt;" in body
    for secret in [*SECRETS, PATH_TOKEN, "hookuser", "token-value-0123"]:
        assert secret not in body
    for w in config.webhooks:
        assert w.secret.reveal() not in body

    sections = tables(body)
    assert set(sections) == {"instances", "rooms", "webhooks", "latest", "dead"}
    (instance,) = sections["instances"]
    assert instance[0] == "test-instance (this one)"
    assert instance[1].endswith(" ago")  # started (by the database's clock on PostgreSQL)
    assert instance[2].endswith("s ago")  # last heartbeat

    rooms = by_first(sections["rooms"])
    assert list(rooms) == ["room-a", "room-b", HOSTILE_ROOM]
    # room, from, last poll, outcome, last success, events seen, lease owner, last error
    assert {row[1] for row in rooms.values()} == {"config"}
    assert rooms["room-a"][3:4] == ["ok"]
    assert rooms["room-a"][5:] == ["3", "test-instance", ""]
    assert rooms["room-b"][5] == "2"  # events 4 and 5
    assert rooms["room-b"][3] == "failed (1 in a row)"
    assert rooms["room-b"][4] == "never"
    assert rooms["room-b"][7] == f"{HOSTILE_ERROR} echoing ***"  # masked like every report
    assert rooms[HOSTILE_ROOM][2:4] == ["never", "not polled yet"]

    hooks = {row[0].split(" ")[0]: row for row in sections["webhooks"]}
    assert list(hooks) == ["all", "flaky", "gone", "held", "removed"]
    # webhook (url), state (reason), since, pending, delivered, dead, oldest pending, ...
    assert hooks["all"][0] == "all http://127.0.0.1:9"  # the origin: no userinfo, path, query
    assert hooks["all"][1] == "active"
    assert hooks["all"][3:6] == ["1", "1", "1"]
    assert hooks["all"][6].endswith("s ago")
    assert hooks["flaky"][1].startswith("breaker open since ")
    assert "next probe in " in hooks["flaky"][1]
    assert hooks["flaky"][8] == "HTTP 502 <b>bad gateway</b>"  # as text, not markup
    assert hooks["gone"][1] == "disabled the receiver answered 410 Gone at 2026-12-03T13:32:37Z"
    assert hooks["held"][1] == "paused paused by hand at 2026-12-03T13:32:46Z"
    assert hooks["held"][3:6] == ["1", "0", "0"]
    assert hooks["held"][6].endswith(" ago")  # its oldest pending delivery
    assert hooks["removed"][0] == "removed not configured"
    assert hooks["removed"][1] == (
        "orphaned not in the config; its deliveries are kept for when it returns, "
        "or `poller deliveries purge --webhook removed`"
    )
    assert hooks["removed"][3:6] == ["1", "0", "0"]

    (orphaned, waiting, *rows) = sections["latest"]
    assert orphaned[1] == "removed"
    latest = by_first(rows)
    assert list(latest) == [str(filled.pending), str(filled.dead), str(filled.delivered)]
    assert waiting[1:3] == ["held", "room-b"]
    assert waiting[5].startswith("pending due ")  # held back by the pause, past its time
    assert waiting[5].endswith(" ago")
    # id, webhook, room, event type, event, state, attempts, last answer, seen, last attempt
    assert latest[str(filled.delivered)][5:8] == ["delivered", "1", "204"]
    assert latest[str(filled.pending)][5].startswith("pending next in ")
    assert latest[str(filled.pending)][7] == "- timeout"
    dead_row = latest[str(filled.dead)]
    assert dead_row[1:4] == ["all", "room-a", HOSTILE_TYPE]
    assert dead_row[4] == "00000000"
    assert dead_row[5:8] == ["dead", "1", f"503 HTTP 503 {HOSTILE_ERROR}"]
    assert [row[0] for row in sections["dead"]] == [str(filled.dead)]


async def test_head_answers_and_other_methods_are_refused(store: Store, config: Config) -> None:
    async with serving(server_for(store, config)) as url:
        status, headers, body = await fetch(url, "HEAD")
        assert (status, body) == (200, "")
        assert_safe_headers(headers)
        for method in ("POST", "PUT", "DELETE"):
            status, _, _ = await fetch(url, method)
            assert status == 405, method


async def test_an_empty_store_says_so(store: Store, config: Config) -> None:
    async with serving(server_for(store, config)) as url:
        status, _, body = await fetch(url)
    assert status == 200
    assert "no deliveries yet" in body
    assert "no dead deliveries" in body
    assert "none running" in body
    assert [row[2:4] for row in tables(body)["rooms"]] == [["never", "not polled yet"]] * 3


@contextlib.contextmanager
def sqlite_locked(url: str) -> Iterator[None]:
    """Another process's write lock on the SQLite file, as a CLI command holds one."""
    path = make_url(url).database
    assert path is not None
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        yield
    finally:
        other.execute("ROLLBACK")
        other.close()


@contextlib.asynccontextmanager
async def postgres_locked(url: str) -> AsyncIterator[None]:
    """Another session holding the rooms table exclusively: every read of it waits."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            await conn.execute(text("LOCK TABLE rooms IN ACCESS EXCLUSIVE MODE"))
            yield
            await conn.rollback()
    finally:
        await engine.dispose()


@contextlib.asynccontextmanager
async def store_held(url: str) -> AsyncIterator[None]:
    if make_url(url).get_backend_name() == "sqlite":
        with sqlite_locked(url):
            yield
    else:
        async with postgres_locked(url):
            yield


async def test_a_hanging_store_gets_a_503_page_in_bounded_time_then_recovers(
    store: Store, config: Config, store_url: str
) -> None:
    await fill(store, config)
    reads: list[float] = []
    async with serving(server_for(store, config, reads=reads, page_timeout=0.5)) as url:
        async with store_held(store_url):
            started = asyncio.get_running_loop().time()
            status, headers, body = await fetch(url)
            took = asyncio.get_running_loop().time() - started
            # Asked again while the first read still waits: no second read piles up.
            again = await asyncio.gather(fetch(url), fetch(url))
        assert status == 503
        assert took < 3.0  # the page timeout, not the store's (SQLite waits 10 s)
        assert [answer[0] for answer in again] == [503, 503]
        assert len(reads) == 1
        assert_safe_headers(headers)
        assert_style_allowed(headers, body)
        assert "The store did not answer within 0.5s." in body
        assert "Traceback" not in body
        # Released, the store answers again: the next request shows the page.
        async with asyncio.timeout(15):
            while (await fetch(url))[0] != 200:
                await asyncio.sleep(0.1)


async def page_over_file(path: Path, config: Config) -> tuple[int, dict[str, str], str]:
    """The page served over the SQLite file ``path``, whatever it holds."""
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    try:
        async with serving(server_for(Store(engine, instance_id="x"), config)) as url:
            return await fetch(url)
    finally:
        await engine.dispose()


async def test_a_store_that_is_not_migrated_gets_a_503_page(tmp_path: Path, config: Config) -> None:
    status, headers, body = await page_over_file(tmp_path / "empty.db", config)
    assert status == 503
    assert_safe_headers(headers)
    assert "The store could not be read: store schema is at None" in body
    assert "run `poller migrate`" in body


async def test_a_store_that_fails_gets_a_503_page_with_its_error(
    tmp_path: Path, config: Config
) -> None:
    path = tmp_path / "not-a-database.db"
    path.write_bytes(b"this is not an SQLite file, " * 100)
    status, _, body = await page_over_file(path, config)
    assert status == 503
    assert "The store could not be read: " in body
    assert "not a database" in body
    assert "Traceback" not in body


@pytest.mark.parametrize("enabled", [True, False])
async def test_status_page_follows_the_config_key(
    store: Store, store_url: str, write_config: ConfigWriter, enabled: bool
) -> None:
    config = load_config(
        write_config(
            hms={"base_url": "http://127.0.0.1:9", "management_token": "token-value-0123"},
            store={"url": store_url},
            server={"listen": "127.0.0.1:0", "status_page": enabled},
            rooms=[{"id": "room-a"}],
            webhooks=[{"name": "all", "url": "http://127.0.0.1:9/", "secret": make_secret()}],
        )
    )
    parts = build(config, store)
    assert parts.server is not None
    try:
        async with serving(parts.server) as url:
            status, _, body = await fetch(url)
            healthz, _, _ = await fetch(url + "healthz")
    finally:
        for session in parts.sessions:
            await session.close()
    assert healthz in (200, 503)  # the other endpoints are there either way
    if enabled:
        assert status == 200
        assert "<h1>poller status</h1>" in body
    else:
        assert status == 404
