"""``poller demo``: the real daemon against a local 100ms simulator and receiver."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import TextIO

from poller import app, log
from poller.config import load_config
from poller.receiver import Received, Receiver
from poller.redaction import secrets_of
from poller.simulator import Simulator

ROOMS = ("demo-room-a", "demo-room-b", "demo-room-c")
NEW_ROOM = "demo-room-new"  # created while the demo runs: discovery finds it
WEBHOOKS = {"recordings": None, "room-a-only": [ROOMS[0]]}  # name -> rooms filter


def _secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def _config_text(api: str, receiver: Receiver, store: Path, key: str, app_secret: str) -> str:
    lines = [
        "# Written by `poller demo`. A real config looks the same with your",
        "# 100ms credentials, your rooms and your webhook URLs.",
        "[hms]",
        f'base_url = "{api}"',
        f'access_key = "{key}"',
        f'app_secret = "{app_secret}"',
        "",
        "[poll]",
        'interval = "1s"',
        "page_size = 2  # small, to show paging",
        "# adaptive (the default with [discovery]): rooms with a live or recent session",
        "# every interval, the others every idle_interval",
        'idle_interval = "3s"',
        'sessions_interval = "1s"',
        "",
        "[store]",
        f'url = "sqlite+aiosqlite:///{store}"',
        "",
        "[discovery]  # poll the rooms GET /rooms lists, besides [[rooms]]",
        "enabled = true",
        'interval = "1s"',
        "",
        "[delivery]",
        'timeout = "5s"',
        'retry_schedule = ["1s", "2s", "4s"]',
        "",
    ]
    lines += [f'[[rooms]]\nid = "{room}"\n' for room in ROOMS]
    for name, rooms in WEBHOOKS.items():
        lines += [
            "[[webhooks]]",
            f'name = "{name}"',
            f'url = "{receiver.url(name)}"',
            f'secret = "{receiver.secrets[name]}"',
        ]
        if rooms:
            lines.append(f"rooms = {json.dumps(rooms)}")
        lines.append("")
    return "\n".join(lines)


class _Printer:
    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.attempts: Counter[tuple[str, str]] = Counter()

    def __call__(self, r: Received) -> None:
        self.attempts[(r.webhook, r.msg_id)] += 1
        room = json.loads(r.body).get("data", {}).get("room_id", "?") if r.valid else "?"
        mark = "delivered" if r.ok else f"answered {r.status}, poller will retry"
        sig = "signature valid" if r.valid else "SIGNATURE INVALID"
        print(
            f"  {r.webhook:<12} event {r.msg_id[:8]}  {room:<12} attempt "
            f"{self.attempts[(r.webhook, r.msg_id)]}  {sig}  -> {mark}",
            file=self.out,
            flush=True,
        )


async def _demo(events: int, timeout: float, verbose: bool, out: TextIO) -> int:
    key, app_secret = "demo-access-key", secrets.token_urlsafe(32)
    sim = Simulator(access_key=key, app_secret=app_secret)
    printer = _Printer(out)
    receiver = Receiver({name: _secret() for name in WEBHOOKS}, on_request=printer)
    api = await sim.start()
    await receiver.start()
    with tempfile.TemporaryDirectory(prefix="poller-demo-") as tmp:
        path = Path(tmp) / "config.toml"
        path.write_text(_config_text(api, receiver, Path(tmp) / "poller.db", key, app_secret))
        config = load_config(path)
        log.configure("info" if verbose else "error", "auto", secrets=secrets_of(config))
        print(f"100ms API simulator at {api}, receiver at {receiver.base_url}", file=out)
        print(f"daemon config: {path} (deleted when the demo ends)", file=out)

        expected: set[tuple[str, str]] = set()

        def publish(i: int) -> None:
            event = sim.add_event(ROOMS[i % len(ROOMS)])
            room = event["data"]["room_id"]
            for name, rooms in WEBHOOKS.items():
                if rooms is None or room in rooms:
                    expected.add((name, event["id"]))

        backlog = max(1, events // 2)
        for i in range(backlog):
            publish(i)
        print(f"{backlog} recordings already waiting in the API (delivered: backfill)", file=out)
        # One refusal shows a retry: same webhook-id, a fresh signature.
        receiver.fail("recordings", times=1, status=503)

        stopping = asyncio.Event()
        daemon = asyncio.create_task(app.run(config, stopping=stopping))

        def done() -> bool:
            got = {(r.webhook, r.msg_id) for r in receiver.delivered()}
            return expected <= got or stopping.is_set() or daemon.done()

        async def publish_rest() -> None:
            for i in range(backlog, events):
                await asyncio.sleep(1.0)
                publish(i)
                print(f"new recording published in {ROOMS[i % len(ROOMS)]}", file=out)
            # A room created while poller runs: a session in it, and the recording that
            # follows once it ends.
            sim.add_room(NEW_ROOM, name="demo new room")
            session = sim.start_session(NEW_ROOM)
            print(f"room {NEW_ROOM} created, a session starts (discovery finds it)", file=out)
            await asyncio.sleep(2.0)
            sim.end_session(session)
            event = sim.add_event(NEW_ROOM, session_id=session)
            expected.add(("recordings", event["id"]))
            print(f"the session in {NEW_ROOM} ended; its recording is published", file=out)

        publisher = asyncio.create_task(publish_rest())
        await publisher
        finished = await receiver.wait_for(done, timeout)
        stopping.set()
        await daemon
        await receiver.stop()
        await sim.stop()

    got = {(r.webhook, r.msg_id) for r in receiver.delivered()}
    missing = expected - got
    invalid = sum(not r.valid for r in receiver.received)
    print(
        f"\n{len(expected & got)}/{len(expected)} deliveries arrived, "
        f"{len(receiver.received)} requests, {invalid} with an invalid signature.",
        file=out,
    )
    if missing or not finished:
        print("Some deliveries did not arrive in time (rerun with --verbose).", file=out)
        return 1
    print(
        "Next: copy config.example.toml, fill in your 100ms access key, app secret, "
        "rooms and webhook URLs, then `poller check-config -c FILE` and `poller run -c FILE`.",
        file=out,
    )
    return 0


def run_demo(*, events: int = 8, timeout: float = 60.0, verbose: bool = False) -> int:
    """Run the demo; exit status 0 when every expected delivery arrived with a valid signature."""
    return asyncio.run(_demo(events, timeout, verbose, sys.stdout))
