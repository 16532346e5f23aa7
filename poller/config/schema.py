"""The config file's shape, declared once: keys, types, defaults, ranges, single-value checks.

The loader validates the TOML document against ``ConfigFile``, and ``poller config-schema``
prints the JSON Schema generated from the same declarations (field docstrings become its
descriptions). Rules that span keys (auth modes, duplicates, filters that must match, secret
sources) are the loader's. These models never leave the loader.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, get_args
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    PlainValidator,
    WithJsonSchema,
)
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from poller.config.durations import DURATION_PATTERN, format_duration, parse_duration
from poller.config.messages import IfEmpty, Items, problem
from poller.config.model import LogFormat, LogLevel
from poller.config.proxy import proxy_problem
from poller.config.values import (
    HEADER_NAME,
    STORE_URL_PATTERN,
    header_value_problem,
    http_url_problem,
    parse_listen,
    store_url,
    stored_length,
    text_problem,
    type_name,
)

__all__ = ["ConfigFile", "HmsTable", "WebhookTable", "json_schema"]

_WEBHOOK_NAME = re.compile(r"[a-z0-9_-]+")
_HOUR = 3600.0
_DAY = 24 * _HOUR

# --- single-value checks: each raises problem() with our wording --------------------------


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise problem(f"expected a string, got {type_name(value)}")
    if not value.strip():
        raise problem("must not be empty")
    if (found := text_problem(value)) is not None:
        raise problem(found)
    return value


def _stored_text(value: object, columns: tuple[str, ...]) -> str:
    """A non-blank string short enough for these store columns (``table.column``): a longer
    one is a config error on every backend, not a write that PostgreSQL refuses later."""
    text = _text(value)
    if len(text) > (limit := stored_length(*columns)):
        raise problem(
            f"must be at most {limit} characters (the store keeps it in {columns[0]}), "
            f"got {len(text)}"
        )
    return text


@dataclass(frozen=True, slots=True)
class _Stored:
    """Declaration metadata: a string kept in these store columns (``table.column``); the
    loader checks its length, and an editor is told the same ``maxLength``."""

    columns: tuple[str, ...]

    def validator(self) -> PlainValidator:
        return PlainValidator(lambda value: _stored_text(value, self.columns))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json = handler(schema)
        # Read when the schema is generated, not at import (see stored_length).
        return {**json, "maxLength": stored_length(*self.columns)}


def _checked(check: Callable[[str], str | None]) -> PlainValidator:
    """A validator of non-blank strings in which ``check`` finds no problem."""

    def validate(value: object) -> str:
        text = _text(value)
        if (found := check(text)) is not None:
            raise problem(found)
        return text

    return PlainValidator(validate)


def _parsed(parse: Callable[[str], object]) -> PlainValidator:
    """A validator of non-blank strings that ``parse`` accepts; its ValueError is the problem."""

    def validate(value: object) -> object:
        try:
            return parse(_text(value))
        except ValueError as e:
            raise problem(str(e)) from None

    return PlainValidator(validate)


def _duration(*, allow_zero: bool, maximum: float) -> tuple[PlainValidator, WithJsonSchema]:
    """A duration key's check, and the same range for an editor."""
    most = format_duration(maximum)  # in hours: the config has no unit for days
    if maximum >= 2 * _DAY:
        most += f" ({maximum / _DAY:g} days)"
    allowed = f"from 0s to {most}" if allow_zero else f"greater than 0 and at most {most}"

    def validate(value: object) -> float:
        try:
            seconds = parse_duration(value)
        except ValueError as e:
            raise problem(str(e)) from None
        if (seconds == 0 and not allow_zero) or seconds > maximum:
            raise problem(f"must be {allowed}, got {value!r}")
        return seconds

    low = "minimum" if allow_zero else "exclusiveMinimum"
    number = {"type": "number", low: 0, "maximum": maximum}
    return PlainValidator(validate), WithJsonSchema({"anyOf": [number, _DURATION]})


def _one_of(choices: tuple[str, ...]) -> PlainValidator:
    """A validator of one of ``choices``, in any case (``DEBUG`` is ``debug``)."""

    def validate(value: object) -> str:
        text = _text(value)
        if text.lower() not in choices:
            raise problem(f"must be one of {', '.join(choices)}; got {text!r}")
        return text.lower()

    return PlainValidator(validate)


def _api_base(value: str) -> str | None:
    if found := http_url_problem(value):
        return found
    parts = urlsplit(value)
    if parts.query or parts.fragment:
        return "must not have a query or fragment (API paths are appended)"
    return None


def _webhook_name(value: object) -> str:
    text = _stored_text(value, _WEBHOOK_NAME_COLUMN.columns)
    if not _WEBHOOK_NAME.fullmatch(text):
        raise problem(f"{text!r} may only contain lowercase letters, digits, '_' and '-'")
    return text


def _header_value(value: object) -> str:
    if not isinstance(value, str):
        raise problem(f"expected a string, got {type_name(value)}")
    if any(c in value for c in "\r\n\0"):
        raise problem("must not contain CR, LF or NUL characters")
    if (found := header_value_problem(value)) is not None:
        raise problem(found)
    return value


def _any_case(choices: tuple[str, ...]) -> WithJsonSchema:
    """The choices for an editor to offer, and the same in any case as the loader takes them."""
    any_case = "|".join("".join(f"[{c.lower()}{c.upper()}]" for c in word) for word in choices)
    return WithJsonSchema(
        {"anyOf": [{"enum": list(choices)}, {"type": "string", "pattern": f"^({any_case})$"}]}
    )


def _string(pattern: str) -> WithJsonSchema:
    return WithJsonSchema({"type": "string", "pattern": pattern})


# --- value types: the check, what an editor is told, and how an array of them is named ----

_HTTP = "^[Hh][Tt][Tt][Pp][Ss]?://"
_DURATION = {"type": "string", "pattern": DURATION_PATTERN}

# Where the store keeps config values: their lengths are the models' (poller.store.models).
_WEBHOOK_NAME_COLUMN = _Stored(("deliveries.webhook",))
_ROOM_ID = _Stored(("rooms.id", "events.room_id"))
_INSTANCE_ID = _Stored(("instances.id", "rooms.lease_owner", "deliveries.claimed_by"))
_EVENT_TYPE = _Stored(("events.type",))

# A string with something in it; TOML has no null, so an absent key is how to say "none".
Text = Annotated[str, PlainValidator(_text), _string(r"\S"), Items("strings")]
HttpUrl = Annotated[str, _checked(http_url_problem), _string(_HTTP)]
ApiBase = Annotated[str, _checked(_api_base), _string(_HTTP + "[^?#]*$")]
ProxyUrl = Annotated[str, _checked(proxy_problem), _string("^[Hh][Tt][Tt][Pp]://[^/?#]+/?$")]
StoreUrl = Annotated[str, _parsed(store_url), _string(STORE_URL_PATTERN)]
Listen = Annotated[tuple[str, int], _parsed(parse_listen), _string(r"^\S+:[0-9]+$")]
WebhookName = Annotated[
    str, PlainValidator(_webhook_name), _string(f"^{_WEBHOOK_NAME.pattern}$"), _WEBHOOK_NAME_COLUMN
]
RoomId = Annotated[str, _ROOM_ID.validator(), _string(r"\S"), _ROOM_ID, Items("room ids")]
TemplateId = Annotated[str, PlainValidator(_text), _string(r"\S"), Items("template ids")]
InstanceId = Annotated[str, _INSTANCE_ID.validator(), _string(r"\S"), _INSTANCE_ID]
EventType = Annotated[str, _EVENT_TYPE.validator(), _string(r"\S"), _EVENT_TYPE, Items("strings")]
# For editors, the controls; the loader also refuses invisible characters and blanks around.
HeaderValue = Annotated[
    str, PlainValidator(_header_value), _string(r"^[^\x00-\x08\x0a-\x1f\x7f]*$")
]
Level = Annotated[LogLevel, _one_of(get_args(LogLevel)), _any_case(get_args(LogLevel))]
Format = Annotated[LogFormat, _one_of(get_args(LogFormat)), _any_case(get_args(LogFormat))]
# Every duration has an upper bound (a date computed from "100000000h" is past the
# calendar's end): far above any sensible value, tighter where the key's meaning says.
RequestTimeout = Annotated[float, *_duration(allow_zero=False, maximum=_HOUR)]
# A room polled less often than daily is a mistake: its events would wait that long.
Interval = Annotated[float, *_duration(allow_zero=False, maximum=_DAY)]
# The rooms of an instance that stopped wait this long: a few intervals, never weeks.
LeaseTtl = Annotated[float, *_duration(allow_zero=False, maximum=7 * _DAY)]
DiscoveryInterval = Annotated[float, *_duration(allow_zero=False, maximum=_DAY)]
# How long a room stays fast after its session: 0 is "only while live"; past the API's
# 30 days of events a room would be fast for nothing.
ActiveWindow = Annotated[float, *_duration(allow_zero=True, maximum=30 * _DAY)]
# Longer than the API keeps events (30 days) would poll a room that can hold nothing new.
Keep = Annotated[float, *_duration(allow_zero=True, maximum=30 * _DAY)]
RetryDelay = Annotated[
    float,
    *_duration(allow_zero=True, maximum=30 * _DAY),
    Items("durations"),
]
Grace = Annotated[float, *_duration(allow_zero=True, maximum=_HOUR)]
Concurrency = Annotated[int, Field(ge=1)]
# A breaker that waits longer than the retry schedule's span would never open in time.
BreakerAfter = Annotated[float, *_duration(allow_zero=False, maximum=30 * _DAY)]
ProbeInterval = Annotated[float, *_duration(allow_zero=False, maximum=_DAY)]
# Requests per second: fractions allowed (0.5 is one request every 2 s).
RateLimit = Annotated[float, Field(gt=0, le=100_000, allow_inf_nan=False)]
RequestRate = Annotated[float, Field(gt=0, le=10_000, allow_inf_nan=False)]
# Unique strings; duplicates are found by the loader, which names both places.
_UNIQUE = Field(min_length=1, json_schema_extra={"uniqueItems": True})
EventTypes = Annotated[list[EventType], _UNIQUE]
RoomIds = Annotated[list[RoomId], _UNIQUE]
Headers = Annotated[
    dict[str, HeaderValue],
    Field(json_schema_extra={"propertyNames": {"pattern": f"^{HEADER_NAME.pattern}$"}}),
]


# --- the tables ------------------------------------------------------------------------


class _Table(BaseModel):
    # strict: TOML's types are the file's types ("100" is not a number, 1.0 not an integer);
    # forbid: a misspelt key must not pass silently; hide_input: a ValidationError that
    # escaped the loader would still not print a secret (the loader reads inputs itself).
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        frozen=True,
        use_attribute_docstrings=True,
        hide_input_in_errors=True,
    )


class HmsTable(_Table):
    """The 100ms API and its credentials: access_key + app_secret, or management_token."""

    base_url: ApiBase = "https://api.100ms.live/v2"
    """The 100ms API, without a query or fragment."""
    access_key: Text | None = None
    """The app access key: with app_secret, poller mints management tokens and renews them."""
    app_secret: Text | None = Field(None, repr=False)
    """The app secret (or app_secret_file, or $POLLER_HMS_APP_SECRET)."""
    app_secret_file: Text | None = None
    """A file holding the app secret, relative to this file; ${CREDENTIALS_DIRECTORY} works."""
    management_token: Text | None = Field(None, repr=False)
    """One fixed management token instead of access_key + app_secret (it expires)."""
    management_token_file: Text | None = None
    """A file holding the management token (or $POLLER_HMS_MANAGEMENT_TOKEN)."""
    event_types: EventTypes = Field(["beam.recording.success"])
    """The event types to ask the API for: any of the types the analytics events API serves
    (see the README), or of extra_event_types."""
    extra_event_types: EventTypes | None = None
    """Event types poller does not know yet (the API added them later): accepted in
    event_types and in webhook filters."""
    request_timeout: RequestTimeout = Field("10s", validate_default=True)
    """Per API request: seconds, or a string like "10s"."""
    ca_file: Text | None = None
    """PEM CA certificates to trust for the API instead of the system's (a TLS-inspecting
    corporate proxy's CA); relative to this file."""
    proxy: ProxyUrl | None = Field(None, repr=False)
    """An http:// proxy for the API, "http://[user:password@]host:port" (default:
    $HTTPS_PROXY / $HTTP_PROXY unless $NO_PROXY matches)."""
    max_requests_per_second: RequestRate = 50
    """One budget for every API request; when the schedule asks for more, polls wait for
    their turn (the most overdue first), never dropped."""


class PollTable(_Table):
    """When and how much to ask the API for."""

    interval: Interval = Field("30s", validate_default=True)
    """Per room (with adaptive, per active room); rooms are spread over the interval."""
    adaptive: bool | None = None
    """true: a room with a live session, or one that ended within active_window, is polled
    every interval, every other room every idle_interval (default: true when [discovery] is
    enabled, else false)."""
    idle_interval: Interval | None = None
    """With adaptive: how often a room without a recent session is polled, at least
    interval (default: 10m, or interval if longer); the catch-all that keeps correctness
    independent of the sessions API."""
    active_window: ActiveWindow = Field("2h", validate_default=True)
    """With adaptive: a room stays active this long after its session ended (its recording
    is still coming)."""
    sessions_interval: Interval = Field("30s", validate_default=True)
    """With adaptive: how often GET /sessions is walked (one walk for the whole app)."""
    page_size: Annotated[int, Field(ge=1, le=100)] = 100
    """Events per request, 1..100."""
    backfill: bool = True
    """true: events already in the API when a room is first polled are delivered; false: they
    are only recorded as seen."""
    max_concurrency: Concurrency = 8
    """API requests in flight at once, across all rooms."""
    lease_ttl: LeaseTtl | None = None
    """How long the rooms of an instance that stopped stay with it (default: max(3 x interval,
    30s))."""
    max_pages: Annotated[int, Field(ge=1)] = 10_000
    """Pages per walk of a room; a walk that hits it is recorded as that poll's error."""
    max_page_bytes: Annotated[int, Field(ge=1024)] = 16 * 1024 * 1024
    """Bytes per API response."""
    max_page_events: Annotated[int, Field(ge=1)] = 1_000
    """Events per page."""


class DiscoveryTable(_Table):
    """Poll the app's rooms as GET /rooms lists them, not only [[rooms]]."""

    enabled: bool = False
    """true: rooms are found by walking GET /rooms; [[rooms]] may then be empty."""
    interval: DiscoveryInterval = Field("5m", validate_default=True)
    """How often GET /rooms is walked."""
    include_disabled: bool = False
    """true: rooms with enabled = false are polled too."""
    name_prefix: str = ""
    """Only rooms whose name starts with this ("" : every name)."""
    template_ids: Annotated[list[TemplateId], Field(json_schema_extra={"uniqueItems": True})] = (
        Field(default_factory=list)
    )
    """Only rooms of these templates ([]: every template)."""
    keep: Keep = Field("24h", validate_default=True)
    """A room that leaves the listing is still polled this long (its last recordings may
    still arrive), then retired."""


class StoreTable(_Table):
    """Where seen events and owed deliveries are kept."""

    url: StoreUrl = Field(
        "sqlite+aiosqlite:////var/lib/poller/poller.db", validate_default=True, repr=False
    )
    """A SQLAlchemy URL: SQLite (four slashes: an absolute path) or PostgreSQL."""


class DeliveryTable(_Table):
    """How webhooks are called."""

    timeout: RequestTimeout = Field("10s", validate_default=True)
    """Per attempt; only a 2xx within it is success."""
    retry_schedule: list[RetryDelay] = Field(
        ["5s", "5m", "30m", "2h", "5h", "10h", "10h"], validate_default=True
    )
    """Delays after failed attempts: n delays mean up to n + 1 attempts, [] one attempt."""
    max_concurrency: Concurrency = 4
    """Default in-flight deliveries per webhook."""
    breaker_after: BreakerAfter = Field("10m", validate_default=True)
    """A webhook whose every attempt failed this long has its circuit breaker opened: it is
    paused but for one probe attempt every probe_interval, and resumes on a 2xx. Nothing is
    dropped: deliveries stay pending, and failed probes use up no retries."""
    probe_interval: ProbeInterval = Field("30s", validate_default=True)
    """How often a webhook whose breaker is open gets a probe attempt."""


class ServerTable(_Table):
    """/healthz, /readyz, /metrics and the status page; omit the table to disable them."""

    listen: Listen = Field("127.0.0.1:9464", validate_default=True)
    """host:port or [v6-address]:port."""
    status_page: bool = True
    """true: GET / serves a read-only HTML page of rooms, webhooks and the latest deliveries
    (no secrets, no scripts); false: GET / is 404."""


class LogTable(_Table):
    """What poller logs and how."""

    level: Level = "info"
    """debug, info, warning or error."""
    format: Format = "auto"
    """auto (JSON off a terminal), json or console."""


class RoomTable(_Table):
    """One room to poll."""

    id: RoomId
    """The room id."""


class WebhookTable(_Table):
    """One receiver of signed POSTs."""

    name: WebhookName
    """Unique, [a-z0-9_-]+; the secret's variable is $POLLER_WEBHOOK_<NAME>_SECRET."""
    url: HttpUrl
    """Where events are POSTed."""
    secret: Text | None = Field(None, repr=False)
    """A Standard Webhooks secret, "whsec_..." (or secret_file, or the environment)."""
    secret_file: Text | None = None
    """A file holding the secret, relative to this file; ${CREDENTIALS_DIRECTORY} works."""
    previous_secrets: list[Text] = Field(default_factory=list, repr=False)
    """Secrets being rotated out: each attempt is signed with secret and with each of these,
    so a receiver still verifying with an old one accepts it. Remove them once it switched."""
    event_types: Annotated[EventTypes | None, IfEmpty("omit it to receive all hms.event_types")] = (
        None
    )
    """Only these event types (default: all of hms.event_types)."""
    rooms: Annotated[RoomIds | None, IfEmpty("omit it to receive all the [[rooms]] ids")] = None
    """Only these rooms (default: all)."""
    headers: Headers = Field(default_factory=dict, repr=False)
    """Static headers; not webhook-*, content-type, user-agent, content-length,
    transfer-encoding or host."""
    max_concurrency: Concurrency | None = None
    """In-flight deliveries (default: delivery.max_concurrency)."""
    rate_limit: RateLimit | None = None
    """At most this many requests per second to this webhook, from each instance (attempts
    are spaced 1/rate_limit seconds apart); default: no limit."""
    ca_file: Text | None = None
    """PEM CA certificates to trust for this webhook instead of the system's (an internal CA);
    relative to this file."""
    client_cert: Text | None = None
    """A PEM client certificate for mutual TLS (with its chain; may also hold the key)."""
    client_key: Text | None = None
    """The client certificate's PEM private key, unencrypted (default: in client_cert)."""
    proxy: ProxyUrl | None = Field(None, repr=False)
    """An http:// proxy for this webhook, "http://[user:password@]host:port" (default:
    $HTTPS_PROXY / $HTTP_PROXY unless $NO_PROXY matches)."""


class ConfigFile(_Table):
    """The poller config file (config.toml)."""

    model_config = ConfigDict(title="poller config")

    shutdown_grace: Grace = Field("10s", validate_default=True)
    """How long SIGTERM/SIGINT may take for in-flight polls and deliveries to finish."""
    instance_id: InstanceId | None = None
    """This instance's name in leases, logs and `poller status` (default: hostname:pid)."""
    hms: HmsTable = Field(default_factory=HmsTable)
    poll: PollTable = Field(default_factory=PollTable)
    store: StoreTable = Field(default_factory=StoreTable)
    delivery: DeliveryTable = Field(default_factory=DeliveryTable)
    server: ServerTable | None = None
    discovery: DiscoveryTable = Field(default_factory=DiscoveryTable)
    log: LogTable = Field(default_factory=LogTable)
    rooms: list[RoomTable] = Field(default_factory=list)
    """The rooms to poll ([[rooms]]); at least one."""
    webhooks: list[WebhookTable] = Field(default_factory=list)
    """The webhooks to deliver to ([[webhooks]]); at least one."""


# --- JSON Schema -----------------------------------------------------------------------


class _TomlSchema(GenerateJsonSchema):
    """JSON Schema as a TOML editor needs it."""

    def nullable_schema(self, schema: core_schema.NullableSchema) -> JsonSchemaValue:
        # TOML has no null: None in a declaration means "key absent", which the schema says
        # by not listing the key as required.
        return self.generate_inner(schema["schema"])

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        json = super().default_schema(schema)
        if json.get("default", ...) is None:
            del json["default"]  # "absent" is not a value an editor could offer
        return json

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False  # the key is its own title: "Page Size" beside page_size is noise


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the config file, for editors such as Taplo's."""
    schema = ConfigFile.model_json_schema(schema_generator=_TomlSchema)
    return {"$schema": _TomlSchema.schema_dialect, **_folded(schema)}


def _folded(node: Any) -> Any:
    """``node`` with each description on one line: docstrings wrap where the source does."""
    if isinstance(node, dict):
        return {
            key: " ".join(value.split()) if key == "description" else _folded(value)
            for key, value in node.items()
        }
    return [_folded(item) for item in node] if isinstance(node, list) else node
