"""``POST /execute``: one OrderIntent in, its execution result out, for an authenticated caller.

The caller is authenticated as ``functions.http_auth`` describes (a Firebase ID token; the tenant
and the user from its claims): a body naming another tenant or user is refused. Refusals are
answered with a reason and write nothing:

401 no or bad token · 403 no tenant, a role that may not trade, another tenant or user ·
405 not POST · 413 body over 16 KiB · 400 not a JSON object · 422 invalid intent (field errors).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Request, Response

from functions.http_auth import (
    TRADING_ROLES,
    Refused,
    TokenVerifier,
    caller,
    json_object_body,
    method_not_allowed,
    refused,
)


def _intent(body: dict[str, Any], uid: str, tenant_id: str, header_key: str | None) -> Any:
    """The OrderIntent, its tenant and user taken from the token."""
    from pydantic import ValidationError

    from backend.core.intents import OrderIntent

    metadata = body.get("metadata")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise refused(422, "invalid_intent", "metadata must be an object, or absent")
    for claim, value in (("tenant_id", tenant_id), ("uid", uid)):
        if metadata.get(claim) not in (None, value):
            raise refused(
                403, "forbidden", f"the body's {claim} is not the caller's", uid=uid, tenant_id=tenant_id
            )
    if header_key and body.get("idempotency_key") not in (None, header_key):
        raise refused(422, "invalid_intent", "Idempotency-Key header and body idempotency_key differ")
    body = {**body, "metadata": {**metadata, "tenant_id": tenant_id, "uid": uid}}
    if header_key:
        body["idempotency_key"] = header_key
    try:
        return OrderIntent.model_validate(body)
    except ValidationError as exc:
        errors = [{"field": ".".join(map(str, e["loc"])) or "body", "error": e["msg"]} for e in exc.errors()]
        raise refused(422, "invalid_intent", f"{len(errors)} invalid field(s)", errors=errors) from None


def handle_execute(request: Request, execute: Callable[[Any], Any], verify: TokenVerifier) -> Response:
    if request.method != "POST":
        return method_not_allowed(request, "POST")
    try:
        who = caller(request, verify, TRADING_ROLES, "execute orders")
        body = json_object_body(request, "an OrderIntent")
        intent = _intent(body, who.uid, who.tenant_id, request.headers.get("Idempotency-Key"))
    except Refused as refusal:
        return refusal.response

    from backend.adapters.documents import RESULTS, to_json

    result = execute(intent)
    return Response(to_json(RESULTS, result), status=200, mimetype="application/json")
