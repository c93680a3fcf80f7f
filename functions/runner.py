"""From strategy signals to order intents: sizing and deterministic idempotency keys.

Shared by the local paper run and the Pub/Sub strategy-run function, so both turn a quote into a
signal, and a signal into an intent, in exactly the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType
from typing import Any

from backend.core.instruments import AssetClass, instrument_for
from backend.core.intents import METADATA_MAX_STRING, KeySource, OrderIntent, Side
from backend.core.orders import ExecutionResult
from backend.core.quotes import Quote, to_decimal
from functions.strategies.base_strategy import BaseStrategy, SignalType, TradingSignal

DEFAULT_ORDER_QTY: Mapping[AssetClass, Decimal] = MappingProxyType(
    {
        AssetClass.EQUITY: Decimal(10),
        AssetClass.FOREX: Decimal(10000),
        AssetClass.CRYPTO: Decimal("0.1"),
        AssetClass.OPTIONS: Decimal(1),
    }
)


@dataclass(frozen=True)
class Sizing:
    """Order size per asset class for opening trades; closing trades take the whole position."""

    qty_by_asset_class: Mapping[AssetClass, Decimal] = field(default_factory=lambda: DEFAULT_ORDER_QTY)

    @classmethod
    def with_overrides(cls, overrides: Mapping[AssetClass | str, object]) -> Sizing:
        merged = dict(DEFAULT_ORDER_QTY)
        for asset_class, qty in overrides.items():
            value = to_decimal(qty, f"qty for {asset_class}")
            if value <= 0:
                raise ValueError(f"qty for {asset_class} must be > 0, got {qty!r}")
            merged[AssetClass.parse(asset_class)] = value
        return cls(MappingProxyType(merged))

    def qty_for(self, signal: TradingSignal, position: Decimal) -> Decimal:
        closing = (signal.signal_type is SignalType.SELL and position > 0) or (
            signal.signal_type is SignalType.BUY and position < 0
        )
        if closing:
            return abs(position)
        return self.qty_by_asset_class[signal.asset_class or AssetClass.EQUITY]


def run_idempotency_key(tenant_id: str, strategy_id: str, run_id: str, symbol: str) -> str:
    """One key per (tenant, strategy, run, symbol): a redelivered run can never trade twice. In the
    runner's namespace (``run:``): an HTTP caller cannot choose it."""
    return KeySource.RUN.key(f"{tenant_id}:{strategy_id}:{run_id}:{symbol}")


def intent_for_signal(
    signal: TradingSignal,
    *,
    strategy_id: str,
    broker_account_id: str,
    tenant_id: str,
    uid: str,
    run_id: str,
    position: Decimal,
    sizing: Sizing,
) -> OrderIntent | None:
    """The intent a BUY or SELL signal asks for; None for HOLD and WAIT."""
    if not signal.signal_type.is_trade or not signal.symbol:
        return None
    return OrderIntent(
        strategy_id=strategy_id,
        broker_account_id=broker_account_id,
        symbol=signal.symbol,
        side=Side.BUY if signal.signal_type is SignalType.BUY else Side.SELL,
        qty=sizing.qty_for(signal, position),
        asset_class=signal.asset_class,
        metadata={
            "tenant_id": tenant_id,
            "uid": uid,
            "run_id": run_id,
            "reasoning": signal.reasoning[:METADATA_MAX_STRING],
        },
        idempotency_key=run_idempotency_key(tenant_id, strategy_id, run_id, signal.symbol),
    )


@dataclass(frozen=True)
class RunContext:
    """Who a strategy trades for, in which run, and how big its orders are."""

    strategy_id: str
    broker_account_id: str
    tenant_id: str
    uid: str
    run_id: str
    sizing: Sizing


def evaluate_and_execute(
    strategy: BaseStrategy,
    quote: Quote,
    positions: Mapping[str, Decimal],
    engine: Any,
    context: RunContext,
) -> tuple[TradingSignal, ExecutionResult | None]:
    """One quote through the strategy; a BUY or SELL goes to the engine with that same quote."""
    signal = strategy.evaluate(quote.to_market_data(), {"positions": positions})
    intent = intent_for_signal(
        signal,
        strategy_id=context.strategy_id,
        broker_account_id=context.broker_account_id,
        tenant_id=context.tenant_id,
        uid=context.uid,
        run_id=context.run_id,
        position=positions.get(instrument_for(quote.symbol, quote.asset_class).symbol, Decimal(0)),
        sizing=context.sizing,
    )
    return signal, engine.execute_intent(intent, quote=quote) if intent is not None else None
