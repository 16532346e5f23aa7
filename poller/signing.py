"""Standard Webhooks signatures: sign outgoing requests, verify incoming ones."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret


def generate_secret(nbytes: int = 32) -> str:
    """A new Standard Webhooks secret: ``whsec_`` and the base64 of ``nbytes`` random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(nbytes)).decode()


class InvalidSecret(ValueError):
    """The secret is not a (``whsec_``-prefixed) base64 key; never carries the secret."""


class InvalidSignature(ValueError):
    """A request's signature headers do not verify."""


@dataclass(frozen=True, slots=True)
class SigningKey:
    """The decoded HMAC key of a Standard Webhooks secret."""

    key: bytes = field(repr=False)

    @classmethod
    def from_secret(cls, secret: str) -> SigningKey:
        """Decode ``whsec_<base64>`` (the prefix is optional, as in the reference libraries)."""
        raw = secret.removeprefix(SECRET_PREFIX)
        # Restore dropped "=" padding, as the reference libraries accept such secrets.
        raw += "=" * (-len(raw) % 4)
        try:
            key = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidSecret("not a base64 Standard Webhooks secret") from None
        if len(key) < 16:
            raise InvalidSecret("secret key is shorter than 16 bytes")
        return cls(key)

    def signature(self, msg_id: str, timestamp: int, body: bytes) -> str:
        """Return the ``v1,<base64>`` signature of one request."""
        signed = b"%s.%d.%s" % (msg_id.encode(), timestamp, body)
        digest = hmac.new(self.key, signed, hashlib.sha256).digest()
        return "v1," + base64.b64encode(digest).decode()

    def headers(self, msg_id: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
        """Return the three ``webhook-*`` headers for one attempt."""
        return _headers((self,), msg_id, body, timestamp)

    def verify(
        self,
        headers: Mapping[str, str],
        body: bytes,
        *,
        tolerance: float = 300.0,
        now: float | None = None,
    ) -> str:
        """Check a request's signature; return its ``webhook-id`` or raise InvalidSignature."""
        lowered = {k.lower(): v for k, v in headers.items()}
        try:
            msg_id = lowered["webhook-id"]
            ts = int(lowered["webhook-timestamp"])
            given = lowered["webhook-signature"]
        except (KeyError, ValueError):
            raise InvalidSignature("missing or malformed webhook-* headers") from None
        current = time.time() if now is None else now
        if abs(current - ts) > tolerance:
            raise InvalidSignature("timestamp outside the tolerance")
        expected = self.signature(msg_id, ts, body)
        # Several space-separated signatures may be sent during key rotation.
        for candidate in given.split(" "):
            if hmac.compare_digest(candidate, expected):
                return msg_id
        raise InvalidSignature("no matching signature")


@dataclass(frozen=True, slots=True)
class RotatingKeys:
    """A webhook's current key and the previous ones kept while its receiver switches:
    each attempt carries one signature per key, space-separated (Standard Webhooks), so a
    receiver that verifies with any one of the secrets accepts it."""

    current: SigningKey
    previous: tuple[SigningKey, ...] = ()

    @classmethod
    def from_secrets(cls, current: str, previous: tuple[str, ...] = ()) -> RotatingKeys:
        """Decode every secret (InvalidSecret names none of them)."""
        return cls(
            SigningKey.from_secret(current), tuple(SigningKey.from_secret(p) for p in previous)
        )

    def headers(self, msg_id: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
        """Return the three ``webhook-*`` headers for one attempt, signed with every key."""
        return _headers((self.current, *self.previous), msg_id, body, timestamp)


def _headers(
    keys: tuple[SigningKey, ...], msg_id: str, body: bytes, timestamp: int | None
) -> dict[str, str]:
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": " ".join(key.signature(msg_id, ts, body) for key in keys),
    }
