"""What must never be shown: every configured secret, and masking them in rendered text.

Logs (poller.log), errors and the operator's reports (check-config, status,
deliveries) all pass their final text through one ``Redactor``.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable
from urllib.parse import quote

from poller.config import Config, url_secrets
from poller.config.model import Route
from poller.signing import SECRET_PREFIX

__all__ = ["MASK", "Redactor", "redactor_of", "secrets_of"]

# Shorter strings are too likely to occur by chance to be worth masking.
_MIN_SECRET_LEN = 6
MASK = "***"


class Redactor:
    """Masks known secret values in a rendered line, in every spelling rendering gives them.

    Why on the final line and not on the event's values: exception messages and
    tracebacks are rendered after the processors run, and a secret inside them was
    written out untouched. Rendering also changes a secret's spelling: JSON escapes
    ``"``, ``\\`` and non-ASCII, and a repr (an exception's args, a dict) escapes
    quotes and backslashes, so each of those spellings is masked too.
    """

    __slots__ = ("_pattern",)

    def __init__(self, secrets: Iterable[str]) -> None:
        spellings = {
            spelling
            for secret in secrets
            if len(secret) >= _MIN_SECRET_LEN
            for spelling in _spellings(secret)
            if len(spelling) >= _MIN_SECRET_LEN
        }
        # Longest first: at one position, the longer of two overlapping secrets wins,
        # and a secret's escaped spelling wins over the raw one it contains.
        ordered = sorted(spellings, key=lambda s: (-len(s), s))
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __call__(self, line: str) -> str:
        """``line`` with every known secret replaced by ``***``."""
        if self._pattern is None:
            return line
        return self._pattern.sub(MASK, line)


def _spellings(secret: str) -> set[str]:
    """``secret`` as written, as a repr shows it, and either of those inside a JSON string."""
    plain = {secret, repr(secret)[1:-1], secret.replace("'", "\\'")}
    escaped = set(plain)
    for text in plain:
        escaped.add(json.dumps(text)[1:-1])
        escaped.add(json.dumps(text, ensure_ascii=False)[1:-1])
    return escaped


def secrets_of(config: Config) -> list[str]:
    """Every configured secret value, in each spelling that can reach a line, for redaction.

    Besides the values themselves: a webhook's key as the bytes it decodes to (hex,
    latin-1, a bytes repr), and the secret-bearing parts of every URL (see
    ``url_secrets``). Words the config itself names in logs (webhook names, room ids,
    event types) are kept out, so masking never blots out what is not secret.
    """
    # Lazily, as StoreConfig does: check-config need not load SQLAlchemy's engine.
    from sqlalchemy.engine import make_url

    hms = config.hms
    values: set[str] = set()
    for webhook in config.webhooks:
        keys = (webhook.signing_key.current, *webhook.signing_key.previous)
        secrets = (webhook.secret, *webhook.previous_secrets)
        for current, signing in zip(secrets, keys, strict=True):
            secret, key = current.reveal(), signing.key
            encoded = secret.removeprefix(SECRET_PREFIX)
            values.update((secret, encoded, encoded.rstrip("="), base64.b64encode(key).decode()))
            values.update((key.hex(), key.decode("latin-1"), repr(key)[2:-1]))
        values.update(v for _, v in webhook.headers)
        values.update(url_secrets(webhook.url))
    for configured in (hms.app_secret, hms.management_token):
        if configured is not None:
            values.add(configured.reveal())
    if hms.access_key is not None:
        values.add(hms.access_key)
    values.update(url_secrets(hms.base_url))
    for route in (hms.route, *(w.route for w in config.webhooks)):
        values.update(_proxy_secrets(route))
    store_url = make_url(config.store.url.reveal())
    if store_url.password:
        values.add(str(store_url.password))
        # As the URL spells it (SQLAlchemy renders it percent-encoded).
        values.add(quote(str(store_url.password), safe=""))
    public = {w.name for w in config.webhooks} | {r.id for r in config.rooms}
    public.update(hms.event_types)
    return sorted(values - public)


def _proxy_secrets(route: Route) -> set[str]:
    """A proxy's credentials: as configured, percent-encoded as a URL holds them, and as
    the ``Proxy-Authorization`` header carries them."""
    proxy = route.proxy
    if proxy is None or proxy.username is None:
        return set()
    found = {proxy.username, quote(proxy.username, safe="")}
    found.update(value.removeprefix("Basic ") for value in proxy.headers().values())
    if proxy.password is not None:
        password = proxy.password.reveal()
        found.update((password, quote(password, safe="")))
    return found


def redactor_of(config: Config) -> Redactor:
    """The redactor for everything shown about ``config``: logs, errors, reports."""
    return Redactor(secrets_of(config))
