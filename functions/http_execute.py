"""``POST /execute``: one OrderIntent in, its execution result out, for an authenticated caller.

The function is public once deployed (an ``on_request`` function without ``invoker``), so it
authenticates in code: a Firebase ID token in ``Authorization: Bearer``, verified with
firebase-admin. The tenant and the user come from the token (custom claims ``tenant_id`` and
``role``), never from the body alone: a body naming another tenant or user is refused. Refusals
are answered with a reason and write nothing:

401 no or bad token · 403 no tenant, a role that may not trade, another tenant or user ·
405 not POST · 413 body over 16 KiB · 400 not a JSON object · 422 invalid intent (field errors).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from flask import Request, Response

from backend.observability.logging import log_event

logger = logging.getLogger("msr.http")

MAX_BODY_BYTES = 16 * 1024
TRADING_ROLES = frozenset({"trader", "admin"})

TokenVerifier = Callable[[str], Mapping[str, Any]]


def _json(status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(body), status=status, mimetype="application/json", headers=dict(headers or {})
    )


def _refuse(
    status: int, error: str, reason: str, _headers: Mapping[str, str] | None = None, **details: Any
) -> Response:
    log_event(logger, "http.refused", reason, logging.WARNING, status=status, error=error, **details)
    return _json(status, {"error": error, "reason": reason, **details}, _headers)


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


class _Refused(Exception):
    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


def _refused(status: int, error: str, reason: str, **details: Any) -> _Refused:
    return _Refused(_refuse(status, error, reason, **details))


def _caller(request: Request, verify: TokenVerifier) -> tuple[str, str]:
    """(uid, tenant_id) of a caller allowed to trade."""
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer ") or not header[7:].strip():
        raise _refused(
            401, "unauthenticated", "an Authorization: Bearer <Firebase ID token> header is required"
        )
    try:
        claims = verify(header[7:].strip())
    except InvalidToken as exc:
        raise _refused(401, "unauthenticated", f"the ID token was not accepted ({exc})") from exc
    uid, tenant_id, role = claims.get("uid") or claims.get("sub"), claims.get("tenant_id"), claims.get("role")
    if not uid:
        raise _refused(401, "unauthenticated", "the ID token names no user")
    if not tenant_id:
        raise _refused(403, "forbidden", "the token carries no tenant_id claim", uid=uid)
    if role not in TRADING_ROLES:
        raise _refused(
            403, "forbidden", f"role {role!r} may not execute orders", uid=uid, tenant_id=tenant_id
        )
    return str(uid), str(tenant_id)


def _body(request: Request) -> dict[str, Any]:
    raw = b"" if (request.content_length or 0) > MAX_BODY_BYTES else request.stream.read(MAX_BODY_BYTES + 1)
    if (request.content_length or 0) > MAX_BODY_BYTES or len(raw) > MAX_BODY_BYTES:
        raise _refused(413, "payload_too_large", f"the body is over {MAX_BODY_BYTES} bytes")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _refused(400, "bad_request", "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise _refused(400, "bad_request", "the body must be a JSON object (an OrderIntent)")
    return body


def _intent(body: dict[str, Any], uid: str, tenant_id: str, header_key: str | None) -> Any:
    """The OrderIntent, its tenant and user taken from the token."""
    from pydantic import ValidationError

    from backend.core.intents import OrderIntent

    metadata = body.get("metadata")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise _refused(422, "invalid_intent", "metadata must be an object, or absent")
    for claim, value in (("tenant_id", tenant_id), ("uid", uid)):
        if metadata.get(claim) not in (None, value):
            raise _refused(
                403, "forbidden", f"the body's {claim} is not the caller's", uid=uid, tenant_id=tenant_id
            )
    if header_key and body.get("idempotency_key") not in (None, header_key):
        raise _refused(422, "invalid_intent", "Idempotency-Key header and body idempotency_key differ")
    body = {**body, "metadata": {**metadata, "tenant_id": tenant_id, "uid": uid}}
    if header_key:
        body["idempotency_key"] = header_key
    try:
        return OrderIntent.model_validate(body)
    except ValidationError as exc:
        errors = [{"field": ".".join(map(str, e["loc"])) or "body", "error": e["msg"]} for e in exc.errors()]
        raise _refused(422, "invalid_intent", f"{len(errors)} invalid field(s)", errors=errors) from None


def handle_execute(request: Request, execute: Callable[[Any], Any], verify: TokenVerifier) -> Response:
    if request.method != "POST":
        reason = f"{request.method} is not allowed; use POST"
        return _refuse(405, "method_not_allowed", reason, _headers={"Allow": "POST"})
    try:
        uid, tenant_id = _caller(request, verify)
        intent = _intent(_body(request), uid, tenant_id, request.headers.get("Idempotency-Key"))
    except _Refused as refusal:
        return refusal.response

    from backend.adapters.documents import RESULTS, to_json

    result = execute(intent)
    return Response(to_json(RESULTS, result), status=200, mimetype="application/json")
