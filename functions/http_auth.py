"""What every public HTTPS function shares: the caller's identity from a Firebase ID token, the
role it needs, a bounded JSON body, and refusals answered with a reason.

The functions are public once deployed (``on_request`` without ``invoker``), so they authenticate
in code: a Firebase ID token in ``Authorization: Bearer``, verified by ``functions.id_tokens``
(bounded certificate fetch, user record for revocation, emulator mode refused when deployed). The
tenant and the user come from the token (custom claims ``tenant_id`` and ``role``, strings), never
from the request alone. A refusal is a JSON body ``{"error", "reason", ...}``, logged as
``http.refused``; it is raised as ``Refused`` from the checks, so a handler answers it before
anything is written.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from flask import Request, Response

from backend.observability.logging import log_event
from functions.id_tokens import AuthUnavailable, InvalidToken

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


def verify_firebase_token(token: str) -> Mapping[str, Any]:
    """The token's claims (``functions.id_tokens``): ``InvalidToken`` is a 401, ``AuthUnavailable``
    (a check that could not be made) a 503."""
    from functions.id_tokens import configured_verifier

    return configured_verifier()(token)


def serving_refusal() -> Response | None:
    """A 503 for every request when this instance must not authenticate anyone (emulator token mode
    in a deployed function, a bad ``EXEC_AUTH_*`` value); None when it may serve."""
    from functions.id_tokens import serving_refusal as problem

    reason = problem()
    return None if reason is None else refuse(503, "auth_unavailable", reason, _headers={"Retry-After": "60"})


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
    except AuthUnavailable as exc:
        reason = f"the ID token could not be checked now ({exc})"
        raise Refused(refuse(503, "auth_unavailable", reason, _headers={"Retry-After": "5"})) from exc
    uid, tenant_id, role = claims.get("uid") or claims.get("sub"), claims.get("tenant_id"), claims.get("role")
    if not uid or not isinstance(uid, str):
        raise refused(401, "unauthenticated", "the ID token names no user")
    if not tenant_id:
        raise refused(403, "forbidden", "the token carries no tenant_id claim", uid=uid)
    if not isinstance(tenant_id, str):
        raise refused(403, "forbidden", "the token's tenant_id claim is not a string", uid=uid)
    if role is not None and not isinstance(role, str):  # a list would not even hash
        reason = f"the token's role claim is not a string, so it may not {action}"
        raise refused(403, "forbidden", reason, uid=uid, tenant_id=tenant_id)
    if role not in roles:
        raise refused(403, "forbidden", f"role {role!r} may not {action}", uid=uid, tenant_id=tenant_id)
    return Caller(str(uid), str(tenant_id), str(role))


def json_object_body(request: Request, what: str) -> dict[str, Any]:
    """The body as a JSON object of at most ``MAX_BODY_BYTES`` (``what`` it should be, for the
    refusal: "an OrderIntent")."""
    declared = request.content_length or 0
    raw = b"" if declared > MAX_BODY_BYTES else request.stream.read(MAX_BODY_BYTES + 1)
    if declared > MAX_BODY_BYTES or len(raw) > MAX_BODY_BYTES:
        raise refused(413, "payload_too_large", f"the body is over {MAX_BODY_BYTES} bytes")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise refused(400, "bad_request", "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise refused(400, "bad_request", f"the body must be a JSON object ({what})")
    return body
