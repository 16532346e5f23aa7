"""The real container image: runs, answers /healthz, delivers, stops cleanly, resumes.

Needs an image built with podman (CI: `podman build --pull=never --network host -t
localhost/poller .`) named by $POLLER_CONTAINER_IMAGE; skipped without it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from poller.receiver import Receiver
from poller.simulator import Simulator
from tests.conftest import ConfigWriter, daemon_config, free_port

IMAGE = os.environ.get("POLLER_CONTAINER_IMAGE", "")
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not IMAGE or shutil.which("podman") is None,
        reason="set POLLER_CONTAINER_IMAGE to an image built with podman (CI does)",
    ),
]


def podman(*args: str, check: bool = True, stderr: bool = False) -> str:
    result = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=120, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: {result.stderr}")
    return (result.stdout + (result.stderr if stderr else "")).strip()


async def healthz(port: int, timeout: float) -> int:
    async with asyncio.timeout(timeout), aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
                    if resp.status == 200:
                        return resp.status
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)


async def ok_polls(port: int) -> float:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as resp,
    ):
        text = await resp.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "poller_polls_total" and sample.labels == {"outcome": "ok"}:
                return sample.value
    return 0.0


async def test_image_runs_delivers_stops_gracefully_and_resumes_on_its_volume(
    simulator: Simulator, receiver: Receiver, write_config: ConfigWriter, tmp_path: Path
) -> None:
    port = free_port()
    config = write_config(
        **daemon_config(
            simulator,
            receiver,
            "sqlite+aiosqlite:////var/lib/poller/poller.db",
            rooms=["room-a", "room-b"],
            server={"listen": f"127.0.0.1:{port}"},
        )
    )
    config.chmod(0o644)
    name = f"poller-test-{uuid.uuid4().hex[:8]}"
    volume = f"{name}-state"
    podman("volume", "create", volume)
    run = [
        "run", "-d", "--name", name, "--network", "host",
        "-v", f"{volume}:/var/lib/poller",
        "-v", f"{config}:/etc/poller/config.toml:ro",
        IMAGE,
    ]  # fmt: skip
    try:
        first = [simulator.add_event("room-a"), simulator.add_event("room-b")]
        podman(*run)
        assert await healthz(port, 60) == 200
        assert await receiver.wait_for(lambda: len(receiver.delivered()) == 2, 30)
        # The image's HEALTHCHECK command works inside the container.
        assert '"status": "ok"' in podman("exec", name, "poller", "healthcheck")

        started = time.monotonic()
        podman("stop", "--time", "20", name)
        stopped_in = time.monotonic() - started
        assert podman("inspect", name, "--format", "{{.State.ExitCode}}") == "0"
        assert stopped_in < 5 + 3  # shutdown_grace is 5 s in the test config
        assert '"event": "stopped"' in podman("logs", name, stderr=True)

        # Same volume, new container: the store remembers what was delivered.
        podman("rm", name)
        second = simulator.add_event("room-a")
        podman(*run)
        assert await receiver.wait_for(lambda: len(receiver.delivered()) == 3, 60)
        # Let every room be polled twice more: a repeat would have shown up by then.
        target = await ok_polls(port) + 4
        async with asyncio.timeout(30):
            while await ok_polls(port) < target:
                await asyncio.sleep(0.1)
        ids = [r.msg_id for r in receiver.delivered()]
        assert sorted(ids) == sorted(e["id"] for e in [*first, second])
        podman("stop", "--time", "20", name)
        assert podman("inspect", name, "--format", "{{.State.ExitCode}}") == "0"
    finally:
        podman("rm", "-f", name, check=False)
        podman("volume", "rm", "-f", volume, check=False)
