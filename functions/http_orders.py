"""``orders``: one order of the caller's tenant, read or canceled, for an authenticated caller.

    GET  /?idempotency_key=K   or   GET /?client_order_id=C          trader, admin, viewer
    POST /cancel  {"idempotency_key": K}  or  {"client_order_id": C}   trader, admin

Deployed, the function's URL ends in ``/orders`` (``GET /orders?...``, ``POST /orders/cancel``).
Whether the path it sees keeps that name depends on the URL it was reached by (Cloud Run's own,
``cloudfunctions.net``, a Hosting rewrite), so both spellings of each route are taken.

The caller is authenticated as ``functions.http_auth`` describes and the tenant is the token's: an
order of another tenant is not found, the same 404 as no order at all, so an answer never says
whether someone else has it. The document answered is ``order_queries.order_document`` (and what
the cancel did). Refusals are answered with a reason and write nothing:

401 no or bad token · 403 no tenant, a role that may not read, a viewer canceling · 404 no such
order for the tenant, an unknown route · 405 a method the route does not take (with ``Allow``) ·
413 body over 16 KiB · 400 not exactly one identifier, an unknown or repeated parameter, a body
that is not a JSON object.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from flask import Request, Response
from pydantic import ValidationError

from backend.execution.order_queries import OrderNotFound, OrderRef
from functions.http_auth import (
    TRADING_ROLES,
    Refused,
    TokenVerifier,
    caller,
    json_object_body,
    json_response,
    method_not_allowed,
    refuse,
    refused,
)

FUNCTION_NAME = "orders"  # as main.py names it
READING_ROLES = TRADING_ROLES | {"viewer"}
CANCEL_BODY = '{"idempotency_key": K} or {"client_order_id": C}'

OrderAction = Callable[[str, OrderRef], Mapping[str, Any]]


def handle_orders(
    request: Request, show: OrderAction, cancel: OrderAction, verify: TokenVerifier
) -> Response:
    """``show`` and ``cancel`` take (tenant id, order name) and answer the document, or raise
    ``OrderNotFound``."""
    route = _route(request.path)
    if route == "":
        if request.method != "GET":
            return method_not_allowed(request, "GET")
        return _answer(request, verify, READING_ROLES, "read orders", _query_ref, show)
    if route == "/cancel":
        if request.method != "POST":
            return method_not_allowed(request, "POST")
        return _answer(request, verify, TRADING_ROLES, "cancel orders", _body_ref, cancel)
    return refuse(404, "not_found", f"no route {request.path}: GET / or POST /cancel")


def _route(path: str) -> str:
    """The path without a trailing slash, and without the function's own name in front."""
    route = path.rstrip("/")
    if route == f"/{FUNCTION_NAME}" or route.startswith(f"/{FUNCTION_NAME}/"):
        route = route[len(FUNCTION_NAME) + 1 :]
    return route


def _answer(
    request: Request,
    verify: TokenVerifier,
    roles: frozenset[str],
    action: str,
    parse: Callable[[Request], OrderRef],
    act: OrderAction,
) -> Response:
    try:
        who = caller(request, verify, roles, action)
        ref = parse(request)
    except Refused as refusal:
        return refusal.response
    try:
        document = act(who.tenant_id, ref)
    except OrderNotFound as exc:
        return refuse(404, "not_found", str(exc), tenant_id=who.tenant_id)
    return json_response(200, document)


def _query_ref(request: Request) -> OrderRef:
    repeated = sorted(name for name in request.args if len(request.args.getlist(name)) > 1)
    if repeated:
        raise refused(400, "bad_request", f"{repeated[0]} is given more than once")
    return _ref(request.args.to_dict(), "query parameters: ?idempotency_key=K or ?client_order_id=C")


def _body_ref(request: Request) -> OrderRef:
    return _ref(json_object_body(request, CANCEL_BODY), f"a body {CANCEL_BODY}")


def _ref(fields: dict[str, Any], expected: str) -> OrderRef:
    try:
        return OrderRef.model_validate(fields)
    except ValidationError as exc:
        errors = [
            {"field": ".".join(map(str, e["loc"])), "error": e["msg"].removeprefix("Value error, ")}
            for e in exc.errors()
        ]
        reason = "; ".join(f"{e['field']}: {e['error']}" if e["field"] else e["error"] for e in errors)
        raise refused(400, "bad_request", f"{reason} (expected {expected})", errors=errors) from None
