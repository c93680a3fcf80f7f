"""Top-of-book quotes, their spread arithmetic and the checks that make a quote usable.

Prices are ``Decimal`` so that a spread sitting exactly on a threshold compares as equal instead of
drifting a few ulps to either side. ``spread_pct`` is always a *fraction of the mid price*
(0.001 means 0.1 %).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from backend.core.instruments import AssetClass, detect_asset_class
from backend.core.numbers import to_decimal
from backend.core.reasons import ReasonCode

_TWO = Decimal(2)


def require_utc(timestamp: datetime, field: str = "timestamp") -> datetime:
    if timestamp.tzinfo is None or timestamp.utcoffset() is None:
        raise ValueError(f"{field} must be timezone-aware (UTC), got naive {timestamp.isoformat()}")
    return timestamp.astimezone(UTC)


def spread_fraction(bid: Decimal, ask: Decimal) -> Decimal:
    """(ask - bid) / mid. Callers check the quote first: mid must be positive."""
    return (ask - bid) * _TWO / (ask + bid)


@dataclass(frozen=True, slots=True)
class Quote:
    """One top-of-book quote. Spread, mid and spread_pct are derived once, at construction: a quote
    is read several times (cost gate, fill, decision record) and never changes."""

    symbol: str
    asset_class: AssetClass
    bid: Decimal
    ask: Decimal
    timestamp: datetime
    bid_size: Decimal | None = None
    ask_size: Decimal | None = None
    spread: Decimal = field(init=False, repr=False, compare=False)
    mid_price: Decimal = field(init=False, repr=False, compare=False)
    spread_pct: Decimal = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        total = self.ask + self.bid
        object.__setattr__(self, "spread", self.ask - self.bid)
        object.__setattr__(self, "mid_price", total / _TWO)
        # An unusable quote (zero or negative prices) has no meaningful spread fraction.
        object.__setattr__(self, "spread_pct", self.spread * _TWO / total if total > 0 else Decimal("NaN"))

    def __getitem__(self, key: str) -> Any:
        """Dict-style access, so code written against the seed's quote dict keeps working."""
        if key in _QUOTE_KEYS:
            return getattr(self, key)
        raise KeyError(key)

    def to_market_data(self) -> dict[str, Any]:
        """The seed's ``market_data`` dict that strategies receive (floats, as the seed shows)."""
        return {
            "symbol": self.symbol,
            "asset_class": self.asset_class.value,
            "price": float(self.mid_price),
            "bid": float(self.bid),
            "ask": float(self.ask),
            "spread": float(self.spread),
            "spread_pct": float(self.spread_pct),
            "timestamp": self.timestamp,
        }


_QUOTE_KEYS = frozenset(
    {
        "symbol",
        "asset_class",
        "bid",
        "ask",
        "timestamp",
        "bid_size",
        "ask_size",
        "spread",
        "mid_price",
        "spread_pct",
    }
)


def quote_problem(quote: Quote | None, now: datetime, max_age: timedelta) -> tuple[ReasonCode, str] | None:
    """Why a quote must not be traded on, or None when it is usable."""
    if quote is None:
        return ReasonCode.QUOTE_MISSING, "No quote available"
    if quote.bid <= 0 or quote.ask <= 0:
        return (
            ReasonCode.QUOTE_NON_POSITIVE,
            f"Quote has a non-positive price (bid {quote.bid}, ask {quote.ask})",
        )
    if quote.ask < quote.bid:
        return ReasonCode.QUOTE_CROSSED, f"Quote is crossed (ask {quote.ask} < bid {quote.bid})"
    age = now - quote.timestamp
    if age > max_age:
        return (
            ReasonCode.QUOTE_STALE,
            f"Quote is {age.total_seconds():.3f}s old, older than the allowed {max_age.total_seconds():g}s",
        )
    return None


def market_data_spread_pct(market_data: Mapping[str, Any]) -> Decimal | None:
    """The spread fraction of a seed-style ``market_data`` dict.

    Bid and ask are the source of truth when present; a given ``spread_pct`` is used only when
    they are missing. None when the data cannot be priced (missing, crossed or non-positive).
    """
    bid, ask = market_data.get("bid"), market_data.get("ask")
    if bid is not None and ask is not None:
        bid_d, ask_d = to_decimal(bid, "bid"), to_decimal(ask, "ask")
        if bid_d <= 0 or ask_d <= 0 or ask_d < bid_d:
            return None
        return spread_fraction(bid_d, ask_d)
    given = market_data.get("spread_pct")
    if given is None:
        return None
    spread_pct = to_decimal(given, "spread_pct")
    return spread_pct if spread_pct >= 0 else None


def complete_market_data(market_data: Mapping[str, Any]) -> dict[str, Any]:
    """Fill in what the seed's ``market_data`` leaves out (spread, spread_pct, price, class)."""
    completed = dict(market_data)
    symbol = completed.get("symbol")
    if not completed.get("asset_class") and symbol:
        completed["asset_class"] = detect_asset_class(str(symbol)).value
    bid, ask = completed.get("bid"), completed.get("ask")
    if bid is not None and ask is not None:
        bid_d, ask_d = to_decimal(bid, "bid"), to_decimal(ask, "ask")
        completed.setdefault("spread", float(ask_d - bid_d))
        if completed.get("price") is None:
            completed["price"] = float((bid_d + ask_d) / _TWO)
    spread_pct = market_data_spread_pct(completed)
    if spread_pct is not None:
        completed["spread_pct"] = float(spread_pct)
    return completed
