"""A user's portfolio history: one entry per ledger entry, with tax fields derived from the lots.

An entry has two parts. The *facts* (what was traded, when, at what price, by which strategy, and
the link back to the ledger row) are written once. The *tax* part (cost basis, proceeds, realized
P&L, holding period, lot method) is derived from every entry of the same user, account and symbol,
so it is recomputed when a trade arrives late: the history then reads exactly as if the events had
come in order. Pure functions only; the store applies them in one transaction.

Entries are trades (``entry_type: fill``) or fee adjustments (``fee_adjustment``: units of the
asset the broker's fee activity added or took, applied to the lots of the fills it names).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from backend.core.instruments import AssetClass
from backend.core.intents import Side
from backend.core.ledger import LedgerEntry, LedgerEntryType, LedgerFeeAdjustment, LedgerTrade
from backend.core.paths import portfolio_trade_path
from backend.core.tax_lots import (
    HoldingPeriod,
    LotClosing,
    LotEventKind,
    LotMethod,
    LotTrade,
    TaxLot,
)

# 2: multiplier, filled vs booked quantity, the fee's currency and amount, entry types; lots
# snapshots carry the version their lots were computed under (older ones are recomputed).
PORTFOLIO_SCHEMA_VERSION = 2


@dataclass(frozen=True, slots=True)
class TaxFields:
    lot_method: LotMethod
    cost_basis: Decimal
    proceeds: Decimal | None
    realized_pnl: Decimal | None
    holding_period: HoldingPeriod | None
    short_sale: bool
    closings: tuple[LotClosing, ...]


@dataclass(frozen=True, slots=True)
class ExecutionLink:
    """The broker order behind a trade (a fee adjustment has none)."""

    broker: str
    order_id: str
    client_order_id: str
    status: str
    idempotency_key: str


@dataclass(frozen=True, slots=True)
class PortfolioTrade:
    """``users/{uid}/portfolio/history/trades/{history_id}``; ``history_id`` is the ledger entry id.

    ``qty`` is what the holding changed by; ``filled_qty x price x multiplier`` is the notional;
    ``fees`` is their value in the quote currency, ``fee_currency``/``fee_amount`` what was charged."""

    schema_version: int
    path: str
    history_id: str
    uid: str
    tenant_id: str
    ledger_path: str
    strategy_id: str
    broker_account_id: str
    asset_class: AssetClass
    symbol: str
    quote_currency: str
    side: Side
    qty: Decimal
    price: Decimal
    notional: Decimal
    fees: Decimal
    estimated_slippage: float | None
    spread_pct: float | None
    executed_at: datetime
    trading_date: str  # UTC date of execution, ISO
    tax_year: int
    execution: ExecutionLink | None
    multiplier: Decimal
    filled_qty: Decimal
    fee_currency: str
    fee_amount: Decimal
    entry_type: LedgerEntryType = LedgerEntryType.FILL
    adjusts: tuple[str, ...] = ()
    tax: TaxFields | None = None  # None until the lots have been computed

    def lot_trade(self) -> LotTrade:
        adjustment = self.entry_type is LedgerEntryType.FEE_ADJUSTMENT
        cash_fees = self.fees if self.fee_currency == self.quote_currency else Decimal(0)
        return LotTrade(
            self.history_id,
            self.side,
            self.qty,
            self.price,
            Decimal(0) if adjustment else cash_fees,
            self.executed_at,
            multiplier=self.multiplier,
            filled_qty=self.filled_qty,
            kind=LotEventKind.QTY_ADJUSTMENT if adjustment else LotEventKind.TRADE,
            adjusts=self.adjusts,
        )


def history_entry(entry: LedgerEntry) -> PortfolioTrade:
    """The facts of a portfolio-history entry, from one ledger entry."""
    if isinstance(entry, LedgerFeeAdjustment):
        return _adjustment_entry(entry)
    trade: LedgerTrade = entry
    executed_day = trade.executed_at.date()
    return PortfolioTrade(
        schema_version=PORTFOLIO_SCHEMA_VERSION,
        path=portfolio_trade_path(trade.uid, trade.trade_id),
        history_id=trade.trade_id,
        uid=trade.uid,
        tenant_id=trade.tenant_id,
        ledger_path=trade.path,
        strategy_id=trade.strategy_id,
        broker_account_id=trade.broker_account_id,
        asset_class=trade.asset_class,
        symbol=trade.symbol,
        quote_currency=trade.quote_currency,
        side=trade.side,
        qty=trade.qty,
        price=trade.price,
        notional=trade.notional,
        fees=trade.fees,
        estimated_slippage=trade.routing.estimated_slippage,
        spread_pct=trade.routing.spread_pct,
        executed_at=trade.executed_at,
        trading_date=executed_day.isoformat(),
        tax_year=executed_day.year,
        execution=ExecutionLink(
            broker=trade.broker.broker,
            order_id=trade.broker.order_id,
            client_order_id=trade.broker.client_order_id,
            status=trade.broker.status.value,
            idempotency_key=trade.idempotency_key,
        ),
        multiplier=trade.multiplier,
        filled_qty=trade.filled_qty,
        fee_currency=trade.fee_currency,
        fee_amount=trade.fee_amount,
    )


def _adjustment_entry(adjustment: LedgerFeeAdjustment) -> PortfolioTrade:
    executed_day = adjustment.executed_at.date()
    zero = Decimal(0)
    return PortfolioTrade(
        schema_version=PORTFOLIO_SCHEMA_VERSION,
        path=portfolio_trade_path(adjustment.uid, adjustment.trade_id),
        history_id=adjustment.trade_id,
        uid=adjustment.uid,
        tenant_id=adjustment.tenant_id,
        ledger_path=adjustment.path,
        strategy_id="",
        broker_account_id=adjustment.broker_account_id,
        asset_class=adjustment.asset_class,
        symbol=adjustment.symbol,
        quote_currency=adjustment.quote_currency,
        side=adjustment.side,
        qty=adjustment.qty,
        price=zero,
        notional=zero,
        fees=zero,
        estimated_slippage=None,
        spread_pct=None,
        executed_at=adjustment.executed_at,
        trading_date=executed_day.isoformat(),
        tax_year=executed_day.year,
        execution=None,
        multiplier=Decimal(1),
        filled_qty=adjustment.qty,
        fee_currency=adjustment.fee_currency,
        fee_amount=adjustment.actual_fee - adjustment.estimated_fee,
        entry_type=LedgerEntryType.FEE_ADJUSTMENT,
        adjusts=adjustment.adjusts,
    )


@dataclass(frozen=True, slots=True)
class LotsSnapshot:
    """``users/{uid}/portfolio/tax/lots/{account~symbol}``: the summary of one symbol's open lots.

    ``lots_in_documents``: the lots are documents of their own (see ``lot_documents``) and
    ``open_lots`` is filled in only when a reader asks for them; an older summary holds them
    inline (read as is, migrated on its next write)."""

    path: str
    uid: str
    broker_account_id: str
    symbol: str
    lot_method: LotMethod
    position: Decimal
    open_cost_basis: Decimal
    open_lots: tuple[TaxLot, ...]
    trades: int
    # The canonical-order key of the latest trade applied: a later one can be applied incrementally.
    last_executed_at: datetime | None = None
    last_trade_id: str | None = None
    schema_version: int = PORTFOLIO_SCHEMA_VERSION
    lots_in_documents: bool = False
    open_lot_count: int = 0
    # The canonical-order key of the latest entry that closed or adjusted a lot: a late entry after
    # it that only opens a lot changes no booked sale.
    last_closing_executed_at: datetime | None = None
    last_closing_trade_id: str | None = None

    def is_after_last(self, entry: PortfolioTrade) -> bool:
        if self.last_executed_at is None or self.last_trade_id is None:
            return False
        return (entry.executed_at, entry.history_id) > (self.last_executed_at, self.last_trade_id)


@dataclass(frozen=True, slots=True)
class FanOutResult:
    history_path: str
    created: bool  # False: this ledger row had been fanned out before (a duplicate delivery)
    updated: int  # entries whose tax fields were (re)written, this one included
    lots: LotsSnapshot
