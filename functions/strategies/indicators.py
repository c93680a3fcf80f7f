"""Small streaming indicators the example strategies share."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from backend.core.instruments import canonical_symbol


class RollingZScore:
    """z-score of the newest value against a rolling window, O(1) per update.

    Sums are kept of (value - anchor), the anchor being the first value seen, so the variance of a
    1.12-ish FX price moving in the 5th decimal is not lost to cancellation.
    """

    def __init__(self, window: int) -> None:
        if window < 2:
            raise ValueError(f"window must be >= 2, got {window}")
        self.window = window
        self._values: deque[float] = deque()
        self._anchor: float | None = None
        self._sum = 0.0
        self._sum_sq = 0.0

    def update(self, value: float) -> float | None:
        """Add a value; the z-score once the window is full (None before, or when flat)."""
        if self._anchor is None:
            self._anchor = value
        centered = value - self._anchor
        self._values.append(centered)
        self._sum += centered
        self._sum_sq += centered * centered
        if len(self._values) > self.window:
            old = self._values.popleft()
            self._sum -= old
            self._sum_sq -= old * old
        if len(self._values) < self.window:
            return None
        mean = self._sum / self.window
        variance = max(self._sum_sq / self.window - mean * mean, 0.0)
        std = math.sqrt(variance)
        if std == 0.0:
            return None
        return (centered - mean) / std


class RollingReturn:
    """Return of the newest value over the value ``lookback`` updates ago."""

    def __init__(self, lookback: int) -> None:
        if lookback < 1:
            raise ValueError(f"lookback must be >= 1, got {lookback}")
        self._values: deque[float] = deque(maxlen=lookback + 1)

    def update(self, value: float) -> float | None:
        self._values.append(value)
        if len(self._values) < self._values.maxlen or self._values[0] == 0:  # type: ignore[operator]
            return None
        return value / self._values[0] - 1.0


def position_of(account_snapshot: Mapping[str, Any], symbol: str) -> Decimal:
    """The signed position in ``symbol`` from an account snapshot ``{"positions": {symbol: qty}}``
    (positions are keyed by canonical symbol: ``BTCUSD`` finds ``BTC/USD``)."""
    positions = account_snapshot.get("positions") or {}
    value = positions.get(canonical_symbol(symbol), positions.get(symbol, 0))
    return value if isinstance(value, Decimal) else Decimal(str(value))
