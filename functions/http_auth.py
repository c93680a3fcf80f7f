"""What every public HTTPS function shares: the caller's identity from a Firebase ID token, the
role it needs, a bounded JSON body, and refusals answered with a reason.

The functions are public once deployed (``on_request`` without ``invoker``), so they authenticate
in code: a Firebase ID token in ``Authorization: Bearer``, verified with firebase-admin. The tenant
and the user come from the token (custom claims ``tenant_id`` and ``role``), never from the request
alone. A refusal is a JSON body ``{"error", "reason", ...}``, logged as ``http.refused``; it is
raised as ``Refused`` from the checks, so a handler answers it before anything is written.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from flask import Request, Response

from backend.observability.logging import log_event

logger = logging.getLogger("msr.http")

MAX_BODY_BYTES = 16 * 1024
TRADING_ROLES = frozenset({"trader", "admin"})

TokenVerifier = Callable[[str], Mapping[str, Any]]


def json_response(status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(body), status=status, mimetype="application/json", headers=dict(headers or {})
    )


def refuse(
    status: int, error: str, reason: str, _headers: Mapping[str, str] | None = None, **details: Any
) -> Response:
    log_event(logger, "http.refused", reason, logging.WARNING, status=status, error=error, **details)
    return json_response(status, {"error": error, "reason": reason, **details}, _headers)


def method_not_allowed(request: Request, allowed: str) -> Response:
    reason = f"{request.method} is not allowed; use {allowed}"
    return refuse(405, "method_not_allowed", reason, _headers={"Allow": allowed})


class Refused(Exception):
    """A request refused by a check; ``response`` is the answer (nothing has been written)."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


def refused(status: int, error: str, reason: str, **details: Any) -> Refused:
    return Refused(refuse(status, error, reason, **details))


class InvalidToken(Exception):
    """The caller's token is not acceptable (a 401), as opposed to a failure on our side (a 500)."""


def verify_firebase_token(token: str) -> Mapping[str, Any]:
    """firebase-admin's verification (signature, expiry, audience, issuer). Under the Auth emulator
    (``FIREBASE_AUTH_EMULATOR_HOST``) firebase-admin accepts unsigned tokens and skips the expiry
    check; the expiry is checked here as well, so the emulator refuses what production refuses."""
    from firebase_admin import auth

    from functions.app import firebase_app

    app = firebase_app()  # a configuration error here is ours: it propagates (500)
    try:
        claims = auth.verify_id_token(token, app=app)
    except (auth.InvalidIdTokenError, auth.ExpiredIdTokenError, auth.RevokedIdTokenError, ValueError) as exc:
        raise InvalidToken(type(exc).__name__) from exc
    if float(claims.get("exp", 0)) <= time.time():
        raise InvalidToken("expired")
    return claims  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class Caller:
    uid: str
    tenant_id: str
    role: str


def caller(request: Request, verify: TokenVerifier, roles: frozenset[str], action: str) -> Caller:
    """The authenticated caller, if its role is one of ``roles`` (``action`` names what they allow,
    for the refusal: "execute orders")."""
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer ") or not header[7:].strip():
        raise refused(
            401, "unauthenticated", "an Authorization: Bearer <Firebase ID token> header is required"
        )
    try:
        claims = verify(header[7:].strip())
    except InvalidToken as exc:
        raise refused(401, "unauthenticated", f"the ID token was not accepted ({exc})") from exc
    uid, tenant_id, role = claims.get("uid") or claims.get("sub"), claims.get("tenant_id"), claims.get("role")
    if not uid:
        raise refused(401, "unauthenticated", "the ID token names no user")
    if not tenant_id:
        raise refused(403, "forbidden", "the token carries no tenant_id claim", uid=uid)
    if role not in roles:
        raise refused(403, "forbidden", f"role {role!r} may not {action}", uid=uid, tenant_id=tenant_id)
    return Caller(str(uid), str(tenant_id), str(role))


def json_object_body(request: Request, what: str) -> dict[str, Any]:
    """The body as a JSON object of at most ``MAX_BODY_BYTES``, read within a deadline, its numbers
    exact (``functions/wire.py``; ``what`` it should be, for the refusal: "an OrderIntent")."""
    from functions.wire import WireError, parse_json_object, read_body

    try:
        return parse_json_object(read_body(request, MAX_BODY_BYTES), what)
    except WireError as exc:
        raise refused(exc.status, exc.error, exc.reason) from None
