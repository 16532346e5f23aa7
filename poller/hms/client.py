"""The 100ms analytics events API: paging through one query, with retries and backoff."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog
import structlog.typing

from poller.events import Event
from poller.hms.token import TokenProvider
from poller.timeutil import parse_retry_after

__all__ = ["ApiError", "HmsClient", "Page"]

EVENTS_PATH = "/analytics/events"
_MAX_DETAIL = 200  # chars of an API error message worth keeping
_MAX_LOGGED_ID = 64  # a malformed event's "id" may be anything; keep logs bounded


class ApiError(Exception):
    """The API refused a request or kept failing; the poll gives up. Never carries the token."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class _MalformedPage(Exception):
    """A 2xx response whose body is not a page of events."""


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a query: the well-formed events, how many were dropped, the next cursor."""

    events: tuple[Event, ...]
    skipped: int  # malformed events dropped from this page
    next: str | None


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
        limiter: contextlib.AbstractAsyncContextManager[Any] | None = None,
        logger: structlog.typing.FilteringBoundLogger | None = None,
        on_response: Callable[[str, float], None] | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._session = session
        self._url = base_url.rstrip("/") + EVENTS_PATH
        self._tokens = tokens
        self._timeout = aiohttp.ClientTimeout(total=request_timeout)
        self._max_attempts = max_attempts
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._retry_after_max = retry_after_max
        # Told each response's status ("error" for no response) and duration, for metrics.
        self._on_response = on_response or (lambda _status, _seconds: None)
        self._limiter: contextlib.AbstractAsyncContextManager[Any] = (
            limiter if limiter is not None else contextlib.nullcontext()
        )
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
        while True:
            params = query if start is None else [*query, ("start", start)]
            page = await self._get_page(room_id, params)
            yield page
            if not page.next:
                return
            start = page.next

    async def _get_page(self, room_id: str, params: list[tuple[str, str]]) -> Page:
        """Fetch one page, retrying transient failures; raise ApiError when it cannot."""
        failures = 0
        reauthorized = False
        while True:
            token = self._tokens.token()
            outcome = await self._try_once(room_id, params, token)
            if isinstance(outcome, Page):
                return outcome
            where = f"GET {EVENTS_PATH} for room {room_id}"
            if outcome.status in (401, 403):
                if reauthorized:
                    raise ApiError(f"{where}: {outcome.reason}", outcome.status)
                # The token may have been revoked or the clocks disagree: one fresh token
                # deserves one immediate try, which is not a transient failure to count.
                self._log.warning("hms.reauthorize", room_id=room_id, status=outcome.status)
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
                room_id=room_id,
                status=outcome.status,
                reason=outcome.reason,
                attempt=failures,
                delay=round(delay, 3),
            )
            await asyncio.sleep(delay)

    async def _try_once(
        self, room_id: str, params: list[tuple[str, str]], token: str
    ) -> Page | _Failure:
        """Make one request: a Page, a failure worth retrying, or ApiError for a refusal."""
        started = time.perf_counter()
        try:
            status, headers, body = await self._request(params, token)
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._on_response("error", time.perf_counter() - started)
            return _Failure(f"network error ({type(exc).__name__})")
        self._on_response(str(status), time.perf_counter() - started)
        if 200 <= status < 300:
            try:
                return self._parse_page(room_id, body)
            except _MalformedPage as exc:
                return _Failure(f"malformed page ({exc})", status)
        detail = _describe(status, body, token)
        if status in (401, 403) or status >= 500:
            return _Failure(detail, status)
        if status == 429:
            return _Failure(detail, status, parse_retry_after(headers.get("Retry-After")))
        raise ApiError(f"GET {EVENTS_PATH} for room {room_id}: {detail}", status)

    async def _request(
        self, params: list[tuple[str, str]], token: str
    ) -> tuple[int, Mapping[str, str], bytes]:
        """One HTTP GET, holding the limiter only while it is on the wire."""
        async with (
            self._limiter,
            self._session.get(
                self._url,
                params=params,
                headers={"Authorization": f"Bearer {token}"},
                timeout=self._timeout,
            ) as resp,
        ):
            return resp.status, resp.headers, await resp.read()

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before the next attempt: the server's wish, else full-jitter backoff."""
        if retry_after is not None:
            return min(retry_after, self._retry_after_max)
        # Capping the exponent keeps 2**n finite however many attempts are configured.
        ceiling = min(self._backoff_max, self._backoff_base * 2 ** min(attempt - 1, 32))
        return random.uniform(0, ceiling)

    def _parse_page(self, room_id: str, body: bytes) -> Page:
        """Validate the page's shape and turn its well-formed events into Events."""
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError):
            raise _MalformedPage("not JSON") from None
        if not isinstance(doc, dict):
            raise _MalformedPage("not an object")
        raw_events = doc.get("events")
        # A Go backend renders an empty slice as null; that is an empty page, not an error.
        if raw_events is None and "events" in doc:
            raw_events = []
        if not isinstance(raw_events, list):
            raise _MalformedPage("'events' is not a list")
        next_ = doc.get("next")
        if next_ is not None and not isinstance(next_, str):
            raise _MalformedPage("'next' is not a string")

        events: list[Event] = []
        for obj in raw_events:
            problem = _event_problem(obj)
            if problem is None:
                events.append(_to_event(obj, room_id))
                continue
            event_id = obj.get("id") if isinstance(obj, dict) else None
            self._log.warning(
                "hms.event_skipped",
                room_id=room_id,
                event_id=event_id[:_MAX_LOGGED_ID] if isinstance(event_id, str) else None,
                reason=problem,
            )
        return Page(tuple(events), len(raw_events) - len(events), next_ or None)


def _event_problem(obj: object) -> str | None:
    """Say what makes one raw event unusable, or None when it is fine."""
    if not isinstance(obj, dict):
        return "not an object"
    event_id = obj.get("id")
    if not isinstance(event_id, str) or not event_id:
        return "missing or invalid id"
    event_type = obj.get("type")
    if not isinstance(event_type, str) or not event_type:
        return "missing or invalid type"
    if not isinstance(obj.get("data"), dict):
        return "data is not an object"
    return None


def _to_event(obj: dict[str, Any], room_id: str) -> Event:
    """Build an Event whose body is the API's object, compact and unchanged."""
    timestamp = obj.get("timestamp")
    return Event(
        id=obj["id"],
        type=obj["type"],
        timestamp=timestamp if isinstance(timestamp, str) else "",
        room_id=room_id,
        body=json.dumps(obj, separators=(",", ":"), ensure_ascii=False),
    )


def _describe(status: int | None, body: bytes, token: str) -> str:
    """Summarise an error response as status, code and message, without echoing the token."""
    text = f"HTTP {status}"
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        doc = None
    if isinstance(doc, dict):
        if "code" in doc:
            text += f", code {_quote(doc['code'], token)}"
        if "message" in doc:
            text += f": {_quote(doc['message'], token)}"
    return text


def _quote(value: object, token: str) -> str:
    """Bound a value from the API for a message; the API is not trusted to omit our token."""
    text = str(value)
    # Redact before cutting, or a cut token would no longer match.
    if token:
        text = text.replace(token, "***")
    return text[:_MAX_DETAIL]
