"""Tax lots: cost basis, realized P&L and holding periods from a user's trades in one symbol (pure).

Rules, all tested:

- **Methods.** A closing trade consumes open lots in the order of its method: FIFO (oldest first,
  the default), LIFO (newest first), HIFO (highest unit cost first for long lots; lowest unit
  proceeds first for short lots: both realize the smallest gain).
- **Money** is ``qty x price x multiplier`` (an option contract is 100 shares); quantities are in
  the instrument's units (contracts for options).
- **Fees** paid in the quote currency are part of cost basis on a buy (cost = gross + fees) and
  reduce proceeds on a sell (proceeds = gross - fees). A fee taken **in the asset received** (a
  crypto buy) is not cash: the trade books fewer units than were filled (``qty`` < ``filled_qty``)
  for the whole amount paid, so the fee sits in the lot's cost per unit.
- **Quantity adjustments** (a broker's fee activity that differs from the estimate booked at the
  fill) change the quantity of the lots they name, never their basis; what cannot be applied to
  those lots (they are closed already) is booked as a trade at zero price.
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

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
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


class LotEventKind(StrEnum):
    TRADE = "trade"
    QTY_ADJUSTMENT = "qty_adjustment"  # units added (BUY) or taken (SELL) at no cost


@dataclass(frozen=True, slots=True)
class LotTrade:
    """The facts of one executed trade (or quantity adjustment) that tax lots need.

    ``qty`` is what the holding changes by; ``filled_qty`` (default: ``qty``) is what was paid
    for or sold, so a fee taken in the asset makes them differ. ``fees`` are the fees paid in the
    quote currency. ``adjusts`` names the lots a quantity adjustment applies to.
    """

    trade_id: str
    side: Side
    qty: Decimal
    price: Decimal
    fees: Decimal
    executed_at: datetime
    multiplier: Decimal = Decimal(1)
    filled_qty: Decimal | None = None
    kind: LotEventKind = LotEventKind.TRADE
    adjusts: tuple[str, ...] = ()

    @property
    def gross(self) -> Decimal:
        filled = self.qty if self.filled_qty is None else self.filled_qty
        return filled * self.price * self.multiplier

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


def _closing(lot: TaxLot, take: Decimal, lot_part: Decimal, trade_part: Decimal, at: datetime) -> LotClosing:
    closing_long = lot.side is Side.BUY
    basis, proceeds = (lot_part, trade_part) if closing_long else (trade_part, lot_part)
    return LotClosing(
        lot_id=lot.lot_id,
        opened_at=lot.opened_at,
        qty=take,
        cost_basis=basis,
        proceeds=proceeds,
        realized_pnl=proceeds - basis,
        holding_period=holding_period(lot.opened_at, at) if closing_long else HoldingPeriod.SHORT_TERM,
        short_sale=not closing_long,
    )


def _apply_trade(open_lots: list[TaxLot], trade: LotTrade, method: LotMethod) -> TradeTaxOutcome:
    """Close opposite lots in the method's order; what is left opens a lot of the trade's side."""
    # Open lots are all of one side (a trade opens a lot only once no opposite lot is left), so
    # the first lot says whether there is anything to close: no scan per trade.
    opposite = list(open_lots) if open_lots and open_lots[0].side is not trade.side else []
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
        closings.append(_closing(lot, take, lot_part, trade_part, trade.executed_at))
        index = open_lots.index(lot)
        if take == lot.qty:
            open_lots.pop(index)
        else:
            open_lots[index] = replace(lot, qty=lot.qty - take, amount=lot.amount - lot_part)
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
    return TradeTaxOutcome(
        trade_id=trade.trade_id,
        closings=tuple(closings),
        opened_qty=remaining_qty,
        opened_amount=remaining_amount if remaining_qty > 0 else Decimal(0),
        short_sale=trade.side is Side.SELL and remaining_qty > 0,
    )


def _apply_qty_adjustment(open_lots: list[TaxLot], event: LotTrade, method: LotMethod) -> TradeTaxOutcome:
    """Units added to (BUY) or taken from (SELL) the long lots ``event.adjusts`` names, newest
    first, their basis unchanged. A lot is never emptied this way (its basis would vanish): what
    the named lots cannot absorb is booked as a trade at zero price."""
    remaining = event.qty
    named = [i for i, lot in enumerate(open_lots) if lot.lot_id in event.adjusts and lot.side is Side.BUY]
    for index in reversed(named):
        if remaining == 0:
            break
        lot = open_lots[index]
        if event.side is Side.BUY:
            open_lots[index] = replace(lot, qty=lot.qty + remaining)
            remaining = Decimal(0)
        elif remaining < lot.qty:
            open_lots[index] = replace(lot, qty=lot.qty - remaining)
            remaining = Decimal(0)
    if remaining > 0:
        rest = replace(event, qty=remaining, filled_qty=remaining, price=Decimal(0), fees=Decimal(0))
        return _apply_trade(open_lots, rest, method)
    return TradeTaxOutcome(event.trade_id, (), Decimal(0), Decimal(0), short_sale=False)


def compute_lots(
    trades: Iterable[LotTrade],
    method: LotMethod = LotMethod.FIFO,
    open_lots: Iterable[TaxLot] = (),
    methods: Mapping[str, LotMethod] | None = None,
) -> LotBook:
    """Replay the trades in canonical order; the book depends only on the set of trades.

    ``open_lots`` continues from an earlier book: applying later trades to it gives exactly what a
    replay of all trades gives, which lets in-order events skip the replay. ``methods`` names the
    method a trade was booked under (a sale keeps its method when a late trade re-books it);
    trades it does not name use ``method``.
    """
    lots = list(open_lots)
    outcomes: dict[str, TradeTaxOutcome] = {}
    for trade in canonical_order(trades):
        if trade.qty <= 0:
            raise ValueError(f"trade {trade.trade_id}: qty must be > 0, got {trade.qty}")
        chosen = (methods or {}).get(trade.trade_id, method)
        if trade.kind is LotEventKind.QTY_ADJUSTMENT:
            outcomes[trade.trade_id] = _apply_qty_adjustment(lots, trade, chosen)
        else:
            outcomes[trade.trade_id] = _apply_trade(lots, trade, chosen)
    return LotBook(method, tuple(lots), outcomes)
