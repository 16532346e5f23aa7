"""The check-config summary: what the daemon will do, with every secret masked."""

from __future__ import annotations

import datetime as dt

from poller.config.durations import format_duration
from poller.config.model import (
    CertificateInfo,
    Config,
    Route,
    ServerConfig,
    TlsConfig,
    WebhookConfig,
)
from poller.config.values import identifier_hint, url_origin

__all__ = ["describe"]

_MAX_ROOMS_SHOWN = 10


def _server(server: ServerConfig) -> str:
    host = f"[{server.host}]" if ":" in server.host else server.host
    page = "status page at /" if server.status_page else "no status page"
    return f"{host}:{server.port} (/healthz, /readyz, /metrics; {page})"


def _certificate(info: CertificateInfo | None, now: dt.datetime) -> str:
    if info is None:
        return "not described"
    day = info.not_after.strftime("%Y-%m-%d")
    expiry = f"EXPIRED {day}" if info.expired(now) else f"expires {day}"
    return f"{info.subject or 'no subject'}, {expiry}"


def _tls(tls: TlsConfig, now: dt.datetime) -> str:
    """Whom HTTPS trusts and what it shows: paths and certificate names, never contents."""
    if tls.ca_file is None:
        trust = "system CAs"
    else:
        count = tls.ca_count
        if count == 1 and len(tls.ca_certificates) == 1:
            about = f"1 certificate: {_certificate(tls.ca_certificates[0], now)}"
        else:
            about = f"{count} certificates"
        trust = f"CAs of {tls.ca_file} only ({about})"
    if tls.client_cert is None:
        return trust
    key = f", key {tls.client_key}" if tls.client_key is not None else ""
    return (
        f"{trust}; client certificate {tls.client_cert} ({_certificate(tls.certificate, now)}){key}"
    )


def _route(route: Route) -> str:
    """The proxy and where it was configured; its credentials only as a fact."""
    if route.proxy is None:
        return f"none ({route.bypassed_by} matches)" if route.bypassed_by else "none"
    proxy = route.proxy
    via = "proxy key" if proxy.via == "proxy" else proxy.via
    credentials = ", with credentials" if proxy.username is not None else ""
    return f"{proxy.url} (from {via}{credentials})"


def _describe_webhook(webhook: WebhookConfig, now: dt.datetime) -> list[str]:
    def listed(values: frozenset[str] | None) -> str:
        return "all" if values is None else ", ".join(sorted(values))

    headers = ", ".join(f"{name}: ***" for name, _ in webhook.headers) or "none"
    return [
        f"  {webhook.name}: {url_origin(webhook.url)}",
        f"    event types: {listed(webhook.event_types)}; rooms: {listed(webhook.rooms)}",
        f"    headers: {headers}; max concurrency: {webhook.max_concurrency}; "
        f"rate limit: {f'{webhook.rate_limit:g}/s' if webhook.rate_limit else 'none'}",
        *(
            [f"    signed with its secret and {len(webhook.previous_secrets)} previous (rotation)"]
            if webhook.previous_secrets
            else []
        ),
        *(
            [f"    tls: {_tls(webhook.tls, now)}"]
            if webhook.tls.ca_file or webhook.tls.client_cert
            else []
        ),
        *(
            [f"    proxy: {_route(webhook.route)}"]
            if webhook.route.proxy or webhook.route.bypassed_by
            else []
        ),
    ]


def describe(config: Config, now: dt.datetime | None = None) -> str:
    """A short summary of ``config`` for ``poller check-config``, with every secret masked.

    ``now`` (default: the current time) decides which certificates are shown as expired.
    """
    now = dt.datetime.now(dt.UTC) if now is None else now
    hms, poll, delivery = config.hms, config.poll, config.delivery
    if hms.access_key is not None:
        auth = f"minted tokens for access key {identifier_hint(hms.access_key)}"
    else:
        auth = "fixed management token"
    if delivery.retry_schedule:
        delays = ", ".join(format_duration(d) for d in delivery.retry_schedule)
        attempts = len(delivery.retry_schedule) + 1
        retries = f"retries after {delays} (up to {attempts} attempts)"
    else:
        retries = "no retries (1 attempt)"
    room_ids = [room.id for room in config.rooms]
    rooms = ", ".join(room_ids[:_MAX_ROOMS_SHOWN])
    if len(room_ids) > _MAX_ROOMS_SHOWN:
        rooms += f" ... and {len(room_ids) - _MAX_ROOMS_SHOWN} more"
    if not room_ids:
        rooms = "none listed (discovery finds them)"
    lines = [
        f"config:      {config.path}",
        f"100ms API:   {url_origin(hms.base_url)} ({auth}; "
        f"request timeout {format_duration(hms.request_timeout)})",
        f"api network: tls {_tls(hms.tls, now)}; proxy {_route(hms.route)}",
        f"event types: {', '.join(hms.event_types)}",
        f"polling:     every {format_duration(poll.interval)}, page size {poll.page_size}, "
        f"backfill {'on' if poll.backfill else 'off'}, "
        f"up to {poll.max_concurrency} concurrent requests, "
        f"room leases {format_duration(poll.lease_ttl)}",
        f"adaptive:    {_adaptive(config)}",
        f"discovery:   {_discovery(config)}",
        f"API budget:  {_budget(config)}",
        f"store:       {config.store.masked_url()}",
        f"delivery:    timeout {format_duration(delivery.timeout)}, {retries}; "
        f"breaker after {format_duration(delivery.breaker_after)} of failures, "
        f"probe every {format_duration(delivery.probe_interval)}",
        f"server:      {_server(config.server) if config.server else 'disabled'}",
        f"log:         level {config.log.level}, format {config.log.format}",
        f"shutdown:    grace {format_duration(config.shutdown_grace)}; "
        f"instance id {config.instance_id or '<hostname>:<pid>'}",
        f"{f'rooms ({len(room_ids)}):':<12} {rooms}",
        f"webhooks ({len(config.webhooks)}):",
    ]
    for webhook in config.webhooks:
        lines.extend(_describe_webhook(webhook, now))
    return "\n".join(lines)


def _budget(config: Config) -> str:
    """The request arithmetic: what the schedule asks of the API against the budget."""
    budget, rooms, interval = (
        config.hms.max_requests_per_second,
        len(config.rooms),
        config.poll.interval,
    )
    if config.poll.adaptive:
        return _adaptive_budget(config)
    asked = rooms / interval
    text = (
        f"{budget:g} requests/s; {rooms} rooms every {format_duration(interval)} ask "
        f"{asked:.3g}/s at one page a poll ({asked / budget:.0%} of it; a room with more "
        "events than a page asks a request per page)"
    )
    if config.discovery.enabled:
        text += f"; each room discovery finds adds {1 / interval:.3g}/s"
    if asked > budget:
        text += (
            f"; over the budget: polls wait their turn, each room about every "
            f"{format_duration(rooms / budget)}"
        )
    return text


def _adaptive_budget(config: Config) -> str:
    """With adaptive polling the load lies between all rooms idle and all rooms active."""
    poll, budget, rooms = config.poll, config.hms.max_requests_per_second, len(config.rooms)
    # Both walks of GET /sessions each sessions_interval, at one page each.
    walks = 2 / poll.sessions_interval
    idle = rooms / poll.idle_interval + walks
    active = rooms / poll.interval + walks
    text = (
        f"{budget:g} requests/s; {rooms} rooms ask {idle:.3g}/s all idle "
        f"({idle / budget:.0%} of it), {active:.3g}/s all active ({active / budget:.0%}), "
        "at one page a poll, two GET /sessions listings a walk"
    )
    if config.discovery.enabled:
        text += (
            f"; each room discovery finds adds {1 / poll.idle_interval:.3g}/s idle, "
            f"{1 / poll.interval:.3g}/s active"
        )
    if active > budget:
        text += (
            "; over the budget when all are active: polls wait their turn, each room about "
            f"every {format_duration(rooms / budget)}"
        )
    return text


def _adaptive(config: Config) -> str:
    poll = config.poll
    if not poll.adaptive:
        return f"off (every room every {format_duration(poll.interval)})"
    return (
        f"on: rooms with a live session or one that ended within "
        f"{format_duration(poll.active_window)} every {format_duration(poll.interval)}, "
        f"the others every {format_duration(poll.idle_interval)}; "
        f"GET /sessions every {format_duration(poll.sessions_interval)}"
    )


def _discovery(config: Config) -> str:
    d = config.discovery
    if not d.enabled:
        return "off (only [[rooms]])"
    which = ["enabled and disabled rooms" if d.include_disabled else "enabled rooms"]
    if d.name_prefix:
        which.append(f"named {d.name_prefix!r}...")
    if d.template_ids:
        which.append(f"of templates {', '.join(sorted(d.template_ids))}")
    return (
        f"GET /rooms every {format_duration(d.interval)}: {', '.join(which)}; "
        f"a room that leaves the listing is polled {format_duration(d.keep)} more"
    )
