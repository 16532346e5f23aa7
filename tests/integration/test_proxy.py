"""Webhooks and the API client through a real forward proxy on 127.0.0.1: CONNECT tunnels,
plain-HTTP forwarding, proxy credentials, the environment's proxies and NO_PROXY."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from poller import __version__
from poller.delivery.sender import Attempt, Sender, Target
from poller.hms.client import ApiError, HmsClient
from poller.hms.token import MintedTokens
from poller.receiver import Receiver
from poller.simulator import Simulator
from tests.conftest import ACCESS_KEY, APP_SECRET
from tests.forward_proxy import ForwardProxy
from tests.netpeers import load_with
from tests.pki import Pki

EVENT_ID = "0b5e3c1e-1111-4a8e-9d55-5a7f1c2d3e4f"
BODY = json.dumps({"version": "2.0", "id": EVENT_ID, "type": "beam.recording.success"}).encode()
USER, PASSWORD = "poller", "pr0xy-S3cret-Zk4"


@pytest.fixture
async def auth_proxy() -> AsyncIterator[ForwardProxy]:
    """A proxy that wants USER:PASSWORD."""
    proxy = await ForwardProxy(credentials=(USER, PASSWORD)).start()
    yield proxy
    await proxy.stop()


@pytest.fixture
async def https_receiver(pki: Pki, receiver: Receiver) -> AsyncIterator[Receiver]:
    """The real receiver on HTTPS with mutual TLS, knowing the ``receiver`` fixture's secrets."""
    tls = Receiver(dict(receiver.secrets))
    await tls.start(ssl_context=pki.server_context(require_client_cert=True))
    yield tls
    await tls.stop()


def target_for(
    tmp_path: Path, receiver: Receiver, environ: dict[str, str] | None = None, **keys: Any
) -> Target:
    webhook = {"name": "all", "url": receiver.url("all"), "secret": receiver.secrets["all"]}
    config = load_with(tmp_path, webhooks=[{**webhook, **keys}], environ=environ)
    return Target.from_config(config.webhooks[0])


async def send(target: Target) -> Attempt:
    async with aiohttp.ClientSession() as session:
        sender = Sender(session, timeout=5.0, user_agent=f"poller/{__version__}")
        return await sender.send(target, EVENT_ID, BODY)


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


async def test_an_https_webhook_tunnels_through_the_proxy_with_credentials(
    tmp_path: Path, pki: Pki, https_receiver: Receiver, auth_proxy: ForwardProxy
) -> None:
    target = target_for(
        tmp_path,
        https_receiver,
        proxy=auth_proxy.url_with(USER, PASSWORD),
        ca_file=str(pki.ca_file),
        client_cert=str(pki.client_pem),
    )

    attempt = await send(target)

    assert (attempt.ok, attempt.status) == (True, 204)
    (request,) = auth_proxy.requests
    assert (request.method, request.target) == (
        "CONNECT",
        f"127.0.0.1:{port_of(https_receiver.base_url)}",
    )
    assert request.credentials == (USER, PASSWORD)
    (received,) = https_receiver.delivered()
    assert received.msg_id == EVENT_ID
    # The credentials are the proxy's: never inside the tunnel, where the receiver reads.
    assert "Proxy-Authorization" not in received.headers


async def test_an_http_webhook_is_forwarded_by_the_proxy(
    tmp_path: Path, receiver: Receiver, auth_proxy: ForwardProxy
) -> None:
    attempt = await send(target_for(tmp_path, receiver, proxy=auth_proxy.url_with(USER, PASSWORD)))

    assert (attempt.ok, attempt.status) == (True, 204)
    (request,) = auth_proxy.requests
    assert (request.method, request.target) == ("POST", receiver.url("all"))
    assert request.credentials == (USER, PASSWORD)
    (received,) = receiver.delivered()
    assert received.msg_id == EVENT_ID
    assert "Proxy-Authorization" not in received.headers  # the proxy took it off


async def test_wrong_proxy_credentials_are_named_without_showing_them(
    tmp_path: Path, pki: Pki, https_receiver: Receiver, auth_proxy: ForwardProxy
) -> None:
    target = target_for(
        tmp_path,
        https_receiver,
        proxy=auth_proxy.url_with(USER, "not-the-password-X1"),
        ca_file=str(pki.ca_file),
        client_cert=str(pki.client_pem),
    )

    attempt = await send(target)

    assert attempt.status is None
    assert attempt.error == (
        f"the proxy {auth_proxy.url} refused the tunnel to the receiver: HTTP 407 "
        "(proxy authentication required: its credentials are wrong)"
    )
    assert https_receiver.delivered() == []


async def test_missing_proxy_credentials_on_plain_http_are_the_proxys_407(
    tmp_path: Path, receiver: Receiver, auth_proxy: ForwardProxy
) -> None:
    attempt = await send(target_for(tmp_path, receiver, proxy=auth_proxy.url))

    assert attempt.status == 407
    assert attempt.error == (
        f"HTTP 407 from the proxy {auth_proxy.url} "
        "(proxy authentication required: its credentials are missing)"
    )
    assert receiver.delivered() == []


async def test_a_proxy_that_is_down_is_named(tmp_path: Path, receiver: Receiver) -> None:
    with socket.socket() as sock:  # a port nothing listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    attempt = await send(
        target_for(tmp_path, receiver, proxy=f"http://u:{PASSWORD}@127.0.0.1:{port}")
    )

    assert attempt.error is not None
    assert attempt.error.startswith(f"cannot connect to the proxy http://127.0.0.1:{port}: ")
    assert PASSWORD not in attempt.error


async def test_webhooks_honour_https_proxy_and_no_proxy(
    tmp_path: Path, pki: Pki, https_receiver: Receiver, forward_proxy: ForwardProxy
) -> None:
    tls = {"ca_file": str(pki.ca_file), "client_cert": str(pki.client_pem)}
    via_env = target_for(tmp_path, https_receiver, {"HTTPS_PROXY": forward_proxy.url}, **tls)
    assert (await send(via_env)).ok
    assert [r.method for r in forward_proxy.requests] == ["CONNECT"]

    environ = {"HTTPS_PROXY": forward_proxy.url, "NO_PROXY": "localhost,127.0.0.1"}
    excluded = target_for(tmp_path, https_receiver, environ, **tls)
    assert (await send(excluded)).ok
    assert len(forward_proxy.requests) == 1  # the second went direct
    assert len(https_receiver.delivered()) == 2


# --- the API client ---------------------------------------------------------------------


def api_client(
    session: aiohttp.ClientSession,
    tmp_path: Path,
    sim: Simulator,
    environ: dict[str, str],
    **hms: Any,
) -> HmsClient:
    """The API client as poller.parts builds it from a config loaded with ``environ``."""
    config = load_with(
        tmp_path,
        hms={"base_url": sim.base_url, **hms},
        webhooks=[
            {"name": "w", "url": "https://hooks.example.com/", "secret": "whsec_" + "A" * 32}
        ],
        environ=environ,
    )
    return HmsClient(
        session,
        config.hms.base_url,
        MintedTokens(ACCESS_KEY, APP_SECRET),
        request_timeout=5.0,
        max_attempts=2,
        backoff_base=0.001,
        backoff_max=0.01,
        ssl_context=config.hms.tls.client_ssl,
        route=config.hms.route,
    )


async def walk(client: HmsClient) -> int:
    return sum([len(page.ids) async for page in client.pages("room-1", ["beam.recording.success"])])


async def test_the_api_client_uses_http_proxy_from_the_environment(
    tmp_path: Path, simulator: Simulator, auth_proxy: ForwardProxy, session: aiohttp.ClientSession
) -> None:
    simulator.add_event("room-1")
    client = api_client(
        session, tmp_path, simulator, {"HTTP_PROXY": auth_proxy.url_with(USER, PASSWORD)}
    )

    assert await walk(client) == 1
    (request,) = auth_proxy.requests
    assert request.method == "GET"
    assert request.target.startswith(f"{simulator.base_url}/analytics/events?room_id=room-1&")
    assert request.credentials == (USER, PASSWORD)


async def test_no_proxy_sends_the_api_client_direct(
    tmp_path: Path,
    simulator: Simulator,
    forward_proxy: ForwardProxy,
    session: aiohttp.ClientSession,
) -> None:
    simulator.add_event("room-1")
    environ = {
        "HTTP_PROXY": forward_proxy.url,
        "no_proxy": f"127.0.0.1:{port_of(simulator.base_url)}",
    }

    assert await walk(api_client(session, tmp_path, simulator, environ)) == 1
    assert forward_proxy.requests == []


async def test_the_hms_proxy_key_tunnels_https_to_the_api(
    tmp_path: Path,
    pki: Pki,
    auth_proxy: ForwardProxy,
    session: aiohttp.ClientSession,
) -> None:
    sim = Simulator(access_key=ACCESS_KEY, app_secret=APP_SECRET)
    await sim.start(ssl_context=pki.server_context(require_client_cert=False))
    sim.add_event("room-1")
    try:
        client = api_client(
            session,
            tmp_path,
            sim,
            {"HTTPS_PROXY": "http://elsewhere.invalid:1"},
            proxy=auth_proxy.url_with(USER, PASSWORD),
            ca_file=str(pki.ca_file),
        )
        assert await walk(client) == 1
    finally:
        await sim.stop()

    assert [(r.method, r.credentials) for r in auth_proxy.requests] == [
        ("CONNECT", (USER, PASSWORD))
    ]


async def test_the_api_client_names_a_proxy_refusal(
    tmp_path: Path, simulator: Simulator, auth_proxy: ForwardProxy, session: aiohttp.ClientSession
) -> None:
    client = api_client(
        session, tmp_path, simulator, {}, proxy=auth_proxy.url_with(USER, "wrong-pw-77")
    )

    with pytest.raises(ApiError) as caught:
        await walk(client)

    assert str(caught.value) == (
        "GET /analytics/events for room room-1 failed after 2 attempts: "
        f"HTTP 407 from the proxy {auth_proxy.url} "
        "(proxy authentication required: its credentials are wrong)"
    )
