"""What the engine sends to a broker, what a broker answers, and what the engine returns."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from backend.core.instruments import AssetClass
from backend.core.intents import OrderIntent, Side
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

    @property
    def broker_order_id(self) -> str | None:
        return self.broker_order.order_id if self.broker_order else None

    @property
    def client_order_id(self) -> str | None:
        return self.broker_order.client_order_id if self.broker_order else None
