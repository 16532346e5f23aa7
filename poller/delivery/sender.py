"""One signed HTTP POST of one event to one webhook."""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import aiohttp

from poller.config import WebhookConfig, url_secrets
from poller.config.model import DIRECT, Route
from poller.errors import one_line
from poller.net import ProxyOptions, connection_failure, proxy_options, proxy_refusal
from poller.redaction import Redactor
from poller.signing import RotatingKeys
from poller.timeutil import parse_retry_after

# Receivers may answer with a page of HTML; we only need the status, and the start
# of the answer for the attempt log (what a receiver said when it refused).
_MAX_RESPONSE_BYTES = 64 * 1024
RESPONSE_EXCERPT_BYTES = 1024


@dataclass(frozen=True, slots=True)
class Target:
    """A webhook ready to send to: URL, signing key, static headers, concurrency."""

    name: str
    url: str = field(repr=False)  # may carry a token in its query string
    key: RotatingKeys = field(repr=False)  # every attempt is signed with each of its keys
    headers: Mapping[str, str] = field(repr=False)
    max_concurrency: int
    rate_limit: float | None = None  # requests per second from this instance; None: no limit
    # The SSLContext built at load for its ca_file / client_cert, or True: the system's.
    ssl_context: ssl.SSLContext | bool = field(default=True, repr=False)
    route: Route = DIRECT  # through a proxy, or direct
    client_cert: bool = False  # whether ssl_context shows a client certificate
    # Derived once, not per attempt: whether the URL is tunnelled, and aiohttp's proxy options.
    https: bool = field(init=False, repr=False)
    via: ProxyOptions = field(init=False, repr=False)

    def __post_init__(self) -> None:
        https = self.url[:8].lower() == "https://"
        object.__setattr__(self, "https", https)
        object.__setattr__(self, "via", proxy_options(self.route, https=https))

    def private_values(self) -> Iterator[str]:
        """What an error about this target must not show: its URL, the URL's secret-bearing
        parts (the same as the log redactor's), its static header values and its proxy's
        credentials."""
        yield self.url
        yield from url_secrets(self.url)
        yield from self.headers.values()
        proxy = self.route.proxy
        if proxy is not None and proxy.username is not None:
            yield proxy.username
            yield from proxy.headers().values()
            if proxy.password is not None:
                yield proxy.password.reveal()

    @classmethod
    def from_config(cls, webhook: WebhookConfig) -> Target:
        """Build a target from a validated webhook config (its key was decoded at load)."""
        return cls(
            name=webhook.name,
            url=webhook.url,
            key=webhook.signing_key,
            headers=dict(webhook.headers),
            max_concurrency=webhook.max_concurrency,
            rate_limit=webhook.rate_limit,
            ssl_context=webhook.tls.client_ssl,
            route=webhook.route,
            client_cert=webhook.tls.client_cert is not None,
        )


@dataclass(frozen=True, slots=True)
class Attempt:
    """The outcome of one attempt; ``error`` is None exactly when it succeeded."""

    status: int | None
    error: str | None
    retry_after: float | None
    duration: float
    response: bytes = b""  # the answer's first RESPONSE_EXCERPT_BYTES

    @property
    def ok(self) -> bool:
        return self.error is None


class Sender:
    """Signs and POSTs event bodies; only a 2xx within the timeout counts as success."""

    def __init__(self, session: aiohttp.ClientSession, *, timeout: float, user_agent: str) -> None:
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._timeout_s = timeout
        self._user_agent = user_agent

    async def send(self, target: Target, msg_id: str, body: bytes | str) -> Attempt:
        """Make one attempt (``body`` is the event's JSON); never raises but CancelledError.

        Why every exception: one that escaped would leave the delivery claimed, its
        attempt uncounted, re-sent every claim TTL and never dead. A value the loader
        should have refused (a header the HTTP writer rejects, a host IDNA cannot
        encode) is a failed attempt like any other.
        """
        started = time.perf_counter()
        status: int | None = None
        retry_after: float | None = None
        excerpt = bytearray()
        via = target.via
        try:
            data = body.encode() if isinstance(body, str) else body
            headers = {
                **target.headers,
                **via.headers,
                "Content-Type": "application/json",
                "User-Agent": self._user_agent,
                # Signed at the last moment: the timestamp is this attempt's.
                **target.key.headers(msg_id, data),
            }
            async with self._session.post(
                target.url,
                data=data,
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
                ssl=target.ssl_context,
                proxy=via.proxy,
                proxy_headers=via.proxy_headers,
            ) as resp:
                status = resp.status
                if status in (429, 503):
                    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                # read(n) returns what has arrived: loop for the whole excerpt.
                while len(excerpt) < RESPONSE_EXCERPT_BYTES and (
                    chunk := await resp.content.read(RESPONSE_EXCERPT_BYTES - len(excerpt))
                ):
                    excerpt += chunk
                await resp.content.read(_MAX_RESPONSE_BYTES)
            error = None if 200 <= status < 300 else f"HTTP {status}"
            if error is not None:
                error = proxy_refusal(status, target.route) or error
        except TimeoutError:
            error = f"timed out after {self._timeout_s:g}s"
        except aiohttp.ClientError as exc:
            error = connection_failure(
                exc,
                peer="the receiver",
                route=target.route,
                https=target.https,
                client_cert=target.client_cert,
            ) or _client_error(exc)
        except Exception as exc:
            error = f"request failed: {redacted(one_line(exc), target.private_values())}"
        if status is not None and 200 <= status < 300:
            error = None  # a response body cut short after a 2xx is still a delivery
        duration = time.perf_counter() - started
        return Attempt(status, error, retry_after, duration, bytes(excerpt))


def _client_error(exc: aiohttp.ClientError) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        # The connector's message names host:port and the OS error, never
        # the path or query string, which may hold a token.
        return f"connection failed: {exc.os_error.strerror or type(exc.os_error).__name__}"
    return f"request failed: {type(exc).__name__}"


def redacted(text: str, secrets: Iterable[str]) -> str:
    """``text`` without any of ``secrets`` (masked as the logs mask them), in characters
    every store can hold: printable, no NUL, no lone surrogates."""
    text = Redactor(secrets)(text)
    # PostgreSQL refuses NUL in text and no driver can encode a lone surrogate.
    return "".join(c if c.isprintable() and not 0xD800 <= ord(c) <= 0xDFFF else "?" for c in text)
