"""Management tokens for the 100ms API: minted from the app secret, or one fixed token."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Protocol

import jwt

__all__ = ["MintedTokens", "StaticToken", "TokenProvider"]


class TokenProvider(Protocol):
    """Where the API client gets its bearer token from."""

    renewals: int  # tokens minted so far (for metrics)

    def token(self) -> str:
        """Return a valid bearer token, minting or renewing one as needed."""
        ...

    def invalidate(self) -> None:
        """Forget the cached token so the next ``token()`` mints a fresh one."""
        ...


class MintedTokens:
    """HS256 management tokens minted from ``access_key`` + ``app_secret``, renewed early."""

    __slots__ = (
        "_access_key",
        "_app_secret",
        "_clock",
        "_expires",
        "_lifetime",
        "_renew_before",
        "_token",
        "renewals",
    )

    def __init__(
        self,
        access_key: str,
        app_secret: str,
        *,
        lifetime: float = 86400,
        renew_before: float = 3600,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not access_key or not app_secret:
            raise ValueError("access_key and app_secret must not be empty")
        # Otherwise every call would mint: a token would never be fresh enough to reuse.
        if not 0 <= renew_before < lifetime:
            raise ValueError("need 0 <= renew_before < lifetime")
        self._access_key = access_key
        self._app_secret = app_secret
        self._lifetime = lifetime
        self._renew_before = renew_before
        self._clock = clock
        self._token: str | None = None
        self._expires = 0
        self.renewals = 0

    def token(self) -> str:
        """Return the cached token, or mint a new one when less than ``renew_before`` remains."""
        now = self._clock()
        if self._token is None or self._expires - now < self._renew_before:
            self._token = self._mint(now)
        return self._token

    def invalidate(self) -> None:
        """Drop the cached token (the API rejected it); the next ``token()`` mints afresh."""
        self._token = None

    def _mint(self, now: float) -> str:
        issued = int(now)
        self._expires = int(now + self._lifetime)
        claims = {
            "access_key": self._access_key,
            "type": "management",
            "version": 2,
            "jti": str(uuid.uuid4()),
            "iat": issued,
            "nbf": issued,
            "exp": self._expires,
        }
        self.renewals += 1
        return jwt.encode(claims, self._app_secret, algorithm="HS256")

    def __repr__(self) -> str:
        return (
            f"MintedTokens(access_key={self._access_key!r}, app_secret='********', "
            f"lifetime={self._lifetime!r}, renew_before={self._renew_before!r})"
        )


class StaticToken:
    """One fixed management token, used as given (it cannot be renewed)."""

    __slots__ = ("_token", "renewals")

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("management token must not be empty")
        self._token = token
        self.renewals = 0

    def token(self) -> str:
        """Return the fixed token."""
        return self._token

    def invalidate(self) -> None:
        """Do nothing: there is no other token to fall back on."""

    def __repr__(self) -> str:
        return "StaticToken('********')"
