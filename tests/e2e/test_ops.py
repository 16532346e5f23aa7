"""Operator commands against a store filled by a real daemon run, while it still runs:
``deliveries list/show/retry``, ``replay``, ``send-test``, ``gen-secret``, ``status --json``."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import pty
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from standardwebhooks import Webhook

from poller.receiver import Receiver
from poller.signing import SigningKey
from poller.simulator import Simulator
from poller.store.db import create_engine
from poller.store.repo import Store
from poller.timeutil import utcnow
from tests.conftest import ConfigWriter, DaemonProcess, daemon_config, free_port
from tests.e2e.test_cli import assert_one_line_error
from tests.e2e.test_daemon import (
    Daemons,
    Event,
    poller_cli,
    wait_dead,
    wait_delivered,
    wait_log,
)

pytestmark = pytest.mark.e2e

SCHEDULE = ["100ms", "200ms"]  # three attempts, then dead
REFUSAL = b'{"error":"receiver is down for maintenance"}'


@dataclass(frozen=True)
class Filled:
    """A running daemon whose store holds delivered (``all``) and dead (``filtered``)
    deliveries of ``events``: two in room-a, one in room-b."""

    daemon: DaemonProcess
    config: Path
    receiver: Receiver
    events: list[Event]

    async def cli(self, *args: str) -> tuple[int, str, str]:
        return await poller_cli(*args, "-c", str(self.config))

    async def json(self, *args: str) -> Any:
        code, out, err = await self.cli(*args, "--json")
        assert code == 0, err
        return json.loads(out)

    def arrivals(self, webhook: str, msg_id: str) -> int:
        return sum(1 for r in self.receiver.delivered(webhook) if r.msg_id == msg_id)


@pytest.fixture
async def filled(
    simulator: Simulator,
    receiver: Receiver,
    store_url: str,
    write_config: ConfigWriter,
    daemons: Daemons,
) -> AsyncIterator[Filled]:
    config = write_config(
        **daemon_config(
            simulator,
            receiver,
            store_url,
            rooms=["room-a", "room-b"],
            webhooks=[{"name": "all"}, {"name": "filtered"}],
            delivery={"timeout": "2s", "retry_schedule": SCHEDULE},
        )
    )
    receiver.fail("filtered", times=None, status=503, body=REFUSAL)
    events = [simulator.add_event(room) for room in ("room-a", "room-a", "room-b")]
    daemon = await daemons(config).start()
    await wait_delivered(receiver, {("all", e["id"]) for e in events}, daemon)
    await wait_dead(daemon, {e["id"] for e in events}, "every delivery to 'filtered' to die")
    receiver.heal("filtered")
    yield Filled(daemon, config, receiver, events)
    assert await daemon.stop() == 0


# --- deliveries list / show ------------------------------------------------------------------


async def test_deliveries_list_filters_by_webhook_state_room_and_time(filled: Filled) -> None:
    everything = await filled.json("deliveries", "list")
    assert len(everything) == 6
    assert {(d["webhook"], d["state"]) for d in everything} == {
        ("all", "delivered"),
        ("filtered", "dead"),
    }
    first = everything[-1]
    assert set(first) == {
        "id",
        "webhook",
        "state",
        "event_id",
        "event_type",
        "room_id",
        "attempts",
        "created_at",
        "next_attempt_at",
        "delivered_at",
        "last_attempt_at",
        "last_status",
        "last_error",
    }
    dead = await filled.json("deliveries", "list", "--webhook", "filtered", "--state", "dead")
    assert {d["event_id"] for d in dead} == {e["id"] for e in filled.events}
    assert all(d["attempts"] == len(SCHEDULE) + 1 and d["last_status"] == 503 for d in dead)
    in_b = await filled.json("deliveries", "list", "--room", "room-b")
    assert {(d["webhook"], d["event_id"]) for d in in_b} == {
        ("all", filled.events[2]["id"]),
        ("filtered", filled.events[2]["id"]),
    }
    assert len(await filled.json("deliveries", "list", "--since", "1h")) == 6
    assert await filled.json("deliveries", "list", "--until", "1h") == []
    assert len(await filled.json("deliveries", "list", "--since", "2000-01-01T00:00:00Z")) == 6
    assert len(await filled.json("deliveries", "list", "--limit", "2")) == 2

    # The older spelling still lists, as a table.
    code, out, err = await filled.cli("deliveries", "--state", "dead")
    assert code == 0, err
    assert len([line for line in out.splitlines() if " dead " in line]) == 3


async def test_deliveries_show_prints_the_attempt_log(filled: Filled) -> None:
    (dead,) = await filled.json("deliveries", "list", "--webhook", "filtered", "--room", "room-b")
    shown = await filled.json("deliveries", "show", str(dead["id"]))
    assert {k: v for k, v in shown.items() if k != "attempt_log"} == dead
    log = shown["attempt_log"]
    assert [a["number"] for a in log] == [1, 2, 3]
    assert {(a["status"], a["error"], a["response"]) for a in log} == {
        (503, "HTTP 503", REFUSAL.decode())
    }
    assert log[-1]["at"] == dead["last_attempt_at"]
    assert all(a["duration_ms"] >= 0 for a in log)
    (ok,) = await filled.json("deliveries", "list", "--webhook", "all", "--room", "room-b")
    (success,) = (await filled.json("deliveries", "show", str(ok["id"])))["attempt_log"]
    assert (success["status"], success["error"], success["response"]) == (204, None, None)

    code, out, err = await filled.cli("deliveries", "show", str(dead["id"]))
    assert code == 0, err
    assert f"delivery {dead['id']}" in out
    assert "attempts (3):" in out
    assert "receiver is down for maintenance" in out


COUNTS = ("name", "configured", "orphaned", "pending", "delivered", "dead")
WEBHOOK_KEYS = {
    *COUNTS,
    "url",
    "state",
    "reason",
    "state_changed_at",
    "failing_since",
    "breaker_opened_at",
    "next_probe_at",
    "last_error",
    "last_error_at",
    "rate_limit",
    "max_concurrency",
}

BAD_ARGUMENTS = [
    (["webhooks", "pause", "nope"], ["unknown webhook 'nope'", "all, filtered"]),
    (["webhooks", "pause"], ["needs a webhook name"]),
    (["webhooks", "list", "all"], ["takes no webhook name"]),
    (["webhooks", "stop", "all"], ["invalid choice"]),
    (["deliveries", "list", "--webhook", "nope"], ["unknown webhook 'nope'", "all, filtered"]),
    (["deliveries", "list", "--since", "yesterday"], ["--since", "RFC 3339"]),
    (["deliveries", "list", "--until", "2026-12-01T08:00:00"], ["--until", "UTC offset"]),
    (["deliveries", "list", "--limit", "0"], ["--limit"]),
    (["deliveries", "show", "999999"], ["no delivery 999999"]),
    (["deliveries", "show"], ["one delivery id"]),
    (["deliveries", "show", "x"], ["invalid int value"]),
    (["deliveries", "retry"], ["ids or --dead"]),
    (["deliveries", "retry", "999999"], ["no delivery 999999"]),
    (["deliveries", "retry", "--dead", "--webhook", "nope"], ["unknown webhook 'nope'"]),
]


async def test_bad_arguments_exit_2_with_one_line(filled: Filled) -> None:
    # One store for every case: each needs a real one (ids, names) but no fresh one.
    for args, fragments in BAD_ARGUMENTS:
        code, out, err = await filled.cli(*args)
        assert code == 2, (args, out + err)
        assert out == ""
        assert_one_line_error(err, *fragments)


# --- deliveries retry ------------------------------------------------------------------------


async def test_retry_by_id_and_every_dead_one_delivers_again_with_the_same_webhook_id(
    filled: Filled,
) -> None:
    dead = await filled.json("deliveries", "list", "--webhook", "filtered", "--state", "dead")
    by_event = {d["event_id"]: d["id"] for d in dead}
    first, second, third = (e["id"] for e in filled.events)
    delivered = await filled.json("deliveries", "list", "--webhook", "all", "--room", "room-b")

    # One by id (the running daemon picks it up), and a delivered one is left alone.
    code, out, err = await filled.cli(
        "deliveries", "retry", str(by_event[first]), str(delivered[0]["id"])
    )
    assert code == 0, err
    assert "1 dead deliveries scheduled" in out
    assert f"delivery {delivered[0]['id']} is delivered, not dead" in out
    await wait_delivered(filled.receiver, {("filtered", first)}, filled.daemon)
    assert filled.arrivals("filtered", first) == 1

    # The older --id spelling.
    code, out, err = await filled.cli("deliveries", "retry", "--id", str(by_event[second]))
    assert code == 0, err
    await wait_delivered(filled.receiver, {("filtered", second)}, filled.daemon)

    code, out, err = await filled.cli("deliveries", "retry", "--dead", "--webhook", "filtered")
    assert (code, out.splitlines()[0]) == (0, "1 dead deliveries scheduled for a new attempt"), err
    await wait_delivered(filled.receiver, {("filtered", third)}, filled.daemon)
    assert await filled.json("deliveries", "list", "--state", "dead") == []
    # A fresh schedule: the retried delivery's attempts count again from one.
    shown = await filled.json("deliveries", "show", str(by_event[third]))
    assert [a["number"] for a in shown["attempt_log"]] == [1, 2, 3, 1]
    assert shown["attempt_log"][-1]["status"] == 204
    assert all(filled.arrivals("filtered", e["id"]) == 1 for e in filled.events)


# --- replay ----------------------------------------------------------------------------------


async def test_replay_delivers_stored_events_again_with_the_same_webhook_id(
    filled: Filled,
) -> None:
    first, second, third = (e["id"] for e in filled.events)
    # Without a terminal and without --yes it refuses, after saying how many.
    code, out, err = await filled.cli("replay", "--webhook", "all", "--room", "room-a")
    assert code == 2, err
    assert out.startswith("2 stored events will be delivered again to all"), out
    assert_one_line_error(err, "--yes")
    assert filled.arrivals("all", first) == 1

    code, out, err = await filled.cli("replay", "--webhook", "all", "--room", "room-a", "--yes")
    assert code == 0, err
    assert out.splitlines()[-1] == "2 deliveries to all scheduled"
    ok = await filled.receiver.wait_for(
        lambda: filled.arrivals("all", first) == filled.arrivals("all", second) == 2, 15
    )
    assert ok, filled.daemon.output()
    assert filled.arrivals("all", third) == 1
    # The same message again: same webhook-id and body as the first time.
    bodies = {r.body for r in filled.receiver.delivered("all") if r.msg_id == first}
    assert len(bodies) == 1

    # Filters that select nothing say so and change nothing.
    for narrow in (["--type", "track.add.success"], ["--since", "2030-01-01T00:00:00Z"]):
        code, out, err = await filled.cli("replay", "--webhook", "all", *narrow)
        assert (code, out.strip()) == (0, "no stored events to replay to all"), err

    code, out, err = await filled.cli("replay", "--webhook", "nope", "--yes")
    assert code == 2
    assert_one_line_error(err, "unknown webhook 'nope'", "all, filtered")


# --- send-test and gen-secret ----------------------------------------------------------------


async def test_send_test_posts_a_signed_sample_marked_as_a_test(
    simulator: Simulator, receiver: Receiver, tmp_path: Path, write_config: ConfigWriter
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'unused.db'}"
    config = write_config(**daemon_config(simulator, receiver, url, rooms=["room-a"]))
    code, out, err = await poller_cli("send-test", "--webhook", "all", "-c", str(config))
    assert code == 0, err
    (got,) = receiver.received
    assert (got.valid, got.status) == (True, 204)  # verified with the webhook's own secret
    Webhook(receiver.secrets["all"]).verify(got.body, dict(got.headers))
    assert got.msg_id.startswith("test_")
    sample = json.loads(got.body)
    assert (sample["type"], sample["data"]["room_id"]) == ("beam.recording.success", "room-a")
    assert got.msg_id == "test_" + sample["id"]
    assert f"as {got.msg_id}" in out
    assert "HTTP 204 in " in out
    assert "accepted" in out
    assert not (tmp_path / "unused.db").exists()  # a test touches no store

    receiver.fail("all", status=500, body=b"handler crashed: KeyError 'beam_id'")
    code, out, err = await poller_cli("send-test", "--webhook", "all", "--json", "-c", str(config))
    assert code == 1, err
    answer = json.loads(out)
    assert answer["webhook_id"].startswith("test_")
    assert (answer["ok"], answer["status"], answer["error"]) == (False, 500, "HTTP 500")
    assert answer["response"] == "handler crashed: KeyError 'beam_id'"
    assert answer["duration_ms"] >= 0

    await receiver.stop()  # nobody listening
    code, out, err = await poller_cli("send-test", "--webhook", "all", "-c", str(config))
    assert code == 1
    assert "no answer" in out
    assert "connection failed" in out

    code, out, err = await poller_cli("send-test", "--webhook", "nope", "-c", str(config))
    assert code == 2
    assert_one_line_error(err, "unknown webhook 'nope'", "configured: all")


def test_gen_secret_prints_a_fresh_standard_webhooks_secret() -> None:
    secrets = set()
    for _ in range(2):
        result = subprocess.run(
            [sys.executable, "-m", "poller", "gen-secret"],
            capture_output=True,
            text=True,
            check=True,
        )
        secret = result.stdout.strip()
        assert secret.startswith("whsec_")
        assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) >= 24
        Webhook(secret)  # the reference library accepts it
        assert SigningKey.from_secret(secret)  # and so does poller's config
        secrets.add(secret)
    assert len(secrets) == 2


# --- status --json ---------------------------------------------------------------------------


async def test_status_json_has_the_documented_keys(filled: Filled) -> None:
    status = await filled.json("status")
    assert set(status) == {
        "store",
        "schema",
        "instances",
        "rooms",
        "retired_rooms",
        "webhooks",
        "oldest_pending_at",
    }
    assert status["schema"] is not None
    (instance,) = status["instances"]  # the running daemon
    assert set(instance) == {"id", "started_at", "heartbeat_at"}
    assert instance["heartbeat_at"].endswith("Z")
    assert [r["id"] for r in status["rooms"]] == ["room-a", "room-b"]
    for room in status["rooms"]:
        assert set(room) == {
            "id",
            "polled",
            "first_polled_at",
            "last_polled_at",
            "last_success_at",
            "last_error",
            "failed_walks",
            "lease_owner",
            "origin",
            "discovered_at",
            "left_at",
            "interval_s",
            "pace",
            "active_until",
        }
        assert room["origin"] == "config"
        assert room["pace"] is None  # adaptive is off
        assert room["polled"] is True
        assert room["last_error"] is None
        assert room["first_polled_at"] is not None
    assert [{k: w[k] for k in COUNTS} for w in status["webhooks"]] == [
        {
            "name": "all",
            "configured": True,
            "orphaned": False,
            "pending": 0,
            "delivered": 3,
            "dead": 0,
        },
        {
            "name": "filtered",
            "configured": True,
            "orphaned": False,
            "pending": 0,
            "delivered": 0,
            "dead": 3,
        },
    ]
    for webhook in status["webhooks"]:
        assert set(webhook) == WEBHOOK_KEYS
    assert [w["state"] for w in status["webhooks"]] == ["active", "active"]
    filtered = status["webhooks"][1]
    assert filtered["failing_since"] is not None  # every attempt failed, breaker not yet
    assert (filtered["last_error"], filtered["breaker_opened_at"]) == ("HTTP 503", None)
    assert status["webhooks"][0]["url"].startswith("http://127.0.0.1:")
    assert status["oldest_pending_at"] is None


# --- webhooks list / pause / resume / enable ----------------------------------------------------


async def test_pause_and_resume_by_hand_while_the_daemon_runs(
    filled: Filled, simulator: Simulator
) -> None:
    code, out, err = await filled.cli("webhooks", "pause", "all")
    assert (code, err) == (0, "")
    assert "all paused" in out
    await wait_log(filled.daemon, mode_changed("all", "paused"), "the daemon to see the pause", 5)
    (listed,) = [w for w in await filled.json("webhooks", "list") if w["name"] == "all"]
    assert (listed["state"], listed["reason"].startswith("paused by hand")) == ("paused", True)
    code, out, _ = await filled.cli("webhooks", "pause", "all")
    assert (code, out.strip()) == (0, "all is already paused")

    event = simulator.add_event("room-a")
    pending = await eventually_pending(filled, event["id"])
    # Absence takes a wait: three turns of the daemon's delivery loop (1 s each) at least.
    await asyncio.sleep(3.5)
    assert filled.arrivals("all", event["id"]) == 0
    assert (await filled.json("deliveries", "show", str(pending)))["state"] == "pending"
    code, out, _ = await filled.cli("status")
    assert "all: 1 / 3 / 0, paused, paused by hand" in out

    code, out, err = await filled.cli("webhooks", "resume", "all")
    assert (code, err) == (0, "")
    await wait_delivered(filled.receiver, {("all", event["id"])}, filled.daemon)
    assert filled.arrivals("all", event["id"]) == 1


async def test_resume_on_an_open_breaker_takes_a_probe_at_once(
    filled: Filled, simulator: Simulator, store_url: str
) -> None:
    code, out, err = await filled.cli("webhooks", "pause", "all")
    await wait_log(filled.daemon, mode_changed("all", "paused"), "the daemon to see the pause", 5)
    # Meanwhile its breaker opened, with the next probe an hour away.
    engine = create_engine(store_url)
    try:
        store = Store(engine, instance_id="operator")
        opened = await store.open_breaker("all", error="HTTP 503", probe_after=3600, now=utcnow())
        assert opened
    finally:
        await engine.dispose()
    event = simulator.add_event("room-a")
    await eventually_pending(filled, event["id"])

    code, out, err = await filled.cli("webhooks", "resume", "all")
    assert (code, err) == (0, "")
    assert "all resumed" in out
    (listed,) = [w for w in await filled.json("webhooks", "list") if w["name"] == "all"]
    assert listed["state"] == "breaker_open"
    code, out, err = await filled.cli("webhooks", "resume", "all")  # try it now
    assert (code, err) == (0, "")
    assert out.strip() == (
        "all's breaker is open: its next probe is due now (a running daemon follows within "
        "1s); a 2xx closes it"
    )
    # Without the probe it would wait an hour.
    await wait_delivered(filled.receiver, {("all", event["id"])}, filled.daemon)
    await wait_log(
        filled.daemon,
        lambda log: log.get("event") == "breaker_closed" and log.get("webhook") == "all",
        "the probe's 2xx to close the breaker",
        5,
    )
    (listed,) = [w for w in await filled.json("webhooks", "list") if w["name"] == "all"]
    assert listed["state"] == "active"


async def test_410_disables_until_enabled_and_nothing_is_lost(
    filled: Filled, simulator: Simulator
) -> None:
    filled.receiver.fail("all", times=1, status=410)
    gone = simulator.add_event("room-a")

    def disabled(log: dict[str, Any]) -> bool:
        return log.get("event") == "webhook_disabled" and log.get("webhook") == "all"

    await wait_log(filled.daemon, disabled, "the daemon to disable 'all' on 410", 15)
    kept = simulator.add_event("room-b")  # seen while disabled: kept pending
    await eventually_pending(filled, kept["id"])
    await eventually_pending(filled, gone["id"])  # the 410 used up no retry either
    (listed,) = [w for w in await filled.json("webhooks", "list") if w["name"] == "all"]
    assert listed["state"] == "disabled"
    assert "410 Gone" in listed["reason"]
    code, out, err = await filled.cli("webhooks", "resume", "all")
    assert code == 2
    assert_one_line_error(err, "all is disabled", "poller webhooks enable all")
    code, out, _ = await filled.cli("webhooks")  # list is the default
    assert code == 0
    assert "disabled, the receiver answered 410 Gone" in out

    code, out, err = await filled.cli("webhooks", "enable", "all")
    assert (code, err) == (0, "")
    await wait_delivered(filled.receiver, {("all", gone["id"]), ("all", kept["id"])}, filled.daemon)
    code, out, _ = await filled.cli("webhooks", "enable", "all")
    assert out.strip() == "all is already active"


def mode_changed(webhook: str, mode: str) -> Callable[[dict[str, Any]], bool]:
    def matches(log: dict[str, Any]) -> bool:
        return (
            log.get("event") == "webhook_mode_changed"
            and log.get("webhook") == webhook
            and log.get("mode") == mode
        )

    return matches


async def eventually_pending(filled: Filled, event_id: str) -> int:
    """Wait until the daemon has stored ``event_id`` with a delivery to ``all`` owed."""
    for _ in range(150):
        listed = await filled.json("deliveries", "list", "--webhook", "all", "--state", "pending")
        if ids := [d["id"] for d in listed if d["event_id"] == event_id]:
            return int(ids[0])
        await asyncio.sleep(0.1)
    raise AssertionError(f"{event_id} was never owed to 'all'\n{filled.daemon.output()}")


def on_a_terminal(args: list[str], answer: bytes) -> tuple[int, str]:
    """Run ``poller ARGS`` on a pseudo-terminal, answering its question with ``answer``."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: stdin, stdout and stderr are the terminal
        os.execv(sys.executable, [sys.executable, "-m", "poller", *args])  # noqa: S606
    out, answered = b"", False
    with contextlib.suppress(OSError):  # EIO once the child has closed the terminal
        while chunk := os.read(fd, 1024):
            out += chunk
            if b"[y/N]" in out and not answered:
                os.write(fd, answer + b"\n")
                answered = True
    os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out.decode()


async def test_replay_on_a_terminal_asks_first(filled: Filled) -> None:
    args = ["replay", "--webhook", "all", "--room", "room-b", "-c", str(filled.config)]
    code, out = await asyncio.to_thread(on_a_terminal, args, b"n")
    assert (code, out.splitlines()[-1].strip()) == (1, "nothing replayed"), out
    assert "1 stored events will be delivered again to all" in out
    assert "[y/N]" in out
    code, out = await asyncio.to_thread(on_a_terminal, args, b"y")
    assert code == 0, out
    assert "1 deliveries to all scheduled" in out
    third = filled.events[2]["id"]
    assert await filled.receiver.wait_for(lambda: filled.arrivals("all", third) == 2, 15)
    assert filled.arrivals("all", filled.events[0]["id"]) == 1


# --- a webhook removed from the config: orphaned, kept, purged deliberately -------------------


async def test_a_removed_webhook_is_orphaned_kept_resumed_and_purged_on_purpose(
    simulator: Simulator,
    receiver: Receiver,
    store_url: str,
    write_config: ConfigWriter,
    daemons: Daemons,
) -> None:
    both = daemon_config(
        simulator,
        receiver,
        store_url,
        rooms=["room-a"],
        webhooks=[{"name": "all"}, {"name": "filtered"}],
        # A failed attempt stays pending a while; nothing retries it while it is orphaned.
        delivery={"retry_schedule": ["3s"] * 5},
        server={"listen": f"127.0.0.1:{(port := free_port())}"},
    )
    config = write_config(**both)
    receiver.fail("filtered", times=None, status=503)
    events = [simulator.add_event("room-a") for _ in range(2)]
    daemon = await daemons(config).start()
    await wait_delivered(receiver, {("all", e["id"]) for e in events}, daemon)

    def both_failed(log: dict[str, Any]) -> bool:
        return (
            log.get("event") == "delivery_attempt"
            and log.get("webhook") == "filtered"
            and log.get("event_id") == events[-1]["id"]
        )

    await wait_log(daemon, both_failed, "'filtered' to fail", 15)
    assert await daemon.stop() == 0

    # "filtered" leaves the config: its two pending deliveries are orphaned, not lost.
    only_all = {**both, "webhooks": [w for w in both["webhooks"] if w["name"] == "all"]}
    config = write_config(**only_all)
    daemon = await daemons(config).start()
    status = json.loads(await cli_ok("status", "--json", "-c", str(config)))
    (orphan,) = [w for w in status["webhooks"] if w["name"] == "filtered"]
    assert (orphan["configured"], orphan["orphaned"], orphan["pending"]) == (False, True, 2)
    assert status["oldest_pending_at"] is None  # nothing owed to a configured webhook
    text = await cli_ok("status", "-c", str(config))
    assert "filtered: 2 / 0 / 0, orphaned: not in the config" in text
    assert "poller deliveries purge --webhook filtered" in text
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as resp,
    ):
        metrics = await resp.text()
    assert "poller_oldest_pending_delivery_age_seconds 0.0" in metrics
    assert 'poller_outbox_deliveries{state="pending",webhook="filtered"} 2.0' in metrics

    code, out, err = await poller_cli("deliveries", "purge", "--webhook", "all", "-c", str(config))
    assert code == 2
    assert_one_line_error(err, "all is in the config", "not purged")
    code, out, err = await poller_cli("deliveries", "purge", "--webhook", "nope", "-c", str(config))
    assert code == 2
    assert_one_line_error(err, "no deliveries of webhook 'nope'", "orphaned: filtered")
    code, out, err = await poller_cli("deliveries", "purge", "-c", str(config))
    assert code == 2
    assert_one_line_error(err, "purge takes --webhook W")
    code, out, err = await poller_cli(
        "deliveries", "purge", "--webhook", "filtered", "-c", str(config)
    )
    assert code == 2, out + err  # stdin is no terminal: confirmation needs --yes
    assert_one_line_error(err, "purge asks for confirmation", "--yes")
    assert await daemon.stop() == 0

    # It comes back: its deliveries resume, with the same webhook-id.
    receiver.heal("filtered")
    config = write_config(**both)
    daemon = await daemons(config).start()
    await wait_delivered(receiver, {("filtered", e["id"]) for e in events}, daemon)
    assert await daemon.stop() == 0

    # Removed again with something owed: purged on purpose, after the count is shown.
    receiver.fail("filtered", times=None, status=503)
    late = simulator.add_event("room-a")
    daemon = await daemons(write_config(**both)).start()
    await wait_delivered(receiver, {("all", late["id"])}, daemon)
    await wait_log(
        daemon,
        lambda log: log.get("event") == "delivery_attempt" and log.get("webhook") == "filtered",
        "'filtered' to fail",
        15,
    )
    assert await daemon.stop() == 0
    config = write_config(**only_all)
    args = ["deliveries", "purge", "--webhook", "filtered", "-c", str(config)]
    code, out = await asyncio.to_thread(on_a_terminal, args, b"n")
    assert code == 1, out
    assert "webhook filtered (not in the config) has 3 deliveries: 1 pending, 2 delivered" in out
    assert out.splitlines()[-1].strip() == "nothing purged"
    out = await cli_ok(*args, "--yes")
    assert out.strip().splitlines()[-1] == "purged 3 deliveries of filtered"
    listed = json.loads(await cli_ok("webhooks", "list", "--json", "-c", str(config)))
    assert [w["name"] for w in listed] == ["all"]


async def cli_ok(*args: str) -> str:
    code, out, err = await poller_cli(*args)
    assert code == 0, out + err
    return out
