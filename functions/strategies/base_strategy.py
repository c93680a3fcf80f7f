"""The strategy contract: signals, cost awareness and asset-class detection (the seed's public API).

``AssetClass`` and the symbol rules live in ``backend.core.instruments`` (one place for the concept);
they are re-exported here under the seed's names.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Any

from backend.core.instruments import AssetClass
from backend.core.instruments import detect_asset_class as _detect_asset_class
from backend.core.quotes import market_data_spread_pct, to_decimal

__all__ = ["AssetClass", "BaseStrategy", "SignalType", "TradingSignal"]


class SignalType(StrEnum):
    BUY = "BUY"
    SELL = "SELL"
    HOLD = "HOLD"  # no trade wanted: the position is where the strategy wants it
    WAIT = "WAIT"  # a trade is wanted but not now: costs would destroy the alpha

    @property
    def is_trade(self) -> bool:
        return self in (SignalType.BUY, SignalType.SELL)


@dataclass(frozen=True, slots=True)
class TradingSignal:
    signal_type: SignalType
    symbol: str | None = None
    asset_class: AssetClass | None = None
    confidence: float = 0.0
    reasoning: str = ""
    estimated_slippage: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.signal_type, SignalType):
            object.__setattr__(self, "signal_type", SignalType(str(self.signal_type).upper()))
        if self.asset_class is not None and not isinstance(self.asset_class, AssetClass):
            object.__setattr__(self, "asset_class", AssetClass.parse(self.asset_class))
        if self.asset_class is None and self.symbol:
            object.__setattr__(self, "asset_class", _detect_asset_class(self.symbol))
        if not (isinstance(self.confidence, int | float) and 0.0 <= self.confidence <= 1.0):
            raise ValueError(f"confidence must be a number in [0, 1], got {self.confidence!r}")
        slippage = self.estimated_slippage
        if slippage is not None and not (math.isfinite(slippage) and slippage >= 0):
            raise ValueError(f"estimated_slippage must be a finite fraction >= 0, got {slippage!r}")


class BaseStrategy(ABC):
    """Subclasses implement ``evaluate``; the cost helpers use ``config['max_slippage_pct']``.

    ``config`` keys: ``max_slippage_pct`` (fraction, default 0.001 = 0.1 %), ``supported_assets``
    (asset classes the strategy trades, default all), ``max_slippage_pct_by_asset_class``
    (optional overrides). Other keys are the subclass's own.
    """

    DEFAULT_CONFIG: Mapping[str, Any] = {
        "max_slippage_pct": 0.001,
        "supported_assets": list(AssetClass),
        "max_slippage_pct_by_asset_class": {},
    }

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        merged = {**self.DEFAULT_CONFIG, **(config or {})}
        threshold = to_decimal(merged["max_slippage_pct"], "max_slippage_pct")
        if threshold < 0:
            raise ValueError(f"max_slippage_pct must be >= 0, got {merged['max_slippage_pct']!r}")
        merged["supported_assets"] = [AssetClass.parse(a) for a in merged["supported_assets"]]
        self._thresholds = {
            AssetClass.parse(k): to_decimal(v, f"max slippage for {k}")
            for k, v in dict(merged["max_slippage_pct_by_asset_class"]).items()
        }
        self._default_threshold = threshold
        self.config: dict[str, Any] = merged

    @property
    def name(self) -> str:
        return type(self).__name__

    def supports(self, asset_class: AssetClass | str) -> bool:
        return AssetClass.parse(asset_class) in self.config["supported_assets"]

    def slippage_threshold(self, market_data: Mapping[str, Any]) -> Decimal:
        raw_class = market_data.get("asset_class")
        symbol = market_data.get("symbol")
        if raw_class:
            asset_class: AssetClass | None = AssetClass.parse(raw_class)
        else:
            asset_class = _detect_asset_class(str(symbol)) if symbol else None
        return (
            self._thresholds.get(asset_class, self._default_threshold)
            if asset_class
            else self._default_threshold
        )

    def estimate_slippage(self, market_data: Mapping[str, Any]) -> float | None:
        """The quoted spread as a fraction of mid; None when the data cannot be priced."""
        spread_pct = market_data_spread_pct(market_data)
        return float(spread_pct) if spread_pct is not None else None

    def should_downgrade_signal(self, market_data: Mapping[str, Any]) -> bool:
        """True when the spread exceeds the threshold, or when the cost cannot be known."""
        spread_pct = market_data_spread_pct(market_data)
        return spread_pct is None or spread_pct > self.slippage_threshold(market_data)

    @staticmethod
    def detect_asset_class(symbol: str) -> AssetClass:
        return _detect_asset_class(symbol)

    @abstractmethod
    def evaluate(
        self,
        market_data: Mapping[str, Any],
        account_snapshot: Mapping[str, Any],
        regime: str | None = None,
    ) -> TradingSignal:
        """Decide on one symbol from its market data and the account's state."""
