"""Broker positions compared with the ledger's, per canonical instrument (pure).

For one broker account, the ledger's booked positions (summed over the tenants and account labels
it serves) are compared with what the broker reports holding. Each difference (broker - ledger) is
explained as far as the evidence goes; what is left is reported as a mismatch. Nothing here fixes
anything: the check reports, and the ledger is only ever written by the engine and the fee
settlement (NautilusTrader's reconciliation guide: evidence is not authority).

Explanations, each a stable code, combining within one instrument:

- ``MISSING_FILL``: one of our orders (known to the store) filled more at the broker than the ledger
  recorded. The next delivery of its intent, or the sweeper, records it.
- ``UNKNOWN_ORDER``: an order carrying our client-order-id prefix that the store has no record of.
- ``EXTERNAL_ORDER``: an order this product did not place (by hand in the broker's UI, another
  system): reported, not an error. The ledger never books it.
- ``FEE_ADJUSTMENT_PENDING``: what remains is no more than the fees taken in the asset at estimated
  rates on days whose fee activities are not settled yet (crypto buys; see ``fee_reconciliation``).
- ``POSITION_MISMATCH``: whatever is left unexplained.

Evidence missing is kept apart from evidence of flat: an instrument the ledger holds that the
broker's position list omits is ``BROKER_POSITION_UNCONFIRMED`` until a targeted query answers
(Alpaca: 404, no position: flat), and a position list that could not be read is
``POSITIONS_UNAVAILABLE``: nothing is compared.

An order's effect is counted as the ledger would book it: a crypto buy's fee is taken in the asset
received, so a fill of ``q`` moves the position by ``q`` less the fee at the schedule's rate (the
rate the engine books at), and that estimated fee joins the instrument's pending asset fees.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum

from backend.core.fees import FeeSchedule, estimate_fees
from backend.core.instruments import instrument_for
from backend.core.intents import Side, canonical_decimal
from backend.core.ledger import booked_qty
from backend.core.order_lifecycle import OrderState
from backend.core.orders import BrokerOrder, BrokerOrderStatus
from backend.core.paths import CLIENT_ORDER_ID_PREFIX

_ZERO = Decimal(0)
_FINAL_STATUSES = frozenset(
    {
        BrokerOrderStatus.FILLED,
        BrokerOrderStatus.CANCELED,
        BrokerOrderStatus.EXPIRED,
        BrokerOrderStatus.REJECTED,
    }
)


class DriftCode(StrEnum):
    MISSING_FILL = "MISSING_FILL"
    UNKNOWN_ORDER = "UNKNOWN_ORDER"
    EXTERNAL_ORDER = "EXTERNAL_ORDER"
    FEE_ADJUSTMENT_PENDING = "FEE_ADJUSTMENT_PENDING"
    POSITION_MISMATCH = "POSITION_MISMATCH"
    BROKER_POSITION_UNCONFIRMED = "BROKER_POSITION_UNCONFIRMED"
    POSITIONS_UNAVAILABLE = "POSITIONS_UNAVAILABLE"

    @property
    def needs_attention(self) -> bool:
        """Someone should look: not an explained, expected difference (an order placed by hand, a
        fee the next settlement books)."""
        return self not in (DriftCode.EXTERNAL_ORDER, DriftCode.FEE_ADJUSTMENT_PENDING)


@dataclass(frozen=True, slots=True)
class LedgerPosition:
    """The ledger's position in one instrument at one broker account: booked, and in flight per
    side (claimed orders not settled yet, never netted)."""

    qty: Decimal
    in_flight_buy: Decimal = _ZERO
    in_flight_sell: Decimal = _ZERO


@dataclass(frozen=True, slots=True)
class KnownOrder:
    """What the store recorded of one of our orders."""

    client_order_id: str
    tenant_id: str
    filled_qty: Decimal
    state: OrderState


@dataclass(frozen=True, slots=True)
class UnsettledAssetFee:
    """Fees taken in the asset that the ledger booked at the schedule's rate on a day whose fee
    activities are not settled yet (no fee adjustment booked for it)."""

    symbol: str
    day: date
    amount: Decimal


@dataclass(frozen=True, slots=True)
class LedgerView:
    positions: Mapping[str, LedgerPosition]  # by canonical symbol
    orders: Mapping[str, KnownOrder]  # by client order id
    unsettled_asset_fees: tuple[UnsettledAssetFee, ...] = ()


@dataclass(frozen=True, slots=True)
class BrokerView:
    """What the broker reported. ``positions`` is its position list (canonical symbol -> signed
    qty); ``confirmed`` holds the targeted single-position answers for instruments the list
    omitted (0: flat, confirmed; None: the query failed)."""

    positions: Mapping[str, Decimal]
    orders: tuple[BrokerOrder, ...]
    confirmed: Mapping[str, Decimal | None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class OrderEvidence:
    """The broker's order behind a finding, and what the store recorded of it (None: nothing)."""

    client_order_id: str
    broker_order_id: str
    side: Side
    qty: Decimal
    status: BrokerOrderStatus
    broker_filled_qty: Decimal
    recorded_filled_qty: Decimal | None
    submitted_at: datetime
    filled_at: datetime | None


@dataclass(frozen=True, slots=True)
class Finding:
    """One discrepancy. ``difference`` is broker - ledger for the instrument; ``explained_qty`` the
    part of it this finding accounts for (for a mismatch: what is left unexplained)."""

    code: DriftCode
    broker_account: str
    message: str
    symbol: str | None = None
    ledger_qty: Decimal | None = None
    broker_qty: Decimal | None = None
    difference: Decimal | None = None
    explained_qty: Decimal = _ZERO
    order: OrderEvidence | None = None
    pending_fee: Decimal | None = None
    fee_days: tuple[date, ...] = ()


@dataclass(frozen=True, slots=True)
class PositionComparison:
    """One instrument compared: ``broker_qty`` None when the broker's position is unconfirmed."""

    symbol: str
    ledger: LedgerPosition
    broker_qty: Decimal | None
    explained: Mapping[DriftCode, Decimal]
    unexplained: Decimal

    @property
    def difference(self) -> Decimal | None:
        return None if self.broker_qty is None else self.broker_qty - self.ledger.qty


@dataclass(frozen=True, slots=True)
class DriftReport:
    broker_account: str
    checked_at: datetime
    findings: tuple[Finding, ...]
    positions: tuple[PositionComparison, ...] = ()
    available: bool = True  # False: the broker's positions could not be read, nothing compared

    @property
    def drift(self) -> bool:
        return bool(self.findings)

    @property
    def needs_attention(self) -> bool:
        return any(finding.code.needs_attention for finding in self.findings)

    def counts(self) -> dict[DriftCode, int]:
        counted: dict[DriftCode, int] = {}
        for finding in self.findings:
            counted[finding.code] = counted.get(finding.code, 0) + 1
        return counted


def positions_unavailable(broker_account: str, why: str, checked_at: datetime) -> DriftReport:
    """A failed position read is "unknown", never flat: one finding, nothing compared."""
    finding = Finding(
        DriftCode.POSITIONS_UNAVAILABLE,
        broker_account,
        f"{broker_account}: the broker's positions could not be read ({why}); nothing was compared, "
        "and no position is taken as flat",
    )
    return DriftReport(broker_account, checked_at, (finding,), available=False)


def symbols_to_confirm(
    ledger: Mapping[str, LedgerPosition], broker_positions: Mapping[str, Decimal]
) -> list[str]:
    """Instruments the ledger holds that the broker's list omits. A list is not proof of flat:
    each needs a targeted single-position query before it is compared."""
    return sorted(s for s, position in ledger.items() if position.qty != 0 and s not in broker_positions)


@dataclass(frozen=True, slots=True)
class _OrderEffect:
    symbol: str
    finding: Finding
    position_qty: Decimal  # signed, as the ledger would book it
    asset_fee: Decimal  # the fee taken in the asset on it, at the schedule's rate


def reconcile_positions(
    broker_account: str,
    ledger: LedgerView,
    broker: BrokerView,
    fee_schedule: FeeSchedule,
    checked_at: datetime,
) -> DriftReport:
    """Every discrepancy between ``ledger`` and ``broker`` for one broker account, explained where
    the orders and the pending fees allow; the rest as mismatches."""
    effects = [
        effect
        for order in broker.orders
        if (effect := _order_effect(broker_account, order, ledger, fee_schedule))
    ]
    by_symbol: dict[str, list[_OrderEffect]] = defaultdict(list)
    for effect in effects:
        by_symbol[effect.symbol].append(effect)
    fees_by_symbol: dict[str, list[UnsettledAssetFee]] = defaultdict(list)
    for fee in ledger.unsettled_asset_fees:
        fees_by_symbol[fee.symbol].append(fee)

    findings: list[Finding] = []
    comparisons: list[PositionComparison] = []
    symbols = sorted(set(ledger.positions) | set(broker.positions) | set(by_symbol))
    for symbol in symbols:
        position = ledger.positions.get(symbol, LedgerPosition(_ZERO))
        broker_qty = _broker_qty(symbol, position, broker)
        comparison, symbol_findings = _compare(
            broker_account, symbol, position, broker_qty, by_symbol[symbol], fees_by_symbol[symbol]
        )
        comparisons.append(comparison)
        findings.extend(symbol_findings)
    return DriftReport(broker_account, checked_at, tuple(findings), tuple(comparisons))


def _broker_qty(symbol: str, position: LedgerPosition, broker: BrokerView) -> Decimal | None:
    """The broker's quantity, or None where it is unconfirmed (the list omits a position the ledger
    holds and no targeted query answered)."""
    if symbol in broker.positions:
        return broker.positions[symbol]
    if position.qty == 0:
        return _ZERO  # neither side holds it
    return broker.confirmed.get(symbol)


def _compare(
    broker_account: str,
    symbol: str,
    position: LedgerPosition,
    broker_qty: Decimal | None,
    effects: list[_OrderEffect],
    fees: list[UnsettledAssetFee],
) -> tuple[PositionComparison, list[Finding]]:
    findings = [_with_position(e.finding, position.qty, broker_qty) for e in effects]
    if broker_qty is None:
        findings.append(_unconfirmed(broker_account, symbol, position))
        return PositionComparison(symbol, position, None, {}, _ZERO), findings
    difference = broker_qty - position.qty
    explained: dict[DriftCode, Decimal] = defaultdict(lambda: _ZERO)
    for effect in effects:
        explained[effect.finding.code] += effect.position_qty
    residual = difference - sum(explained.values(), _ZERO)
    pending = sum((f.amount for f in fees), _ZERO) + sum((e.asset_fee for e in effects), _ZERO)
    if residual != 0 and abs(residual) <= pending:
        explained[DriftCode.FEE_ADJUSTMENT_PENDING] = residual
        days = tuple(sorted({f.day for f in fees}))
        findings.append(_fee_pending(broker_account, symbol, position, broker_qty, residual, pending, days))
        residual = _ZERO
    if residual != 0:
        findings.append(_mismatch(broker_account, symbol, position, broker_qty, explained, residual, pending))
    kept = {code: qty for code, qty in explained.items() if qty != 0}
    return PositionComparison(symbol, position, broker_qty, kept, residual), findings


def _headline(symbol: str, ledger_qty: Decimal, broker_qty: Decimal) -> str:
    difference = broker_qty - ledger_qty
    return f"{symbol}: broker {_t(broker_qty)}, ledger {_t(ledger_qty)} (difference {_t(difference)})"


def _fee_pending(
    broker_account: str,
    symbol: str,
    position: LedgerPosition,
    broker_qty: Decimal,
    residual: Decimal,
    pending: Decimal,
    days: tuple[date, ...],
) -> Finding:
    return Finding(
        DriftCode.FEE_ADJUSTMENT_PENDING,
        broker_account,
        f"{_headline(symbol, position.qty, broker_qty)}; {_t(residual)} is within the {_t(pending)} in fees "
        f"taken in the asset at estimated rates {_on_days(days)}not settled yet: the fee settlement books it",
        symbol,
        position.qty,
        broker_qty,
        broker_qty - position.qty,
        residual,
        pending_fee=pending,
        fee_days=days,
    )


def _t(qty: Decimal) -> str:
    """A quantity as text: one spelling per number (the broker writes "10.0" for 10)."""
    return canonical_decimal(qty)


def _on_days(days: tuple[date, ...]) -> str:
    return f"on {', '.join(d.isoformat() for d in days)} " if days else ""


def _with_position(finding: Finding, ledger_qty: Decimal, broker_qty: Decimal | None) -> Finding:
    difference = None if broker_qty is None else broker_qty - ledger_qty
    return replace(finding, ledger_qty=ledger_qty, broker_qty=broker_qty, difference=difference)


def _unconfirmed(broker_account: str, symbol: str, position: LedgerPosition) -> Finding:
    return Finding(
        DriftCode.BROKER_POSITION_UNCONFIRMED,
        broker_account,
        f"{symbol}: the ledger holds {_t(position.qty)} but the broker's position list omits it and the "
        "single-position query did not answer: not taken as flat, not compared",
        symbol,
        position.qty,
    )


def _mismatch(
    broker_account: str,
    symbol: str,
    position: LedgerPosition,
    broker_qty: Decimal,
    explained: Mapping[DriftCode, Decimal],
    residual: Decimal,
    pending_fee: Decimal,
) -> Finding:
    difference = broker_qty - position.qty
    parts = [f"{code.value} {_t(qty)}" for code, qty in sorted(explained.items()) if qty != 0]
    if pending_fee:
        parts.append(f"asset fees pending {_t(pending_fee)}")
    if position.in_flight_buy or position.in_flight_sell:
        parts.append(f"in flight: buy {_t(position.in_flight_buy)}, sell {_t(position.in_flight_sell)}")
    context = f" ({'; '.join(parts)})" if parts else ""
    return Finding(
        DriftCode.POSITION_MISMATCH,
        broker_account,
        f"{_headline(symbol, position.qty, broker_qty)}: {_t(residual)} unexplained{context}",
        symbol,
        position.qty,
        broker_qty,
        difference,
        residual,
        pending_fee=pending_fee or None,
    )


def _order_effect(
    broker_account: str, order: BrokerOrder, ledger: LedgerView, fee_schedule: FeeSchedule
) -> _OrderEffect | None:
    """What one broker order explains, or None when it explains nothing (ours and fully recorded;
    not ours and done without a fill)."""
    ours = order.client_order_id.startswith(CLIENT_ORDER_ID_PREFIX)
    known = ledger.orders.get(order.client_order_id) if ours else None
    if known is not None:
        code = DriftCode.MISSING_FILL
        unrecorded = order.filled_qty - known.filled_qty
        if unrecorded <= 0:
            return None
        what = (
            f"filled {_t(order.filled_qty)} at the broker, the ledger recorded {_t(known.filled_qty)} "
            f"(order {known.state.value}): {_t(unrecorded)} unrecorded; the next delivery or the sweeper "
            "records it"
        )
    elif ours:
        code, unrecorded = DriftCode.UNKNOWN_ORDER, order.filled_qty
        what = (
            f"carries this product's client order id prefix but the store has no record of it "
            f"({order.status.value}, filled {_t(order.filled_qty)} of {_t(order.qty)})"
        )
    else:
        if order.status in _FINAL_STATUSES and order.filled_qty == 0:
            return None
        code, unrecorded = DriftCode.EXTERNAL_ORDER, order.filled_qty
        what = (
            f"was not placed by this product ({order.status.value}, filled {_t(order.filled_qty)} of "
            f"{_t(order.qty)}); the ledger never books it"
        )
    position_qty, asset_fee = _booked_effect(order, unrecorded, fee_schedule)
    evidence = OrderEvidence(
        client_order_id=order.client_order_id,
        broker_order_id=order.order_id,
        side=order.side,
        qty=order.qty,
        status=order.status,
        broker_filled_qty=order.filled_qty,
        recorded_filled_qty=known.filled_qty if known is not None else None,
        submitted_at=order.submitted_at,
        filled_at=order.filled_at,
    )
    finding = Finding(
        code,
        broker_account,
        f"{order.symbol}: {order.side.value} order {order.client_order_id or order.order_id} {what}",
        order.symbol,
        explained_qty=position_qty,
        order=evidence,
    )
    return _OrderEffect(order.symbol, finding, position_qty, asset_fee)


def _booked_effect(order: BrokerOrder, filled: Decimal, fee_schedule: FeeSchedule) -> tuple[Decimal, Decimal]:
    """(signed position change, fee taken in the asset) of ``filled`` of ``order``, as the engine
    books a fill: at the schedule's taker rate."""
    if filled == 0:
        return _ZERO, _ZERO
    instrument = instrument_for(order.symbol)
    fees = estimate_fees(instrument, order.side, filled, order.avg_fill_price or _ZERO, fee_schedule)
    booked = booked_qty(filled, order.side, fees, instrument.quote_currency)
    return order.side.sign * booked, filled - booked
