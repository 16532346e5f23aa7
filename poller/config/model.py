"""The config the daemon uses: frozen dataclasses and value classes, built once by the loader."""

from __future__ import annotations

import base64
import datetime as dt
import ssl
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal

from poller.config.values import url_origin
from poller.signing import RotatingKeys

__all__ = [
    "DIRECT",
    "SYSTEM_TLS",
    "CertificateInfo",
    "Config",
    "DeliveryConfig",
    "HmsConfig",
    "LogConfig",
    "LogFormat",
    "LogLevel",
    "PollConfig",
    "Proxy",
    "RoomConfig",
    "Route",
    "Secret",
    "ServerConfig",
    "StoreConfig",
    "TlsConfig",
    "WebhookConfig",
]

LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["auto", "json", "console"]


@dataclass(frozen=True, slots=True)
class Secret:
    """A secret value that never shows itself in repr/str/logs; ``reveal()`` to use it."""

    _value: str = field(repr=False)

    def reveal(self) -> str:
        """The secret itself, for the one place that needs it."""
        return self._value

    def __str__(self) -> str:
        return "********"

    def __repr__(self) -> str:
        return "Secret('********')"


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    """What a certificate says about itself, for check-config and start-up warnings."""

    subject: str  # RFC 4514 order: "CN=poller,O=Example"
    not_after: dt.datetime  # UTC

    def expired(self, now: dt.datetime) -> bool:
        """Whether the certificate is past its expiry at ``now``."""
        return now >= self.not_after


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """Whom HTTPS to one peer trusts and which certificate it shows.

    ``ca_file`` *replaces* the system's CA certificates for that peer (as curl's
    ``--cacert`` and requests' ``verify=`` do): a receiver on an internal network is then
    trusted only through the internal CA. ``context`` is built once at load, shared by every
    peer with the same files, and None for the system's defaults.
    """

    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None  # None with client_cert: the key is in that file
    # Derived from the files at load (so not compared).
    ca_certificates: tuple[CertificateInfo, ...] = field(default=(), compare=False)
    ca_count: int = field(default=0, compare=False)  # certificates in ca_file, read or not
    certificate: CertificateInfo | None = field(default=None, compare=False)
    context: ssl.SSLContext | None = field(default=None, compare=False, repr=False)

    @property
    def client_ssl(self) -> ssl.SSLContext | bool:
        """What the HTTP client is given: this context, or True for its verified default."""
        return True if self.context is None else self.context


SYSTEM_TLS = TlsConfig()


@dataclass(frozen=True, slots=True)
class Proxy:
    """An HTTP proxy: where it is (nothing secret) and, apart, the credentials it wants."""

    url: str  # http://host:port: no userinfo, safe to show
    via: str  # where it was configured: "proxy" (the key) or "$HTTPS_PROXY"
    username: str | None = field(default=None, repr=False)
    password: Secret | None = field(default=None, repr=False)

    def headers(self) -> dict[str, str]:
        """``Proxy-Authorization`` for the credentials, if any (sent to the proxy only)."""
        if self.username is None:
            return {}
        password = "" if self.password is None else self.password.reveal()
        token = base64.b64encode(f"{self.username}:{password}".encode()).decode("ascii")
        return {"Proxy-Authorization": f"Basic {token}"}


@dataclass(frozen=True, slots=True)
class Route:
    """How requests reach one URL: through ``proxy``, or directly when it is None."""

    proxy: Proxy | None = None
    # Set when an environment proxy would apply but $NO_PROXY sends this host direct.
    bypassed_by: str | None = None


DIRECT = Route()


@dataclass(frozen=True, slots=True)
class HmsConfig:
    base_url: str  # no trailing slash
    event_types: tuple[str, ...]
    access_key: str | None
    app_secret: Secret | None
    management_token: Secret | None
    request_timeout: float  # seconds, per API request
    tls: TlsConfig = SYSTEM_TLS
    route: Route = DIRECT
    extra_event_types: tuple[str, ...] = ()  # accepted beyond poller.events.KNOWN_EVENT_TYPES
    max_requests_per_second: float = 50.0  # every API request, from this instance


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
    # Adaptive polling (poller.activity): active rooms every interval, the rest every
    # idle_interval; a room is active while a session is live or ended within active_window.
    adaptive: bool = False
    idle_interval: float = 600.0
    active_window: float = 7200.0
    sessions_interval: float = 30.0  # one GET /sessions walk for the whole app


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
    breaker_after: float = 600.0  # seconds of every attempt failing before the breaker opens
    probe_interval: float = 30.0  # seconds between probes while it is open


@dataclass(frozen=True, slots=True)
class DiscoveryConfig:
    """[discovery]: which rooms of GET /rooms are polled, how often it is walked."""

    enabled: bool = False
    interval: float = 300.0
    include_disabled: bool = False
    name_prefix: str = ""
    template_ids: frozenset[str] = frozenset()  # empty: every template
    keep: float = 86400.0

    def wants(self, name: str, template_id: str) -> bool:
        """Whether a listed room of this name and template is to be polled."""
        return name.startswith(self.name_prefix) and (
            not self.template_ids or template_id in self.template_ids
        )


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str
    port: int
    status_page: bool = True  # GET /: the read-only HTML status page


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: LogLevel
    format: LogFormat


@dataclass(frozen=True, slots=True)
class RoomConfig:
    id: str


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    """One webhook; building it decodes its secret (InvalidSecret when that fails)."""

    name: str
    url: str
    secret: Secret
    event_types: frozenset[str] | None  # None: all
    rooms: frozenset[str] | None  # None: all
    headers: tuple[tuple[str, str], ...]
    max_concurrency: int
    # Still signed with while receivers switch to ``secret`` (rotation), newest first.
    previous_secrets: tuple[Secret, ...] = ()
    rate_limit: float | None = None  # requests per second from this instance; None: no limit
    tls: TlsConfig = SYSTEM_TLS
    route: Route = DIRECT
    # Derived from the secrets (so not compared): decoded once here, so that a bad secret
    # fails at load time and every attempt signs with the same keys without decoding again.
    signing_key: RotatingKeys = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        keys = RotatingKeys.from_secrets(
            self.secret.reveal(), tuple(p.reveal() for p in self.previous_secrets)
        )
        object.__setattr__(self, "signing_key", keys)

    def matches(self, room_id: str, event_type: str) -> bool:
        """Whether an event of this room and type goes to this webhook."""
        return (self.event_types is None or event_type in self.event_types) and (
            self.rooms is None or room_id in self.rooms
        )

    def __repr__(self) -> str:
        # Static headers usually carry an API key and URLs may embed credentials, so the
        # generated repr would leak them into logs and tracebacks.
        shown: dict[str, object] = {f.name: getattr(self, f.name) for f in fields(self) if f.repr}
        shown["url"] = url_origin(self.url)
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
    discovery: DiscoveryConfig = DiscoveryConfig()
