"""Open tax lots as one document per lot, and the booking of one history entry against them (pure).

Why: a single document holding every open lot grows with them (1 MiB at about 6,000 lots) and is
rewritten on every trade. Here a symbol has a small summary document
(``users/{uid}/portfolio/tax/lots/{account~symbol}``: position, basis, counts, the canonical keys
of the last entry and of the last entry that closed anything) and one document per open lot under
it (``.../{account~symbol}/open/{lot_id}``). Each lot carries its order keys as strings, so a sale
reads only the lots it consumes, in its method's order, with one ordered query:

- ``fifo_key``: execution time (fixed width, UTC) then the trade id: FIFO ascending, LIFO
  descending, exactly the canonical order of ``tax_lots``;
- ``hifo_key``: the unit amount encoded so that string order is numeric order (negated for long
  lots: highest cost first), then ``fifo_key`` (ties keep FIFO order): HIFO ascending.

Which entries are booked incrementally and which replay the symbol's history (``plan_booking``):

- a new entry later than every entry booked so far: incremental (reads the lots it consumes);
- a late entry that only opens a lot, i.e. it is a trade of the open lots' side (or nothing is
  open) and later than the last entry that closed or adjusted a lot: incremental, since no booked
  sale could have consumed what it opens;
- anything else late (a late sale, a late buy before a later sale under any method, a late fee
  adjustment): the symbol's history is replayed, each booked sale under the method it recorded;
- a summary in the old single-document form: replayed once, which writes the lots as documents
  (the lazy migration).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum

from backend.core.intents import Side
from backend.core.ledger import LedgerEntryType
from backend.core.paths import portfolio_lots_path, portfolio_open_lot_path
from backend.core.portfolio import LotsSnapshot, PortfolioTrade, TaxFields
from backend.core.tax_lots import LotMethod, TaxLot, TradeTaxOutcome, compute_lots

_EXPONENT_OFFSET = 50_000


def fifo_key(opened_at: datetime, lot_id: str) -> str:
    """The canonical order (time, then id) as a string: the time part has a fixed width."""
    return opened_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ") + lot_id


def ordered_decimal(value: Decimal) -> str:
    """A string whose order is ``value``'s numeric order: sign class, exponent, then digits, with a
    terminator that makes a shorter mantissa sort on the right side of a longer one."""
    if value == 0:
        return "b"
    sign, digits, _ = value.as_tuple()  # not normalize(): it rounds to the context's precision
    exponent = value.adjusted() + _EXPONENT_OFFSET
    mantissa = "".join(str(d) for d in digits).lstrip("0").rstrip("0")
    if sign == 0:
        return f"c{exponent:06d}{mantissa}!"
    complement = "".join(str(9 - int(d)) for d in mantissa)
    return f"a{2 * _EXPONENT_OFFSET - exponent:06d}{complement}~"


def hifo_key(lot: TaxLot) -> str:
    unit = -lot.unit_amount if lot.side is Side.BUY else lot.unit_amount
    return ordered_decimal(unit) + fifo_key(lot.opened_at, lot.lot_id)


def order_field(method: LotMethod) -> tuple[str, bool]:
    """(the field a sale under ``method`` orders open lots by, descending?)."""
    if method is LotMethod.HIFO:
        return "hifo_key", False
    return "fifo_key", method is LotMethod.LIFO


@dataclass(frozen=True, slots=True)
class OpenLot:
    """``users/{uid}/portfolio/tax/lots/{account~symbol}/open/{lot_id}``: one open lot."""

    path: str
    uid: str
    broker_account_id: str
    symbol: str
    lot_id: str
    side: Side
    opened_at: datetime
    qty: Decimal
    amount: Decimal
    unit_amount: Decimal
    fifo_key: str
    hifo_key: str
    schema_version: int = 1

    def tax_lot(self) -> TaxLot:
        return TaxLot(self.lot_id, self.side, self.opened_at, self.qty, self.amount, self.unit_amount)


def open_lot(uid: str, broker_account_id: str, symbol: str, lot: TaxLot) -> OpenLot:
    return OpenLot(
        path=portfolio_open_lot_path(uid, broker_account_id, symbol, lot.lot_id),
        uid=uid,
        broker_account_id=broker_account_id,
        symbol=symbol,
        lot_id=lot.lot_id,
        side=lot.side,
        opened_at=lot.opened_at,
        qty=lot.qty,
        amount=lot.amount,
        unit_amount=lot.unit_amount,
        fifo_key=fifo_key(lot.opened_at, lot.lot_id),
        hifo_key=hifo_key(lot),
    )


class BookingKind(StrEnum):
    DUPLICATE = "duplicate"  # a redelivery: nothing to write
    INCREMENTAL = "incremental"  # reads only the lots it consumes or names
    REPLAY = "replay"  # reads the symbol's history and every open lot


@dataclass(frozen=True, slots=True)
class BookingPlan:
    kind: BookingKind
    consume: Decimal = Decimal(0)  # qty of open lots to read in the method's order
    named: tuple[str, ...] = ()  # lots a fee adjustment names, read by id


@dataclass(frozen=True)
class Booking:
    changed: list[PortfolioTrade]  # entries whose tax part is new or different
    summary: LotsSnapshot
    upserts: list[OpenLot]
    deletes: list[str]  # paths of lots closed


def _key(entry: PortfolioTrade) -> tuple[datetime, str]:
    return entry.executed_at, entry.history_id


def _open_side(summary: LotsSnapshot) -> Side | None:
    if summary.position == 0:
        return None
    return Side.BUY if summary.position > 0 else Side.SELL


def plan_booking(entry: PortfolioTrade, created: bool, summary: LotsSnapshot | None) -> BookingPlan:
    if not created:
        # a redelivery; without a summary (written in the same transaction) it cannot be booked
        return BookingPlan(BookingKind.DUPLICATE if summary is not None else BookingKind.REPLAY)
    if summary is None:
        return BookingPlan(BookingKind.INCREMENTAL)
    if not summary.lots_in_documents:
        return BookingPlan(BookingKind.REPLAY)  # the old single-document form: migrate
    side = _open_side(summary)
    opposite = side is not None and side is not entry.side
    if summary.is_after_last(entry):
        return BookingPlan(BookingKind.INCREMENTAL, entry.qty if opposite else Decimal(0), entry.adjusts)
    after_last_closing = summary.last_closing_executed_at is None or _key(entry) > (
        summary.last_closing_executed_at,
        summary.last_closing_trade_id or "",
    )
    if entry.entry_type is LedgerEntryType.FILL and not opposite and after_last_closing:
        return BookingPlan(BookingKind.INCREMENTAL)
    return BookingPlan(BookingKind.REPLAY)


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


def _signed(lot: TaxLot) -> Decimal:
    return lot.qty if lot.side is Side.BUY else -lot.qty


def _basis(lot: TaxLot) -> Decimal:
    return lot.amount if lot.side is Side.BUY else Decimal(0)


def _closes(entry: PortfolioTrade, outcome: TradeTaxOutcome) -> bool:
    return bool(outcome.closings) or entry.entry_type is LedgerEntryType.FEE_ADJUSTMENT


def _diff(
    first: PortfolioTrade, before: Iterable[TaxLot], after: Iterable[TaxLot]
) -> tuple[list[OpenLot], list[str], dict[str, TaxLot], dict[str, TaxLot]]:
    old = {lot.lot_id: lot for lot in before}
    new = {lot.lot_id: lot for lot in after}
    upserts = [
        open_lot(first.uid, first.broker_account_id, first.symbol, lot)
        for lot_id, lot in new.items()
        if old.get(lot_id) != lot
    ]
    deletes = [
        portfolio_open_lot_path(first.uid, first.broker_account_id, first.symbol, lot_id)
        for lot_id in old
        if lot_id not in new
    ]
    return upserts, deletes, old, new


def book_entry(
    entry: PortfolioTrade, summary: LotsSnapshot | None, window: Iterable[TaxLot], method: LotMethod
) -> Booking:
    """Book a new entry against ``window``: the open lots ``plan_booking`` asked for (those it
    consumes in the method's order, those it names). The result equals a full replay because a
    sale under any method only reaches that prefix of the open lots."""
    before = sorted(window, key=lambda lot: fifo_key(lot.opened_at, lot.lot_id))
    book = compute_lots([entry.lot_trade()], method, before)
    outcome = book.outcomes[entry.history_id]
    taxed = replace(entry, tax=_tax_fields(outcome, method))
    upserts, deletes, old, new = _diff(entry, before, book.open_lots)
    base = summary or _empty_summary(entry, method)
    last = max(_key(entry), (base.last_executed_at, base.last_trade_id)) if base.trades else _key(entry)
    last_closing = (base.last_closing_executed_at, base.last_closing_trade_id)
    if _closes(entry, outcome) and (last_closing[0] is None or _key(entry) > last_closing):
        last_closing = _key(entry)
    new_summary = replace(
        base,
        lot_method=method,
        position=base.position
        + sum(map(_signed, new.values()), Decimal(0))
        - sum(map(_signed, old.values()), Decimal(0)),
        open_cost_basis=base.open_cost_basis
        + sum(map(_basis, new.values()), Decimal(0))
        - sum(map(_basis, old.values()), Decimal(0)),
        open_lot_count=base.open_lot_count + len(new) - len(old),
        trades=base.trades + 1,
        last_executed_at=last[0],
        last_trade_id=last[1],
        last_closing_executed_at=last_closing[0],
        last_closing_trade_id=last_closing[1],
    )
    return Booking([taxed], new_summary, upserts, deletes)


def _empty_summary(entry: PortfolioTrade, method: LotMethod) -> LotsSnapshot:
    return LotsSnapshot(
        path=portfolio_lots_path(entry.uid, entry.broker_account_id, entry.symbol),
        uid=entry.uid,
        broker_account_id=entry.broker_account_id,
        symbol=entry.symbol,
        lot_method=method,
        position=Decimal(0),
        open_cost_basis=Decimal(0),
        open_lots=(),
        trades=0,
        lots_in_documents=True,
    )


def replay(entries: Iterable[PortfolioTrade], stored: Iterable[TaxLot], method: LotMethod) -> Booking:
    """Re-book every entry of one (user, account, symbol) in canonical order. A booked entry keeps
    the method it recorded (a ``lot_method`` change never rewrites it); an entry not booked yet
    takes ``method``. ``stored`` are the lot documents there are now: only differences are written."""
    entries = list(entries)
    if not entries:
        raise ValueError("replay needs at least one entry")
    keys = {(e.uid, e.broker_account_id, e.symbol) for e in entries}
    if len(keys) != 1:
        raise ValueError(f"entries of one user, account and symbol only, got {sorted(keys)}")
    methods = {e.history_id: e.tax.lot_method for e in entries if e.tax is not None}
    book = compute_lots((e.lot_trade() for e in entries), method, methods=methods)
    changed = []
    last_closing: PortfolioTrade | None = None
    for entry in sorted(entries, key=_key):
        outcome = book.outcomes[entry.history_id]
        tax = _tax_fields(outcome, methods.get(entry.history_id, method))
        if entry.tax != tax:
            changed.append(replace(entry, tax=tax))
        if _closes(entry, outcome):
            last_closing = entry
    upserts, deletes, _, _ = _diff(entries[0], stored, book.open_lots)
    last = max(entries, key=_key)
    summary = replace(
        _empty_summary(entries[0], method),
        position=book.position,
        open_cost_basis=book.open_cost_basis,
        open_lot_count=len(book.open_lots),
        trades=len(entries),
        last_executed_at=last.executed_at,
        last_trade_id=last.history_id,
        last_closing_executed_at=last_closing.executed_at if last_closing else None,
        last_closing_trade_id=last_closing.history_id if last_closing else None,
    )
    return Booking(changed, summary, upserts, deletes)


def with_lots(summary: LotsSnapshot, lots: Iterable[TaxLot]) -> LotsSnapshot:
    """The summary as readers see it: with its open lots in FIFO order."""
    if not summary.lots_in_documents:
        return summary
    ordered = sorted(lots, key=lambda lot: fifo_key(lot.opened_at, lot.lot_id))
    return replace(summary, open_lots=tuple(ordered))


__all__ = [
    "Booking",
    "BookingKind",
    "BookingPlan",
    "OpenLot",
    "book_entry",
    "fifo_key",
    "hifo_key",
    "open_lot",
    "order_field",
    "ordered_decimal",
    "plan_booking",
    "replay",
    "with_lots",
]
