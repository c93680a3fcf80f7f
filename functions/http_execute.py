"""``POST /execute``: one OrderIntent in, its execution result out, for an authenticated caller.

The caller is authenticated as ``functions.http_auth`` describes (a Firebase ID token; the tenant
and the user from its claims): a body naming another tenant or user is refused. Refusals are
answered with a reason and write nothing:

401 no or bad token · 403 no tenant, a role that may not trade, another tenant or user ·
405 not POST · 503 with Retry-After: the store stayed contended, nothing was written ·
409 the idempotency key was used for a different intent (the fields that differ) ·
403 ``broker_account_refused``: the body names a broker account that is not the tenant's (the same
answer whether it is another tenant's or none at all), or the account's keys cannot be had ·
413 body over 16 KiB · 408 body not arrived in time · 400 not a JSON object · 422 unacceptable
body or invalid intent (field errors).

The caller's idempotency key (``Idempotency-Key`` header or body; the content digest when neither)
lives in the ``api:`` namespace: a caller can never pick a key of the strategy runner's (``run:``).
The intent is executed as untrusted: its figures can only tighten the checks.
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
    refuse,
    refused,
)


def _intent(body: dict[str, Any], uid: str, tenant_id: str, header_key: str | None) -> Any:
    """The OrderIntent, its tenant and user taken from the token."""
    from pydantic import ValidationError

    from backend.core.intents import KeySource, OrderIntent

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
        intent = OrderIntent.model_validate(body)
    except ValidationError as exc:
        errors = [{"field": ".".join(map(str, e["loc"])) or "body", "error": e["msg"]} for e in exc.errors()]
        raise refused(422, "invalid_intent", f"{len(errors)} invalid field(s)", errors=errors) from None
    return intent.model_copy(update={"idempotency_key": KeySource.API.key(intent.resolved_idempotency_key())})


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
    from backend.core.broker_accounts import BrokerAccountRefused
    from backend.core.intents import IdempotencyConflict
    from backend.execution.ports import StoreBusy

    try:
        result = execute(intent)
    except BrokerAccountRefused as refusal:
        return refused(
            403,
            "broker_account_refused",
            refusal.reason,
            reason_code=refusal.code.value,
            uid=who.uid,
            tenant_id=who.tenant_id,
        ).response
    except IdempotencyConflict as conflict:
        return refused(
            409, "idempotency_conflict", str(conflict), idempotency_key=conflict.key, fields=conflict.fields
        ).response
    except StoreBusy as busy:
        return refuse(503, "busy", f"{busy}: send the same request again", _headers={"Retry-After": "1"})
    return Response(to_json(RESULTS, result), status=200, mimetype="application/json")
