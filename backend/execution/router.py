"""SmartRouter: fetches the quote (unless the intent brings its own slippage) and applies the gate."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal

from backend.core.instruments import AssetClass
from backend.core.intents import OrderIntent
from backend.core.quotes import Quote
from backend.core.reasons import ReasonCode
from backend.core.routing import RoutingDecision, RoutingPolicy, decide_route, quote_refusal, routing_bypassed
from backend.execution.ports import Clock, MarketDataProvider, SystemClock
from backend.execution.settings import ConfigurationError, load_settings
from backend.observability.logging import log_event

logger = logging.getLogger("msr.execution")


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
        self.clock = clock or SystemClock()
        self._market_data = market_data
        self._market_data_resolved = market_data is not None
        self._market_data_missing: str | None = None  # why none is configured, once known
        self._resolve_lock = threading.Lock()

    @property
    def max_spread_pct(self) -> Decimal:
        return self.policy.max_spread_pct

    @property
    def market_data(self) -> MarketDataProvider | None:
        """The provider given, else the configured one (``EXEC_MARKET_DATA``), looked up on first use
        so that constructing a router never needs configuration. None when nothing is configured."""
        if not self._market_data_resolved:
            with self._resolve_lock:
                if not self._market_data_resolved:
                    self._market_data = self._configured_market_data()
                    self._market_data_resolved = True
        return self._market_data

    @market_data.setter
    def market_data(self, provider: MarketDataProvider | None) -> None:
        with self._resolve_lock:
            self._market_data, self._market_data_resolved = provider, True
            self._market_data_missing = None

    def _configured_market_data(self) -> MarketDataProvider | None:
        from backend.adapters.market_data_selection import configured_market_data

        try:
            return configured_market_data(load_settings(), clock=self.clock)
        except ConfigurationError as exc:
            # Not an exception per intent: every intent is refused as QUOTE_MISSING, and said so once.
            self._market_data_missing = f"no market data is configured ({exc})"
            log_event(
                logger,
                "exec.market_data_missing",
                f"SmartRouter has no market data: {self._market_data_missing}",
                logging.WARNING,
            )
            return None

    def _quote_for(self, intent: OrderIntent, quote: Quote | None) -> Quote | None:
        if quote is not None:
            return quote
        market_data = self.market_data
        return None if market_data is None else market_data.get_quote(intent.symbol, intent.asset_class)

    def analyze_intent(
        self, intent: OrderIntent, quote: Quote | None = None, *, trusted: bool = True
    ) -> RoutingDecision:
        """Execute or WAIT. From trusted strategy code a pre-computed ``estimated_slippage`` on the
        intent skips the quote fetch (the seed's path); for an untrusted caller (``trusted=False``:
        the public HTTP function) the quote is always fetched and checked, and the caller's figure
        can only make the estimate worse."""
        if intent.estimated_slippage is None or not trusted:
            quote = self._quote_for(intent, quote)
        decision = decide_route(intent, quote, self.policy, self.clock.now(), trusted=trusted)
        if decision.reason_code is ReasonCode.QUOTE_MISSING and self._market_data_missing is not None:
            return replace(decision, reason=f"No quote available: {self._market_data_missing}")
        return decision

    def bypass(
        self, intent: OrderIntent, quote: Quote | None = None, *, trusted: bool = True
    ) -> RoutingDecision:
        """Smart routing disabled: let the intent through, still recording the quote it saw. An
        untrusted caller's intent still needs a usable quote (the gate is off, not the checks)."""
        quote = self._quote_for(intent, quote)
        if not trusted:
            refusal = quote_refusal(intent, quote, self.policy, self.clock.now())
            if refusal is not None:
                return refusal
        return routing_bypassed(intent, quote, self.policy)
