"""Firebase ID tokens verified in code, every outbound call bounded, every doubt a refusal.

Why not firebase-admin's ``verify_id_token``: its certificate fetch waits up to 120 s (twice the
function's timeout), a missing credential becomes a 500 after seconds of retries, and its emulator
mode (unsigned ``alg: none`` tokens) is switched on by one environment variable, deployed or not.

Production mode: the token is an RS256 JWT signed by one of Google's securetoken keys
(``EXEC_AUTH_CERTS_URL``, fetched within ``EXEC_AUTH_TIMEOUT_S`` and cached as its Cache-Control
says, clamped to [60 s, 6 h]); its audience is the project, its issuer
``https://securetoken.google.com/<project>``, ``exp``/``iat``/``auth_time`` are numbers consistent
with now (10 s of clock skew), ``sub`` is 1–128 characters. Then the user record (Identity Toolkit's
``accounts:lookup``, ``EXEC_AUTH_USERS_URL``, cached per user for ``EXEC_AUTH_USER_CACHE_S``): a
deleted or disabled user, or a session that began before the user's tokens were revoked, is refused.
So a revoked or disabled user stops within ``EXEC_AUTH_USER_CACHE_S`` (60 s).

Emulator mode (``FIREBASE_AUTH_EMULATOR_HOST`` set, as in the tests and the local stack): the same
claim checks, no signature, no user record. A deployed function (``K_SERVICE`` set, not under the
Firebase CLI's emulator) refuses emulator mode outright: every request is a 503 and the log says why.

A token that can never verify is an ``InvalidToken`` (401) even when Google is unreachable; a check
that could not be made (certificates or user record unreachable, slow, garbled) is an
``AuthUnavailable`` (503): nothing is accepted on a guess.
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from backend.observability.logging import log_event

logger = logging.getLogger("msr.auth")

GOOGLE_CERTS_URL = "https://www.googleapis.com/robot/v1/metadata/x509/securetoken@system.gserviceaccount.com"
IDENTITY_TOOLKIT_URL = "https://identitytoolkit.googleapis.com/v1"
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
# The Auth emulator's administrator token: what a non-Google users URL gets instead of the
# function's Google credentials, which are never sent anywhere but Google.
EMULATOR_ADMIN_TOKEN = "owner"  # a fixed, public emulator convention, not a secret

CLOCK_SKEW_S = 10
CERTS_MIN_AGE_S = 60  # Cache-Control max-age is clamped to this range
CERTS_MAX_AGE_S = 6 * 3600
MAX_TOKEN_CHARS = 8 * 1024  # a Firebase ID token is about 1 KiB
MAX_RESPONSE_BYTES = 64 * 1024  # certificates or one user record
MAX_UID_CHARS = 128
USER_CACHE_ENTRIES = 10_000

_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*(\d{1,9})\s*(?:,|$)", re.IGNORECASE)


class InvalidToken(Exception):
    """The caller's token is not acceptable and never will be (a 401)."""


class AuthUnavailable(Exception):
    """A check could not be made (a 503): the request is refused, not judged."""


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """``EXEC_AUTH_*`` and the variables that say where the code runs, read once per instance."""

    project_id: str
    certs_url: str = GOOGLE_CERTS_URL
    users_url: str = IDENTITY_TOOLKIT_URL
    timeout_s: float = 3.0  # each outbound call, connect to last byte
    user_cache_s: float = 60.0  # the revocation bound
    emulator_host: str = ""
    deployed: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str], project_id: str) -> AuthSettings:
        def seconds(name: str, default: float, low: float, high: float) -> float:
            raw = env.get(name, "").strip()
            try:
                value = float(raw) if raw else default
            except ValueError:
                raise ValueError(f"{name}={raw!r} is not a number of seconds") from None
            if not low <= value <= high:
                raise ValueError(f"{name}={raw!r} must be between {low} and {high} seconds")
            return value

        return cls(
            project_id=project_id,
            certs_url=env.get("EXEC_AUTH_CERTS_URL", "").strip() or GOOGLE_CERTS_URL,
            users_url=(env.get("EXEC_AUTH_USERS_URL", "").strip() or IDENTITY_TOOLKIT_URL).rstrip("/"),
            timeout_s=seconds("EXEC_AUTH_TIMEOUT_S", 3.0, 0.1, 4.0),
            user_cache_s=seconds("EXEC_AUTH_USER_CACHE_S", 60.0, 0.0, 300.0),
            emulator_host=env.get("FIREBASE_AUTH_EMULATOR_HOST", "").strip(),
            deployed=bool(env.get("K_SERVICE")) and env.get("FUNCTIONS_EMULATOR") != "true",
        )

    @property
    def emulated(self) -> bool:
        return bool(self.emulator_host)

    def refusal(self) -> str | None:
        """Why this instance must not authenticate anyone, or None."""
        if self.emulated and self.deployed:
            return (
                "FIREBASE_AUTH_EMULATOR_HOST is set in a deployed function: emulator mode would accept "
                "unsigned tokens; remove it from the deployed environment (.env) and redeploy"
            )
        return None


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    uid: str
    auth_time: float
    claims: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class UserStatus:
    exists: bool
    disabled: bool = False
    valid_since: int | None = None  # sessions that began before this second are revoked


# -- the pure part: what a token and a user record say ------------------------------------------


def split_token(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    """(header, payload, signed bytes, signature) of a compact JWT, or ``InvalidToken``."""
    if len(token) > MAX_TOKEN_CHARS:
        raise InvalidToken(f"longer than {MAX_TOKEN_CHARS} characters")
    parts = token.split(".")
    if len(parts) != 3:
        raise InvalidToken("not a JWT (three dot-separated parts)")
    header, payload = _json_part(parts[0], "header"), _json_part(parts[1], "payload")
    return header, payload, f"{parts[0]}.{parts[1]}".encode("ascii"), _base64url(parts[2], "signature")


def _base64url(part: str, what: str) -> bytes:
    if not _B64URL.fullmatch(part):
        raise InvalidToken(f"the {what} is not base64url")
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        raise InvalidToken(f"the {what} is not base64url") from None


def _json_part(part: str, what: str) -> dict[str, Any]:
    try:
        value = orjson.loads(_base64url(part, what))
    except orjson.JSONDecodeError:
        raise InvalidToken(f"the {what} is not JSON") from None
    if not isinstance(value, dict):
        raise InvalidToken(f"the {what} is not a JSON object")
    return value


def _timestamp(payload: Mapping[str, Any], name: str) -> float:
    value = payload.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidToken(f"the {name} claim is not a number of seconds")
    return float(value)


def check_claims(payload: Mapping[str, Any], project_id: str, now: float) -> VerifiedToken:
    """The standard claims of a Firebase ID token for ``project_id`` at ``now`` (epoch seconds)."""
    if payload.get("aud") != project_id:
        raise InvalidToken("the audience is not this project")
    if payload.get("iss") != f"https://securetoken.google.com/{project_id}":
        raise InvalidToken("the issuer is not this project's")
    if _timestamp(payload, "exp") <= now - CLOCK_SKEW_S:
        raise InvalidToken("expired")
    if _timestamp(payload, "iat") > now + CLOCK_SKEW_S:
        raise InvalidToken("issued in the future")
    auth_time = _timestamp(payload, "auth_time")
    if auth_time > now + CLOCK_SKEW_S:
        raise InvalidToken("authenticated in the future")
    sub = payload.get("sub")
    if not isinstance(sub, str) or not 0 < len(sub) <= MAX_UID_CHARS:
        raise InvalidToken(f"the subject is not a user id of 1 to {MAX_UID_CHARS} characters")
    return VerifiedToken(sub, auth_time, payload)


def user_refusal(status: UserStatus, token: VerifiedToken) -> str | None:
    """Why the user record refuses this token, or None."""
    if not status.exists:
        return "the user no longer exists"
    if status.disabled:
        return "the user is disabled"
    if status.valid_since is not None and token.auth_time < status.valid_since:
        return "revoked: the session began before the user's tokens were revoked"
    return None


def max_age(cache_control: str | None) -> float:
    """How long certificates may be kept: Cache-Control's max-age, clamped to the sane range."""
    match = _MAX_AGE.search(cache_control or "")
    seconds = int(match.group(1)) if match else CERTS_MIN_AGE_S
    return float(min(max(seconds, CERTS_MIN_AGE_S), CERTS_MAX_AGE_S))


# -- bounded I/O ----------------------------------------------------------------------------------

T = TypeVar("T")
# Outbound calls run here so that the caller stops waiting at its bound, whatever the call does
# (a token refresh, a server that drips bytes); the call itself also has socket timeouts, so a
# worker left behind ends soon after.
_io = ThreadPoolExecutor(max_workers=16, thread_name_prefix="auth-io")


def within(seconds: float, what: str, call: Callable[[], T]) -> T:
    future = _io.submit(call)
    try:
        return future.result(timeout=seconds)
    except FutureTimeout:
        future.cancel()
        raise AuthUnavailable(f"{what} did not answer within {seconds:g} s") from None


Answer = tuple[int, Mapping[str, str], bytes]  # status, headers, body


def _get_bounded(method: str, url: str, timeout_s: float, **kwargs: Any) -> Answer:
    import requests

    deadline = time.monotonic() + timeout_s
    # The caller stops waiting at ``timeout_s`` (``within``); the socket's own timeouts, a little
    # longer, only end the worker it leaves behind.
    socket_timeout_s = timeout_s + 1
    with requests.request(method, url, timeout=socket_timeout_s, stream=True, **kwargs) as response:
        body = bytearray()
        for chunk in response.iter_content(8192):
            body += chunk
            if len(body) > MAX_RESPONSE_BYTES or time.monotonic() > deadline:
                raise AuthUnavailable("the answer was too large or too slow")
        return response.status_code, response.headers, bytes(body)


def _call(what: str, timeout_s: float, call: Callable[[], Answer]) -> Answer:
    """``call`` within ``timeout_s``; what it may raise besides an answer is an ``AuthUnavailable``:
    requests' errors (urllib3's arrive wrapped in them), sockets', google-auth's (no credentials,
    a failed refresh)."""
    import google.auth.exceptions
    import requests

    try:
        return within(timeout_s, what, call)
    except (requests.RequestException, OSError) as exc:
        raise AuthUnavailable(f"{what} is unreachable ({type(exc).__name__})") from None
    except google.auth.exceptions.GoogleAuthError as exc:
        raise AuthUnavailable(f"{what} has no usable credentials ({type(exc).__name__})") from None


# -- certificates ---------------------------------------------------------------------------------


def parse_certificates(body: bytes) -> dict[str, Any]:
    """``{kid: RSA public key}`` from Google's ``{kid: PEM certificate}``; ValueError otherwise."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import rsa

    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ValueError("not JSON") from None
    if not isinstance(document, dict) or not document:
        raise ValueError("not a non-empty JSON object")
    keys = {}
    for kid, pem in document.items():
        if not isinstance(pem, str):
            raise ValueError(f"the certificate of {kid!r} is not a string")
        key = x509.load_pem_x509_certificate(pem.encode()).public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise ValueError(f"the certificate of {kid!r} holds no RSA key")
        keys[kid] = key
    return keys


class CertificateCache:
    """Google's signing keys, fetched once per max-age. Concurrent requests share one fetch, and
    those that waited on a fetch that failed fail with it instead of queueing their own."""

    def __init__(
        self,
        url: str,
        timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
        fetch: Callable[[], Answer] | None = None,
    ) -> None:
        self.url, self.timeout_s, self._clock = url, timeout_s, clock
        self._fetch = fetch or (lambda: _get_bounded("GET", url, timeout_s))
        self._lock = threading.Lock()
        self._keys: dict[str, Any] = {}
        self._expires_at = -math.inf
        self._last_attempt: tuple[float, AuthUnavailable | None] = (-math.inf, None)
        self.fetches = 0

    def keys(self) -> dict[str, Any]:
        arrived = self._clock()
        if arrived < self._expires_at:
            return self._keys
        if not self._lock.acquire(timeout=self.timeout_s + 1):
            raise AuthUnavailable("the signing certificates are being fetched; try again")
        try:
            ended_at, failure = self._last_attempt
            if self._clock() < self._expires_at:
                return self._keys
            if failure is not None and ended_at >= arrived:
                raise AuthUnavailable(str(failure))  # the fetch this request waited for failed
            try:
                keys, ttl = self._fetched()
            except AuthUnavailable as exc:
                self._last_attempt = (self._clock(), exc)
                log_event(logger, "auth.certificates_unavailable", str(exc), logging.ERROR, url=self.url)
                raise
            self._keys, self._expires_at = keys, arrived + ttl
            self._last_attempt = (self._clock(), None)
            return keys
        finally:
            self._lock.release()

    def _fetched(self) -> tuple[dict[str, Any], float]:
        self.fetches += 1
        status, headers, body = _call("the certificate endpoint", self.timeout_s, self._fetch)
        if status != 200:
            raise AuthUnavailable(f"the certificate endpoint answered {status}")
        try:
            keys = parse_certificates(body)
        except ValueError as exc:
            raise AuthUnavailable(f"the certificate endpoint answered no certificates ({exc})") from None
        return keys, max_age(headers.get("Cache-Control"))


def verify_signature(key: Any, signed: bytes, signature: bytes) -> None:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    try:
        key.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise InvalidToken("the signature does not match") from None


# -- user records ---------------------------------------------------------------------------------


class GoogleAccessToken:
    """The function's own credentials (Application Default Credentials), refreshed when due."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._credentials: Any = None

    def __call__(self) -> str:
        import google.auth
        import google.auth.transport.requests

        with self._lock:
            if self._credentials is None:
                self._credentials, _ = google.auth.default(scopes=[CLOUD_PLATFORM_SCOPE])
            if not self._credentials.valid:
                self._credentials.refresh(google.auth.transport.requests.Request())
            return str(self._credentials.token)


class IdentityToolkitUsers:
    """One user's record from Identity Toolkit's ``accounts:lookup`` (what firebase-admin's
    ``get_user`` calls), with the function's Google credentials at Google's URL and the Auth
    emulator's administrator token anywhere else."""

    def __init__(
        self, base_url: str, project_id: str, timeout_s: float, access_token: Callable[[], str] | None = None
    ) -> None:
        self.url = f"{base_url}/projects/{project_id}/accounts:lookup"
        self.timeout_s = timeout_s
        google = base_url == IDENTITY_TOOLKIT_URL
        self._access_token = access_token or (GoogleAccessToken() if google else lambda: EMULATOR_ADMIN_TOKEN)

    def __call__(self, uid: str) -> UserStatus:
        def lookup() -> Answer:
            headers = {"Authorization": f"Bearer {self._access_token()}"}
            return _get_bounded("POST", self.url, self.timeout_s, json={"localId": [uid]}, headers=headers)

        status, _, body = _call("the user lookup", self.timeout_s, lookup)
        if status != 200:
            raise AuthUnavailable(f"the user lookup answered {status}")
        try:
            return parse_user_lookup(body, uid)
        except ValueError as exc:
            raise AuthUnavailable(f"the user lookup answered no user record ({exc})") from None


def parse_user_lookup(body: bytes, uid: str) -> UserStatus:
    """``accounts:lookup``'s answer for ``uid``: no ``users`` means no such user."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ValueError("not JSON") from None
    if not isinstance(document, dict):
        raise ValueError("not a JSON object")
    users = document.get("users") or []
    if not isinstance(users, list) or not all(isinstance(user, dict) for user in users):
        raise ValueError("users is not a list of objects")
    mine = [user for user in users if user.get("localId") == uid]
    if not mine:
        return UserStatus(exists=False)
    disabled, valid_since = mine[0].get("disabled", False), mine[0].get("validSince")
    if not isinstance(disabled, bool):
        raise ValueError("disabled is not a boolean")
    if valid_since is not None and not (isinstance(valid_since, str) and valid_since.isdigit()):
        raise ValueError("validSince is not a number of seconds")
    return UserStatus(True, disabled, None if valid_since is None else int(valid_since))


class UserStatusCache:
    """A user's status, kept ``ttl_s`` from when it was asked for: the revocation bound. Failed
    lookups are not kept."""

    def __init__(
        self,
        lookup: Callable[[str], UserStatus],
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = USER_CACHE_ENTRIES,
    ) -> None:
        self._lookup, self.ttl_s, self._clock, self._max_entries = lookup, ttl_s, clock, max_entries
        self._entries: OrderedDict[str, tuple[float, UserStatus]] = OrderedDict()
        self._lock = threading.Lock()

    def status(self, uid: str) -> UserStatus:
        asked_at = self._clock()
        with self._lock:
            hit = self._entries.get(uid)
        if hit is not None and asked_at - hit[0] < self.ttl_s:
            return hit[1]
        status = self._lookup(uid)
        with self._lock:
            self._entries[uid] = (asked_at, status)
            self._entries.move_to_end(uid)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)
        return status


# -- the verifier ---------------------------------------------------------------------------------


class IdTokenVerifier:
    def __init__(
        self,
        settings: AuthSettings,
        certificates: CertificateCache | None,
        users: UserStatusCache | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings, self.certificates, self.users, self._clock = settings, certificates, users, clock

    def __call__(self, token: str) -> Mapping[str, Any]:
        """The token's claims (with ``uid``), or ``InvalidToken`` / ``AuthUnavailable``. What can
        be judged offline is judged first: a token that can never verify is a 401 even when
        Google cannot be reached."""
        refusal = self.settings.refusal()
        if refusal:
            raise AuthUnavailable(refusal)
        header, payload, signed, signature = split_token(token)
        if not self.settings.emulated:
            if header.get("alg") != "RS256":
                raise InvalidToken("not signed with RS256")
            if not isinstance(header.get("kid"), str):
                raise InvalidToken("the header names no key id")
        verified = check_claims(payload, self.settings.project_id, self._clock())
        if self.certificates is not None:
            key = self.certificates.keys().get(header["kid"])
            if key is None:
                raise InvalidToken("signed with a key that is not Google's current one")
            verify_signature(key, signed, signature)
        if self.users is not None:
            reason = user_refusal(self.users.status(verified.uid), verified)
            if reason:
                raise InvalidToken(reason)
        return {**payload, "uid": verified.uid}


def build_verifier(settings: AuthSettings) -> IdTokenVerifier:
    if settings.emulated:
        return IdTokenVerifier(settings, None, None)
    certificates = CertificateCache(settings.certs_url, settings.timeout_s)
    lookup = IdentityToolkitUsers(settings.users_url, settings.project_id, settings.timeout_s)
    return IdTokenVerifier(settings, certificates, UserStatusCache(lookup, settings.user_cache_s))


@dataclass(frozen=True, slots=True)
class RefusingVerifier:
    """What an instance that must not authenticate anyone verifies with: every token is a 503."""

    problem: str

    def __call__(self, token: str) -> Mapping[str, Any]:
        raise AuthUnavailable(self.problem)


_lock = threading.Lock()
_verifier: IdTokenVerifier | RefusingVerifier | None = None


def configured_verifier() -> IdTokenVerifier | RefusingVerifier:
    """This instance's verifier, built once from the environment. A bad ``EXEC_AUTH_*`` value or
    emulator mode in a deployed function is logged (``auth.misconfigured``) and refuses every
    request with a 503 naming it."""
    global _verifier
    with _lock:
        if _verifier is None:
            from functions.app import project_id

            try:
                settings = AuthSettings.from_env(os.environ, project_id())
                problem = settings.refusal()
            except ValueError as exc:
                problem = f"authentication is misconfigured: {exc}"
            if problem:
                log_event(logger, "auth.misconfigured", f"Refusing every request: {problem}", logging.ERROR)
                _verifier = RefusingVerifier(problem)
            else:
                _verifier = build_verifier(settings)
        return _verifier


def serving_refusal() -> str | None:
    """Why this instance refuses every request, or None."""
    verifier = configured_verifier()
    return verifier.problem if isinstance(verifier, RefusingVerifier) else None
