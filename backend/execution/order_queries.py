"""One order of one tenant, read or canceled: what the ``orders`` HTTPS function and ``msr orders``
share, so the HTTP answer and the command's ``--json`` are one document, built in one place.

An order is named by its idempotency key or by its client order id, always within one tenant:
another tenant's order is not found, the same answer as no order at all. An order that is not final
is brought up to date from the broker before it is answered (``ExecutionEngine.settle``: a lookup by
client order id, bounded by the adapter's timeouts and retries), so the answer is what the broker
knows now; fills found on the way are recorded as any settlement records them.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, StringConstraints, model_validator

from backend.adapters.documents import LEDGER_ENTRIES, ORDERS, RESULTS, to_document
from backend.core.intents import KeySource
from backend.core.order_lifecycle import OrderRecord
from backend.core.reasons import ReasonCode
from backend.execution.ports import ExecutionStore, StoredExecution
from backend.observability.logging import log_event

if TYPE_CHECKING:
    from backend.execution.engine import ExecutionEngine

logger = logging.getLogger("msr.orders")

# As an intent's own idempotency key (stripped, at most 200 characters) and Alpaca's limit on a
# client order id: a longer name cannot be stored, so it is refused rather than looked up.
IdempotencyKey = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
ClientOrderId = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=128)]

# What a client may see of an order: not the lease holder (a worker's host and process) or the slot.
_ORDER_FIELDS = (
    "client_order_id",
    "side",
    "qty",
    "state",
    "filled_qty",
    "avg_fill_price",
    "broker",
    "broker_order_id",
    "attempts",
    "claimed_at",
    "updated_at",
    "reason",
    "reason_code",
)

NOT_RECORDED_REASON = "claimed before orders were recorded: deliver its intent again to settle it"


class OrderRef(BaseModel):
    """An order named by exactly one of its idempotency key (the caller's name for the intent) or
    its client order id (the broker's name for the order)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    idempotency_key: IdempotencyKey | None = None
    client_order_id: ClientOrderId | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> OrderRef:
        if (self.idempotency_key is None) == (self.client_order_id is None):
            raise ValueError("name the order by exactly one of idempotency_key or client_order_id")
        return self

    @property
    def label(self) -> str:
        if self.idempotency_key is not None:
            return f"idempotency key {self.idempotency_key!r}"
        return f"client order id {self.client_order_id!r}"


class OrderNotFound(LookupError):
    """The tenant has nothing under this name (whether another tenant has is never said)."""


def find_execution(store: ExecutionStore, tenant_id: str, ref: OrderRef) -> StoredExecution:
    """By client order id, or by idempotency key: the caller's key as the HTTP API stored it
    (``api:K``), else the key exactly as given (a runner's ``run:...`` key, a key from before
    namespaces, or a full ``api:...`` key). Within the tenant either way."""
    if ref.idempotency_key is not None:
        key = ref.idempotency_key
        stored = store.get_execution(tenant_id, KeySource.API.key(key)) or store.get_execution(tenant_id, key)
    else:
        assert ref.client_order_id is not None
        stored = store.find_order(tenant_id, ref.client_order_id)
    if stored is None:
        raise OrderNotFound(f"tenant {tenant_id!r} has no execution with {ref.label}")
    return stored


def show_order(engine: ExecutionEngine, tenant_id: str, ref: OrderRef) -> dict[str, Any]:
    """The order as the broker knows it now (settled first when it is not final), its fills, their
    ledger rows and the decision. ``OrderNotFound`` when the tenant has no such order."""
    stored = find_execution(engine.store, tenant_id, ref)
    if stored.result is not None and not stored.settled:
        engine.settle(stored)
        stored = _reread(engine.store, stored)
    return order_document(engine.store, stored, ref)


def cancel_order(engine: ExecutionEngine, tenant_id: str, ref: OrderRef) -> dict[str, Any]:
    """Ask the broker to cancel a resting order; the answer is the order as the broker reported it
    next (``requested`` False, with the reason, when there was nothing to cancel)."""
    stored = find_execution(engine.store, tenant_id, ref)
    if stored.result is None:  # the engine settles such a claim only from its intent, never here
        requested, code = False, ReasonCode.ORDER_NOT_CANCELABLE
        reason = f"Nothing to cancel: {NOT_RECORDED_REASON}"
    else:
        outcome = engine.cancel(stored)
        requested, code, reason = outcome.requested, outcome.reason_code, outcome.reason
        stored = _reread(engine.store, stored)
    answer = {"requested": requested, "reason_code": code.value, "reason": reason}
    return answer | order_document(engine.store, stored, ref)


def _reread(store: ExecutionStore, stored: StoredExecution) -> StoredExecution:
    assert stored.result is not None
    return store.get_execution(stored.result.tenant_id, stored.result.idempotency_key) or stored


def order_document(store: ExecutionStore, stored: StoredExecution, ref: OrderRef) -> dict[str, Any]:
    """``{idempotency_key, client_order_id, order, result, ledger_rows}`` in the stores' document
    shape (exact decimal strings, enum values, datetimes that JSON encoders write as RFC 3339).
    ``order`` is None for an intent that never reached the claim (downgraded, rejected, dry run):
    its decision is the ``result``."""
    result, order = stored.result, stored.order
    key = result.idempotency_key if result else order.idempotency_key if order else ref.idempotency_key
    return {
        "idempotency_key": key,
        "client_order_id": order.client_order_id if order else None,
        "order": _order_view(order) if order else None,
        "result": to_document(RESULTS, result) if result else None,
        "ledger_rows": _ledger_rows(store, order) if order else [],
    }


def _ledger_rows(store: ExecutionStore, order: OrderRecord) -> list[dict[str, Any]]:
    """Each fill's ledger entry. A fill and its row are written in one commit: a row missing is a
    store fault, logged (and visible as fewer rows than fills), not hidden."""
    rows = []
    for fill in order.fills:
        entry = store.get_ledger_trade(order.tenant_id, fill.trade_id)
        if entry is None:
            log_event(
                logger,
                "orders.ledger_row_missing",
                f"Order {order.client_order_id}: no ledger row {fill.trade_id} for fill {fill.fill_id}",
                logging.ERROR,
                tenant_id=order.tenant_id,
                trade_id=fill.trade_id,
            )
            continue
        rows.append(to_document(LEDGER_ENTRIES, entry))
    return rows


def _order_view(order: OrderRecord) -> dict[str, Any]:
    document = to_document(ORDERS, order)
    return {
        **{name: document[name] for name in _ORDER_FIELDS},
        "leaves_qty": format(order.leaves_qty, "f"),
        "lease_expires_at": order.lease.expires_at if order.lease else None,
        "fills": document["fills"],
    }
