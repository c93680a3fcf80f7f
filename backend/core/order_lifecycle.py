"""The life of an order, as one pure state machine: ``apply(order, event) -> order | refusal``.

```
claimed ──submit sent──► submitted ──broker report──► accepted ──► partially_filled ──► filled
   │  ▲                     │    └──outcome lost──► unknown ──broker report──┘     │
   │  └──lease taken (re-send under the same client order id)──┘                    ▼
   └──released (never sent, or proven absent) ──► failed     canceled / expired / rejected
```

- **claimed**: the idempotency key, a daily-trade slot and the order's quantity are reserved; the
  holder of the lease is (about to be) calling the broker. A lease that expires hands the order to
  whoever delivers the intent next: it asks the broker by client order id before anything else.
- **unknown** means "evidence missing" (a timeout, a lost answer), never a failure: the order may
  exist at the broker. Only a broker report settles it, or its proven absence after the reconcile
  window (released: ``failed``; or re-sent under the *same* client order id).
- **Fills are derived from successive broker snapshots** (cumulative quantity and average price):
  each observed increase of the cumulative quantity is one fill, priced at the volume-weighted
  price of what filled between the two observations, so the cumulative notional is exactly the
  broker's ``filled_qty x filled_avg_price``. Fills merged between two observations are one fill
  at their VWAP. A fill's identity is the cumulative quantity it brings the order to, so the same
  fill observed twice is recorded once and the ledger row id derives from it.
- Evidence is not authority: a report with less filled than already known is stale and never undoes
  a fill; an overfill, a different broker order id, or any event on a terminal order is refused.

Every transition bumps ``version``: the stores apply a new order only over the version it was
computed from (compare-and-set), so two deliveries can never settle one order twice.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from backend.core.intents import Side, canonical_decimal
from backend.core.paths import trade_id_for
from backend.core.reasons import ReasonCode

_ZERO = Decimal(0)


class OrderState(StrEnum):
    CLAIMED = "claimed"
    SUBMITTED = "submitted"
    ACCEPTED = "accepted"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELED = "canceled"
    EXPIRED = "expired"
    REJECTED = "rejected"
    FAILED = "failed"
    UNKNOWN = "unknown"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL

    @property
    def at_broker(self) -> bool:
        """The broker holds this order (resting or done), i.e. it was placed."""
        return self in _AT_BROKER

    @property
    def resting(self) -> bool:
        return self in (OrderState.ACCEPTED, OrderState.PARTIALLY_FILLED)


_TERMINAL = frozenset(
    {OrderState.FILLED, OrderState.CANCELED, OrderState.EXPIRED, OrderState.REJECTED, OrderState.FAILED}
)
_AT_BROKER = frozenset(
    {
        OrderState.ACCEPTED,
        OrderState.PARTIALLY_FILLED,
        OrderState.FILLED,
        OrderState.CANCELED,
        OrderState.EXPIRED,
    }
)
# Broker statuses a report may carry, as the broker adapters map them.
REPORTABLE = frozenset(_AT_BROKER | {OrderState.REJECTED})


@dataclass(frozen=True, slots=True)
class Lease:
    holder: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class Fill:
    """One fill of an order, as derived from the broker's cumulative figures."""

    fill_id: str  # "<client order id>:<cumulative qty after it>"
    trade_id: str  # its ledger row
    qty: Decimal
    price: Decimal
    cum_qty: Decimal
    at: datetime


@dataclass(frozen=True, slots=True)
class OrderRecord:
    """An order's state, stored with the intent's decision document and changed only through
    ``apply``. ``slot`` is the daily-trade slot the order holds (None once released)."""

    client_order_id: str
    tenant_id: str
    idempotency_key: str
    side: Side
    qty: Decimal
    state: OrderState
    version: int
    claimed_at: datetime
    updated_at: datetime
    lease: Lease | None = None
    slot: str | None = None
    attempts: int = 0  # submissions sent
    broker: str | None = None
    broker_order_id: str | None = None
    filled_qty: Decimal = _ZERO
    avg_fill_price: Decimal | None = None
    fills: tuple[Fill, ...] = ()
    reason: str = ""
    reason_code: ReasonCode | None = None  # why a released or refused order ended

    @property
    def leaves_qty(self) -> Decimal:
        """What may still fill: nothing once the order is done."""
        return _ZERO if self.state.terminal else self.qty - self.filled_qty

    def lease_expired(self, now: datetime) -> bool:
        return self.lease is None or now >= self.lease.expires_at


def claimed_order(
    client_order_id: str,
    tenant_id: str,
    idempotency_key: str,
    side: Side,
    qty: Decimal,
    now: datetime,
    lease: Lease,
    slot: str | None = None,
) -> OrderRecord:
    return OrderRecord(
        client_order_id=client_order_id,
        tenant_id=tenant_id,
        idempotency_key=idempotency_key,
        side=side,
        qty=qty,
        state=OrderState.CLAIMED,
        version=1,
        claimed_at=now,
        updated_at=now,
        lease=lease,
        slot=slot,
    )


# -- events ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SubmitSent:
    at: datetime


@dataclass(frozen=True, slots=True)
class BrokerReport:
    """What the broker says about the order now: its status and cumulative fill."""

    at: datetime
    broker: str
    broker_order_id: str
    state: OrderState  # one of REPORTABLE
    filled_qty: Decimal
    avg_fill_price: Decimal | None
    message: str = ""


@dataclass(frozen=True, slots=True)
class SubmitUnknown:
    at: datetime
    reason: str


@dataclass(frozen=True, slots=True)
class SubmitRefused:
    """The broker definitely refused the order: nothing exists there."""

    at: datetime
    reason: str
    code: ReasonCode = ReasonCode.BROKER_REJECTED


@dataclass(frozen=True, slots=True)
class LeaseTaken:
    """Another worker takes an order whose lease expired, to settle or re-send it."""

    at: datetime
    lease: Lease


@dataclass(frozen=True, slots=True)
class Released:
    """The order was never sent, or the broker has proven it absent: nothing exists there."""

    at: datetime
    reason: str
    code: ReasonCode = ReasonCode.NEVER_PLACED


OrderEvent = SubmitSent | BrokerReport | SubmitUnknown | SubmitRefused | LeaseTaken | Released


@dataclass(frozen=True, slots=True)
class Refusal:
    """An event that must not be applied to this order, and why."""

    reason: str


_UNSETTLED = (OrderState.CLAIMED, OrderState.SUBMITTED, OrderState.UNKNOWN)
_ALLOWED: dict[type, tuple[OrderState, ...]] = {
    SubmitSent: (OrderState.CLAIMED,),
    SubmitUnknown: (OrderState.SUBMITTED,),
    SubmitRefused: (OrderState.CLAIMED, OrderState.SUBMITTED),
    LeaseTaken: _UNSETTLED,
    Released: _UNSETTLED,
    BrokerReport: (*_UNSETTLED, OrderState.ACCEPTED, OrderState.PARTIALLY_FILLED),
}


def fill_trade_id(tenant_id: str, idempotency_key: str, cum_qty: Decimal, first: bool) -> str:
    """The ledger id of a fill. The first fill keeps the id an order's single row always had."""
    if first:
        return trade_id_for(tenant_id, idempotency_key)
    return trade_id_for(tenant_id, f"{idempotency_key}\x1ffill\x1f{canonical_decimal(cum_qty)}")


def apply(order: OrderRecord, event: OrderEvent) -> OrderRecord | Refusal:
    """The order after ``event``, or why the event is refused (the order is then unchanged)."""
    if order.state not in _ALLOWED[type(event)]:
        if isinstance(event, BrokerReport) and order.state.terminal and _same_as_stored(order, event):
            return order  # a repeat of what settled it: nothing new
        return Refusal(f"{type(event).__name__} cannot apply to a {order.state.value} order")
    if isinstance(event, BrokerReport):
        return _apply_report(order, event)
    bumped = {"version": order.version + 1, "updated_at": event.at}
    if isinstance(event, SubmitSent):
        return replace(order, state=OrderState.SUBMITTED, attempts=order.attempts + 1, **bumped)
    if isinstance(event, SubmitUnknown):
        return replace(order, state=OrderState.UNKNOWN, reason=event.reason, **bumped)
    if isinstance(event, SubmitRefused):
        ended = {"reason": event.reason, "reason_code": event.code, "lease": None, "slot": None}
        return replace(order, state=OrderState.REJECTED, **ended, **bumped)
    if isinstance(event, LeaseTaken):
        return replace(order, state=OrderState.CLAIMED, lease=event.lease, **bumped)
    ended = {"reason": event.reason, "reason_code": event.code, "lease": None, "slot": None}
    return replace(order, state=OrderState.FAILED, **ended, **bumped)


def _same_as_stored(order: OrderRecord, report: BrokerReport) -> bool:
    return report.state is order.state and report.filled_qty == order.filled_qty


def _report_problem(order: OrderRecord, report: BrokerReport) -> str | None:
    if report.state not in REPORTABLE:
        return f"a broker cannot report {report.state.value}"
    if order.broker_order_id is not None and report.broker_order_id != order.broker_order_id:
        return f"broker order {report.broker_order_id} is not this order's {order.broker_order_id}"
    if report.filled_qty < 0 or report.filled_qty > order.qty:
        return f"filled {report.filled_qty} is outside 0..{order.qty} (an overfill or a bad report)"
    if report.filled_qty < order.filled_qty:
        return f"stale report: filled {report.filled_qty} < {order.filled_qty} already recorded"
    if report.filled_qty > 0 and (report.avg_fill_price is None or report.avg_fill_price <= 0):
        return "a fill without a positive average price"
    if report.state is OrderState.FILLED and report.filled_qty != order.qty:
        return f"filled status with {report.filled_qty} of {order.qty} filled"
    if report.state is OrderState.REJECTED and report.filled_qty > 0:
        return "a rejected order cannot have fills"
    if order.state is OrderState.PARTIALLY_FILLED and report.state is OrderState.ACCEPTED:
        return "accepted after a partial fill"
    return None


def _reported_state(report: BrokerReport) -> OrderState:
    """An 'accepted' snapshot that already shows a fill is a partial fill."""
    if report.state is OrderState.ACCEPTED and report.filled_qty > 0:
        return OrderState.PARTIALLY_FILLED
    return report.state


def _apply_report(order: OrderRecord, report: BrokerReport) -> OrderRecord | Refusal:
    problem = _report_problem(order, report)
    if problem is not None:
        return Refusal(problem)
    state = _reported_state(report)
    fills = order.fills
    if report.filled_qty > order.filled_qty:
        fills = (*fills, _new_fill(order, report))
    if state is order.state and fills == order.fills and order.broker_order_id is not None:
        return order  # nothing new
    return replace(
        order,
        state=state,
        version=order.version + 1,
        updated_at=report.at,
        lease=None,  # the broker has answered: nobody is sending any more
        slot=None if state is OrderState.REJECTED else order.slot,
        broker=report.broker,
        broker_order_id=report.broker_order_id,
        filled_qty=report.filled_qty,
        avg_fill_price=report.avg_fill_price if report.filled_qty > 0 else order.avg_fill_price,
        fills=fills,
        reason=report.message or order.reason,
    )


def _new_fill(order: OrderRecord, report: BrokerReport) -> Fill:
    assert report.avg_fill_price is not None
    qty = report.filled_qty - order.filled_qty
    before = order.filled_qty * (order.avg_fill_price or _ZERO)
    price = (report.filled_qty * report.avg_fill_price - before) / qty
    return Fill(
        fill_id=f"{order.client_order_id}:{canonical_decimal(report.filled_qty)}",
        trade_id=fill_trade_id(order.tenant_id, order.idempotency_key, report.filled_qty, not order.fills),
        qty=qty,
        price=price,
        cum_qty=report.filled_qty,
        at=report.at,
    )


# -- what a transition changes --------------------------------------------------------------------


def reserved_qty(order: OrderRecord) -> Decimal:
    """The quantity this order holds against its position's in-flight counter."""
    return order.leaves_qty


@dataclass(frozen=True, slots=True)
class TransitionEffects:
    """What the stores must write, besides the order itself, when ``before`` becomes ``after``."""

    new_fills: tuple[Fill, ...]
    release_in_flight: Decimal  # leave the position's in-flight counter (of the order's side)
    release_slot: str | None  # the daily-trade slot to give back (the order never was at the broker)


def transition_effects(before: OrderRecord, after: OrderRecord) -> TransitionEffects:
    if after.fills[: len(before.fills)] != before.fills:
        raise ValueError(f"order {after.client_order_id}: fills can only be appended")
    return TransitionEffects(
        new_fills=after.fills[len(before.fills) :],
        release_in_flight=reserved_qty(before) - reserved_qty(after),
        release_slot=before.slot if before.slot is not None and after.slot is None else None,
    )
