"""SmartRouter: fetches the quote (unless the intent brings its own slippage) and applies the gate."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from decimal import Decimal

from backend.core.instruments import AssetClass
from backend.core.intents import OrderIntent
from backend.core.quotes import Quote
from backend.core.routing import RoutingDecision, RoutingPolicy, decide_route, routing_bypassed
from backend.execution.ports import Clock, MarketDataProvider, SystemClock


class SmartRouter:
    def __init__(
        self,
        max_spread_pct: float | Decimal | str = Decimal("0.001"),
        market_data: MarketDataProvider | None = None,
        *,
        max_spread_pct_by_asset_class: Mapping[AssetClass | str, float | Decimal | str] | None = None,
        max_quote_age_seconds: float = 5.0,
        clock: Clock | None = None,
        policy: RoutingPolicy | None = None,
    ) -> None:
        self.policy = policy or RoutingPolicy.build(
            max_spread_pct=max_spread_pct,
            max_spread_pct_by_asset_class=max_spread_pct_by_asset_class,
            max_quote_age=timedelta(seconds=max_quote_age_seconds),
        )
        self.market_data = market_data
        self.clock = clock or SystemClock()

    @property
    def max_spread_pct(self) -> Decimal:
        return self.policy.max_spread_pct

    def _quote_for(self, intent: OrderIntent, quote: Quote | None) -> Quote | None:
        if quote is not None or self.market_data is None:
            return quote
        return self.market_data.get_quote(intent.symbol, intent.asset_class)

    def analyze_intent(self, intent: OrderIntent, quote: Quote | None = None) -> RoutingDecision:
        """Execute or WAIT. A pre-computed ``estimated_slippage`` on the intent skips the quote fetch."""
        if intent.estimated_slippage is None:
            quote = self._quote_for(intent, quote)
        return decide_route(intent, quote, self.policy, self.clock.now())

    def bypass(self, intent: OrderIntent, quote: Quote | None = None) -> RoutingDecision:
        """Smart routing disabled: let the intent through, still recording the quote it saw."""
        return routing_bypassed(intent, self._quote_for(intent, quote), self.policy)
