"""Management tokens: claims, caching, renewal, invalidation, secret hygiene."""

from __future__ import annotations

import uuid

import jwt
import pytest

from poller.hms.token import MintedTokens, StaticToken, TokenProvider

ACCESS_KEY = "63bbb0c5e1a4d8a2b1c3d4e5"
APP_SECRET = "app-secret-" + "0123456789abcdef" * 4  # long enough for HS512 too
T0 = 1_700_000_000.25


class Clock:
    """A settable clock for MintedTokens."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def decode(token: str) -> dict[str, object]:
    # The clock is fake, so the time claims are checked by hand, not by PyJWT.
    claims: dict[str, object] = jwt.decode(
        token,
        APP_SECRET,
        algorithms=["HS256"],
        options={"verify_exp": False, "verify_nbf": False, "verify_iat": False},
    )
    return claims


def test_minted_token_has_exactly_the_management_claims() -> None:
    tokens = MintedTokens(ACCESS_KEY, APP_SECRET, lifetime=600, renew_before=60, clock=Clock())

    token = tokens.token()

    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    claims = decode(token)
    assert set(claims) == {"access_key", "type", "version", "jti", "iat", "nbf", "exp"}
    assert claims["access_key"] == ACCESS_KEY
    assert claims["type"] == "management"
    assert claims["version"] == 2
    assert uuid.UUID(str(claims["jti"])).version == 4
    assert claims["iat"] == claims["nbf"] == int(T0)
    assert claims["exp"] == int(T0 + 600)
    for name in ("iat", "nbf", "exp", "version"):
        assert type(claims[name]) is int
    assert tokens.renewals == 1


def test_token_is_signed_with_the_app_secret() -> None:
    token = MintedTokens(ACCESS_KEY, APP_SECRET).token()

    jwt.decode(token, APP_SECRET, algorithms=["HS256"])  # valid now, with the real clock
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, APP_SECRET + "x", algorithms=["HS256"])


def test_token_is_cached_until_renewal_is_due() -> None:
    clock = Clock()
    tokens = MintedTokens(ACCESS_KEY, APP_SECRET, lifetime=86400, renew_before=3600, clock=clock)
    first = tokens.token()

    clock.now = T0 + 86400 - 3600 - 1  # still more than renew_before left
    assert tokens.token() == first
    assert tokens.renewals == 1

    clock.now = T0 + 86400 - 3600 + 1  # less than renew_before left
    renewed = tokens.token()
    assert renewed != first
    assert decode(renewed)["iat"] == int(clock.now)
    assert tokens.renewals == 2
    assert tokens.token() == renewed


def test_invalidate_forces_a_fresh_jti() -> None:
    tokens = MintedTokens(ACCESS_KEY, APP_SECRET, clock=Clock())
    first = tokens.token()

    tokens.invalidate()
    second = tokens.token()

    assert decode(second)["jti"] != decode(first)["jti"]
    assert tokens.renewals == 2


@pytest.mark.parametrize(("lifetime", "renew_before"), [(60, 60), (60, 120), (60, -1)])
def test_renew_window_must_fit_in_the_lifetime(lifetime: float, renew_before: float) -> None:
    with pytest.raises(ValueError, match="renew_before"):
        MintedTokens(ACCESS_KEY, APP_SECRET, lifetime=lifetime, renew_before=renew_before)


def test_static_token_is_returned_as_is() -> None:
    tokens = StaticToken("fixed-management-token")

    assert tokens.token() == "fixed-management-token"
    tokens.invalidate()  # nothing else to fall back on
    assert tokens.token() == "fixed-management-token"
    assert tokens.renewals == 0


def test_providers_never_show_their_secrets() -> None:
    minted = MintedTokens(ACCESS_KEY, APP_SECRET)
    token = minted.token()
    static = StaticToken("fixed-management-token")

    for text in (repr(minted), str(minted), f"{minted}"):
        assert APP_SECRET not in text
        assert token not in text
        assert ACCESS_KEY in text  # not a secret, and it helps debugging
    for text in (repr(static), str(static)):
        assert "fixed-management-token" not in text


def test_both_satisfy_the_protocol() -> None:
    providers: list[TokenProvider] = [MintedTokens(ACCESS_KEY, APP_SECRET), StaticToken("t")]
    assert all(p.token() for p in providers)
