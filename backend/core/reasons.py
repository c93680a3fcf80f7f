"""Stable, machine-readable reason codes. Logs, results, the ledger and the metrics share them."""

from __future__ import annotations

from enum import StrEnum


class ReasonCode(StrEnum):
    OK = "OK"
    ROUTING_DISABLED = "ROUTING_DISABLED"
    # Cost gate: the signal is downgraded to WAIT.
    SPREAD_TOO_WIDE = "SPREAD_TOO_WIDE"
    SLIPPAGE_TOO_HIGH = "SLIPPAGE_TOO_HIGH"
    # The quote cannot be trusted: never executed.
    QUOTE_MISSING = "QUOTE_MISSING"
    QUOTE_NON_POSITIVE = "QUOTE_NON_POSITIVE"
    QUOTE_CROSSED = "QUOTE_CROSSED"
    QUOTE_STALE = "QUOTE_STALE"
    # Risk refusals.
    KILL_SWITCH = "KILL_SWITCH"
    POSITION_LIMIT = "POSITION_LIMIT"
    DAILY_LIMIT = "DAILY_LIMIT"
    ORDER_NOTIONAL_LIMIT = "ORDER_NOTIONAL_LIMIT"  # one order's value above the limit in force
    RATE_LIMIT = "RATE_LIMIT"  # the tenant's orders this minute reached its order-rate limit
    # Venue and broker refusals (before or at the broker).
    NO_VENUE_FOR_ASSET_CLASS = "NO_VENUE_FOR_ASSET_CLASS"
    ORDER_INVALID = "ORDER_INVALID"
    INSUFFICIENT_BUYING_POWER = "INSUFFICIENT_BUYING_POWER"
    ASSET_NOT_TRADABLE = "ASSET_NOT_TRADABLE"
    MARKET_CLOSED = "MARKET_CLOSED"
    # Broker outcomes.
    BROKER_REJECTED = "BROKER_REJECTED"
    BROKER_ERROR = "BROKER_ERROR"
    BROKER_OUTCOME_UNKNOWN = "BROKER_OUTCOME_UNKNOWN"
    ORDER_CANCELED = "ORDER_CANCELED"  # the broker canceled it before anything filled
    ORDER_EXPIRED = "ORDER_EXPIRED"  # its time in force ran out before anything filled
    NEVER_PLACED = "NEVER_PLACED"  # proven absent at the broker after the reconcile window: released
    INTENT_EXPIRED = "INTENT_EXPIRED"  # too old to send again after a lost submit: released
    ORDER_NOT_CANCELABLE = "ORDER_NOT_CANCELABLE"  # final at the broker already, or not there
    IN_FLIGHT = "IN_FLIGHT"
    DRY_RUN = "DRY_RUN"


COST_DOWNGRADE_CODES: frozenset[ReasonCode] = frozenset(
    {ReasonCode.SPREAD_TOO_WIDE, ReasonCode.SLIPPAGE_TOO_HIGH}
)
