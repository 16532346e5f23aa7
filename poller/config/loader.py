"""Reading the config: TOML, the declared shape, secret sources, then the rules across keys."""

from __future__ import annotations

import difflib
import os
import sys
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from poller.config.durations import format_duration
from poller.config.messages import Loc, Source, key_path, translate
from poller.config.model import (
    Config,
    DeliveryConfig,
    DiscoveryConfig,
    HmsConfig,
    LogConfig,
    PollConfig,
    RoomConfig,
    Secret,
    ServerConfig,
    StoreConfig,
    WebhookConfig,
)
from poller.config.proxy import route_for
from poller.config.schema import ConfigFile, HmsTable, PollTable, WebhookTable
from poller.config.secrets import read_secret
from poller.config.tls import TlsFiles, TlsLoader
from poller.config.values import HEADER_NAME
from poller.events import KNOWN_EVENT_TYPES
from poller.signing import InvalidSecret, SigningKey

__all__ = ["CONFIG_PATH_ENV", "DEFAULT_CONFIG_PATH", "load_config", "resolve_config_path"]

DEFAULT_CONFIG_PATH = Path("/etc/poller/config.toml")
CONFIG_PATH_ENV = "POLLER_CONFIG"

# Headers poller sets itself (host: from the URL; another one would route the request
# elsewhere than the URL says), plus framing headers that must match the body it sends.
_RESERVED_HEADERS = frozenset(
    {"content-type", "user-agent", "content-length", "transfer-encoding", "host"}
)


def resolve_config_path(cli_value: str | None, environ: Mapping[str, str]) -> Path:
    """The config file to read: ``-c`` value, else ``$POLLER_CONFIG``, else the default path."""
    if cli_value is not None:
        return Path(cli_value)
    # An empty variable is how shells and unit files "unset" it, so it counts as absent.
    from_env = environ.get(CONFIG_PATH_ENV)
    return Path(from_env) if from_env else DEFAULT_CONFIG_PATH


def load_config(path: Path | str, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate the config file; any problem raises ConfigError naming the key."""
    src = Source(Path(path), os.environ if environ is None else environ)
    try:
        file = ConfigFile.model_validate(_read_toml(src))
    except ValidationError as e:
        raise translate(src, e, ConfigFile) from None
    tls = TlsLoader(src)
    hms = _hms(src, file.hms, tls)
    discovery = DiscoveryConfig(
        enabled=file.discovery.enabled,
        interval=file.discovery.interval,
        include_disabled=file.discovery.include_disabled,
        name_prefix=file.discovery.name_prefix,
        template_ids=_strings(src, ("discovery", "template_ids"), file.discovery.template_ids)
        or frozenset(),
        keep=file.discovery.keep,
    )
    rooms = _rooms(src, file)
    poll, delivery, store = file.poll, file.delivery, file.store
    return Config(
        path=src.path,
        hms=hms,
        poll=PollConfig(
            interval=poll.interval,
            page_size=poll.page_size,
            backfill=poll.backfill,
            max_concurrency=poll.max_concurrency,
            # Long enough to survive a few slow polls, short enough that a dead
            # instance's rooms move on within a minute or so.
            lease_ttl=max(3 * poll.interval, 30.0) if poll.lease_ttl is None else poll.lease_ttl,
            max_pages=poll.max_pages,
            max_page_bytes=poll.max_page_bytes,
            max_page_events=poll.max_page_events,
            **_adaptive(src, poll, discovery=discovery.enabled),
        ),
        store=StoreConfig(url=Secret(store.url)),
        delivery=DeliveryConfig(
            timeout=delivery.timeout,
            retry_schedule=tuple(delivery.retry_schedule),
            max_concurrency=delivery.max_concurrency,
            breaker_after=delivery.breaker_after,
            probe_interval=delivery.probe_interval,
        ),
        server=(
            ServerConfig(*file.server.listen, status_page=file.server.status_page)
            if file.server
            else None
        ),
        log=LogConfig(level=file.log.level, format=file.log.format),
        rooms=rooms,
        webhooks=_webhooks(
            src,
            file.webhooks,
            hms,
            rooms,
            delivery.max_concurrency,
            tls,
            discovery=discovery.enabled,
        ),
        shutdown_grace=file.shutdown_grace,
        instance_id=file.instance_id,
        discovery=discovery,
    )


def _adaptive(src: Source, poll: PollTable, *, discovery: bool) -> dict[str, Any]:
    """The adaptive keys of PollConfig; idle rooms are never polled faster than active ones."""
    adaptive = discovery if poll.adaptive is None else poll.adaptive
    idle_interval = max(600.0, poll.interval) if poll.idle_interval is None else poll.idle_interval
    if adaptive and idle_interval < poll.interval:
        raise src.error(
            ("poll", "idle_interval"),
            f"must be at least poll.interval ({format_duration(poll.interval)}): "
            "idle rooms are polled less often than active ones",
        )
    return {
        "adaptive": adaptive,
        "idle_interval": idle_interval,
        "active_window": poll.active_window,
        "sessions_interval": poll.sessions_interval,
    }


def _read_toml(src: Source) -> dict[str, object]:
    try:
        with src.path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        problem = "config file not found (choose one with -c or $POLLER_CONFIG)"
        raise src.error((), problem) from None
    except OSError as e:
        raise src.error((), f"cannot read the config file: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise src.error((), "the config file is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        # tomllib's messages name the line and column, never the offending text.
        raise src.error((), f"invalid TOML: {e}") from None
    except ValueError:
        # Not a TOMLDecodeError: int() refusing a literal of more digits than Python reads.
        problem = f"invalid TOML: an integer of more than {sys.get_int_max_str_digits()} digits"
        raise src.error((), problem) from None
    except RecursionError:  # tomllib parses nested arrays and tables recursively
        raise src.error((), "invalid TOML: arrays or tables nested too deeply") from None


def _unique(src: Source, items: Iterable[tuple[Loc, str]], what: str = "") -> None:
    """Reject the second of two equal values, naming where the first one is."""
    first_seen: dict[str, Loc] = {}
    for loc, value in items:
        if value in first_seen:
            raise src.error(loc, f"duplicate {what}{value!r} (also {key_path(first_seen[value])})")
        first_seen[value] = loc


def _strings(src: Source, loc: Loc, values: Sequence[str] | None) -> frozenset[str] | None:
    if values is None:
        return None
    _unique(src, [((*loc, index), value) for index, value in enumerate(values)])
    return frozenset(values)


def _hms(src: Source, hms: HmsTable, tls: TlsLoader) -> HmsConfig:
    loc = ("hms",)
    extra = _strings(src, (*loc, "extra_event_types"), hms.extra_event_types) or frozenset()
    for index, value in enumerate(hms.extra_event_types or ()):
        if value in KNOWN_EVENT_TYPES:
            problem = f"{value!r} is a type poller knows: list it in hms.event_types alone"
            raise src.error((*loc, "extra_event_types", index), problem)
    _strings(src, (*loc, "event_types"), hms.event_types)
    _known_types(src, (*loc, "event_types"), hms.event_types, extra)
    secret = read_secret(
        src, loc, "app_secret", hms.app_secret, hms.app_secret_file, "POLLER_HMS_APP_SECRET"
    )
    token = read_secret(
        src,
        loc,
        "management_token",
        hms.management_token,
        hms.management_token_file,
        "POLLER_HMS_MANAGEMENT_TOKEN",
    )
    if token is not None and (hms.access_key is not None or secret is not None):
        problem = (
            f"management_token{token.via()} and access_key + app_secret are both given; "
            "give only one of them"
        )
        raise src.error((*loc, "management_token"), problem)
    if token is None:
        if hms.access_key is None and secret is None:
            problem = (
                "give either access_key + app_secret (tokens are minted) "
                "or management_token (one fixed token)"
            )
            raise src.error(loc, problem)
        if secret is None:
            problem = (
                "is required with access_key "
                "(inline, as app_secret_file or through $POLLER_HMS_APP_SECRET)"
            )
            raise src.error((*loc, "app_secret"), problem)
        if hms.access_key is None:
            raise src.error((*loc, "access_key"), f"is required with app_secret{secret.via()}")
    return HmsConfig(
        base_url=hms.base_url.rstrip("/"),
        event_types=tuple(hms.event_types),
        extra_event_types=tuple(hms.extra_event_types or ()),
        max_requests_per_second=hms.max_requests_per_second,
        access_key=hms.access_key,
        app_secret=secret.secret if secret else None,
        management_token=token.secret if token else None,
        request_timeout=hms.request_timeout,
        tls=tls.load(loc, TlsFiles(ca_file=hms.ca_file), url=hms.base_url, url_key="base_url"),
        route=route_for(src, loc, hms.base_url, hms.proxy),
    )


def _rooms(src: Source, file: ConfigFile) -> tuple[RoomConfig, ...]:
    if not file.rooms and not file.discovery.enabled:
        raise src.error(
            ("rooms",), "at least one [[rooms]] is required (or [discovery] enabled = true)"
        )
    _unique(src, [(("rooms", i, "id"), room.id) for i, room in enumerate(file.rooms)], "room id ")
    return tuple(RoomConfig(id=room.id) for room in file.rooms)


def _webhooks(
    src: Source,
    tables: Sequence[WebhookTable],
    hms: HmsConfig,
    rooms: tuple[RoomConfig, ...],
    max_concurrency: int,
    tls: TlsLoader,
    *,
    discovery: bool,
) -> tuple[WebhookConfig, ...]:
    if not tables:
        raise src.error(("webhooks",), "at least one [[webhooks]] is required")
    by_env_var: dict[str, tuple[str, Loc]] = {}
    webhooks: list[WebhookConfig] = []
    for index, t in enumerate(tables):
        loc = ("webhooks", index)
        env_var = f"POLLER_WEBHOOK_{t.name.upper().replace('-', '_')}_SECRET"
        # "a-b" and "a_b" would read the same variable, so they are as ambiguous as twins.
        if env_var in by_env_var:
            other_name, other_loc = by_env_var[env_var]
            if other_name == t.name:
                problem = f"duplicate webhook name {t.name!r} (also {key_path(other_loc)})"
            else:
                problem = f"{t.name!r} and {other_name!r} ({key_path(other_loc)}) share ${env_var}"
            raise src.error((*loc, "name"), problem)
        by_env_var[env_var] = (t.name, (*loc, "name"))
        secret = read_secret(src, loc, "secret", t.secret, t.secret_file, env_var)
        if secret is None:
            problem = f"is required (inline, as secret_file or through ${env_var})"
            raise src.error((*loc, "secret"), problem)
        _known_types(src, (*loc, "event_types"), t.event_types or (), hms.extra_event_types)
        event_types = _filter(
            src, (*loc, "event_types"), t.event_types, hms.event_types, "hms.event_types"
        )
        # Discovered rooms are known only while running: any room id may be named then.
        room_filter = (
            _strings(src, (*loc, "rooms"), t.rooms)
            if discovery
            else _filter(src, (*loc, "rooms"), t.rooms, [r.id for r in rooms], "the [[rooms]] ids")
        )
        headers = _headers(src, (*loc, "headers"), t.headers)
        previous = _previous_secrets(src, (*loc, "previous_secrets"), t.previous_secrets)
        files = TlsFiles(ca_file=t.ca_file, client_cert=t.client_cert, client_key=t.client_key)
        try:
            webhook = WebhookConfig(
                name=t.name,
                url=t.url,
                secret=secret.secret,
                event_types=event_types,
                rooms=room_filter,
                headers=headers,
                max_concurrency=(
                    max_concurrency if t.max_concurrency is None else t.max_concurrency
                ),
                previous_secrets=previous,
                rate_limit=t.rate_limit,
                tls=tls.load(loc, files, url=t.url, url_key="url"),
                route=route_for(src, loc, t.url, t.proxy),
            )
        except InvalidSecret as e:  # the message never carries the secret, nor does via()
            raise src.error((*loc, "secret"), f"{e}{secret.via()}") from None
        webhooks.append(webhook)
    return tuple(webhooks)


def _previous_secrets(src: Source, loc: Loc, values: Sequence[str]) -> tuple[Secret, ...]:
    """Each previous secret decoded once here, so that a bad one is named by its index."""
    for index, value in enumerate(values):
        try:
            SigningKey.from_secret(value)
        except InvalidSecret as e:  # the message never carries the secret
            raise src.error((*loc, index), str(e)) from None
    return tuple(Secret(value) for value in values)


def _known_types(src: Source, loc: Loc, values: Sequence[str], extra: Iterable[str]) -> None:
    """Each of ``values`` is a type the API serves (or the operator says it does)."""
    known = [*KNOWN_EVENT_TYPES, *extra]
    for index, value in enumerate(values):
        if value in known:
            continue
        close = difflib.get_close_matches(value, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f"; known: {', '.join(known)}"
        problem = (
            f"{value!r} is not an event type of the analytics events API{hint}; "
            "a type newer than poller goes in hms.extra_event_types too"
        )
        raise src.error((*loc, index), problem)


def _filter(
    src: Source, loc: Loc, values: Sequence[str] | None, known: Iterable[str], what: str
) -> frozenset[str] | None:
    chosen = _strings(src, loc, values)
    allowed = set(known)
    for index, value in enumerate(values or ()):
        if value not in allowed:
            raise src.error((*loc, index), f"{value!r} is not in {what}, so it would never match")
    return chosen


def _headers(src: Source, loc: Loc, headers: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    first_seen: dict[str, Loc] = {}
    for name in headers:
        if not HEADER_NAME.fullmatch(name):
            raise src.error(loc, f"{name!r} is not a valid HTTP header name")
        lower = name.lower()
        if lower.startswith("webhook-") or lower in _RESERVED_HEADERS:
            problem = (
                "is set by poller itself; static headers may not set webhook-*, "
                f"{', '.join(sorted(_RESERVED_HEADERS))}"
            )
            raise src.error((*loc, name), problem)
        if lower in first_seen:
            problem = (
                f"duplicate header (also {key_path(first_seen[lower])}; names are case-insensitive)"
            )
            raise src.error((*loc, name), problem)
        first_seen[lower] = (*loc, name)
    return tuple(headers.items())
