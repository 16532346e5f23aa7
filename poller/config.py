"""TOML config -> frozen dataclasses, validated once; errors name file, key and problem."""

from __future__ import annotations

import datetime
import difflib
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal, TypeVar, get_args
from urllib.parse import urlsplit, urlunsplit

from poller.errors import ConfigError

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "Config",
    "ConfigError",
    "DeliveryConfig",
    "HmsConfig",
    "LogConfig",
    "PollConfig",
    "RoomConfig",
    "Secret",
    "ServerConfig",
    "StoreConfig",
    "WebhookConfig",
    "describe",
    "format_duration",
    "load_config",
    "mask_url",
    "parse_duration",
    "resolve_config_path",
]

DEFAULT_CONFIG_PATH = Path("/etc/poller/config.toml")
CONFIG_PATH_ENV = "POLLER_CONFIG"

LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["auto", "json", "console"]
LOG_LEVELS: tuple[LogLevel, ...] = get_args(LogLevel)
LOG_FORMATS: tuple[LogFormat, ...] = get_args(LogFormat)


@dataclass(frozen=True, slots=True)
class Secret:
    """A secret value that never shows itself in repr/str/logs; ``reveal()`` to use it."""

    _value: str = field(repr=False)

    def reveal(self) -> str:
        return self._value

    def __str__(self) -> str:
        return "********"

    def __repr__(self) -> str:
        return "Secret('********')"


@dataclass(frozen=True, slots=True)
class HmsConfig:
    base_url: str  # no trailing slash
    event_types: tuple[str, ...]
    access_key: str | None
    app_secret: Secret | None
    management_token: Secret | None
    request_timeout: float  # seconds, per API request


@dataclass(frozen=True, slots=True)
class PollConfig:
    interval: float  # seconds between polls of one room
    page_size: int  # 1..100
    backfill: bool
    max_concurrency: int  # cap on concurrent API requests across all rooms
    lease_ttl: float  # how long a room stays with an instance that stopped renewing it
    # Bounds on one walk of a room: far above any real room, they stop a hostile or
    # broken API from holding a room (or the process's memory) forever.
    max_pages: int  # pages per walk
    max_page_bytes: int  # bytes per response body
    max_page_events: int  # events per page


@dataclass(frozen=True, slots=True)
class StoreConfig:
    url: Secret  # may hold a database password; see masked_url()

    def masked_url(self) -> str:
        """The URL with any password replaced by ``***``."""
        from sqlalchemy.engine import make_url

        return make_url(self.url.reveal()).render_as_string(hide_password=True)


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    timeout: float  # seconds per attempt
    retry_schedule: tuple[float, ...]  # delays after failed attempts
    max_concurrency: int  # default in-flight deliveries per webhook


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: Literal["debug", "info", "warning", "error"]
    format: Literal["auto", "json", "console"]


@dataclass(frozen=True, slots=True)
class RoomConfig:
    id: str


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    name: str
    url: str
    secret: Secret
    event_types: frozenset[str] | None  # None: all
    rooms: frozenset[str] | None  # None: all
    headers: tuple[tuple[str, str], ...]
    max_concurrency: int

    def matches(self, room_id: str, event_type: str) -> bool:
        """Whether an event of this room and type goes to this webhook."""
        return (self.event_types is None or event_type in self.event_types) and (
            self.rooms is None or room_id in self.rooms
        )

    def __repr__(self) -> str:
        # Static headers usually carry an API key and URLs may embed credentials, so the
        # generated repr would leak them into logs and tracebacks.
        shown: dict[str, object] = {f.name: getattr(self, f.name) for f in fields(self)}
        shown["url"] = mask_url(self.url)
        shown["headers"] = tuple((name, "***") for name, _ in self.headers)
        return f"WebhookConfig({', '.join(f'{k}={v!r}' for k, v in shown.items())})"


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    hms: HmsConfig
    poll: PollConfig
    store: StoreConfig
    delivery: DeliveryConfig
    server: ServerConfig | None
    log: LogConfig
    rooms: tuple[RoomConfig, ...]
    webhooks: tuple[WebhookConfig, ...]
    shutdown_grace: float
    instance_id: str | None  # None: hostname:pid


# --- durations ---------------------------------------------------------------------------

# Compound forms ("1h30m") are accepted so that format_duration() output parses back.
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?|\.\d+)(ms|h|m|s)")
_DURATION = re.compile(rf"(?:{_DURATION_PART.pattern})+")
_UNIT_SECONDS = {"ms": (1, 1000), "s": (1, 1), "m": (60, 1), "h": (3600, 1)}
_DURATION_HINT = "expected a number of seconds or a string like '30s' (units: ms, s, m, h)"


def parse_duration(value: object) -> float:
    """Seconds from a number of seconds or a string like ``"250ms"``, ``"5m"`` or ``"2h"``."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{_DURATION_HINT}, got {_type_name(value)}")
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("-"):
            raise ValueError(f"must not be negative, got {value!r}")
        if not _DURATION.fullmatch(text):
            raise ValueError(f"invalid duration {value!r}: {_DURATION_HINT}")
        seconds = 0.0
        for number, unit in _DURATION_PART.findall(text):
            # Multiply before dividing so that "250ms" is exactly 0.25.
            multiplier, divisor = _UNIT_SECONDS[unit]
            seconds += float(number) * multiplier / divisor
    else:
        seconds = float(value)
    if not math.isfinite(seconds):
        raise ValueError("must be a finite duration")
    if seconds < 0:
        raise ValueError(f"must not be negative, got {value!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """A compact human form of a duration in seconds: ``250ms``, ``30s``, ``5m``, ``1h30m``."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"not a duration: {seconds!r}")
    if seconds == 0:
        return "0s"
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    millis = round(seconds * 1000)
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else ""]
    parts.append(f"{rest / 1000:g}s" if rest else "")
    return "".join(parts)


# --- config path -------------------------------------------------------------------------


def resolve_config_path(cli_value: str | None, environ: Mapping[str, str]) -> Path:
    """The config file to read: ``-c`` value, else ``$POLLER_CONFIG``, else the default path."""
    if cli_value is not None:
        return Path(cli_value)
    # An empty variable is how shells and unit files "unset" it, so it counts as absent.
    from_env = environ.get(CONFIG_PATH_ENV)
    return Path(from_env) if from_env else DEFAULT_CONFIG_PATH


# --- reading -----------------------------------------------------------------------------

DEFAULT_BASE_URL = "https://api.100ms.live/v2"
DEFAULT_EVENT_TYPES = ("beam.recording.success",)
DEFAULT_STORE_URL = "sqlite+aiosqlite:////var/lib/poller/poller.db"
DEFAULT_RETRY_SCHEDULE = ("5s", "5m", "30m", "2h", "5h", "10h", "10h")
DEFAULT_LISTEN = "127.0.0.1:9464"

_TOP_KEYS = (
    "shutdown_grace",
    "instance_id",
    "hms",
    "poll",
    "store",
    "delivery",
    "server",
    "log",
    "rooms",
    "webhooks",
)
_HMS_KEYS = (
    "base_url",
    "access_key",
    "app_secret",
    "app_secret_file",
    "management_token",
    "management_token_file",
    "event_types",
    "request_timeout",
)
_POLL_KEYS = (
    "interval",
    "page_size",
    "backfill",
    "max_concurrency",
    "lease_ttl",
    "max_pages",
    "max_page_bytes",
    "max_page_events",
)
_STORE_KEYS = ("url",)
_DELIVERY_KEYS = ("timeout", "retry_schedule", "max_concurrency")
_SERVER_KEYS = ("listen",)
_LOG_KEYS = ("level", "format")
_ROOM_KEYS = ("id",)
_WEBHOOK_KEYS = (
    "name",
    "url",
    "secret",
    "secret_file",
    "event_types",
    "rooms",
    "headers",
    "max_concurrency",
)

_STORE_DRIVER_ALIASES = {
    "sqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
}
_STORE_DRIVERS = ("sqlite+aiosqlite", "postgresql+asyncpg")

_WEBHOOK_NAME = re.compile(r"[a-z0-9_-]+")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token
# Headers poller sets itself, plus framing headers that must match the body it sends.
_RESERVED_HEADERS = frozenset({"content-type", "user-agent", "content-length", "transfer-encoding"})
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_CREDENTIALS_DIRECTORY = re.compile(
    r"\$(?:\{CREDENTIALS_DIRECTORY\}|CREDENTIALS_DIRECTORY(?![A-Za-z0-9_]))"
)

_T = TypeVar("_T")
_Choice = TypeVar("_Choice", bound=str)


def _type_name(value: object) -> str:
    """The TOML name of a value's type, for "expected X, got Y" messages."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, datetime.date | datetime.time):
        return "a date/time"
    return type(value).__name__


def _unknown_key_problem(name: str, allowed: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(allowed), n=1)
    return f"unknown key (did you mean {close[0]!r}?)" if close else "unknown key"


def _http_url_problem(value: str) -> str | None:
    """Why ``value`` is not a usable http(s) URL, or None; never quotes the URL itself."""
    expected = "expected an http:// or https:// URL with a host"
    if any(c.isspace() or not c.isprintable() for c in value):
        return "must not contain whitespace or control characters"
    try:
        parts = urlsplit(value)
        _ = parts.port  # raises ValueError for a port that is not a number in range
    except ValueError:
        return f"{expected} and a valid port"
    if parts.scheme.lower() not in ("http", "https"):
        return f"{expected}, got scheme {parts.scheme!r}" if parts.scheme else expected
    if not parts.hostname:
        return f"{expected}, got no host"
    return None


def mask_url(url: str) -> str:
    """``url`` with any userinfo shown as ``***@`` and any query/fragment as ``?***``/``#***``."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    query = "***" if parts.query else ""
    fragment = "***" if parts.fragment else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


def _toml_key(name: str) -> str:
    """``name`` as it would be written as one part of a dotted TOML key."""
    if _BARE_KEY.fullmatch(name):
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True, slots=True)
class _Source:
    path: Path
    environ: Mapping[str, str]

    def error(self, key: str | None, problem: str) -> ConfigError:
        return ConfigError(self.path, key, problem)


@dataclass(frozen=True, slots=True)
class _Sourced:
    """A secret plus where it came from; ``origin`` is safe to show, the value is not."""

    secret: Secret
    origin: str | None  # None: inline; else "$VAR" or "file /path"

    def via(self) -> str:
        return f" (from {self.origin})" if self.origin else ""


class _Table:
    """One TOML table being read: knows its key path and rejects keys nobody reads."""

    def __init__(
        self, src: _Source, data: Mapping[str, object], key: str, allowed: Iterable[str]
    ) -> None:
        self.src = src
        self.key = key
        self._data = data
        self._allowed = frozenset(allowed)
        # Checked before any value so that a misspelt key is reported as a typo rather
        # than as the missing key it was meant to be.
        for name in data:
            if name not in self._allowed:
                raise self.error(name, _unknown_key_problem(name, self._allowed))

    def key_of(self, name: str) -> str:
        return f"{self.key}.{name}" if self.key else name

    def error(self, name: str, problem: str) -> ConfigError:
        return self.src.error(self.key_of(name), problem)

    def has(self, name: str) -> bool:
        return name in self._data

    def _typed(self, name: str, kind: type[_T], what: str) -> _T | None:
        assert name in self._allowed, f"reader bug: {name!r} is not declared"
        value = self._data.get(name)  # TOML has no null, so None means absent
        if value is None:
            return None
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise self.error(name, f"expected {what}, got {_type_name(value)}")
        return value

    def string(self, name: str) -> str | None:
        value = self._typed(name, str, "a string")
        if value is not None and not value.strip():
            raise self.error(name, "must not be empty")
        return value

    def required_string(self, name: str) -> str:
        value = self.string(name)
        if value is None:
            raise self.error(name, "is required")
        return value

    def integer(self, name: str, default: int, minimum: int, maximum: int | None = None) -> int:
        value = self._typed(name, int, "an integer")
        if value is None:
            return default
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"from {minimum} to {maximum}" if maximum is not None else f"at least {minimum}"
            raise self.error(name, f"must be {bound}, got {value}")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self._typed(name, bool, "a boolean (true or false)")
        return default if value is None else value

    def duration(self, name: str, default: float, *, allow_zero: bool = False) -> float:
        assert name in self._allowed, f"reader bug: {name!r} is not declared"
        value = self._data.get(name)
        if value is None:
            return default
        return _duration_at(self.src, self.key_of(name), value, allow_zero=allow_zero)

    def duration_list(self, name: str, default: tuple[float, ...]) -> tuple[float, ...]:
        values = self._typed(name, list, "an array of durations")
        if values is None:
            return default
        key = self.key_of(name)
        return tuple(
            _duration_at(self.src, f"{key}[{i}]", v, allow_zero=True) for i, v in enumerate(values)
        )

    def choice(self, name: str, choices: tuple[_Choice, ...], default: _Choice) -> _Choice:
        value = self._typed(name, str, "a string")
        if value is None:
            return default
        for choice in choices:
            if choice == value.lower():
                return choice
        raise self.error(name, f"must be one of {', '.join(choices)}; got {value!r}")

    def string_list(
        self, name: str, *, if_empty: str = "must not be empty"
    ) -> list[tuple[str, str]] | None:
        """The non-empty, unique strings of an array, each with its own key for errors."""
        values = self._typed(name, list, "an array of strings")
        if values is None:
            return None
        if not values:
            raise self.error(name, if_empty)
        items: list[tuple[str, str]] = []
        first_seen: dict[str, str] = {}
        for index, value in enumerate(values):
            key = f"{self.key_of(name)}[{index}]"
            if not isinstance(value, str):
                raise self.src.error(key, f"expected a string, got {_type_name(value)}")
            if not value.strip():
                raise self.src.error(key, "must not be empty")
            if value in first_seen:
                raise self.src.error(key, f"duplicate {value!r} (also {first_seen[value]})")
            first_seen[value] = key
            items.append((key, value))
        return items

    def raw_table(self, name: str) -> dict[str, object] | None:
        return self._typed(name, dict, "a table")

    def table(self, name: str, allowed: Iterable[str]) -> _Table:
        """The sub-table ``name``; an empty one when absent, so that defaults apply."""
        data = self._typed(name, dict, f"a table ([{name}])") or {}
        return _Table(self.src, data, self.key_of(name), allowed)

    def tables(self, name: str, allowed: Iterable[str]) -> list[_Table]:
        values = self._typed(name, list, f"an array of tables ([[{name}]])") or []
        tables: list[_Table] = []
        for index, value in enumerate(values):
            key = f"{self.key_of(name)}[{index}]"
            if not isinstance(value, dict):
                problem = f"expected a table ([[{name}]]), got {_type_name(value)}"
                raise self.src.error(key, problem)
            tables.append(_Table(self.src, value, key, allowed))
        return tables

    def secret(self, name: str, env_var: str) -> _Sourced | None:
        """A secret given inline, as ``<name>_file`` or through ``env_var``; at most one."""
        file_name = f"{name}_file"
        inline = self.string(name)
        file_value = self.string(file_name)
        # Empty counts as absent: `Environment=VAR=` is the usual way to unset one.
        from_env = self.src.environ.get(env_var) or None
        if inline is not None and file_value is not None:
            raise self.error(name, f"given both inline and as {file_name}; give only one")
        if from_env is not None and (inline is not None or file_value is not None):
            given = name if inline is not None else file_name
            problem = f"{env_var} is set and {self.key_of(given)} is also given; give only one"
            raise self.error(given, problem)
        if inline is not None:
            return _Sourced(Secret(inline), None)
        if file_value is not None:
            return self._secret_file(file_name, file_value)
        if from_env is not None:
            return _Sourced(Secret(from_env), f"${env_var}")
        return None

    def _secret_file(self, name: str, raw: str) -> _Sourced:
        if _CREDENTIALS_DIRECTORY.search(raw):
            directory = self.src.environ.get("CREDENTIALS_DIRECTORY")
            if not directory:
                problem = (
                    "uses $CREDENTIALS_DIRECTORY but it is not set "
                    "(systemd sets it for units with LoadCredential=)"
                )
                raise self.error(name, problem)
            raw = _CREDENTIALS_DIRECTORY.sub(lambda _: directory, raw)
        # Relative to the config file, not the working directory, which differs between
        # an interactive `check-config` and the service; an absolute path wins the join.
        path = self.src.path.parent / raw
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise self.error(name, f"cannot read {path}: {e.strerror or e}") from None
        except UnicodeDecodeError:
            raise self.error(name, f"{path} is not UTF-8 text") from None
        # Files written by `echo` or editors end in a newline that is not part of the secret.
        value = text.strip()
        if not value:
            raise self.error(name, f"{path} is empty")
        return _Sourced(Secret(value), f"file {path}")


def _duration_at(src: _Source, key: str, value: object, *, allow_zero: bool) -> float:
    try:
        seconds = parse_duration(value)
    except ValueError as e:
        raise src.error(key, str(e)) from None
    if seconds == 0 and not allow_zero:
        raise src.error(key, "must be greater than 0")
    return seconds


def _url(table: _Table, name: str) -> str | None:
    value = table.string(name)
    if value is not None and (problem := _http_url_problem(value)):
        raise table.error(name, problem)
    return value


def _read_toml(src: _Source) -> dict[str, object]:
    try:
        with src.path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        problem = "config file not found (choose one with -c or $POLLER_CONFIG)"
        raise src.error(None, problem) from None
    except OSError as e:
        raise src.error(None, f"cannot read the config file: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise src.error(None, "the config file is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        # tomllib's messages name the line and column, never the offending text.
        raise src.error(None, f"invalid TOML: {e}") from None


def _read_hms(top: _Table) -> HmsConfig:
    t = top.table("hms", _HMS_KEYS)
    base_url = _url(t, "base_url") or DEFAULT_BASE_URL
    parts = urlsplit(base_url)
    if parts.query or parts.fragment:
        raise t.error("base_url", "must not have a query or fragment (API paths are appended)")
    event_types = t.string_list("event_types")
    access_key = t.string("access_key")
    app_secret = t.secret("app_secret", "POLLER_HMS_APP_SECRET")
    token = t.secret("management_token", "POLLER_HMS_MANAGEMENT_TOKEN")
    if token is not None and (access_key is not None or app_secret is not None):
        problem = (
            f"management_token{token.via()} and access_key + app_secret are both given; "
            "give only one of them"
        )
        raise t.error("management_token", problem)
    if token is None:
        if access_key is None and app_secret is None:
            problem = (
                "give either access_key + app_secret (tokens are minted) "
                "or management_token (one fixed token)"
            )
            raise top.error("hms", problem)
        if app_secret is None:
            problem = (
                "is required with access_key "
                "(inline, as app_secret_file or through $POLLER_HMS_APP_SECRET)"
            )
            raise t.error("app_secret", problem)
        if access_key is None:
            raise t.error("access_key", f"is required with app_secret{app_secret.via()}")
    return HmsConfig(
        base_url=base_url.rstrip("/"),
        event_types=tuple(v for _, v in event_types) if event_types else DEFAULT_EVENT_TYPES,
        access_key=access_key,
        app_secret=app_secret.secret if app_secret else None,
        management_token=token.secret if token else None,
        request_timeout=t.duration("request_timeout", 10.0),
    )


def _read_poll(top: _Table) -> PollConfig:
    t = top.table("poll", _POLL_KEYS)
    interval = t.duration("interval", 30.0)
    return PollConfig(
        interval=interval,
        page_size=t.integer("page_size", 100, 1, 100),
        backfill=t.boolean("backfill", True),
        max_concurrency=t.integer("max_concurrency", 8, 1),
        # Long enough to survive a few slow polls, short enough that a dead
        # instance's rooms move on within a minute or so.
        lease_ttl=t.duration("lease_ttl", max(3 * interval, 30.0)),
        max_pages=t.integer("max_pages", 10_000, 1),
        max_page_bytes=t.integer("max_page_bytes", 16 * 1024 * 1024, 1024),
        max_page_events=t.integer("max_page_events", 1_000, 1),
    )


def _read_store(top: _Table) -> StoreConfig:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    t = top.table("store", _STORE_KEYS)
    raw = t.string("url") or DEFAULT_STORE_URL
    try:
        url = make_url(raw)
    except (ArgumentError, ValueError):
        # The parser's message quotes the URL, which may carry a database password.
        problem = "not a valid SQLAlchemy URL (like sqlite+aiosqlite:////var/lib/poller/poller.db)"
        raise t.error("url", problem) from None
    driver = _STORE_DRIVER_ALIASES.get(url.drivername, url.drivername)
    if driver not in _STORE_DRIVERS:
        problem = f"unsupported driver {url.drivername!r}; use {' or '.join(_STORE_DRIVERS)}"
        raise t.error("url", problem)
    if driver != url.drivername:
        raw = url.set(drivername=driver).render_as_string(hide_password=False)
    return StoreConfig(url=Secret(raw))


def _read_delivery(top: _Table) -> DeliveryConfig:
    t = top.table("delivery", _DELIVERY_KEYS)
    default_schedule = tuple(parse_duration(d) for d in DEFAULT_RETRY_SCHEDULE)
    return DeliveryConfig(
        timeout=t.duration("timeout", 10.0),
        retry_schedule=t.duration_list("retry_schedule", default_schedule),
        max_concurrency=t.integer("max_concurrency", 4, 1),
    )


def _parse_listen(value: str) -> tuple[str, int]:
    """``(host, port)`` from ``host:port`` or ``[v6-address]:port``."""
    hint = "expected host:port, like 127.0.0.1:9464 or [::1]:9464"
    if value.startswith("["):
        host, sep, port = value[1:].partition("]:")
        if not sep:
            raise ValueError(hint)
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    else:
        host, sep, port = value.rpartition(":")
        if not sep or not host or any(c.isspace() for c in host):
            raise ValueError(hint)
        if ":" in host:
            raise ValueError("put an IPv6 address in brackets, like [::1]:9464")
    if not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise ValueError(f"port must be a number from 0 to 65535, got {port!r}")
    return host, int(port)


def _read_server(top: _Table) -> ServerConfig | None:
    # An absent table turns the server off; a present one, even empty, turns it on.
    if not top.has("server"):
        return None
    t = top.table("server", _SERVER_KEYS)
    try:
        host, port = _parse_listen(t.string("listen") or DEFAULT_LISTEN)
    except ValueError as e:
        raise t.error("listen", str(e)) from None
    return ServerConfig(host=host, port=port)


def _read_log(top: _Table) -> LogConfig:
    t = top.table("log", _LOG_KEYS)
    return LogConfig(
        level=t.choice("level", LOG_LEVELS, "info"),
        format=t.choice("format", LOG_FORMATS, "auto"),
    )


def _read_rooms(top: _Table) -> tuple[RoomConfig, ...]:
    tables = top.tables("rooms", _ROOM_KEYS)
    if not tables:
        raise top.error("rooms", "at least one [[rooms]] is required")
    first_seen: dict[str, str] = {}
    for t in tables:
        room_id = t.required_string("id")
        if room_id in first_seen:
            raise t.error("id", f"duplicate room id {room_id!r} (also {first_seen[room_id]})")
        first_seen[room_id] = t.key_of("id")
    return tuple(RoomConfig(id=room_id) for room_id in first_seen)


def _read_headers(t: _Table) -> tuple[tuple[str, str], ...]:
    raw = t.raw_table("headers") or {}
    key = t.key_of("headers")
    first_seen: dict[str, str] = {}
    headers: list[tuple[str, str]] = []
    for name, value in raw.items():
        if not _HEADER_NAME.fullmatch(name):
            raise t.src.error(key, f"{name!r} is not a valid HTTP header name")
        header_key = f"{key}.{_toml_key(name)}"
        lower = name.lower()
        if lower.startswith("webhook-") or lower in _RESERVED_HEADERS:
            problem = (
                "is set by poller itself; static headers may not set webhook-*, "
                f"{', '.join(sorted(_RESERVED_HEADERS))}"
            )
            raise t.src.error(header_key, problem)
        if lower in first_seen:
            problem = f"duplicate header (also {first_seen[lower]}; names are case-insensitive)"
            raise t.src.error(header_key, problem)
        first_seen[lower] = header_key
        if not isinstance(value, str):
            raise t.src.error(header_key, f"expected a string, got {_type_name(value)}")
        if any(c in value for c in "\r\n\0"):
            raise t.src.error(header_key, "must not contain CR, LF or NUL characters")
        headers.append((name, value))
    return tuple(headers)


def _webhook_secret(t: _Table, env_var: str) -> Secret:
    from poller.signing import InvalidSecret, SigningKey

    sourced = t.secret("secret", env_var)
    if sourced is None:
        raise t.error("secret", f"is required (inline, as secret_file or through ${env_var})")
    try:
        SigningKey.from_secret(sourced.secret.reveal())
    except InvalidSecret as e:
        raise t.error("secret", f"{e}{sourced.via()}") from None
    return sourced.secret


def _filter(t: _Table, name: str, allowed: Iterable[str], what: str) -> frozenset[str] | None:
    items = t.string_list(name, if_empty=f"must not be empty (omit it to receive all {what})")
    if items is None:
        return None
    known = set(allowed)
    for key, value in items:
        if value not in known:
            raise t.src.error(key, f"{value!r} is not in {what}, so it would never match")
    return frozenset(value for _, value in items)


def _read_webhooks(
    top: _Table, hms: HmsConfig, rooms: tuple[RoomConfig, ...], delivery: DeliveryConfig
) -> tuple[WebhookConfig, ...]:
    tables = top.tables("webhooks", _WEBHOOK_KEYS)
    if not tables:
        raise top.error("webhooks", "at least one [[webhooks]] is required")
    room_ids = [room.id for room in rooms]
    by_env_var: dict[str, tuple[str, str]] = {}
    webhooks: list[WebhookConfig] = []
    for t in tables:
        name = t.required_string("name")
        if not _WEBHOOK_NAME.fullmatch(name):
            problem = f"{name!r} may only contain lowercase letters, digits, '_' and '-'"
            raise t.error("name", problem)
        env_var = f"POLLER_WEBHOOK_{name.upper().replace('-', '_')}_SECRET"
        # "a-b" and "a_b" would read the same variable, so they are as ambiguous as twins.
        if env_var in by_env_var:
            other_name, other_key = by_env_var[env_var]
            if other_name == name:
                problem = f"duplicate webhook name {name!r} (also {other_key})"
            else:
                problem = f"{name!r} and {other_name!r} ({other_key}) share ${env_var}"
            raise t.error("name", problem)
        by_env_var[env_var] = (name, t.key_of("name"))
        url = _url(t, "url")
        if url is None:
            raise t.error("url", "is required")
        webhooks.append(
            WebhookConfig(
                name=name,
                url=url,
                secret=_webhook_secret(t, env_var),
                event_types=_filter(t, "event_types", hms.event_types, "hms.event_types"),
                rooms=_filter(t, "rooms", room_ids, "the [[rooms]] ids"),
                headers=_read_headers(t),
                max_concurrency=t.integer("max_concurrency", delivery.max_concurrency, 1),
            )
        )
    return tuple(webhooks)


def load_config(path: Path | str, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate the config file; any problem raises ConfigError naming the key."""
    src = _Source(Path(path), os.environ if environ is None else environ)
    top = _Table(src, _read_toml(src), "", _TOP_KEYS)
    shutdown_grace = top.duration("shutdown_grace", 10.0, allow_zero=True)
    instance_id = top.string("instance_id")
    hms = _read_hms(top)
    poll = _read_poll(top)
    store = _read_store(top)
    delivery = _read_delivery(top)
    server = _read_server(top)
    log = _read_log(top)
    rooms = _read_rooms(top)
    webhooks = _read_webhooks(top, hms, rooms, delivery)
    return Config(
        path=src.path,
        hms=hms,
        poll=poll,
        store=store,
        delivery=delivery,
        server=server,
        log=log,
        rooms=rooms,
        webhooks=webhooks,
        shutdown_grace=shutdown_grace,
        instance_id=instance_id,
    )


# --- summary -----------------------------------------------------------------------------

_MAX_ROOMS_SHOWN = 10


def _listen(server: ServerConfig) -> str:
    host = f"[{server.host}]" if ":" in server.host else server.host
    return f"{host}:{server.port}"


def _describe_webhook(webhook: WebhookConfig) -> list[str]:
    def listed(values: frozenset[str] | None) -> str:
        return "all" if values is None else ", ".join(sorted(values))

    headers = ", ".join(f"{name}: ***" for name, _ in webhook.headers) or "none"
    return [
        f"  {webhook.name}: {mask_url(webhook.url)}",
        f"    event types: {listed(webhook.event_types)}; rooms: {listed(webhook.rooms)}",
        f"    headers: {headers}; max concurrency: {webhook.max_concurrency}",
    ]


def describe(config: Config) -> str:
    """A short summary of ``config`` for ``poller check-config``, with every secret masked."""
    hms, poll, delivery = config.hms, config.poll, config.delivery
    if hms.access_key is not None:
        auth = f"minted tokens for access key {hms.access_key}"
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
    lines = [
        f"config:      {config.path}",
        f"100ms API:   {mask_url(hms.base_url)} ({auth}; "
        f"request timeout {format_duration(hms.request_timeout)})",
        f"event types: {', '.join(hms.event_types)}",
        f"polling:     every {format_duration(poll.interval)}, page size {poll.page_size}, "
        f"backfill {'on' if poll.backfill else 'off'}, "
        f"up to {poll.max_concurrency} concurrent requests, "
        f"room leases {format_duration(poll.lease_ttl)}",
        f"store:       {config.store.masked_url()}",
        f"delivery:    timeout {format_duration(delivery.timeout)}, {retries}",
        f"server:      {_listen(config.server) if config.server else 'disabled'}",
        f"log:         level {config.log.level}, format {config.log.format}",
        f"shutdown:    grace {format_duration(config.shutdown_grace)}; "
        f"instance id {config.instance_id or '<hostname>:<pid>'}",
        f"{f'rooms ({len(room_ids)}):':<12} {rooms}",
        f"webhooks ({len(config.webhooks)}):",
    ]
    for webhook in config.webhooks:
        lines.extend(_describe_webhook(webhook))
    return "\n".join(lines)
