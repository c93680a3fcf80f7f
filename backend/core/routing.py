"""The cost gate: execute, or downgrade the signal to WAIT when the spread would eat the alpha.

``decide_route`` is a pure function of the intent, the quote, the policy and the time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from types import MappingProxyType

from backend.core.instruments import AssetClass
from backend.core.intents import OrderIntent
from backend.core.quotes import Quote, quote_problem, to_decimal
from backend.core.reasons import COST_DOWNGRADE_CODES, ReasonCode

DEFAULT_MAX_SPREAD_PCT = Decimal("0.001")
DEFAULT_MAX_QUOTE_AGE = timedelta(seconds=5)


def _frozen_thresholds(
    values: Mapping[AssetClass | str, float | Decimal | str] | None,
) -> Mapping[AssetClass, Decimal]:
    parsed: dict[AssetClass, Decimal] = {}
    for asset_class, value in (values or {}).items():
        threshold = to_decimal(value, f"max spread for {asset_class}")
        if threshold < 0:
            raise ValueError(f"max spread for {asset_class} must be >= 0, got {value!r}")
        parsed[AssetClass.parse(asset_class)] = threshold
    return MappingProxyType(parsed)


@dataclass(frozen=True, slots=True)
class RoutingPolicy:
    max_spread_pct: Decimal = DEFAULT_MAX_SPREAD_PCT
    max_spread_pct_by_asset_class: Mapping[AssetClass, Decimal] = field(
        default_factory=lambda: MappingProxyType({})
    )
    max_quote_age: timedelta = DEFAULT_MAX_QUOTE_AGE

    @classmethod
    def build(
        cls,
        max_spread_pct: float | Decimal | str = DEFAULT_MAX_SPREAD_PCT,
        max_spread_pct_by_asset_class: Mapping[AssetClass | str, float | Decimal | str] | None = None,
        max_quote_age: timedelta | float = DEFAULT_MAX_QUOTE_AGE,
    ) -> RoutingPolicy:
        """Validate loose inputs (floats, strings, class names) into an exact policy."""
        default = to_decimal(max_spread_pct, "max_spread_pct")
        if default < 0:
            raise ValueError(f"max_spread_pct must be >= 0, got {max_spread_pct!r}")
        age = max_quote_age if isinstance(max_quote_age, timedelta) else timedelta(seconds=max_quote_age)
        if age <= timedelta(0):
            raise ValueError(f"max_quote_age must be positive, got {max_quote_age!r}")
        return cls(default, _frozen_thresholds(max_spread_pct_by_asset_class), age)

    def threshold_for(self, asset_class: AssetClass) -> Decimal:
        return self.max_spread_pct_by_asset_class.get(asset_class, self.max_spread_pct)


@dataclass(frozen=True, slots=True)
class RoutingDecision:
    """The router's verdict. ``spread_pct`` and ``estimated_slippage`` are fractions (0.001 = 0.1 %)."""

    should_execute: bool
    reason_code: ReasonCode
    reason: str
    symbol: str
    asset_class: AssetClass
    threshold_pct: float
    spread_pct: float | None = None
    estimated_slippage: float | None = None
    bid: Decimal | None = None
    ask: Decimal | None = None
    mid_price: Decimal | None = None
    quote_timestamp: datetime | None = None

    @property
    def downgraded(self) -> bool:
        """True when the cost gate turned the signal into WAIT (not when the quote was unusable)."""
        return self.reason_code in COST_DOWNGRADE_CODES


def format_pct(value: Decimal, other: Decimal) -> str:
    """Percent with two decimals, as the seed writes it; more only when needed to tell the two apart.

    Display only: the comparison itself is made on the exact Decimals.
    """
    value_pct, other_pct = float(value) * 100, float(other) * 100
    for places in (2, 4, 6):
        text = f"{value_pct:.{places}f}"
        if value == other or text != f"{other_pct:.{places}f}":
            return f"{text}%"
    return f"{value * 100:f}%"  # closer than floats can show: print the exact Decimal


def _verdict(label: str, value: Decimal, threshold: Decimal, exceeds: bool) -> str:
    """'Spread 0.15% exceeds threshold 0.10%': the seed's wording."""
    verdict = "exceeds" if exceeds else "within"
    return f"{label} {format_pct(value, threshold)} {verdict} threshold {format_pct(threshold, value)}"


def decide_route(
    intent: OrderIntent, quote: Quote | None, policy: RoutingPolicy, now: datetime, *, trusted: bool = True
) -> RoutingDecision:
    """Execute or WAIT. A trusted caller (strategy code in this process) may bring its own
    pre-computed ``estimated_slippage`` in place of the quote, as the seed shows. An untrusted one
    (the public HTTP function) cannot loosen the gate with it: the quote is always checked and the
    estimate used is the worse of the caller's and the quote's."""
    threshold = policy.threshold_for(intent.asset_class)
    threshold_f = float(threshold)
    brought = intent.estimated_slippage
    given = None if brought is None else to_decimal(brought, "estimated_slippage")
    if given is not None and trusted:
        too_high = given > threshold
        return RoutingDecision(
            should_execute=not too_high,
            reason_code=ReasonCode.SLIPPAGE_TOO_HIGH if too_high else ReasonCode.OK,
            reason=_verdict("Estimated slippage", given, threshold, too_high),
            symbol=intent.symbol,
            asset_class=intent.asset_class,
            threshold_pct=threshold_f,
            estimated_slippage=intent.estimated_slippage,
        )
    unusable = quote_refusal(intent, quote, policy, now)
    if unusable is not None:
        return unusable
    assert quote is not None  # a missing quote is refused above
    spread = quote.spread_pct
    callers_is_worse = given is not None and given > spread
    estimate = given if callers_is_worse and given is not None else spread
    too_high = estimate > threshold
    if callers_is_worse:
        code, label = ReasonCode.SLIPPAGE_TOO_HIGH, "Estimated slippage"
    else:
        code, label = ReasonCode.SPREAD_TOO_WIDE, "Spread"
    return RoutingDecision(
        should_execute=not too_high,
        reason_code=code if too_high else ReasonCode.OK,
        reason=_verdict(label, estimate, threshold, too_high),
        symbol=intent.symbol,
        asset_class=intent.asset_class,
        threshold_pct=threshold_f,
        spread_pct=float(spread),
        estimated_slippage=float(estimate),
        bid=quote.bid,
        ask=quote.ask,
        mid_price=quote.mid_price,
        quote_timestamp=quote.timestamp,
    )


def quote_refusal(
    intent: OrderIntent, quote: Quote | None, policy: RoutingPolicy, now: datetime
) -> RoutingDecision | None:
    """The refusal for a quote that must not be traded on (missing, non-positive, crossed, stale),
    or None when it is usable."""
    problem = quote_problem(quote, now, policy.max_quote_age)
    if problem is None:
        return None
    code, reason = problem
    return RoutingDecision(
        should_execute=False,
        reason_code=code,
        reason=reason,
        symbol=intent.symbol,
        asset_class=intent.asset_class,
        threshold_pct=float(policy.threshold_for(intent.asset_class)),
        bid=quote.bid if quote else None,
        ask=quote.ask if quote else None,
        quote_timestamp=quote.timestamp if quote else None,
    )


def routing_bypassed(intent: OrderIntent, quote: Quote | None, policy: RoutingPolicy) -> RoutingDecision:
    """Smart routing switched off: record what the quote said, but let the intent through."""
    threshold = policy.threshold_for(intent.asset_class)
    spread = quote.spread_pct if quote is not None and quote.bid > 0 and quote.ask > 0 else None
    return RoutingDecision(
        should_execute=True,
        reason_code=ReasonCode.ROUTING_DISABLED,
        reason="Smart routing disabled; cost gate not applied",
        symbol=intent.symbol,
        asset_class=intent.asset_class,
        threshold_pct=float(threshold),
        spread_pct=float(spread) if spread is not None else None,
        estimated_slippage=(
            intent.estimated_slippage
            if intent.estimated_slippage is not None
            else float(spread)
            if spread is not None
            else None
        ),
        bid=quote.bid if quote else None,
        ask=quote.ask if quote else None,
        mid_price=quote.mid_price if quote else None,
        quote_timestamp=quote.timestamp if quote else None,
    )
