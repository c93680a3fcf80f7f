"""The seed's example strategies, made runnable: each checks costs first, as the seed shows."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from backend.core.quotes import complete_market_data
from functions.strategies.base_strategy import AssetClass, BaseStrategy, SignalType, TradingSignal
from functions.strategies.indicators import RollingReturn, position_of


class CostAwareEquityStrategy(BaseStrategy):
    """Builds an equity position up to ``target_qty``, but only while the spread is acceptable."""

    DEFAULT_CONFIG: Mapping[str, Any] = {
        **BaseStrategy.DEFAULT_CONFIG,
        "supported_assets": [AssetClass.EQUITY],
        "target_qty": 10,
    }

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__({"max_slippage_pct": 0.001, **(config or {})})

    def evaluate(
        self,
        market_data: Mapping[str, Any],
        account_snapshot: Mapping[str, Any],
        regime: str | None = None,
    ) -> TradingSignal:
        data = complete_market_data(market_data)
        symbol = str(data["symbol"])
        slippage = self.estimate_slippage(data)
        if self.should_downgrade_signal(data):
            return TradingSignal(
                signal_type=SignalType.WAIT,
                symbol=symbol,
                asset_class=AssetClass.EQUITY,
                reasoning="Spread too wide - waiting for better execution",
                estimated_slippage=slippage,
            )
        if position_of(account_snapshot, symbol) >= self.config["target_qty"]:
            return TradingSignal(
                signal_type=SignalType.HOLD,
                symbol=symbol,
                asset_class=AssetClass.EQUITY,
                reasoning="Target position reached",
                estimated_slippage=slippage,
            )
        return TradingSignal(
            signal_type=SignalType.BUY,
            symbol=symbol,
            asset_class=AssetClass.EQUITY,
            confidence=0.85,
            reasoning="Below target position with acceptable execution costs",
            estimated_slippage=slippage,
        )


class MultiAssetStrategy(BaseStrategy):
    """Momentum with a lookback and trigger per asset class; costs are checked before anything else.

    ``momentum`` config: ``{ASSET_CLASS: (lookback_updates, min_abs_return)}``.
    """

    DEFAULT_CONFIG: Mapping[str, Any] = {
        **BaseStrategy.DEFAULT_CONFIG,
        "supported_assets": [AssetClass.EQUITY, AssetClass.FOREX, AssetClass.CRYPTO],
        "momentum": {
            AssetClass.EQUITY: (20, 0.001),
            AssetClass.FOREX: (50, 0.0002),
            AssetClass.CRYPTO: (20, 0.0005),
        },
    }

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(config)
        self._returns: dict[str, RollingReturn] = {}

    def evaluate(
        self,
        market_data: Mapping[str, Any],
        account_snapshot: Mapping[str, Any],
        regime: str | None = None,
    ) -> TradingSignal:
        data = complete_market_data(market_data)
        symbol = str(data["symbol"])
        asset_class = BaseStrategy.detect_asset_class(symbol)
        slippage = self.estimate_slippage(data)
        if self.should_downgrade_signal(data):
            return TradingSignal(
                signal_type=SignalType.WAIT,
                symbol=symbol,
                asset_class=asset_class,
                reasoning=f"High costs for {asset_class.value}",
                estimated_slippage=slippage,
            )
        if asset_class not in self.config["momentum"]:
            return TradingSignal(SignalType.HOLD, symbol, asset_class, reasoning="No rule for this class")
        lookback, trigger = self.config["momentum"][asset_class]
        tracker = self._returns.setdefault(symbol, RollingReturn(int(lookback)))
        move = tracker.update(float(data["price"]))
        position = position_of(account_snapshot, symbol)
        kind, reasoning = SignalType.HOLD, "No momentum"
        if move is None:
            reasoning = "Warming up"
        elif move >= trigger and position <= 0:
            kind, reasoning = SignalType.BUY, f"{asset_class.value} momentum +{move:.4%}"
        elif move <= -trigger and position > 0:
            kind, reasoning = SignalType.SELL, f"{asset_class.value} momentum {move:.4%}"
        confidence = min(1.0, abs(move) / (4 * trigger)) if move is not None else 0.0
        return TradingSignal(kind, symbol, asset_class, confidence, reasoning, slippage)
