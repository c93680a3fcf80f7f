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

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal

from backend.core.instruments import AssetClass
from backend.core.intents import Side
from backend.core.ledger import LedgerEntry, LedgerEntryType, LedgerFeeAdjustment, LedgerTrade
from backend.core.paths import portfolio_lots_path, portfolio_trade_path
from backend.core.tax_lots import (
    HoldingPeriod,
    LotBook,
    LotClosing,
    LotEventKind,
    LotMethod,
    LotTrade,
    TaxLot,
    TradeTaxOutcome,
    compute_lots,
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


def _tax_fields(outcome: TradeTaxOutcome, method: LotMethod) -> TaxFields:
    return TaxFields(
        lot_method=method,
        cost_basis=outcome.cost_basis,
        proceeds=outcome.proceeds,
        realized_pnl=outcome.realized_pnl,
        holding_period=outcome.holding_period,
        short_sale=outcome.short_sale,
        closings=outcome.closings,
    )


@dataclass(frozen=True, slots=True)
class LotsSnapshot:
    """``users/{uid}/portfolio/tax/lots/{account~symbol}``: the open lots after every known trade."""

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


@dataclass(frozen=True)
class Recomputed:
    changed: list[PortfolioTrade]  # entries whose tax part is new or different
    lots: LotsSnapshot
    book: LotBook


def _snapshot(
    first: PortfolioTrade, method: LotMethod, book: LotBook, trades: int, last: PortfolioTrade
) -> LotsSnapshot:
    return LotsSnapshot(
        path=portfolio_lots_path(first.uid, first.broker_account_id, first.symbol),
        uid=first.uid,
        broker_account_id=first.broker_account_id,
        symbol=first.symbol,
        lot_method=method,
        position=book.position,
        open_cost_basis=book.open_cost_basis,
        open_lots=book.open_lots,
        trades=trades,
        last_executed_at=last.executed_at,
        last_trade_id=last.history_id,
    )


def plan_fan_out(
    entry: PortfolioTrade, created: bool, snapshot: LotsSnapshot | None, method: LotMethod
) -> Recomputed | None:
    """The cheap paths, when they apply; None means: recompute from every entry.

    - a repeated delivery under an unchanged method changes nothing;
    - a new trade later than every trade applied so far continues from the stored open lots
      (the common, in-order case: one document read instead of the whole history).
    """
    if snapshot is None or snapshot.lot_method is not method:
        return None
    if snapshot.schema_version != PORTFOLIO_SCHEMA_VERSION:
        return None  # lots computed under older rules (an option's multiplier): recompute once
    if not created:
        return Recomputed([], snapshot, LotBook(method, snapshot.open_lots))
    if not snapshot.is_after_last(entry):
        return None
    book = compute_lots([entry.lot_trade()], method, snapshot.open_lots)
    taxed = replace(entry, tax=_tax_fields(book.outcomes[entry.history_id], method))
    return Recomputed([taxed], _snapshot(entry, method, book, snapshot.trades + 1, entry), book)


def recompute_tax(entries: Iterable[PortfolioTrade], method: LotMethod) -> Recomputed:
    """Tax fields for every entry of one (user, account, symbol), from all of them together."""
    entries = list(entries)
    if not entries:
        raise ValueError("recompute_tax needs at least one entry")
    keys = {(e.uid, e.broker_account_id, e.symbol) for e in entries}
    if len(keys) != 1:
        raise ValueError(f"entries of one user, account and symbol only, got {sorted(keys)}")
    book = compute_lots((entry.lot_trade() for entry in entries), method)
    changed = []
    for entry in entries:
        tax = _tax_fields(book.outcomes[entry.history_id], method)
        if entry.tax != tax:
            changed.append(replace(entry, tax=tax))
    last = max(entries, key=lambda e: (e.executed_at, e.history_id))
    return Recomputed(changed, _snapshot(entries[0], method, book, len(entries), last), book)
