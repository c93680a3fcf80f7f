"""Ledger entries and decision records, built from an execution result by pure functions.

Money and quantities are ``Decimal`` in memory and canonical decimal *strings* in every stored
document ("1121.72", never a float), so sums over the ledger are exact. A notional is
``qty x price x multiplier`` (see ``Instrument``); ``qty`` is what the holding changes by, which is
less than the filled quantity when the fee is taken in the asset received (a crypto buy).

The ledger (``tenants/{tenant_id}/ledger_trades/{id}``) holds two kinds of entries, told apart by
``entry_type``: fills (``LedgerTrade``) and fee adjustments (``LedgerFeeAdjustment``: the broker's
fee activity booked against what the fills estimated).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from backend.core.costs import spread_cost
from backend.core.fees import FeeEstimate
from backend.core.instruments import AssetClass
from backend.core.intents import Side
from backend.core.order_lifecycle import Fill
from backend.core.orders import BrokerOrder, ExecutionResult, ExecutionStatus
from backend.core.paths import decision_id_for, decision_path, ledger_trade_path
from backend.core.reasons import ReasonCode
from backend.core.risk import RiskDecision
from backend.core.routing import RoutingDecision

# 2: the instrument's multiplier, filled vs booked quantity, fees with the asset they are charged
# in and their components, entry types. Version 1 documents are read through
# ``backend.adapters.documents`` (upgraded on read, never rewritten).
LEDGER_SCHEMA_VERSION = 2


class LedgerEntryType(StrEnum):
    FILL = "fill"
    FEE_ADJUSTMENT = "fee_adjustment"


@dataclass(frozen=True, slots=True)
class LedgerTrade:
    """One executed trade: ``tenants/{tenant_id}/ledger_trades/{trade_id}``. Written once.

    ``qty`` is booked (what the holding changes by), ``filled_qty`` what the broker filled;
    ``notional`` is ``filled_qty x price x multiplier``. ``fees`` is the fees' value in the quote
    currency; ``fee_currency``/``fee_amount`` are what is charged (BTC for a BTC/USD buy)."""

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
    multiplier: Decimal
    filled_qty: Decimal
    fee_currency: str
    fee_amount: Decimal
    fee_components: dict[str, Decimal]
    entry_type: LedgerEntryType = LedgerEntryType.FILL
    fill_id: str | None = None  # "<client order id>:<cumulative qty after the fill>"


def booked_qty(filled_qty: Decimal, side: Side, fees: FeeEstimate, quote_currency: str) -> Decimal:
    """What the holding changes by: a buy whose fee is taken in the asset received books less."""
    if side is Side.BUY and fees.currency != quote_currency:
        return filled_qty - fees.amount
    return filled_qty


def build_fill_trade(result: ExecutionResult, fill: Fill, fees: FeeEstimate | None = None) -> LedgerTrade:
    """The ledger row of one fill of the result's order. ``fees``: what the fill cost in fees (the
    fee model at the fill price; a broker's fee activity that differs later is booked as a
    ``LedgerFeeAdjustment``)."""
    order = result.broker_order
    if result.routing is None or result.risk is None or order is None:
        raise ValueError("a ledger trade needs routing, risk and a broker confirmation")
    intent = result.intent
    instrument = intent.instrument
    fees = fees or FeeEstimate(Decimal(0), instrument.quote_currency, Decimal(0))
    qty = booked_qty(fill.qty, intent.side, fees, instrument.quote_currency)
    if qty <= 0:
        raise ValueError(f"fill {fill.fill_id}: the fee ({fees.amount} {fees.currency}) exceeds the fill")
    return LedgerTrade(
        schema_version=LEDGER_SCHEMA_VERSION,
        path=ledger_trade_path(result.tenant_id, fill.trade_id),
        trade_id=fill.trade_id,
        tenant_id=result.tenant_id,
        uid=result.uid,
        idempotency_key=result.idempotency_key,
        strategy_id=intent.strategy_id,
        broker_account_id=intent.broker_account_id,
        symbol=intent.symbol,
        asset_class=intent.asset_class,
        quote_currency=instrument.quote_currency,
        side=intent.side,
        qty=qty,
        price=fill.price,
        notional=instrument.notional(fill.qty, fill.price),
        fees=fees.total,
        routing=result.routing,
        risk=result.risk,
        broker=order,
        intent_metadata=dict(intent.metadata),
        executed_at=fill.at,
        multiplier=instrument.multiplier,
        filled_qty=fill.qty,
        fee_currency=fees.currency,
        fee_amount=fees.amount,
        fee_components=dict(fees.components),
        fill_id=fill.fill_id,
    )


@dataclass(frozen=True, slots=True)
class LedgerFeeAdjustment:
    """A fee the broker charged in an asset, booked against what the fills estimated:
    ``tenants/{tenant_id}/ledger_trades/{trade_id}`` with ``entry_type: fee_adjustment``.

    BUY adds ``qty`` units of the asset (the broker took less than estimated), SELL takes them (it
    took more). ``adjusts`` names the fills it reconciles; their lots change quantity, never basis.
    """

    schema_version: int
    entry_type: LedgerEntryType
    path: str
    trade_id: str
    tenant_id: str
    uid: str
    broker_account_id: str
    symbol: str
    asset_class: AssetClass
    quote_currency: str
    side: Side
    qty: Decimal
    fee_currency: str
    estimated_fee: Decimal  # what the fills booked, in ``fee_currency``
    actual_fee: Decimal  # what the broker's activities say
    adjusts: tuple[str, ...]
    activity_ids: tuple[str, ...]
    trading_day: str
    executed_at: datetime


LedgerEntry = LedgerTrade | LedgerFeeAdjustment


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
    usable = bid is not None and ask is not None and 0 < bid <= ask
    cost = spread_cost(intent.instrument, intent.qty, bid, ask) if usable else None  # type: ignore[arg-type]
    return DecisionRecord(
        decision_id=decision_id,
        path=decision_path(result.tenant_id, decision_id),
        tenant_id=result.tenant_id,
        uid=result.uid,
        idempotency_key=result.idempotency_key,
        strategy_id=intent.strategy_id,
        symbol=intent.symbol,
        asset_class=intent.asset_class,
        quote_currency=intent.instrument.quote_currency,
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
