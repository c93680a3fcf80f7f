"""Strategies by name: what a strategy configuration (or ``--strategy``) refers to."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from functions.strategies.base_strategy import BaseStrategy
from functions.strategies.examples import CostAwareEquityStrategy, MultiAssetStrategy
from functions.strategies.mean_reversion import MeanReversionStrategy

STRATEGIES: dict[str, Callable[[dict[str, Any]], BaseStrategy]] = {
    "mean_reversion": MeanReversionStrategy,
    "multi_asset": MultiAssetStrategy,
    "cost_aware_equity": CostAwareEquityStrategy,
}
