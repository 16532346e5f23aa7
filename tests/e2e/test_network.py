"""The daemon on a corporate network: the API through $HTTP_PROXY with credentials, webhooks
excluded by $NO_PROXY, mutual TLS to an internal receiver, and the failures in the store."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from poller.receiver import Receiver
from poller.simulator import Simulator
from tests.conftest import ACCESS_KEY, APP_SECRET, ConfigWriter, DaemonProcess, make_secret
from tests.e2e.test_daemon import eventually
from tests.forward_proxy import ForwardProxy
from tests.pki import Pki

USER, PASSWORD = "svc-poller", "corp-Pr0xy-pw-8Jd"


async def run_poller(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    """``python -m poller ARGS`` with ``env`` added to this environment."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "poller",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **env},
    )
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def corp_proxy() -> AsyncIterator[ForwardProxy]:
    proxy = await ForwardProxy(credentials=(USER, PASSWORD)).start()
    yield proxy
    await proxy.stop()


@pytest.fixture
async def internal(pki: Pki) -> AsyncIterator[Receiver]:
    """An internal receiver on HTTPS that wants a client certificate of the test CA."""
    receiver = Receiver({"internal": make_secret(), "nocert": make_secret()})
    await receiver.start(ssl_context=pki.server_context(require_client_cert=True))
    yield receiver
    await receiver.stop()


def corporate_config(
    tmp_path: Path, simulator: Simulator, internal: Receiver, pki: Pki
) -> dict[str, Any]:
    webhook = {"ca_file": "pki/ca.pem"}
    return {
        "shutdown_grace": "5s",
        "hms": {"base_url": simulator.base_url, "access_key": ACCESS_KEY, "app_secret": APP_SECRET},
        "poll": {"interval": "300ms", "page_size": 10},
        "store": {"url": f"sqlite+aiosqlite:///{tmp_path / 'poller.db'}"},
        "delivery": {"timeout": "2s", "retry_schedule": ["100ms"]},
        "log": {"level": "info", "format": "json"},
        "rooms": [{"id": "room-a"}],
        "webhooks": [
            {
                "name": "internal",
                "url": internal.url("internal"),
                "secret": internal.secrets["internal"],
                "client_cert": "pki/client.pem",
                **webhook,
            },
            {
                "name": "nocert",
                "url": internal.url("nocert"),
                "secret": internal.secrets["nocert"],
                **webhook,
            },
        ],
    }


async def test_api_through_env_proxy_webhooks_direct_with_mutual_tls(
    tmp_path: Path,
    simulator: Simulator,
    internal: Receiver,
    pki: Pki,
    corp_proxy: ForwardProxy,
    write_config: ConfigWriter,
    daemons: Callable[..., DaemonProcess],
) -> None:
    event = simulator.add_event("room-a")
    config = write_config(**corporate_config(tmp_path, simulator, internal, pki))
    receiver_port = internal.base_url.rsplit(":", 1)[1]
    env = {
        "HTTP_PROXY": corp_proxy.url_with(USER, PASSWORD),
        "HTTPS_PROXY": corp_proxy.url_with(USER, PASSWORD),
        "NO_PROXY": f"localhost,127.0.0.1:{receiver_port}",
    }

    code, shown, err = await run_poller("check-config", "-c", str(config), env=env)
    assert code == 0, err
    assert f"proxy {corp_proxy.url} (from $HTTP_PROXY, with credentials)" in shown.splitlines()[2]
    assert shown.count("    proxy: none ($NO_PROXY matches)") == 2
    assert f"client certificate {tmp_path / 'pki' / 'client.pem'} (CN=poller-client," in shown

    daemon = await daemons(config, env=env).start()
    await internal.wait_for(lambda: len(internal.delivered("internal")) == 1, 15)

    def nocert_dead(e: dict[str, Any]) -> bool:
        return (
            e.get("event") == "delivery_attempt"
            and e.get("webhook") == "nocert"
            and (e.get("outcome") == "dead")
        )

    await eventually(lambda: any(nocert_dead(e) for e in daemon.events()), 15, "nocert dead")
    assert await daemon.stop() == 0

    assert [r.msg_id for r in internal.delivered("internal")] == [event["id"]]
    assert internal.delivered("nocert") == []
    # The API went through the proxy with its credentials; the receivers did not.
    assert corp_proxy.requests
    for request in corp_proxy.requests:
        assert request.method == "GET"
        assert request.target.startswith(f"{simulator.base_url}/analytics/events?room_id=room-a")
        assert request.credentials == (USER, PASSWORD)
    code, out, err = await run_poller(
        "deliveries", "list", "--webhook", "nocert", "--json", "-c", str(config), env={}
    )
    assert code == 0, err
    (dead,) = json.loads(out)
    assert dead["state"] == "dead"
    hint = "(does it require a client certificate? none is configured)"
    assert dead["last_error"] in {
        f"connection reset by the receiver without an answer {hint}",
        f"the receiver closed the connection without an answer {hint}",
    }
    for text in (shown, daemon.output(), out):
        assert PASSWORD not in text


async def test_a_proxy_refusing_the_api_is_the_rooms_last_error(
    tmp_path: Path,
    simulator: Simulator,
    internal: Receiver,
    pki: Pki,
    corp_proxy: ForwardProxy,
    write_config: ConfigWriter,
    daemons: Callable[..., DaemonProcess],
) -> None:
    tables = corporate_config(tmp_path, simulator, internal, pki)
    tables["hms"]["proxy"] = corp_proxy.url_with(USER, "stale-password-Q2")
    config = write_config(**tables)
    daemon = await daemons(config).start()

    def refused(e: dict[str, Any]) -> bool:
        return e.get("event") == "poll" and e.get("outcome") == "error"

    await eventually(lambda: any(refused(e) for e in daemon.events()), 20, "a failed poll")
    code, out, err = await run_poller("status", "--json", "-c", str(config), env={})
    assert await daemon.stop() == 0

    assert code == 0, err
    (room,) = json.loads(out)["rooms"]
    assert room["last_error"].endswith(
        f"HTTP 407 from the proxy {corp_proxy.url} "
        "(proxy authentication required: its credentials are wrong)"
    )
    assert all(r.credentials == (USER, "stale-password-Q2") for r in corp_proxy.requests)
    for text in (out, daemon.output()):
        assert "stale-password-Q2" not in text
