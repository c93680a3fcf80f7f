"""What the engine sends to a broker, what a broker answers, and what the engine returns."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from backend.core.instruments import AssetClass
from backend.core.intents import OrderIntent, Side
from backend.core.order_lifecycle import BrokerReport, OrderRecord, OrderState
from backend.core.reasons import ReasonCode
from backend.core.risk import RiskDecision
from backend.core.routing import RoutingDecision


class OrderType(StrEnum):
    MARKET = "market"
    LIMIT = "limit"


@dataclass(frozen=True, slots=True)
class OrderRequest:
    client_order_id: str
    broker_account_id: str
    symbol: str
    asset_class: AssetClass
    side: Side
    qty: Decimal
    order_type: OrderType = OrderType.MARKET
    limit_price: Decimal | None = None


class BrokerOrderStatus(StrEnum):
    ACCEPTED = "accepted"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELED = "canceled"
    EXPIRED = "expired"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class BrokerOrder:
    """The broker's confirmation, as the ledger keeps it."""

    broker: str
    order_id: str
    client_order_id: str
    status: BrokerOrderStatus
    symbol: str
    side: Side
    qty: Decimal
    filled_qty: Decimal
    avg_fill_price: Decimal | None
    submitted_at: datetime
    filled_at: datetime | None = None
    message: str = ""

    def report(self, observed_at: datetime) -> BrokerReport:
        """This snapshot as an event of the order's life. A fill is dated by the broker's own
        fill time when it gives one."""
        return BrokerReport(
            at=(self.filled_at or observed_at) if self.filled_qty > 0 else observed_at,
            broker=self.broker,
            broker_order_id=self.order_id,
            state=OrderState(self.status.value),
            filled_qty=self.filled_qty,
            avg_fill_price=self.avg_fill_price,
            message=self.message,
        )


class ExecutionStatus(StrEnum):
    PLACED = "placed"
    DOWNGRADED = "downgraded"  # the cost gate turned the signal into WAIT
    REJECTED = "rejected"  # unusable quote or a risk refusal: nothing reached the broker
    DRY_RUN = "dry_run"  # would have been placed; EXEC_DRY_RUN kept it from the broker
    FAILED = "failed"  # the broker definitely refused or errored: no order exists
    UNKNOWN = "unknown"  # the broker's answer was lost: reconcile by client order id
    PENDING = "pending"  # another worker holds this idempotency key right now


@dataclass(frozen=True, slots=True)
class ExecutionResult:
    status: ExecutionStatus
    reason_code: ReasonCode
    reason: str
    idempotency_key: str
    tenant_id: str
    uid: str
    intent: OrderIntent
    decided_at: datetime
    routing: RoutingDecision | None = None
    risk: RiskDecision | None = None
    broker_order: BrokerOrder | None = None
    trade_id: str | None = None
    ledger_path: str | None = None
    replayed: bool = False  # True when this is the stored answer to an earlier identical intent
    estimated_fees: Decimal | None = None  # at the quote's mid, in the quote currency
    # The order's own state (the seed's ``status`` says what happened to the intent), and the ledger
    # rows of its fills so far.
    order_state: OrderState | None = None
    trade_ids: tuple[str, ...] = ()

    @property
    def broker_order_id(self) -> str | None:
        return self.broker_order.order_id if self.broker_order else None

    @property
    def client_order_id(self) -> str | None:
        return self.broker_order.client_order_id if self.broker_order else None


@dataclass(frozen=True, slots=True)
class CancelOutcome:
    """What asking to cancel an order did. ``requested``: the broker took the request (the order
    may still fill before the cancel lands: ``result`` is the order as the broker reported it next)."""

    requested: bool
    reason_code: ReasonCode
    reason: str
    result: ExecutionResult


IN_FLIGHT_REASON = "Another worker holds this idempotency key and is calling the broker"


def order_outcome(order: OrderRecord, symbol: str, now: datetime) -> tuple[ExecutionStatus, ReasonCode, str]:
    """The seed's status, a reason code and a readable reason for an order in ``order.state``."""
    state = order.state
    if state is OrderState.CLAIMED and not order.lease_expired(now):
        return ExecutionStatus.PENDING, ReasonCode.IN_FLIGHT, IN_FLIGHT_REASON
    if state in (OrderState.CLAIMED, OrderState.SUBMITTED, OrderState.UNKNOWN):
        why = order.reason or "the broker's answer was lost"
        return (
            ExecutionStatus.UNKNOWN,
            ReasonCode.BROKER_OUTCOME_UNKNOWN,
            f"Broker outcome unknown ({why}); settled by client order id {order.client_order_id}",
        )
    filled = f"{order.filled_qty} of {order.qty} {symbol}"
    if state is OrderState.ACCEPTED:
        return ExecutionStatus.PLACED, ReasonCode.OK, f"Order accepted: {order.qty} {symbol}, not filled yet"
    if state is OrderState.PARTIALLY_FILLED:
        return (
            ExecutionStatus.PLACED,
            ReasonCode.OK,
            f"Order partially filled: {filled} @ {order.avg_fill_price}",
        )
    if state is OrderState.FILLED:
        return (
            ExecutionStatus.PLACED,
            ReasonCode.OK,
            f"Order filled: {order.filled_qty} {symbol} @ {order.avg_fill_price}",
        )
    if state in (OrderState.CANCELED, OrderState.EXPIRED):
        if order.filled_qty > 0:
            return ExecutionStatus.PLACED, ReasonCode.OK, f"Order {state.value} after {filled} filled"
        code = ReasonCode.ORDER_CANCELED if state is OrderState.CANCELED else ReasonCode.ORDER_EXPIRED
        return (
            ExecutionStatus.FAILED,
            code,
            f"Order {state.value} before anything filled: {order.reason}".rstrip(": "),
        )
    return (
        ExecutionStatus.FAILED,
        order.reason_code or ReasonCode.BROKER_REJECTED,
        order.reason or state.value,
    )
