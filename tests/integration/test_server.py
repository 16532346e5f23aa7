"""/healthz, /readyz and /metrics of a daemon running in-process after a known run."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from poller.app import Daemon
from poller.config import load_config
from poller.parts import build, open_configured_store
from poller.receiver import Receiver
from poller.sdnotify import Notifier
from poller.simulator import Simulator
from tests.conftest import ConfigWriter, daemon_config


@pytest.fixture
async def daemon(
    simulator: Simulator, receiver: Receiver, tmp_path: Path, write_config: ConfigWriter
) -> AsyncIterator[Daemon]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'poller.db'}"
    config = load_config(
        write_config(
            **daemon_config(
                simulator,
                receiver,
                url,
                rooms=["room-a", "room-b"],
                webhooks=[
                    {"name": "all", "headers": {"X-Api-Key": "header-secret-value"}},
                    {"name": "filtered", "rooms": ["room-b"]},
                ],
                server={"listen": "127.0.0.1:0"},
            )
        )
    )
    async with open_configured_store(config) as store:
        d = Daemon(build(config, store), Notifier({}))
        task = asyncio.create_task(d.run())
        try:
            async with asyncio.timeout(10):
                while d.parts.server is None or d.parts.server.port == 0:
                    await asyncio.sleep(0.01)
            yield d
        finally:
            d.stopping.set()
            await task


async def get(d: Daemon, path: str) -> tuple[int, str]:
    assert d.parts.server is not None
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{d.parts.server.port}{path}") as resp,
    ):
        return resp.status, await resp.text()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_endpoints_and_metrics_after_a_known_run(
    daemon: Daemon, simulator: Simulator, receiver: Receiver
) -> None:
    for room in ("room-a", "room-a", "room-b"):
        simulator.add_event(room)
    receiver.fail("filtered", times=1, status=500)
    assert await receiver.wait_for(lambda: len(receiver.delivered()) == 4, 15)

    status, body = await get(daemon, "/healthz")
    assert status == 200, body
    status, body = await get(daemon, "/readyz")
    assert status == 200, body
    assert '"schema"' in body

    # Let the bookkeeping of the last attempt land before reading counters.
    async with asyncio.timeout(10):
        while True:
            status, text = await get(daemon, "/metrics")
            m = samples(text)
            if (
                m.get(
                    (
                        "poller_delivery_attempts_total",
                        (("outcome", "delivered"), ("webhook", "filtered")),
                    )
                )
                == 1
            ):
                break
            await asyncio.sleep(0.05)
    assert status == 200
    assert m[("poller_events_seen_total", ())] == 3
    assert m[("poller_polls_total", (("outcome", "ok"),))] >= 2
    assert (
        m[("poller_delivery_attempts_total", (("outcome", "delivered"), ("webhook", "all")))] == 3
    )
    assert (
        m[("poller_delivery_attempts_total", (("outcome", "retry"), ("webhook", "filtered")))] == 1
    )
    assert m[("poller_outbox_deliveries", (("state", "delivered"), ("webhook", "all")))] == 3
    assert m[("poller_outbox_deliveries", (("state", "pending"), ("webhook", "all")))] == 0
    assert m[("poller_oldest_pending_delivery_age_seconds", ())] == 0
    assert m[("poller_delivery_latency_seconds_count", (("webhook", "all"),))] == 3
    assert m[("poller_api_requests_total", (("status", "200"),))] >= 2
    assert m[("poller_token_renewals_total", ())] == 1
    assert m[("poller_last_successful_poll_timestamp_seconds", ())] > 0
    # Bounded labels only: no event ids, no secrets.
    for event_list in simulator.events.values():
        for event in event_list:
            assert event["id"] not in text
    assert "header-secret-value" not in text
    for secret in receiver.secrets.values():
        assert secret not in text


async def test_readyz_fails_when_polls_keep_failing(daemon: Daemon, simulator: Simulator) -> None:
    simulator.inject("500", times=10_000)
    async with asyncio.timeout(10):
        while not samples(daemon.parts.metrics.render().decode()).get(
            ("poller_polls_total", (("outcome", "error"),))
        ):
            await asyncio.sleep(0.02)
    # Pretend its last good poll is long gone.
    daemon.parts.health.last_poll_at = None
    status, body = await get(daemon, "/readyz")
    assert status == 503
    assert '"polls"' in body
    status, _ = await get(daemon, "/healthz")
    assert status == 200  # alive, just not doing its job: no restart wanted
