"""The status page of a running daemon, in a real headless browser (Debian's chromium):
its DOM, a screenshot, and no Content-Security-Policy violation in the browser's log.

Without chromium these tests skip, unless POLLER_REQUIRE_BROWSER=1 (CI) turns that into
a failure: the page must be proven in a browser there.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import struct
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from poller import status_page
from poller.receiver import Receiver
from poller.simulator import Simulator
from poller.timeutil import utcnow
from tests.conftest import ConfigWriter, DaemonProcess, daemon_config, free_port
from tests.e2e.test_daemon import Daemons, wait_dead, wait_delivered
from tests.integration.test_status_page import by_first, tables

pytestmark = pytest.mark.e2e

HOSTILE_ROOM = "<script>alert('room')</script>"
HEADER_SECRET = "header-secret-value-1234"
URL_TOKEN = "query-token-9012"
CSP_VIOLATION = "Content Security Policy"
# What headless chromium needs here: no sandbox as root (CI), no GPU, its log on stderr
# (console messages, CSP violations among them), and a profile of its own.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0"]


@pytest.fixture(scope="module")
def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        reason = "chromium is not installed (apt-get install chromium)"
        if os.environ.get("POLLER_REQUIRE_BROWSER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return found


@dataclass(frozen=True)
class Browsed:
    dom: str
    log: str  # the browser's stderr


async def browse(chromium: str, url: str, *extra: str) -> Browsed:
    """Load ``url`` in a fresh headless chromium; ``extra`` flags (--dump-dom, --screenshot)."""
    with tempfile.TemporaryDirectory(prefix="poller-chromium-") as profile:
        proc = await asyncio.create_subprocess_exec(
            chromium,
            *FLAGS,
            f"--user-data-dir={profile}",
            *extra,
            url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            async with asyncio.timeout(90):
                out, err = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
    assert proc.returncode == 0, err.decode(errors="replace")
    return Browsed(out.decode(), err.decode(errors="replace"))


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height of a PNG, from its IHDR chunk."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:8]
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


@dataclass(frozen=True)
class Running:
    daemon: DaemonProcess
    url: str
    receiver: Receiver


@pytest.fixture
async def running(
    simulator: Simulator,
    receiver: Receiver,
    store_url: str,
    write_config: ConfigWriter,
    daemons: Daemons,
) -> AsyncIterator[Running]:
    """A daemon whose deliveries to ``all`` arrived and those to ``filtered`` died."""
    port = free_port()
    rooms = ["room-a", "room-b", HOSTILE_ROOM]
    tables_ = daemon_config(
        simulator,
        receiver,
        store_url,
        rooms=rooms,
        webhooks=[
            {
                "name": "all",
                "url": f"{receiver.url('all')}?token={URL_TOKEN}",
                "headers": {"X-Api-Key": HEADER_SECRET},
            },
            {"name": "filtered"},
        ],
        delivery={"timeout": "2s", "retry_schedule": ["100ms", "200ms"]},
        server={"listen": f"127.0.0.1:{port}"},
    )
    receiver.fail("filtered", times=None, status=503)
    events = [simulator.add_event(room) for room in rooms]
    daemon = await daemons(write_config(**tables_)).start()
    await wait_delivered(receiver, {("all", e["id"]) for e in events}, daemon)
    await wait_dead(daemon, {e["id"] for e in events}, "every delivery to 'filtered' to die")
    yield Running(daemon, f"http://127.0.0.1:{port}/", receiver)
    assert await daemon.stop() == 0


async def test_a_running_daemon_s_page_in_a_browser(
    chromium: str, running: Running, tmp_path: Path
) -> None:
    browsed = await browse(chromium, running.url, "--dump-dom")

    assert CSP_VIOLATION not in browsed.log, browsed.log
    dom = browsed.dom
    assert "<h1>poller status</h1>" in dom
    sections = tables(dom)
    rooms = by_first(sections["rooms"])
    assert list(rooms) == ["room-a", "room-b", HOSTILE_ROOM]
    for room in rooms.values():
        assert room[1:4:2] == ["config", "ok"]  # from, outcome
        assert room[5] == "1"  # events seen
    hooks = {row[0].split(" ")[0]: row for row in sections["webhooks"]}
    assert hooks["all"][3:6] == ["0", "3", "0"]  # pending, delivered, dead
    assert hooks["filtered"][3:6] == ["0", "0", "3"]
    assert hooks["filtered"][8] == "HTTP 503"  # last error, failing all along
    assert len(sections["latest"]) == 6
    assert {row[5] for row in sections["latest"]} == {"delivered", "dead"}
    assert [row[1] for row in sections["dead"]] == ["filtered"] * 3
    # The hostile room id is text in the DOM the browser built, not an element.
    assert "<script" not in dom.lower()
    assert "&lt;script&gt;alert('room')&lt;/script&gt;" in dom
    for secret in (HEADER_SECRET, URL_TOKEN, *running.receiver.secrets.values()):
        assert secret not in dom

    shot = tmp_path / "status.png"
    browsed = await browse(chromium, running.url, f"--screenshot={shot}", "--window-size=1280,1600")
    assert CSP_VIOLATION not in browsed.log, browsed.log
    data = shot.read_bytes()
    assert png_size(data) == (1280, 1600)
    assert len(data) > 20_000  # a page of tables, not a blank image


async def test_the_browser_check_sees_a_blocked_style(chromium: str) -> None:
    """The check above can fail: the same page under a CSP with another style hash is
    reported by the browser."""

    async def served(_request: web.Request) -> web.Response:
        body = status_page.unavailable("a test", utcnow(), str)
        headers = {**status_page.HEADERS, "Content-Security-Policy": "style-src 'sha256-AAAA'"}
        return web.Response(text=body, headers=headers, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", served)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        browsed = await browse(chromium, f"http://127.0.0.1:{port}/", "--dump-dom")
    finally:
        await runner.cleanup()
    assert CSP_VIOLATION in browsed.log
    assert "a test" in browsed.dom
