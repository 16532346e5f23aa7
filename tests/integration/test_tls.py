"""HTTPS to internal receivers and the API: ca_file, mutual TLS, and what each TLS failure
says in the attempt, against real servers on 127.0.0.1 with a throwaway CA."""

from __future__ import annotations

import json
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
from tests.conftest import ACCESS_KEY, APP_SECRET, make_secret
from tests.netpeers import AlertingTlsServer, load_with
from tests.pki import Pki

EVENT_ID = "f3f18235-058c-432b-b8c2-8344c92743f6"
BODY = json.dumps({"version": "2.0", "id": EVENT_ID, "type": "beam.recording.success"}).encode()
SECRET = make_secret()


@pytest.fixture
async def mtls_receiver(pki: Pki) -> AsyncIterator[Receiver]:
    """The real receiver on HTTPS, wanting a client certificate of the test CA."""
    receiver = Receiver({"internal": SECRET})
    await receiver.start(ssl_context=pki.server_context(require_client_cert=True))
    yield receiver
    await receiver.stop()


def target_for(tmp_path: Path, url: str, **keys: Any) -> Target:
    config = load_with(
        tmp_path, webhooks=[{"name": "internal", "url": url, "secret": SECRET, **keys}]
    )
    return Target.from_config(config.webhooks[0])


async def send(target: Target) -> Attempt:
    async with aiohttp.ClientSession() as session:
        sender = Sender(session, timeout=5.0, user_agent=f"poller/{__version__}")
        return await sender.send(target, EVENT_ID, BODY)


async def test_ca_file_and_client_certificate_deliver(
    tmp_path: Path, pki: Pki, mtls_receiver: Receiver
) -> None:
    target = target_for(
        tmp_path,
        mtls_receiver.url("internal"),
        ca_file=str(pki.ca_file),
        client_cert=str(pki.client_cert),
        client_key=str(pki.client_key),
    )

    attempt = await send(target)

    assert (attempt.ok, attempt.status, attempt.error) == (True, 204, None)
    (received,) = mtls_receiver.delivered()
    assert received.msg_id == EVENT_ID  # verified with the webhook's secret


async def test_one_file_holding_certificate_and_key_delivers(
    tmp_path: Path, pki: Pki, mtls_receiver: Receiver
) -> None:
    target = target_for(
        tmp_path,
        mtls_receiver.url("internal"),
        ca_file="pki/ca.pem",
        client_cert="pki/client.pem",
    )

    assert (await send(target)).ok


def dropped(hint: str) -> set[str]:
    """What an attempt says when an asyncio TLS server drops it: a reset or an EOF."""
    return {
        f"connection reset by the receiver without an answer ({hint})",
        f"the receiver closed the connection without an answer ({hint})",
    }


async def test_without_a_client_certificate_the_dropped_connection_is_explained(
    tmp_path: Path, pki: Pki, mtls_receiver: Receiver
) -> None:
    # asyncio's TLS server drops a client it refuses without an alert.
    url = mtls_receiver.url("internal")
    attempt = await send(target_for(tmp_path, url, ca_file=str(pki.ca_file)))

    assert (attempt.ok, attempt.status) == (False, None)
    assert attempt.error in dropped("does it require a client certificate? none is configured")
    assert mtls_receiver.delivered() == []


async def test_a_client_certificate_of_another_ca_is_explained(
    tmp_path: Path, pki: Pki, mtls_receiver: Receiver
) -> None:
    target = target_for(
        tmp_path,
        mtls_receiver.url("internal"),
        ca_file=str(pki.ca_file),
        client_cert=str(pki.stranger_pem),
    )

    attempt = await send(target)

    assert attempt.error in dropped("does it trust the client certificate?")


async def test_without_ca_file_the_receiver_is_not_trusted(
    tmp_path: Path, mtls_receiver: Receiver, pki: Pki
) -> None:
    attempt = await send(
        target_for(tmp_path, mtls_receiver.url("internal"), client_cert=str(pki.client_pem))
    )

    assert attempt.status is None
    assert attempt.error is not None
    assert attempt.error.startswith("TLS: the receiver's certificate is not trusted: ")
    assert "certificate" in attempt.error.removeprefix("TLS: the receiver's certificate")
    assert mtls_receiver.delivered() == []


async def test_another_ca_file_does_not_trust_the_receiver(
    tmp_path: Path, mtls_receiver: Receiver, pki: Pki
) -> None:
    # ca_file replaces the trusted CAs: the right CA elsewhere does not help.
    target = target_for(
        tmp_path,
        mtls_receiver.url("internal"),
        ca_file=str(pki.other_ca_file),
        client_cert=str(pki.client_pem),
    )

    attempt = await send(target)

    assert attempt.error is not None
    assert attempt.error.startswith("TLS: the receiver's certificate is not trusted: ")


async def test_a_certificate_for_another_host_is_a_hostname_mismatch(
    tmp_path: Path, pki: Pki
) -> None:
    receiver = Receiver({"internal": SECRET})
    await receiver.start(
        ssl_context=pki.server_context(require_client_cert=False, names=("a.corp",))
    )
    try:
        attempt = await send(
            target_for(tmp_path, receiver.url("internal"), ca_file=str(pki.ca_file))
        )
    finally:
        await receiver.stop()

    assert attempt.error == (
        "TLS: the receiver's certificate is not trusted: "
        "IP address mismatch, certificate is not valid for '127.0.0.1'."
    )


async def test_the_receivers_alerts_are_named(tmp_path: Path, pki: Pki) -> None:
    with AlertingTlsServer(pki.server_context(require_client_cert=True)) as server:
        missing = await send(target_for(tmp_path, server.url, ca_file=str(pki.ca_file)))
        stranger = await send(
            target_for(
                tmp_path, server.url, ca_file=str(pki.ca_file), client_cert=str(pki.stranger_pem)
            )
        )
        good = await send(
            target_for(
                tmp_path, server.url, ca_file=str(pki.ca_file), client_cert=str(pki.client_pem)
            )
        )

    assert missing.error == (
        "TLS: the receiver requires a client certificate (client_cert) "
        "[tlsv13 alert certificate required]"
    )
    assert stranger.error == (
        "TLS: the receiver does not trust the client certificate's CA [tlsv1 alert unknown ca]"
    )
    assert (good.ok, good.status) == (True, 204)


async def test_tls_to_a_plain_http_server_is_named(tmp_path: Path, receiver: Receiver) -> None:
    url = receiver.url("all").replace("http://", "https://")
    attempt = await send(target_for(tmp_path, url))

    assert attempt.error is not None
    assert attempt.error.startswith("TLS: the receiver did not answer in TLS")


# --- the API ---------------------------------------------------------------------------


@pytest.fixture
async def https_simulator(pki: Pki) -> AsyncIterator[Simulator]:
    sim = Simulator(access_key=ACCESS_KEY, app_secret=APP_SECRET)
    await sim.start(ssl_context=pki.server_context(require_client_cert=False))
    sim.add_event("room-1", "beam.recording.success")
    yield sim
    await sim.stop()


async def walk(client: HmsClient) -> int:
    return sum([len(page.ids) async for page in client.pages("room-1", ["beam.recording.success"])])


def api_client(
    session: aiohttp.ClientSession, tmp_path: Path, sim: Simulator, **hms: Any
) -> HmsClient:
    config = load_with(
        tmp_path,
        hms={"base_url": sim.base_url, **hms},
        webhooks=[{"name": "w", "url": "https://hooks.example.com/", "secret": SECRET}],
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


async def test_the_api_client_trusts_hms_ca_file(
    tmp_path: Path, pki: Pki, https_simulator: Simulator, session: aiohttp.ClientSession
) -> None:
    assert https_simulator.base_url.startswith("https://")
    client = api_client(session, tmp_path, https_simulator, ca_file=str(pki.ca_file))

    assert await walk(client) == 1


async def test_the_api_client_without_ca_file_names_the_tls_failure(
    tmp_path: Path, https_simulator: Simulator, session: aiohttp.ClientSession
) -> None:
    client = api_client(session, tmp_path, https_simulator)

    with pytest.raises(ApiError) as caught:
        await walk(client)

    assert str(caught.value).startswith(
        "GET /analytics/events for room room-1 failed after 2 attempts: "
        "TLS: the API's certificate is not trusted: "
    )
