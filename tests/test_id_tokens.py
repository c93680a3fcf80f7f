"""The bounds of token verification, with injected clocks: how long certificates and user records
are kept (the revocation bound), that failures are not kept, which environment may use emulator
mode; and the claim checks and answers' parsing as plain functions."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from devtools.auth_servers import CertificateServer
from devtools.emulators import PROJECT
from devtools.tokens import SigningKey, token_claims, unsigned_token
from functions.id_tokens import (
    CERTS_MAX_AGE_S,
    CERTS_MIN_AGE_S,
    AuthSettings,
    AuthUnavailable,
    CertificateCache,
    IdTokenVerifier,
    InvalidToken,
    UserStatus,
    UserStatusCache,
    check_claims,
    max_age,
    parse_user_lookup,
    user_refusal,
)

KEY = SigningKey.generate("key-1")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def certificate_answer(cache_control: str | None) -> tuple[int, Mapping[str, str], bytes]:
    _, _, body = CertificateServer([KEY]).answer("GET", "/", b"")
    return 200, ({"Cache-Control": cache_control} if cache_control is not None else {}), body


@pytest.mark.parametrize(
    ("cache_control", "kept_s"),
    [
        ("public, max-age=19845, must-revalidate, no-transform", 19845),  # Google's usual answer
        ("max-age=5", CERTS_MIN_AGE_S),
        ("max-age=999999999", CERTS_MAX_AGE_S),
        ("no-cache", CERTS_MIN_AGE_S),
        (None, CERTS_MIN_AGE_S),
    ],
)
def test_certificates_are_kept_for_their_max_age_within_the_bounds(
    cache_control: str | None, kept_s: float
) -> None:
    assert max_age(cache_control) == kept_s
    clock = Clock()
    cache = CertificateCache("http://certs", 3.0, clock, fetch=lambda: certificate_answer(cache_control))
    assert set(cache.keys()) == {KEY.kid}
    clock.now += kept_s - 0.001
    cache.keys()
    assert cache.fetches == 1
    clock.now += 0.001
    cache.keys()
    assert cache.fetches == 2


def test_a_failed_certificate_fetch_is_not_kept_but_shared_by_those_who_waited_for_it() -> None:
    clock, answers = Clock(), [(503, {}, b"")]

    def fetch() -> tuple[int, Mapping[str, str], bytes]:
        return answers.pop(0) if answers else certificate_answer("max-age=600")

    cache = CertificateCache("http://certs", 3.0, clock, fetch=fetch)
    with pytest.raises(AuthUnavailable, match="answered 503"):
        cache.keys()
    # A request that arrived while that attempt ran (the same instant here) fails with it ...
    with pytest.raises(AuthUnavailable, match="answered 503"):
        cache.keys()
    assert cache.fetches == 1
    # ... and one that arrives after it tries again.
    clock.now += 0.001
    assert set(cache.keys()) == {KEY.kid}
    assert cache.fetches == 2


def test_a_revoked_or_disabled_user_is_refused_within_the_user_cache_ttl() -> None:
    """The revocation bound: a user disabled at the source is refused no later than ``ttl_s`` after
    their status was last looked up, and the lookups are one per user per ``ttl_s``."""
    clock, source, lookups = Clock(), {"u1": UserStatus(exists=True)}, []

    def lookup(uid: str) -> UserStatus:
        lookups.append(uid)
        return source[uid]

    settings = AuthSettings(PROJECT, emulator_host="127.0.0.1:9099")  # unsigned tokens: no certificates
    verify = IdTokenVerifier(settings, None, UserStatusCache(lookup, ttl_s=60.0, clock=clock))
    token = unsigned_token({"uid": "u1", "tenant_id": "t", "role": "trader"})
    assert verify(token)["uid"] == "u1"
    source["u1"] = UserStatus(exists=True, disabled=True)
    clock.now += 59.999
    assert verify(token)["uid"] == "u1"  # still within the bound: the kept status
    assert lookups == ["u1"]
    clock.now += 0.001
    with pytest.raises(InvalidToken, match="disabled"):
        verify(token)
    assert lookups == ["u1", "u1"]


def test_a_failed_user_lookup_is_not_kept() -> None:
    clock, answers = Clock(), [AuthUnavailable("the user lookup did not answer within 3 s")]

    def lookup(uid: str) -> UserStatus:
        if answers:
            raise answers.pop(0)
        return UserStatus(exists=True)

    cache = UserStatusCache(lookup, ttl_s=60.0, clock=clock)
    with pytest.raises(AuthUnavailable):
        cache.status("u1")
    assert cache.status("u1") == UserStatus(exists=True)


def test_a_session_begun_before_the_revocation_is_refused() -> None:
    payload = token_claims({"uid": "u1"})
    verified = check_claims(payload, PROJECT, payload["iat"])
    revoked_after = UserStatus(exists=True, valid_since=payload["auth_time"] + 1)
    revoked_before = UserStatus(exists=True, valid_since=payload["auth_time"])
    assert user_refusal(revoked_after, verified) is not None
    assert user_refusal(revoked_before, verified) is None
    assert user_refusal(UserStatus(exists=False), verified) == "the user no longer exists"


@pytest.mark.parametrize(
    ("env", "emulated", "refused"),
    [
        ({}, False, False),
        ({"K_SERVICE": "execute"}, False, False),
        ({"FIREBASE_AUTH_EMULATOR_HOST": "127.0.0.1:9099"}, True, False),  # tests, the local stack
        ({"FIREBASE_AUTH_EMULATOR_HOST": "127.0.0.1:9099", "K_SERVICE": "execute"}, True, True),  # deployed
        (
            {"FIREBASE_AUTH_EMULATOR_HOST": "h:1", "K_SERVICE": "execute", "FUNCTIONS_EMULATOR": "true"},
            True,
            False,  # the Firebase CLI's emulator sets K_SERVICE too
        ),
        (
            {"FIREBASE_AUTH_EMULATOR_HOST": "h:1", "K_SERVICE": "execute", "FUNCTIONS_EMULATOR": "1"},
            True,
            True,
        ),
    ],
)
def test_emulator_mode_is_refused_only_where_the_code_runs_deployed(
    env: dict[str, str], emulated: bool, refused: bool
) -> None:
    settings = AuthSettings.from_env(env, PROJECT)
    assert settings.emulated is emulated
    assert (settings.refusal() is not None) is refused
    if refused:
        with pytest.raises(AuthUnavailable, match="FIREBASE_AUTH_EMULATOR_HOST"):
            IdTokenVerifier(settings, None, None)(unsigned_token({"uid": "u1"}))


@pytest.mark.parametrize(
    ("env", "error"),
    [
        ({"EXEC_AUTH_TIMEOUT_S": "soon"}, "EXEC_AUTH_TIMEOUT_S='soon' is not a number"),
        ({"EXEC_AUTH_TIMEOUT_S": "30"}, "must be between"),  # two calls of 30 s would pass the bound
        ({"EXEC_AUTH_USER_CACHE_S": "3600"}, "must be between"),  # the revocation bound stays short
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        AuthSettings.from_env(env, PROJECT)


@pytest.mark.parametrize(
    ("override", "reason"),
    [
        ({"exp": 1e308 * 10}, "exp claim is not a number"),  # inf
        ({"iat": None}, "iat claim is not a number"),
        ({"iat": [1]}, "iat claim is not a number"),
        ({"sub": ""}, "subject"),
        ({"aud": [PROJECT]}, "audience"),
    ],
)
def test_malformed_standard_claims_are_invalid(override: dict[str, Any], reason: str) -> None:
    payload = {**token_claims({"uid": "u1"}), **override}
    with pytest.raises(InvalidToken, match=reason):
        check_claims(payload, PROJECT, token_claims({"uid": "u1"})["iat"])


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"kind": "x"}', UserStatus(exists=False)),
        (b'{"users": [{"localId": "u1"}]}', UserStatus(exists=True)),
        (
            b'{"users": [{"localId": "u1", "disabled": true, "validSince": "1700000000"}]}',
            UserStatus(True, True, 1700000000),
        ),
        (b'{"users": [{"localId": "someone-else"}]}', UserStatus(exists=False)),
    ],
)
def test_user_lookup_answers(body: bytes, expected: UserStatus) -> None:
    assert parse_user_lookup(body, "u1") == expected


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"<html>", "not JSON"),
        (b"[]", "not a JSON object"),
        (b'{"users": {"u1": {}}}', "not a list"),
        (b'{"users": [{"localId": "u1", "disabled": "no"}]}', "disabled is not a boolean"),
        (b'{"users": [{"localId": "u1", "validSince": 17}]}', "validSince"),
    ],
)
def test_user_lookup_garbage_is_not_a_user_record(body: bytes, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_user_lookup(body, "u1")
