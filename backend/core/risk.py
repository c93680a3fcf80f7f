"""Pre-trade risk: kill switch, position limits, daily trade count. Pure; the caller supplies
exposure and the price to value it at.

Every check runs and is kept for the audit trail; the first failing one names the refusal.
A limit of 0 means "nothing allowed", never "unlimited". The position is limited in the
instrument's units (contracts for options) and, when configured, in value: ``|position| x price x
multiplier`` in the instrument's quote currency.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType

from backend.core.instruments import AssetClass
from backend.core.intents import OrderIntent, Side
from backend.core.reasons import ReasonCode


@dataclass(frozen=True, slots=True)
class RiskLimits:
    kill_switch: bool = False
    kill_reason: str = ""  # who engaged it and why (runtime controls), for the refusal's message
    max_position_qty: Decimal = Decimal(100)
    max_position_qty_by_asset_class: Mapping[AssetClass, Decimal] = field(
        default_factory=lambda: MappingProxyType({})
    )
    max_daily_trades: int = 50
    # In the instrument's quote currency; None: no value limit.
    max_position_notional: Decimal | None = None
    max_position_notional_by_asset_class: Mapping[AssetClass, Decimal] = field(
        default_factory=lambda: MappingProxyType({})
    )
    # One order's value (qty x price x multiplier), in its quote currency; None: no such limit.
    max_order_notional: Decimal | None = None

    def position_limit_for(self, asset_class: AssetClass) -> Decimal:
        return self.max_position_qty_by_asset_class.get(asset_class, self.max_position_qty)

    def notional_limit_for(self, asset_class: AssetClass) -> Decimal | None:
        return self.max_position_notional_by_asset_class.get(asset_class, self.max_position_notional)


@dataclass(frozen=True, slots=True)
class Exposure:
    """What the tenant holds and may still trade today, read from the store by the caller.

    ``pending_buy_qty`` / ``pending_sell_qty`` are the unfilled quantities of orders claimed and not
    yet done, per side (never netted: an in-flight sell lends no headroom to a buy). They count
    against the position limit in the worst case, so concurrent workers cannot spend the same
    headroom. ``daily_slot`` is a free daily-trade slot the claim would take (None: every slot of
    the day is taken); ``trades_today`` is how many are taken, where the store knows it exactly.
    """

    position_qty: Decimal = Decimal(0)
    pending_buy_qty: Decimal = Decimal(0)
    pending_sell_qty: Decimal = Decimal(0)
    daily_slot: int | None = 0
    trades_today: int | None = 0


@dataclass(frozen=True, slots=True)
class RiskCheck:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True, slots=True)
class RiskDecision:
    approved: bool
    reason_code: ReasonCode
    reason: str
    checks: tuple[RiskCheck, ...]


_REFUSAL_CODES = {
    "kill_switch": ReasonCode.KILL_SWITCH,
    "max_position_qty": ReasonCode.POSITION_LIMIT,
    "max_position_notional": ReasonCode.POSITION_LIMIT,
    "max_daily_trades": ReasonCode.DAILY_LIMIT,
    "max_order_notional": ReasonCode.ORDER_NOTIONAL_LIMIT,
}


def _positions(intent: OrderIntent, exposure: Exposure) -> tuple[Decimal, Decimal]:
    """(current, resulting) position in the instrument's units, in the worst case on the intent's
    side: every in-flight order of that side fills, none of the other side does."""
    if intent.side is Side.BUY:
        current = exposure.position_qty + exposure.pending_buy_qty
        return current, current + intent.qty
    current = exposure.position_qty - exposure.pending_sell_qty
    return current, current - intent.qty


def _in_flight(exposure: Exposure, side: Side) -> str:
    pending = exposure.pending_buy_qty if side is Side.BUY else exposure.pending_sell_qty
    return f" incl. {pending} in flight" if pending else ""


def _position_check(intent: OrderIntent, exposure: Exposure, limits: RiskLimits) -> RiskCheck:
    limit = limits.position_limit_for(intent.asset_class)
    current, resulting = _positions(intent, exposure)
    # A trade that shrinks the position is always allowed: refusing it would trap the risk.
    reduces = abs(resulting) < abs(current)
    passed = reduces or abs(resulting) <= limit
    detail = f"position {current}{_in_flight(exposure, intent.side)} -> {resulting} (limit {limit})"
    return RiskCheck("max_position_qty", passed, detail)


def _daily_check(exposure: Exposure, limits: RiskLimits) -> RiskCheck:
    limit = limits.max_daily_trades
    if exposure.trades_today is not None:
        detail = f"{exposure.trades_today} trades today (limit {limit})"
    else:
        detail = (
            f"a free daily trade slot (limit {limit})"
            if exposure.daily_slot is not None
            else (f"every daily trade slot is taken (limit {limit})")
        )
    return RiskCheck("max_daily_trades", exposure.daily_slot is not None and limit > 0, detail)


def _notional_check(
    intent: OrderIntent, exposure: Exposure, limit: Decimal, mark_price: Decimal | None
) -> RiskCheck:
    instrument = intent.instrument
    current, resulting = _positions(intent, exposure)
    if abs(resulting) < abs(current):
        return RiskCheck("max_position_notional", True, "the trade reduces the position")
    if mark_price is None:
        return RiskCheck(
            "max_position_notional", False, f"no price to value {intent.symbol} against the limit"
        )
    value = instrument.notional(abs(resulting), mark_price)
    detail = f"position value {value} {instrument.quote_currency} (limit {limit})"
    return RiskCheck("max_position_notional", value <= limit, detail)


def _order_notional_check(intent: OrderIntent, limit: Decimal, mark_price: Decimal | None) -> RiskCheck:
    """Every order, reducing or not: the limit bounds what one order may move at once."""
    if mark_price is None:
        return RiskCheck("max_order_notional", False, f"no price to value the {intent.symbol} order")
    instrument = intent.instrument
    value = instrument.notional(intent.qty, mark_price)
    detail = f"order value {value} {instrument.quote_currency} (limit {limit})"
    return RiskCheck("max_order_notional", value <= limit, detail)


_KILL_SWITCH_ON = RiskCheck("kill_switch", False, "kill switch engaged")
_KILL_SWITCH_OFF = RiskCheck("kill_switch", True, "kill switch off")


def _kill_check(limits: RiskLimits) -> RiskCheck:
    if not limits.kill_switch:
        return _KILL_SWITCH_OFF
    return RiskCheck("kill_switch", False, limits.kill_reason) if limits.kill_reason else _KILL_SWITCH_ON


def check_risk(
    intent: OrderIntent, exposure: Exposure, limits: RiskLimits, mark_price: Decimal | None = None
) -> RiskDecision:
    """``mark_price`` values the position for a value limit (the quote's mid); without one a
    value limit refuses any trade that does not reduce the position."""
    checks = [
        _kill_check(limits),
        _position_check(intent, exposure, limits),
    ]
    if limits.max_order_notional is not None:
        checks.append(_order_notional_check(intent, limits.max_order_notional, mark_price))
    notional_limit = limits.notional_limit_for(intent.asset_class)
    if notional_limit is not None:
        checks.append(_notional_check(intent, exposure, notional_limit, mark_price))
    checks.append(_daily_check(exposure, limits))
    for check in checks:
        if not check.passed:
            return RiskDecision(
                False, _REFUSAL_CODES[check.name], f"Risk refused: {check.detail}", tuple(checks)
            )
    return RiskDecision(True, ReasonCode.OK, "All risk checks passed", tuple(checks))
