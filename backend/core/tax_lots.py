"""Tax lots: cost basis, realized P&L and holding periods from a user's trades in one symbol (pure).

Rules, all tested:

- **Methods.** A closing trade consumes open lots in the order of its method: FIFO (oldest first,
  the default), LIFO (newest first), HIFO (highest unit cost first for long lots; lowest unit
  proceeds first for short lots: both realize the smallest gain).
- **Fees** are part of cost basis on a buy (cost = qty x price + fees) and reduce proceeds on a sell
  (proceeds = qty x price - fees).
- **Exact money.** Amounts are ``Decimal``. A partial consumption takes a proportional share of a
  lot's basis rounded to ``ALLOCATION_QUANTUM``; the last piece of a lot (or of a trade) takes the
  exact remainder, so the pieces always add up to the whole to the last digit.
- **A sell beyond the open long quantity** closes every long lot and **opens a short lot** with
  the excess (``short_sale`` is set on that trade's outcome). A later buy covers short lots first.
  Nothing is dropped or clipped silently.
- **Holding period.** Long term when the lot is disposed of *more than one year* after it was
  acquired (the day after the anniversary or later; a lot bought on 29 February has its anniversary
  on 28 February). Closing a short sale is short term (the general US rule for short sales).
- **Order.** The result depends only on the *set* of trades: they are processed in canonical order
  (execution time, then trade id), so events that arrive out of order give the same lots.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from enum import StrEnum

from backend.core.intents import Side

ALLOCATION_QUANTUM = Decimal("0.00000001")


class LotMethod(StrEnum):
    FIFO = "FIFO"
    LIFO = "LIFO"
    HIFO = "HIFO"


class HoldingPeriod(StrEnum):
    SHORT_TERM = "short_term"
    LONG_TERM = "long_term"
    MIXED = "mixed"


@dataclass(frozen=True, slots=True)
class LotTrade:
    """The facts of one executed trade that tax lots need."""

    trade_id: str
    side: Side
    qty: Decimal
    price: Decimal
    fees: Decimal
    executed_at: datetime

    @property
    def gross(self) -> Decimal:
        return self.qty * self.price

    @property
    def net_amount(self) -> Decimal:
        """What the trade cost (buy: gross + fees) or brought in (sell: gross - fees)."""
        return self.gross + self.fees if self.side is Side.BUY else self.gross - self.fees


@dataclass(frozen=True, slots=True)
class TaxLot:
    """An open lot. ``amount`` is the remaining cost basis of a long lot, or the remaining
    proceeds of a short lot, for the remaining ``qty``."""

    lot_id: str
    side: Side  # BUY: a long lot; SELL: a short lot
    opened_at: datetime
    qty: Decimal
    amount: Decimal
    unit_amount: Decimal  # amount per unit when opened: the HIFO key


@dataclass(frozen=True, slots=True)
class LotClosing:
    lot_id: str
    opened_at: datetime
    qty: Decimal
    cost_basis: Decimal  # long lot: its basis; short lot: what covering it cost
    proceeds: Decimal  # long lot: what selling it brought in; short lot: its sale proceeds
    realized_pnl: Decimal
    holding_period: HoldingPeriod
    short_sale: bool


@dataclass(frozen=True, slots=True)
class TradeTaxOutcome:
    trade_id: str
    closings: tuple[LotClosing, ...]
    opened_qty: Decimal  # the part of the trade that opened (or grew) a lot
    opened_amount: Decimal  # its cost basis (long) or proceeds (short)
    short_sale: bool  # this trade opened or grew a short position

    @property
    def realized_pnl(self) -> Decimal | None:
        return sum((c.realized_pnl for c in self.closings), Decimal(0)) if self.closings else None

    @property
    def cost_basis(self) -> Decimal:
        """Basis of what this trade closed, plus the basis it opened (for a buy)."""
        closed = sum((c.cost_basis for c in self.closings), Decimal(0))
        return closed + (self.opened_amount if not self.short_sale else Decimal(0))

    @property
    def proceeds(self) -> Decimal | None:
        closed = [c.proceeds for c in self.closings]
        if self.short_sale:
            closed.append(self.opened_amount)
        return sum(closed, Decimal(0)) if closed else None

    @property
    def holding_period(self) -> HoldingPeriod | None:
        periods = {c.holding_period for c in self.closings}
        if not periods:
            return None
        return periods.pop() if len(periods) == 1 else HoldingPeriod.MIXED


@dataclass(frozen=True)
class LotBook:
    method: LotMethod
    open_lots: tuple[TaxLot, ...]
    outcomes: dict[str, TradeTaxOutcome] = field(default_factory=dict)

    @property
    def position(self) -> Decimal:
        return sum((lot.qty if lot.side is Side.BUY else -lot.qty for lot in self.open_lots), Decimal(0))

    @property
    def open_cost_basis(self) -> Decimal:
        return sum((lot.amount for lot in self.open_lots if lot.side is Side.BUY), Decimal(0))


def _share(amount: Decimal, part: Decimal, whole: Decimal) -> Decimal:
    """``amount`` x ``part`` / ``whole`` to the allocation quantum; the whole gets it all, exactly."""
    if part == whole:
        return amount
    return (amount * part / whole).quantize(ALLOCATION_QUANTUM, rounding=ROUND_HALF_EVEN)


def _anniversary(day: date) -> date:
    try:
        return day.replace(year=day.year + 1)
    except ValueError:  # 29 February
        return day.replace(year=day.year + 1, day=28)


def holding_period(opened_at: datetime, closed_at: datetime) -> HoldingPeriod:
    long_term = closed_at.date() > _anniversary(opened_at.date())
    return HoldingPeriod.LONG_TERM if long_term else HoldingPeriod.SHORT_TERM


def _consumption_order(lots: list[TaxLot], method: LotMethod) -> list[TaxLot]:
    if method is LotMethod.FIFO:
        return lots
    if method is LotMethod.LIFO:
        return lots[::-1]
    # HIFO: smallest gain first. Long lots: highest cost first; short lots: lowest proceeds first.
    # Ties keep FIFO order (sorted is stable).
    if lots and lots[0].side is Side.BUY:
        return sorted(lots, key=lambda lot: -lot.unit_amount)
    return sorted(lots, key=lambda lot: lot.unit_amount)


def canonical_order(trades: Iterable[LotTrade]) -> list[LotTrade]:
    return sorted(trades, key=lambda trade: (trade.executed_at, trade.trade_id))


def compute_lots(
    trades: Iterable[LotTrade], method: LotMethod = LotMethod.FIFO, open_lots: Iterable[TaxLot] = ()
) -> LotBook:
    """Replay the trades in canonical order; the book depends only on the set of trades.

    ``open_lots`` continues from an earlier book: applying later trades to it gives exactly what a
    replay of all trades gives, which lets in-order events skip the replay.
    """
    open_lots = list(open_lots)
    outcomes: dict[str, TradeTaxOutcome] = {}
    for trade in canonical_order(trades):
        if trade.qty <= 0:
            raise ValueError(f"trade {trade.trade_id}: qty must be > 0, got {trade.qty}")
        opposite = [lot for lot in open_lots if lot.side is not trade.side]
        remaining_qty, remaining_amount = trade.qty, trade.net_amount
        closings: list[LotClosing] = []
        for lot in _consumption_order(opposite, method):
            if remaining_qty == 0:
                break
            take = min(lot.qty, remaining_qty)
            lot_part = _share(lot.amount, take, lot.qty)
            trade_part = _share(remaining_amount, take, remaining_qty)
            remaining_qty -= take
            remaining_amount -= trade_part
            closing_long = lot.side is Side.BUY
            basis, proceeds = (lot_part, trade_part) if closing_long else (trade_part, lot_part)
            closings.append(
                LotClosing(
                    lot_id=lot.lot_id,
                    opened_at=lot.opened_at,
                    qty=take,
                    cost_basis=basis,
                    proceeds=proceeds,
                    realized_pnl=proceeds - basis,
                    holding_period=(
                        holding_period(lot.opened_at, trade.executed_at)
                        if closing_long
                        else HoldingPeriod.SHORT_TERM
                    ),
                    short_sale=not closing_long,
                )
            )
            index = open_lots.index(lot)
            if take == lot.qty:
                open_lots.pop(index)
            else:
                open_lots[index] = TaxLot(
                    lot.lot_id,
                    lot.side,
                    lot.opened_at,
                    lot.qty - take,
                    lot.amount - lot_part,
                    lot.unit_amount,
                )
        if remaining_qty > 0:
            open_lots.append(
                TaxLot(
                    lot_id=trade.trade_id,
                    side=trade.side,
                    opened_at=trade.executed_at,
                    qty=remaining_qty,
                    amount=remaining_amount,
                    unit_amount=trade.net_amount / trade.qty,
                )
            )
        outcomes[trade.trade_id] = TradeTaxOutcome(
            trade_id=trade.trade_id,
            closings=tuple(closings),
            opened_qty=remaining_qty,
            opened_amount=remaining_amount if remaining_qty > 0 else Decimal(0),
            short_sale=trade.side is Side.SELL and remaining_qty > 0,
        )
    return LotBook(method, tuple(open_lots), outcomes)
