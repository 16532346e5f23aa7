"""One signed POST against real HTTP servers: headers, success, failures, Retry-After, hygiene."""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from poller import __version__
from poller.config import Secret, WebhookConfig
from poller.delivery.sender import RESPONSE_EXCERPT_BYTES, Attempt, Sender, Target, redacted
from poller.receiver import Receiver
from tests.conftest import make_secret

USER_AGENT = f"poller/{__version__}"
EVENT_ID = "f3f18235-058c-432b-b8c2-8344c92743f6"
TOKEN = "tok-S3CR3T-query-value"
BODY = json.dumps(
    {
        "version": "2.0",
        "id": EVENT_ID,
        "timestamp": "2023-01-09T06:18:29.462240675Z",
        "type": "beam.recording.success",
        "data": {"duration": 33, "size": 15316104, "ratio": 1.5, "name": "Café ☕"},
    },
    separators=(",", ":"),
    ensure_ascii=False,
).encode()

Serve = Callable[[web.Application], Awaitable[str]]


def webhook(
    url: str,
    secret: str | None = None,
    *,
    name: str = "all",
    headers: tuple[tuple[str, str], ...] = (),
) -> WebhookConfig:
    return WebhookConfig(
        name=name,
        url=url,
        secret=Secret(secret or make_secret()),
        event_types=None,
        rooms=None,
        headers=headers,
        max_concurrency=4,
    )


def target(
    url: str,
    secret: str | None = None,
    *,
    name: str = "all",
    headers: tuple[tuple[str, str], ...] = (),
) -> Target:
    return Target.from_config(webhook(url, secret, name=name, headers=headers))


@pytest.fixture
def sender(session: aiohttp.ClientSession) -> Sender:
    return Sender(session, timeout=2.0, user_agent=USER_AGENT)


@pytest.fixture
async def release() -> AsyncIterator[asyncio.Event]:
    """Set at teardown, so that handlers held on it let their servers shut down."""
    event = asyncio.Event()
    yield event
    event.set()


@pytest.fixture
async def serve(release: asyncio.Event) -> AsyncIterator[Serve]:
    """Run purpose-built aiohttp apps on 127.0.0.1; return their base URL."""
    runners: list[web.AppRunner] = []

    async def start(app: web.Application) -> str:
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    yield start
    release.set()
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[[bytes | None], Awaitable[str]]]:
    """Plain TCP servers that answer a request with fixed bytes (None: hang up at once)."""
    servers: list[asyncio.Server] = []

    async def start(reply: bytes | None) -> str:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            if reply is not None:
                writer.write(reply)
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def assert_clean(attempt: Attempt) -> None:
    """A failure's error never carries the URL's path or query string."""
    assert attempt.error is not None
    for fragment in (TOKEN, "token=", "/hooks/", "?"):
        assert fragment not in attempt.error


# --- success ------------------------------------------------------------------------


async def test_successful_post(receiver: Receiver, sender: Sender) -> None:
    secret = receiver.secrets["all"]
    hook = target(receiver.url("all"), secret, headers=(("X-Api-Key", "k-123"), ("X-Tenant", "t")))
    before = time.time()
    attempt = await sender.send(hook, EVENT_ID, BODY)
    after = time.time()
    assert attempt == Attempt(204, None, None, attempt.duration)
    assert attempt.ok
    assert 0 <= attempt.duration < 2.0

    (got,) = receiver.received
    assert got.valid
    assert got.ok
    assert got.msg_id == EVENT_ID
    assert got.body == BODY  # exactly the bytes given, raw UTF-8 included
    headers = got.headers
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"] == USER_AGENT
    assert headers["webhook-id"] == EVENT_ID
    assert int(before) <= int(headers["webhook-timestamp"]) <= int(after) + 1
    assert headers["X-Api-Key"] == "k-123"
    assert headers["X-Tenant"] == "t"
    # Any Standard Webhooks library accepts it.
    assert Webhook(secret).verify(got.body, dict(headers)) == json.loads(BODY)


async def test_post_sends_each_header_once(serve: Serve, sender: Sender) -> None:
    seen: list[list[tuple[str, str]]] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append([(k.lower(), v) for k, v in request.headers.items()])
        assert await request.read() == BODY
        assert request.method == "POST"
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/in", handler)
    base = await serve(app)
    attempt = await sender.send(target(f"{base}/in", headers=(("X-Api-Key", "k"),)), "m1", BODY)
    assert attempt.ok
    assert attempt.status == 200
    (headers,) = seen
    names = [k for k, _ in headers]
    for name in (
        "content-type",
        "user-agent",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "x-api-key",
    ):
        assert names.count(name) == 1, name


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
async def test_any_2xx_is_success(status: int, serve: Serve, sender: Sender) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=status, text="ok" if status != 204 else None)

    app = web.Application()
    app.router.add_post("/in", handler)
    attempt = await sender.send(target(f"{await serve(app)}/in"), "m", BODY)
    assert (attempt.status, attempt.error, attempt.ok) == (status, None, True)


async def test_large_2xx_response_is_success(serve: Serve, sender: Sender) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=200, body=b"x" * (1024 * 1024))

    app = web.Application()
    app.router.add_post("/in", handler)
    attempt = await sender.send(target(f"{await serve(app)}/in"), "m", BODY)
    assert attempt.ok
    assert attempt.status == 200


async def test_2xx_whose_body_stalls_is_still_delivered(
    serve: Serve, session: aiohttp.ClientSession, release: asyncio.Event
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(status=200)
        resp.content_length = 1000
        await resp.prepare(request)
        await resp.write(b"partial")
        await release.wait()
        return resp

    app = web.Application()
    app.router.add_post("/in", handler)
    quick = Sender(session, timeout=0.3, user_agent=USER_AGENT)
    attempt = await quick.send(target(f"{await serve(app)}/in"), "m", BODY)
    assert (attempt.status, attempt.error) == (200, None)


async def test_the_answers_first_kib_is_kept_even_when_it_arrives_in_pieces(
    serve: Serve, sender: Sender
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(status=422)
        await resp.prepare(request)  # chunked: the client sees the pieces as they come
        for piece in (b'{"error":', b'"bad ' + b"x" * 600, b"y" * 3000 + b'"}'):
            await resp.write(piece)
            await asyncio.sleep(0.01)  # separate reads on the client side
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/in", handler)
    attempt = await sender.send(target(f"{await serve(app)}/in"), "m", BODY)
    assert (attempt.status, attempt.error) == (422, "HTTP 422")
    assert len(attempt.response) == RESPONSE_EXCERPT_BYTES == 1024
    assert attempt.response == (b'{"error":"bad ' + b"x" * 600 + b"y" * 3000)[:1024]


async def test_a_short_answer_is_kept_whole(receiver: Receiver, sender: Sender) -> None:
    ok = await sender.send(target(receiver.url("all"), receiver.secrets["all"]), "m", BODY)
    assert (ok.status, ok.response) == (204, b"")


async def test_rotation_signs_each_attempt_with_every_secret(
    receiver: Receiver, sender: Sender
) -> None:
    """A receiver that verifies with any one of the secrets alone accepts the attempt."""
    old, older, current = receiver.secrets["all"], make_secret(), make_secret()
    config = dataclasses.replace(
        webhook(receiver.url("all"), current), previous_secrets=(Secret(old), Secret(older))
    )
    attempt = await sender.send(Target.from_config(config), EVENT_ID, BODY)
    assert attempt.ok  # the receiver still knows only the old secret
    (got,) = receiver.received
    assert len(got.headers["webhook-signature"].split(" ")) == 3
    for secret in (current, old, older):
        assert Webhook(secret).verify(got.body, dict(got.headers))["id"] == EVENT_ID
    with pytest.raises(WebhookVerificationError):
        Webhook(make_secret()).verify(got.body, dict(got.headers))


# --- failures -----------------------------------------------------------------------


async def test_http_500_is_a_failure(receiver: Receiver, sender: Sender) -> None:
    receiver.fail("all", status=500)
    attempt = await sender.send(target(receiver.url("all"), receiver.secrets["all"]), "m", BODY)
    assert (attempt.status, attempt.error, attempt.retry_after) == (500, "HTTP 500", None)
    assert not attempt.ok


@pytest.mark.parametrize("status", [400, 401, 404, 410, 502])
async def test_other_statuses_are_failures(status: int, receiver: Receiver, sender: Sender) -> None:
    receiver.fail("all", status=status)
    attempt = await sender.send(target(receiver.url("all"), receiver.secrets["all"]), "m", BODY)
    assert (attempt.status, attempt.error, attempt.ok) == (status, f"HTTP {status}", False)


async def test_bad_signature_is_a_failure(receiver: Receiver, sender: Sender) -> None:
    # Signed with a key the receiver does not know: it answers 401.
    attempt = await sender.send(target(receiver.url("all"), make_secret()), "m", BODY)
    assert (attempt.status, attempt.error) == (401, "HTTP 401")


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_redirect_is_not_followed(
    status: int, serve: Serve, sender: Sender, receiver: Receiver
) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=status, headers={"Location": receiver.url("all")})

    app = web.Application()
    app.router.add_post("/moved", handler)
    base = await serve(app)
    hook = target(f"{base}/moved?token={TOKEN}", receiver.secrets["all"])
    attempt = await sender.send(hook, "m", BODY)
    assert (attempt.status, attempt.error, attempt.ok) == (status, f"HTTP {status}", False)
    assert receiver.received == []
    assert_clean(attempt)


async def test_hanging_receiver_times_out(
    serve: Serve, session: aiohttp.ClientSession, release: asyncio.Event
) -> None:
    async def handler(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hang", handler)
    base = await serve(app)
    quick = Sender(session, timeout=0.3, user_agent=USER_AGENT)
    started = time.perf_counter()
    attempt = await quick.send(target(f"{base}/hang?token={TOKEN}"), "m", BODY)
    elapsed = time.perf_counter() - started
    assert attempt.status is None
    assert attempt.error is not None
    assert "timed out" in attempt.error
    assert "0.3" in attempt.error
    assert attempt.duration >= 0.29
    assert elapsed >= 0.29
    assert attempt.retry_after is None
    assert_clean(attempt)


async def test_a_cancelled_attempt_is_cancelled_not_failed(
    serve: Serve, sender: Sender, release: asyncio.Event
) -> None:
    # Not an outcome: the worker hands the claim back (an attempt was not made).
    arrived = asyncio.Event()

    async def handler(request: web.Request) -> web.Response:
        arrived.set()
        await release.wait()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hang", handler)
    base = await serve(app)
    attempt = asyncio.create_task(sender.send(target(f"{base}/hang"), "m", BODY))
    await asyncio.wait_for(arrived.wait(), 5.0)
    attempt.cancel()
    with pytest.raises(asyncio.CancelledError):
        await attempt


async def test_connection_refused(sender: Sender) -> None:
    port = closed_port()
    hook = target(f"http://127.0.0.1:{port}/hooks/private/path?token={TOKEN}")
    attempt = await sender.send(hook, "m", BODY)
    assert attempt.status is None
    assert attempt.error is not None
    assert attempt.error.startswith("connection failed")
    assert not attempt.ok
    assert_clean(attempt)


async def test_unresolvable_host(sender: Sender) -> None:
    hook = target(f"http://poller-test.invalid/hooks/x?token={TOKEN}")
    attempt = await sender.send(hook, "m", BODY)
    assert attempt.status is None
    assert attempt.error is not None
    assert attempt.error.startswith("connection failed")
    assert_clean(attempt)


@pytest.mark.parametrize(
    ("url_of", "headers", "expected"),
    [
        pytest.param(
            lambda base: f"{base}/hooks/all?token={TOKEN}",
            (("X-Api-Key", f"{TOKEN}\x01"),),
            "request failed: ValueError: Forbidden control character",
            id="header-control-character",
        ),
        pytest.param(
            lambda base: f"http://{'a' * 64}.example.com/hooks/all?token={TOKEN}",
            (),
            "request failed: UnicodeError:",
            id="host-label-over-63",
        ),
    ],
)
async def test_a_request_that_cannot_be_built_is_a_failed_attempt(
    url_of: Callable[[str], str],
    headers: tuple[tuple[str, str], ...],
    expected: str,
    receiver: Receiver,
    sender: Sender,
) -> None:
    base = receiver.url("all").rsplit("/", 1)[0]
    attempt = await sender.send(target(url_of(base), headers=headers), "m", BODY)
    assert (attempt.ok, attempt.status) == (False, None)
    assert attempt.error is not None
    assert attempt.error.startswith(expected)
    assert_clean(attempt)
    assert receiver.received == []


async def test_a_str_body_is_sent_as_utf8(receiver: Receiver, sender: Sender) -> None:
    attempt = await sender.send(
        target(receiver.url("all"), receiver.secrets["all"]), "m", BODY.decode()
    )
    assert attempt.ok
    (got,) = receiver.received
    assert (got.body, got.valid) == (BODY, True)


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(None, id="hang-up"),
        pytest.param(b"NOT HTTP AT ALL\r\n\r\n", id="garbage"),
        pytest.param(b"HTTP/1.1 500 Oops\r\nContent-Length: 100\r\n\r\nshort", id="cut-500"),
    ],
)
async def test_broken_servers(
    reply: bytes | None,
    raw_server: Callable[[bytes | None], Awaitable[str]],
    sender: Sender,
) -> None:
    base = await raw_server(reply)
    attempt = await sender.send(target(f"{base}/hooks/x?token={TOKEN}"), "m", BODY)
    assert not attempt.ok
    assert attempt.error is not None
    assert attempt.error.startswith(("request failed", "HTTP 500"))
    assert_clean(attempt)


async def test_2xx_with_a_truncated_body_is_delivered(
    raw_server: Callable[[bytes | None], Awaitable[str]], sender: Sender
) -> None:
    # The status line said 2xx: the receiver has the event.
    base = await raw_server(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort")
    attempt = await sender.send(target(f"{base}/hooks/x"), "m", BODY)
    assert (attempt.status, attempt.error) == (200, None)


# --- Retry-After --------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_seconds(status: int, receiver: Receiver, sender: Sender) -> None:
    receiver.fail("all", status=status, retry_after="120")
    attempt = await sender.send(target(receiver.url("all"), receiver.secrets["all"]), "m", BODY)
    assert (attempt.status, attempt.error) == (status, f"HTTP {status}")
    assert attempt.retry_after == 120.0


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_http_date(status: int, receiver: Receiver, sender: Sender) -> None:
    when = email.utils.formatdate(time.time() + 600, usegmt=True)
    receiver.fail("all", status=status, retry_after=when)
    attempt = await sender.send(target(receiver.url("all"), receiver.secrets["all"]), "m", BODY)
    assert attempt.retry_after is not None
    assert 590.0 <= attempt.retry_after <= 601.0


async def test_retry_after_in_the_past_is_zero(receiver: Receiver, sender: Sender) -> None:
    receiver.fail("all", status=503, retry_after=email.utils.formatdate(0, usegmt=True))
    attempt = await sender.send(target(receiver.url("all"), receiver.secrets["all"]), "m", BODY)
    assert attempt.retry_after == 0.0


@pytest.mark.parametrize("value", [None, "", "soon", "nan", "inf", "Someday, 99 Foo 2025"])
async def test_unusable_retry_after_is_none(
    value: str | None, receiver: Receiver, sender: Sender
) -> None:
    receiver.fail("all", status=429, retry_after=value)
    attempt = await sender.send(target(receiver.url("all"), receiver.secrets["all"]), "m", BODY)
    assert attempt.status == 429
    assert attempt.retry_after is None


@pytest.mark.parametrize("status", [500, 502, 301])
async def test_retry_after_only_counts_on_429_and_503(
    status: int, serve: Serve, sender: Sender
) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=status, headers={"Retry-After": "30", "Location": "/x"})

    app = web.Application()
    app.router.add_post("/in", handler)
    attempt = await sender.send(target(f"{await serve(app)}/in"), "m", BODY)
    assert attempt.status == status
    assert attempt.retry_after is None


# --- hygiene ------------------------------------------------------------------------


def test_target_signs_with_the_key_decoded_at_load() -> None:
    config = webhook("https://example.com/hook")
    assert Target.from_config(config).key is config.signing_key


async def test_target_repr_hides_url_key_and_headers(receiver: Receiver) -> None:
    secret = make_secret()
    hook = target(f"{receiver.url('all')}?token={TOKEN}", secret, headers=(("X-Api-Key", "k9"),))
    text = repr(hook)
    assert TOKEN not in text
    assert secret.removeprefix("whsec_") not in text
    assert "k9" not in text
    assert "all" in text


async def test_query_token_never_in_errors(
    serve: Serve, session: aiohttp.ClientSession, receiver: Receiver, release: asyncio.Event
) -> None:
    async def hang(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hang", hang)
    base = await serve(app)
    quick = Sender(session, timeout=0.3, user_agent=USER_AGENT)
    receiver.fail("all", status=503, retry_after="1")
    urls = [
        f"{receiver.url('all')}?token={TOKEN}",  # 503
        f"{base}/hang?token={TOKEN}",  # timeout
        f"http://127.0.0.1:{closed_port()}/hooks/all?token={TOKEN}",  # refused
        f"http://user:{TOKEN}@127.0.0.1:{closed_port()}/hooks/all",  # credentials in the URL
    ]
    attempts: list[Any] = [await quick.send(target(url), "m", BODY) for url in urls]
    for attempt in attempts:
        assert not attempt.ok
        assert_clean(attempt)


def test_unexpected_errors_are_redacted_and_storable() -> None:
    hook = target(
        f"http://user:pw-{TOKEN}@example.com/hooks/p%41th-secret?token={TOKEN}#fragment-secret",
        headers=(("X-Api-Key", "key\x01value"),),
    )
    message = (
        f"bad {hook.url} path /hooks/pAth-secret query token={TOKEN} header "
        f"{'key' + chr(1) + 'value'!r} nul\x00 surrogate\ud800"
    )
    text = redacted(message, hook.private_values())
    for leaked in (TOKEN, "pAth-secret", "p%41th", "key\x01", "fragment-secret", "\x00", "\ud800"):
        assert leaked not in text
    assert text == "bad *** path /hooks/*** query token=*** header '***' nul? surrogate?"
