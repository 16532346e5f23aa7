"""The 100ms API: paging through one events query, and the rooms and sessions listings,
with retries and backoff."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import ssl
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import structlog
import structlog.typing

from poller import backoff
from poller.budget import RequestBudget
from poller.config.model import DIRECT, Route
from poller.hms.listing import ListingPage, RoomInfo, SessionInfo, parse_rooms, parse_sessions
from poller.hms.page import MalformedPage, Page, parse_page
from poller.hms.token import TokenProvider
from poller.net import connection_failure, proxy_options, proxy_refusal
from poller.timeutil import parse_retry_after

__all__ = ["ApiError", "HmsClient", "Page", "WalkLimits"]

EVENTS_PATH = "/analytics/events"
ROOMS_PATH = "/rooms"
SESSIONS_PATH = "/sessions"
LISTING_LIMIT = 100  # items per listing page, the API's most
T = TypeVar("T")
_MAX_DETAIL = 200  # chars of an API error message worth keeping


class ApiError(Exception):
    """The API refused a request or kept failing; the poll gives up. Never carries the token."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class WalkLimits:
    """Bounds on one walk of a room (``poll.max_*``): a broken or hostile API can
    neither hold a room forever nor fill the process's memory."""

    max_pages: int = 10_000
    max_page_bytes: int = 16 * 1024 * 1024
    max_page_events: int = 1_000


class _TooLarge(Exception):
    """A response body over ``max_page_bytes``."""


@dataclass(frozen=True, slots=True)
class _Failure:
    """Why one attempt failed in a way worth retrying."""

    reason: str
    status: int | None = None
    retry_after: float | None = None


class HmsClient:
    """Reads the analytics events API: one fresh query per ``pages()`` call, every page."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        tokens: TokenProvider,
        *,
        request_timeout: float = 10.0,
        max_attempts: int = 4,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        retry_after_max: float = 300.0,
        limits: WalkLimits | None = None,
        limiter: contextlib.AbstractAsyncContextManager[Any] | None = None,
        budget: RequestBudget | None = None,
        logger: structlog.typing.FilteringBoundLogger | None = None,
        on_response: Callable[[str, float], None] | None = None,
        redact: Callable[[str], str] | None = None,
        ssl_context: ssl.SSLContext | bool = True,
        route: Route = DIRECT,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._session = session
        self._base = base_url.rstrip("/")
        self._https = base_url[:8].lower() == "https://"
        # [hms] ca_file's context (or True: the system's CAs) and the proxy, both from load.
        self._ssl = ssl_context
        self._route = route
        self._via = proxy_options(route, https=self._https)
        self._tokens = tokens
        self._timeout = aiohttp.ClientTimeout(total=request_timeout)
        self._max_attempts = max_attempts
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._retry_after_max = retry_after_max
        self._limits = limits or WalkLimits()
        # Told each response's status ("error" for no response) and duration, for metrics.
        self._on_response = on_response or (lambda _status, _seconds: None)
        # Masks the configured secrets in what the API says, before it is cut short.
        self._redact = redact or (lambda text: text)
        self._limiter: contextlib.AbstractAsyncContextManager[Any] = (
            limiter if limiter is not None else contextlib.nullcontext()
        )
        self._budget = budget
        self._log: structlog.typing.FilteringBoundLogger = (
            logger if logger is not None else structlog.get_logger("poller.hms")
        )

    async def pages(
        self,
        room_id: str,
        event_types: Sequence[str],
        *,
        page_size: int = 100,
        filters: Mapping[str, str] | None = None,
    ) -> AsyncIterator[Page]:
        """Yield every page of one fresh query for ``room_id``; raise ApiError if it fails."""
        # The API wants the same query on every page; only ``start`` moves.
        query: list[tuple[str, str]] = [
            ("room_id", room_id),
            *(("type", t) for t in event_types),
            ("limit", str(page_size)),
            *(filters or {}).items(),
        ]
        start: str | None = None
        cursors: set[str] = set()
        for _ in range(self._limits.max_pages):
            params = query if start is None else [*query, ("start", start)]
            page = await self._get_page(room_id, params)
            yield page
            if not page.next:
                return
            if page.next in cursors:
                # A cursor that comes back would walk the same pages for ever.
                raise ApiError(f"GET {EVENTS_PATH} for room {room_id}: the API repeated a cursor")
            cursors.add(page.next)
            start = page.next
        raise ApiError(
            f"GET {EVENTS_PATH} for room {room_id}: more than {self._limits.max_pages} pages "
            "in one walk (poll.max_pages)"
        )

    async def rooms(self, *, enabled: bool) -> AsyncIterator[RoomInfo]:
        """Every room of the app with this ``enabled`` flag (``GET /rooms``, every page)."""
        query = [("enabled", "true" if enabled else "false")]
        async for page in self._listing(ROOMS_PATH, query, parse_rooms):
            for room in page.data or ():
                yield room

    async def sessions(
        self, *, active: bool, after: str | None = None
    ) -> AsyncIterator[SessionInfo]:
        """The app's sessions, live (``active``) or all of them created after ``after``
        (an RFC 3339 time) when not (``GET /sessions``, every page)."""
        query = [("active", "true" if active else "false")]
        if after is not None:
            query.append(("after", after))
        async for page in self._listing(SESSIONS_PATH, query, parse_sessions):
            for session in page.data or ():
                yield session

    async def _listing(
        self,
        path: str,
        query: list[tuple[str, str]],
        parse: Callable[[bytes], ListingPage[T]],
    ) -> AsyncIterator[ListingPage[T]]:
        """Every page of a listing: ``start`` is the previous page's ``last``, until a page
        comes back empty (fewer items than asked is not documented as the end)."""
        start: str | None = None
        seen: set[str] = set()
        for _ in range(self._limits.max_pages):
            params = [*query, ("limit", str(LISTING_LIMIT))]
            if start is not None:
                params.append(("start", start))
            page = await self._get(path, params, parse, f"GET {path}")
            yield page
            if not page.data or not page.last:
                return
            if page.last in seen:
                raise ApiError(f"GET {path}: the API repeated a cursor")
            seen.add(page.last)
            start = page.last
        raise ApiError(f"GET {path}: more than {self._limits.max_pages} pages (poll.max_pages)")

    async def _get_page(self, room_id: str, params: list[tuple[str, str]]) -> Page:
        """Fetch one page of events, retrying transient failures; ApiError when it cannot."""
        return await self._get(
            EVENTS_PATH,
            params,
            functools.partial(parse_page, max_events=self._limits.max_page_events),
            f"GET {EVENTS_PATH} for room {room_id}",
            room_id=room_id,
        )

    async def _get(
        self,
        path: str,
        params: list[tuple[str, str]],
        parse: Callable[[bytes], T],
        where: str,
        **context: str,
    ) -> T:
        """GET ``path`` and parse it, retrying transient failures; raise ApiError when it
        cannot. ``where`` names the request in errors, ``context`` in log events."""
        failures = 0
        reauthorized = False
        while True:
            token = self._tokens.token()
            outcome = await self._try_once(path, params, token, parse, where)
            if not isinstance(outcome, _Failure):
                return outcome
            if outcome.status in (401, 403):
                if reauthorized:
                    raise ApiError(f"{where}: {outcome.reason}", outcome.status)
                # The token may have been revoked or the clocks disagree: one fresh token
                # deserves one immediate try, which is not a transient failure to count.
                self._log.warning("hms.reauthorize", **context, status=outcome.status)
                self._tokens.invalidate()
                reauthorized = True
                continue
            failures += 1
            if failures >= self._max_attempts:
                raise ApiError(
                    f"{where} failed after {failures} attempts: {outcome.reason}", outcome.status
                )
            delay = self._delay(failures, outcome.retry_after)
            self._log.warning(
                "hms.retry",
                **context,
                status=outcome.status,
                reason=outcome.reason,
                attempt=failures,
                delay=round(delay, 3),
            )
            await asyncio.sleep(delay)

    async def _try_once(
        self,
        path: str,
        params: list[tuple[str, str]],
        token: str,
        parse: Callable[[bytes], T],
        where: str,
    ) -> T | _Failure:
        """Make one request: its parsed body, a failure worth retrying, or ApiError for a
        refusal."""
        started = time.perf_counter()
        try:
            status, headers, body = await self._request(path, params, token)
        except _TooLarge:
            self._on_response("error", time.perf_counter() - started)
            raise ApiError(
                f"{where}: response larger than "
                f"{self._limits.max_page_bytes} bytes (poll.max_page_bytes)"
            ) from None
        except aiohttp.ClientError as exc:
            self._on_response("error", time.perf_counter() - started)
            found = connection_failure(exc, peer="the API", route=self._route, https=self._https)
            return _Failure(found or f"network error ({type(exc).__name__})")
        except TimeoutError as exc:
            self._on_response("error", time.perf_counter() - started)
            return _Failure(f"network error ({type(exc).__name__})")
        self._on_response(str(status), time.perf_counter() - started)
        if (refused := proxy_refusal(status, self._route)) is not None:
            return _Failure(refused, status)
        if 200 <= status < 300:
            try:
                return parse(body)
            except MalformedPage as exc:
                return _Failure(f"malformed page ({exc})", status)
        detail = _describe(status, body, functools.partial(self._mask, token))
        if status in (429, 503):
            return _Failure(detail, status, parse_retry_after(headers.get("Retry-After")))
        if status in (401, 403) or status >= 500:
            return _Failure(detail, status)
        raise ApiError(f"{where}: {detail}", status)

    def _mask(self, token: str, text: str) -> str:
        """``text`` without the token used and without any configured secret."""
        return self._redact(text.replace(token, "***") if token else text)

    async def _request(
        self, path: str, params: list[tuple[str, str]], token: str
    ) -> tuple[int, Mapping[str, str], bytes]:
        """One HTTP GET, holding the limiter only while it is on the wire (and for the
        budget's last look, which waits only when sends have bunched up)."""
        if self._budget is not None:
            await self._budget.request()  # every try, a retry's too, takes a turn
        async with self._limiter:
            if self._budget is not None:
                await self._budget.send()  # the turn kept as it goes out, late or not
            async with self._session.get(
                self._base + path,
                params=params,
                headers={**self._via.headers, "Authorization": f"Bearer {token}"},
                timeout=self._timeout,
                ssl=self._ssl,
                proxy=self._via.proxy,
                proxy_headers=self._via.proxy_headers,
            ) as resp:
                return resp.status, resp.headers, await self._read(resp)

    async def _read(self, resp: aiohttp.ClientResponse) -> bytes:
        """The body, refused as soon as it passes ``max_page_bytes`` (decompressed)."""
        cap = self._limits.max_page_bytes
        if (resp.content_length or 0) > cap:
            raise _TooLarge
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_any():
            size += len(chunk)
            if size > cap:
                raise _TooLarge
            chunks.append(chunk)
        return b"".join(chunks)

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before the next attempt: growing back-off, or the server's wish."""
        delay = backoff.exponential(attempt, base=self._backoff_base, maximum=self._backoff_max)
        return backoff.lengthen(delay, retry_after, self._retry_after_max)


def _describe(status: int | None, body: bytes, redact: Callable[[str], str]) -> str:
    """Summarise an error response as status, code and message, without echoing a secret."""
    text = f"HTTP {status}"
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        doc = None
    if isinstance(doc, dict):
        if "code" in doc:
            text += f", code {_quote(doc['code'], redact)}"
        if "message" in doc:
            text += f": {_quote(doc['message'], redact)}"
    return text


def _quote(value: object, redact: Callable[[str], str]) -> str:
    """Bound a value from the API for a message; the API is not trusted to omit our secrets."""
    # Redact before cutting, or a cut secret would no longer match.
    return redact(str(value))[:_MAX_DETAIL]
