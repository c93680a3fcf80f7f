"""Ledger rows and decision records, built from an execution result by pure functions.

Money and quantities are ``Decimal`` in memory and canonical decimal *strings* in every stored
document ("1121.72", never a float), so sums over the ledger are exact.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from backend.core.assets import AssetClass, quote_currency
from backend.core.costs import spread_cost
from backend.core.intents import Side
from backend.core.orders import BrokerOrder, ExecutionResult, ExecutionStatus
from backend.core.paths import decision_id_for, decision_path, ledger_trade_path, trade_id_for
from backend.core.reasons import ReasonCode
from backend.core.risk import RiskDecision
from backend.core.routing import RoutingDecision

LEDGER_SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True)
class LedgerTrade:
    """One executed trade: ``tenants/{tenant_id}/ledger_trades/{trade_id}``. Written once."""

    schema_version: int
    path: str
    trade_id: str
    tenant_id: str
    uid: str
    idempotency_key: str
    strategy_id: str
    broker_account_id: str
    symbol: str
    asset_class: AssetClass
    quote_currency: str
    side: Side
    qty: Decimal
    price: Decimal
    notional: Decimal
    fees: Decimal
    routing: RoutingDecision
    risk: RiskDecision
    broker: BrokerOrder
    intent_metadata: dict[str, object]
    executed_at: datetime


def build_ledger_trade(result: ExecutionResult, fees: Decimal = Decimal(0)) -> LedgerTrade:
    """``fees``: what the fill cost in fees (the fee model at the fill price, until a broker
    reports actual fees)."""
    order = result.broker_order
    if result.routing is None or result.risk is None or order is None:
        raise ValueError("a ledger trade needs routing, risk and a broker confirmation")
    if order.avg_fill_price is None or order.filled_qty <= 0:
        raise ValueError(f"order {order.order_id} has no fill to record")
    trade_id = trade_id_for(result.tenant_id, result.idempotency_key)
    intent = result.intent
    return LedgerTrade(
        schema_version=LEDGER_SCHEMA_VERSION,
        path=ledger_trade_path(result.tenant_id, trade_id),
        trade_id=trade_id,
        tenant_id=result.tenant_id,
        uid=result.uid,
        idempotency_key=result.idempotency_key,
        strategy_id=intent.strategy_id,
        broker_account_id=intent.broker_account_id,
        symbol=intent.symbol,
        asset_class=intent.asset_class,
        quote_currency=quote_currency(intent.symbol),
        side=intent.side,
        qty=order.filled_qty,
        price=order.avg_fill_price,
        notional=order.filled_qty * order.avg_fill_price,
        fees=fees,
        routing=result.routing,
        risk=result.risk,
        broker=order,
        intent_metadata=dict(intent.metadata),
        executed_at=order.filled_at or order.submitted_at,
    )


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """Every engine decision, downgrades and rejections included: the audit trail and the metrics."""

    decision_id: str
    path: str
    tenant_id: str
    uid: str
    idempotency_key: str
    strategy_id: str
    symbol: str
    asset_class: AssetClass
    quote_currency: str
    side: Side
    qty: Decimal
    status: ExecutionStatus
    reason_code: ReasonCode
    reason: str
    spread_pct: float | None
    estimated_slippage: float | None
    threshold_pct: float | None
    mid_price: Decimal | None
    notional: Decimal | None
    estimated_cost: Decimal | None
    estimated_fees: Decimal | None
    trade_id: str | None
    dry_run: bool
    decided_at: datetime


def new_decision_id(result: ExecutionResult) -> str:
    """Keyed outcomes get one decision per key (retries cannot add a second); dry runs are re-runnable."""
    if result.status is ExecutionStatus.DRY_RUN:
        return "dr_" + uuid.uuid4().hex
    return decision_id_for(result.tenant_id, result.idempotency_key)


def build_decision_record(result: ExecutionResult, decision_id: str) -> DecisionRecord:
    intent = result.intent
    routing = result.routing
    bid, ask = (routing.bid, routing.ask) if routing else (None, None)
    # An unusable (missing, crossed, non-positive) quote has no cost to speak of.
    cost = (
        spread_cost(intent.qty, bid, ask) if bid is not None and ask is not None and 0 < bid <= ask else None
    )
    return DecisionRecord(
        decision_id=decision_id,
        path=decision_path(result.tenant_id, decision_id),
        tenant_id=result.tenant_id,
        uid=result.uid,
        idempotency_key=result.idempotency_key,
        strategy_id=intent.strategy_id,
        symbol=intent.symbol,
        asset_class=intent.asset_class,
        quote_currency=quote_currency(intent.symbol),
        side=intent.side,
        qty=intent.qty,
        status=result.status,
        reason_code=result.reason_code,
        reason=result.reason,
        spread_pct=routing.spread_pct if routing else None,
        estimated_slippage=routing.estimated_slippage if routing else None,
        threshold_pct=routing.threshold_pct if routing else None,
        mid_price=routing.mid_price if routing else None,
        notional=cost.notional if cost else None,
        estimated_cost=cost.estimated_cost if cost else None,
        estimated_fees=result.estimated_fees,
        trade_id=result.trade_id,
        dry_run=result.status is ExecutionStatus.DRY_RUN,
        decided_at=result.decided_at,
    )
