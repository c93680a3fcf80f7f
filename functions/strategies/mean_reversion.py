"""A real, simple strategy for the tapes: fade moves of more than ``entry_z`` standard deviations.

Long/flat by default: buy when the mid falls ``entry_z`` deviations below its rolling mean, sell the
position when it has come back to ``exit_z``. With ``allow_short`` it mirrors the rule upwards.
The cost gate is left to the engine's SmartRouter, so its metrics see every trade idea.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from backend.core.quotes import complete_market_data
from functions.strategies.base_strategy import BaseStrategy, SignalType, TradingSignal
from functions.strategies.indicators import RollingZScore, position_of


class MeanReversionStrategy(BaseStrategy):
    DEFAULT_CONFIG: Mapping[str, Any] = {
        **BaseStrategy.DEFAULT_CONFIG,
        "window": 100,
        "entry_z": 2.0,
        "exit_z": 0.0,
        "allow_short": False,
    }

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(config)
        self._window = int(self.config["window"])
        self._entry_z = float(self.config["entry_z"])
        self._exit_z = float(self.config["exit_z"])
        if self._entry_z <= 0 or self._exit_z >= self._entry_z:
            raise ValueError("need entry_z > 0 and exit_z < entry_z")
        self._zscores: dict[str, RollingZScore] = {}

    def evaluate(
        self,
        market_data: Mapping[str, Any],
        account_snapshot: Mapping[str, Any],
        regime: str | None = None,
    ) -> TradingSignal:
        data = complete_market_data(market_data)
        symbol = str(data["symbol"])
        zscore = self._zscores.setdefault(symbol, RollingZScore(self._window))
        z = zscore.update(float(data["price"]))
        slippage = self.estimate_slippage(data)

        def signal(kind: SignalType, reasoning: str) -> TradingSignal:
            confidence = min(1.0, abs(z) / (2 * self._entry_z)) if z is not None else 0.0
            return TradingSignal(
                signal_type=kind,
                symbol=symbol,
                asset_class=data.get("asset_class"),
                confidence=confidence,
                reasoning=reasoning,
                estimated_slippage=slippage,
            )

        if z is None:
            return signal(SignalType.HOLD, "Warming up: rolling window not full")
        position = position_of(account_snapshot, symbol)
        if position == 0 and z <= -self._entry_z:
            return signal(SignalType.BUY, f"Mid {z:.2f} sd below its rolling mean")
        if position == 0 and z >= self._entry_z and self.config["allow_short"]:
            return signal(SignalType.SELL, f"Mid {z:.2f} sd above its rolling mean")
        if position > 0 and z >= self._exit_z:
            return signal(SignalType.SELL, f"Reverted to {z:.2f} sd: take the long off")
        if position < 0 and z <= -self._exit_z:
            return signal(SignalType.BUY, f"Reverted to {z:.2f} sd: cover the short")
        return signal(SignalType.HOLD, f"z={z:.2f}: no edge")
