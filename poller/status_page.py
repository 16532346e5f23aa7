"""The status page (``GET /`` of the ``[server]`` listener): one ``Snapshot`` as plain HTML5.

Read-only, server-rendered, with no script and no external asset: one inline ``<style>``,
allowed by its hash in the Content-Security-Policy (``HEADERS``). Every value shown is
masked like every report (a receiver's error may echo a header value) and then escaped:
room ids, event types and errors come from the API and from receivers, hostile input.
The type ``Markup`` marks text that is already escaped, so a cell left raw is a type error.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import html
from collections.abc import Callable, Iterable, Sequence
from typing import NewType

from poller.snapshot import (
    InstanceView,
    RoomView,
    Snapshot,
    WebhookView,
    ago,
    last_answer,
    pace_text,
    rfc3339,
    state_name,
    state_reason,
)
from poller.states import DeliveryState, PollOutcome, WebhookState
from poller.store.repo import DeliveryRow

__all__ = ["CONTENT_TYPE", "DELIVERIES", "HEADERS", "REFRESH", "STYLE", "render", "unavailable"]

DELIVERIES = 50  # rows in "latest deliveries", and at most as many in "dead deliveries"
# Why a refresh: an operator keeps the page open through an incident, and a 503 page
# (store down) must come back by itself. One page costs a handful of indexed reads.
REFRESH = 10  # seconds

Markup = NewType("Markup", str)  # HTML: escaped text, or markup built from escaped text
Redact = Callable[[str], str]

STYLE = """
:root { color-scheme: light dark; --muted: #6b7280; --line: #d1d5db; --ok: #15803d;
  --warn: #b45309; --bad: #b91c1c; --idle: #4b5563; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5rem; }
h1 { font-size: 1.4rem; margin: 0 0 .25rem; }
h2 { font-size: 1.1rem; margin: 1.75rem 0 .5rem; }
p { margin: .25rem 0; }
.meta, .muted, .url { color: var(--muted); }
.url { display: block; font-size: .85em; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .3rem .6rem .3rem 0; border-bottom: 1px solid var(--line);
  vertical-align: top; }
th { font-weight: 600; white-space: nowrap; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
code { font: .9em ui-monospace, "SFMono-Regular", Menlo, monospace; }
.error { color: var(--bad); overflow-wrap: anywhere; }
.badge { display: inline-block; padding: 0 .45em; border-radius: .6em; color: #fff;
  font-size: .85em; white-space: nowrap; }
.ok, .active, .delivered { background: var(--ok); }
.pending, .breaker_open { background: var(--warn); }
.failed, .dead, .disabled { background: var(--bad); }
.paused, .none { background: var(--idle); }
.problem { font-size: 1.1rem; color: var(--bad); }
footer { margin-top: 2rem; color: var(--muted); font-size: .85em; }
"""


def _csp(style: str) -> str:
    digest = base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
    # Nothing may load or run but this one style: not even a favicon or a form target.
    return (
        f"default-src 'none'; style-src 'sha256-{digest}'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


CONTENT_TYPE = "text/html; charset=utf-8"
HEADERS = {
    "Content-Security-Policy": _csp(STYLE),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",  # frame-ancestors, for browsers that predate it
}


class _Writer:
    """Escapes what it is given: the one way text gets into the page."""

    def __init__(self, redact: Redact, now: dt.datetime) -> None:
        self._redact = redact
        self.now = now

    def text(self, value: object) -> Markup:
        """``value`` masked and escaped."""
        return Markup(html.escape(self._redact(str(value))))

    def time(self, when: dt.datetime | None, *, none: str = "never") -> Markup:
        """``when`` relative to the page's time, with its RFC 3339 instant for machines and
        as a tooltip."""
        if when is None:
            return Markup(f'<span class="muted">{self.text(none)}</span>')
        stamp = self.text(rfc3339(when))
        return Markup(
            f'<time datetime="{stamp}" title="{stamp}">{self.text(ago(when, self.now))}</time>'
        )

    def badge(self, kind: str, label: str | None = None) -> Markup:
        """A coloured label; ``kind`` is a state or outcome (a CSS class), ``label`` its text."""
        return Markup(f'<span class="badge {self.text(kind)}">{self.text(label or kind)}</span>')

    def error(self, value: str | None) -> Markup:
        return Markup("") if not value else Markup(f'<span class="error">{self.text(value)}</span>')

    def code(self, value: object) -> Markup:
        return Markup(f"<code>{self.text(value)}</code>")


def _table(
    heads: Sequence[str], rows: Iterable[Sequence[Markup]], *, numeric: Iterable[int] = ()
) -> Markup:
    """A table; columns ``numeric`` are right-aligned. Headings are our own words."""
    right = set(numeric)

    def cls(i: int) -> str:
        return ' class="n"' if i in right else ""

    head = "".join(f"<th{cls(i)}>{html.escape(h)}</th>" for i, h in enumerate(heads))
    body = "\n".join(
        "<tr>" + "".join(f"<td{cls(i)}>{c}</td>" for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    return Markup(f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>")


def _section(anchor: str, title: str, content: Markup, empty: str, *, rows: int) -> Markup:
    inner = content if rows else Markup(f'<p class="muted">{html.escape(empty)}</p>')
    return Markup(f'<section id="{anchor}">\n<h2>{html.escape(title)}</h2>\n{inner}\n</section>')


def _instances(w: _Writer, snap: Snapshot) -> Markup:
    def row(i: InstanceView) -> list[Markup]:
        this = " (this one)" if i.id == snap.instance else ""
        return [Markup(w.code(i.id) + w.text(this)), w.time(i.started_at), w.time(i.heartbeat_at)]

    table = _table(["instance", "started", "last heartbeat"], map(row, snap.instances))
    return _section("instances", "Instances", table, "none running", rows=len(snap.instances))


def _outcome(w: _Writer, room: RoomView) -> Markup:
    if not room.polled:
        return w.badge("none", "not polled yet")
    outcome = room.outcome
    if outcome is None:
        return w.badge("none", "no walk finished yet")
    if outcome is PollOutcome.ERROR:
        return w.badge("failed", f"failed ({room.failed_walks} in a row)")
    return w.badge("ok", "ok" if room.first_polled_at else "ok, no complete walk yet")


def _rooms(w: _Writer, snap: Snapshot) -> Markup:
    def row(r: RoomView) -> list[Markup]:
        owner = w.code(r.lease_owner) if r.lease_owner else w.text("")
        return [
            w.code(r.id),
            w.text(
                r.origin_text
                if (pace := pace_text(r, snap.taken_at)) is None
                else f"{r.origin_text}; {pace}"
            ),
            w.time(r.last_polled_at),
            _outcome(w, r),
            w.time(r.last_success_at),
            w.text(r.events_seen),
            owner,
            w.error(r.last_error),
        ]

    heads = ["room", "from", "last poll", "outcome", "last success", "events seen"]
    table = _table([*heads, "lease owner", "last error"], map(row, snap.rooms), numeric=[5])
    title = "Rooms"
    if snap.retired_rooms:
        title += f" ({snap.retired_rooms} retired rooms not shown)"
    return _section("rooms", title, table, "no rooms configured", rows=len(snap.rooms))


def _since(webhook: WebhookView) -> dt.datetime | None:
    if webhook.state is WebhookState.BREAKER_OPEN:
        return webhook.breaker_opened_at
    return webhook.state_changed_at


def _webhooks(w: _Writer, snap: Snapshot) -> Markup:
    def row(h: WebhookView) -> list[Markup]:
        where = w.text(h.url) if h.url else w.text("not configured")
        reason = state_reason(h, w.now)
        # Orphaned (not in the config): not delivered to, whatever its stored state says.
        state = (
            w.badge(h.state.value, state_name(h.state))
            if h.configured
            else w.badge("none", "orphaned")
        )
        return [
            Markup(f'{w.code(h.name)}<span class="url">{where}</span>'),
            Markup(state + (f'<span class="url">{w.text(reason)}</span>' if reason else "")),
            w.time(_since(h), none="-"),
            w.text(h.pending),
            w.text(h.delivered),
            w.text(h.dead),
            w.time(h.oldest_pending_at, none="none"),
            w.time(h.failing_since, none="-"),
            w.error(h.last_error if h.failing_since else None),
        ]

    heads = ["webhook", "state", "since", "pending", "delivered", "dead", "oldest pending"]
    table = _table(
        [*heads, "failing since", "last error"], map(row, snap.webhooks), numeric=[3, 4, 5]
    )
    return _section("webhooks", "Webhooks", table, "no webhooks", rows=len(snap.webhooks))


def _delivery_state(w: _Writer, d: DeliveryRow) -> Markup:
    state = w.badge(d.state)
    if d.state != DeliveryState.PENDING:
        return state
    # Past its time it waits on the webhook (paused, breaker, a full pipe): "due 7s ago".
    when = "next" if d.next_attempt_at > w.now else "due"
    return Markup(f'{state}<span class="url">{when} {w.time(d.next_attempt_at)}</span>')


def _deliveries(w: _Writer, snap: Snapshot) -> Markup:
    def row(d: DeliveryRow) -> list[Markup]:
        return [
            w.text(d.id),
            w.code(d.webhook),
            w.code(d.room_id),
            w.code(d.event_type),
            Markup(f'<code title="{w.text(d.event_id)}">{w.text(d.event_id[:8])}</code>'),
            _delivery_state(w, d),
            w.text(d.attempts),
            w.error(last_answer(d)) if d.last_error else w.text(last_answer(d)),
            w.time(d.created_at),
            w.time(d.last_attempt_at, none="-"),
        ]

    heads = ["id", "webhook", "room", "event type", "event", "state", "attempts", "last answer"]
    latest = _table([*heads, "seen", "last attempt"], map(row, snap.latest), numeric=[0, 6])
    dead = _table([*heads, "seen", "died"], map(row, snap.dead), numeric=[0, 6])
    return Markup(
        _section(
            "latest",
            f"Latest deliveries (newest {DELIVERIES})",
            latest,
            "no deliveries yet",
            rows=len(snap.latest),
        )
        + "\n"
        + _section(
            "dead",
            f"Dead deliveries (newest {DELIVERIES})",
            Markup(
                dead + '<p class="muted">Retry with <code>poller deliveries retry ID</code> '
                "or <code>poller deliveries retry --dead</code>.</p>"
            ),
            "no dead deliveries",
            rows=len(snap.dead),
        )
    )


def _summary(w: _Writer, snap: Snapshot) -> Markup:
    pending = sum(h.pending for h in snap.webhooks)
    dead = sum(h.dead for h in snap.webhooks)
    failing = sum(1 for r in snap.rooms if r.outcome is PollOutcome.ERROR)
    held = sum(1 for h in snap.webhooks if h.state is not WebhookState.ACTIVE)
    parts = [
        f"{len(snap.rooms)} rooms ({failing} failing)",
        f"{len(snap.webhooks)} webhooks ({held} not active)",
        f"{pending} deliveries pending, {dead} dead",
    ]
    oldest = w.time(snap.oldest_pending_at, none="none")
    return Markup(f'<p class="summary">{w.text("; ".join(parts))}; oldest pending {oldest}</p>')


def _document(title: str, body: Markup) -> str:
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<meta http-equiv="refresh" content="{REFRESH}">\n'
        '<meta name="robots" content="noindex">\n'
        f"<title>{html.escape(title)}</title>\n"
        f"<style>{STYLE}</style>\n"
        f"</head>\n<body>\n{body}\n"
        f"<footer>Read-only; this page refreshes every {REFRESH} s. "
        "<code>poller deliveries show ID</code> lists a delivery's attempts.</footer>\n"
        "</body>\n</html>\n"
    )


def render(snap: Snapshot, redact: Redact) -> str:
    """The whole page for ``snap``; ``redact`` masks every configured secret."""
    w = _Writer(redact, snap.taken_at)
    meta = (
        f"version {w.text(snap.version)} · instance {w.code(snap.instance)} · "
        f"store {w.code(snap.store)} (schema {w.text(snap.schema)}) · "
        f"read {w.time(snap.taken_at)}"
    )
    body = "\n".join(
        [
            f'<header>\n<h1>poller status</h1>\n<p class="meta">{meta}</p>',
            _summary(w, snap),
            "</header>\n<main>",
            _instances(w, snap),
            _rooms(w, snap),
            _webhooks(w, snap),
            _deliveries(w, snap),
            "</main>",
        ]
    )
    return _document("poller status", Markup(body))


def unavailable(problem: str, now: dt.datetime, redact: Redact) -> str:
    """The page served when the store cannot be read: what went wrong, and when."""
    w = _Writer(redact, now)
    body = (
        "<header>\n<h1>poller status</h1>\n</header>\n<main>\n"
        f'<p class="problem">{w.text(problem)}</p>\n'
        f'<p class="muted">Asked at <time datetime="{w.text(rfc3339(now))}">'
        f"{w.text(rfc3339(now))}</time>; /readyz says more.</p>\n</main>"
    )
    return _document("poller status: store unavailable", Markup(body))
