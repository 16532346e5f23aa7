"""End to end: no configured secret, in any spelling, reaches anything poller shows.

The real daemon (a subprocess) runs with distinctive values in every secret field, on
SQLite and PostgreSQL, logging JSON and console, and is made to fail in each way that
can carry a secret: an API that answers 401 echoing credentials (an exception whose
message holds them), a statement the database refuses whose DETAIL quotes the event
body (a failed SQL statement), and deliveries that fail against a closed port and a
receiver that echoes the request's headers. Its output and that of ``check-config``,
``status`` and ``deliveries`` are then searched for every secret in every spelling.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp import web
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from poller.signing import SigningKey
from poller.store.db import create_engine
from poller.store.models import deliveries, rooms
from tests.conftest import ConfigWriter, DaemonProcess, make_secret
from tests.e2e.test_daemon import Daemons, poller_cli
from tests.storeops import REJECTED, reject_events_containing

pytestmark = pytest.mark.e2e

# JSON and a repr escape the quote and the backslash; JSON (ASCII) the accented letter.
APP_SECRET = 'app-s\u00e9cret"Q\\7vK2-9dLx'
ACCESS_KEY = "acc3ss-key-5eb1c0de42"
HEADER_TOKEN = "hdr-tok3n-W8nB4qZr"
URL_TOKEN = "urlTok3n-Pq7Xc2Ve"
USER_PASSWORD = "us3r-pass-Gk4Rm1"
QUERY_TOKEN = "qTok3n-Lh6Zs9Wd"
ECHO_TOKEN = "ech0Tok3n-Fy2Nj8Tb"
DB_PASSWORD = "db-pass-Vc5Hw3Jq"
# Stands for a presigned URL's signature: no configured secret, only hidden parameters
# and an unchained store error keep it out of the log.
PRESIGNED = "XAmzSignatureE2e7f3a9c"

ROOM_ECHO = "63bbb18fac740d9e9da5b4e1"  # the API answers 401, echoing credentials
ROOM_REJECT = "63bbb18fac740d9e9da5b4e2"  # its event is refused by the database
ROOM_DELIVER = "63bbb18fac740d9e9da5b4e3"  # its event fails at both webhooks
ROOMS = (ROOM_ECHO, ROOM_REJECT, ROOM_DELIVER)


def event(room_id: str, n: int, **data: Any) -> dict[str, Any]:
    return {
        "version": "2.0",
        "id": f"f3f18235-058c-432b-b8c2-{n:012d}",
        "timestamp": "2023-01-09T06:18:29.462240675Z",
        "type": "beam.recording.success",
        "data": {"room_id": room_id, "duration": 33, **data},
    }


@dataclass
class Peers:
    """The fake 100ms API and the echoing receiver, on 127.0.0.1."""

    api_url: str = ""
    echo_url: str = ""
    closed_port: int = 0
    echoed: list[dict[str, str]] = field(default_factory=list)
    runners: list[web.AppRunner] = field(default_factory=list)

    async def start(self, secrets: Iterable[str]) -> None:
        every = " ".join(secrets)
        api = web.Application()

        async def events(request: web.Request) -> web.Response:
            room = request.query["room_id"]
            if room == ROOM_ECHO:
                # An API that quotes what it was given: the token is masked by the
                # client, the other values only by the redactor.
                message = f"bad credentials for {ACCESS_KEY} signed with {APP_SECRET}"
                return web.json_response({"code": 401, "message": message}, status=401)
            if room == ROOM_REJECT:
                url = f"https://s3/x.mp4?X-Amz-Signature={PRESIGNED}"
                found = [event(room, 1, recording_presigned_url=url, note=every)]
            else:
                found = [event(room, 2, note=every)]
            return web.json_response({"limit": 100, "total": 1, "next": "", "events": found})

        api.router.add_get("/analytics/events", events)
        echo = web.Application()

        async def echo_headers(request: web.Request) -> web.Response:
            await request.read()
            self.echoed.append(dict(request.headers))
            return web.json_response(dict(request.headers), status=500)

        echo.router.add_post("/api/webhooks/{id}/{token}", echo_headers)
        self.api_url = await self._serve(api)
        self.echo_url = await self._serve(echo)
        with socket.socket() as sock:  # a port nobody listens on
            sock.bind(("127.0.0.1", 0))
            self.closed_port = sock.getsockname()[1]

    async def _serve(self, app: web.Application) -> str:
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[-1][1]}"

    async def stop(self) -> None:
        for runner in self.runners:
            await runner.cleanup()


@pytest.fixture
async def peers() -> AsyncIterator[Peers]:
    """The API and receiver, knowing every secret (the API echoes them in its events)."""
    p = Peers()
    await p.start([APP_SECRET, ACCESS_KEY, HEADER_TOKEN, URL_TOKEN, DB_PASSWORD])
    yield p
    await p.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def secret_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh store; PostgreSQL's with a password in its URL (trust auth ignores it)."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'poller.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url.replace("://postgres@", f"://postgres:{DB_PASSWORD}@", 1)


def spellings(secret: str) -> set[str]:
    """How a secret can look once rendered: raw, JSON, repr, percent-encoded."""
    found = {
        secret,
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        repr(secret)[1:-1],
        json.dumps(repr(secret)[1:-1])[1:-1],
        quote(secret, safe=""),
    }
    return {s for s in found if len(s) >= 6}


def assert_no_secret(where: str, text: str, secrets: Iterable[str]) -> None:
    for secret in secrets:
        for spelling in spellings(secret):
            assert spelling not in text, f"{spelling!r} found in {where}:\n{text}"


@pytest.mark.parametrize("fmt", ["json", "console"])
async def test_no_secret_reaches_logs_errors_or_reports(
    peers: Peers,
    secret_store_url: str,
    write_config: ConfigWriter,
    daemons: Daemons,
    fmt: str,
) -> None:
    closed_secret, echo_secret = make_secret(), make_secret()
    closed_url = (
        f"http://hook-user:{USER_PASSWORD}@127.0.0.1:{peers.closed_port}"
        f"/api/webhooks/123456/{URL_TOKEN}?token={QUERY_TOKEN}"
    )
    echo_url = f"{peers.echo_url}/api/webhooks/654321/{ECHO_TOKEN}"
    config = write_config(
        shutdown_grace="5s",
        hms={"base_url": peers.api_url, "access_key": ACCESS_KEY, "app_secret": APP_SECRET},
        poll={"interval": "300ms", "lease_ttl": "2s"},
        store={"url": secret_store_url},
        delivery={"timeout": "2s", "retry_schedule": ["100ms", "200ms"]},
        log={"level": "info", "format": fmt},
        rooms=[{"id": room} for room in ROOMS],
        webhooks=[
            {"name": "closed", "url": closed_url, "secret": closed_secret},
            {
                "name": "echo",
                "url": echo_url,
                "secret": echo_secret,
                "headers": {"X-Api-Key": HEADER_TOKEN},
            },
        ],
    )
    secrets = [APP_SECRET, ACCESS_KEY, HEADER_TOKEN, URL_TOKEN, USER_PASSWORD, QUERY_TOKEN]
    secrets += [ECHO_TOKEN, DB_PASSWORD, PRESIGNED]
    for whsec in (closed_secret, echo_secret):
        key = SigningKey.from_secret(whsec).key
        secrets += [whsec, whsec.removeprefix("whsec_"), key.hex()]

    code, out, err = await poller_cli("migrate", "-c", str(config))
    assert code == 0, err
    engine = create_engine(secret_store_url)
    try:
        await reject_events_containing(engine, PRESIGNED)
        daemon = await daemons(config).start()
        await eventually_in_store(engine, daemon)
        assert await daemon.stop(signal.SIGTERM) == 0
    finally:
        await engine.dispose()

    shown = {"the daemon's output": daemon.output(), "migrate": out + err}
    for command in (("check-config",), ("status",), ("deliveries",)):
        code, out, err = await poller_cli(*command, "-c", str(config))
        assert code == 0, err
        shown[command[0]] = out + err
    for where, text in shown.items():
        assert_no_secret(where, text, secrets)

    # What must show did, so the searches above looked at the real thing.
    summary = shown["check-config"]
    assert f"closed: http://127.0.0.1:{peers.closed_port}\n" in summary
    assert f"echo: {peers.echo_url}\n" in summary
    assert f"access key {ACCESS_KEY[:4]}***;" in summary
    status = shown["status"]
    assert f"{ROOM_ECHO}: " in status
    assert "HTTP 401, code 401: bad credentials for *** signed with ***" in status
    assert REJECTED in status
    listing = shown["deliveries"]
    assert "connection failed" in listing
    assert "HTTP 500" in listing
    logs = shown["the daemon's output"]
    # The refused statement is reported once per spell, with the driver's one line (a
    # traceback's masking is tested in tests/unit/test_log.py).
    assert "store_failing" in logs
    assert REJECTED in logs
    assert "bad credentials for *** signed with ***" in logs
    if fmt == "json":
        bad = [line for line in logs.splitlines() if not _is_json(line)]
        assert not bad, bad  # masking kept every line JSON
    # The secret values did travel: the receiver was sent the header and the API's echo.
    assert any(h.get("X-Api-Key") == HEADER_TOKEN for h in peers.echoed)


async def eventually_in_store(engine: AsyncEngine, daemon: DaemonProcess) -> None:
    """Wait until both deliveries are dead and the echo and reject rooms recorded errors."""
    deadline = time.monotonic() + 20
    while True:
        async with engine.connect() as conn:
            dead = await conn.scalar(
                select(func.count()).select_from(deliveries).where(deliveries.c.state == "dead")
            )
            found = await conn.execute(select(rooms.c.id).where(rooms.c.last_error.is_not(None)))
            failing = {row.id for row in found}
        if dead == 2 and {ROOM_ECHO, ROOM_REJECT} <= failing:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"dead {dead}, failing {failing}:\n{daemon.output()}")
        await asyncio.sleep(0.05)


def _is_json(line: str) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True
