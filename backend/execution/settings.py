"""``EXEC_*`` configuration, read once into a typed, validated, frozen object.

A bad value fails at start-up with the variable's name, never at the first trade.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from backend.core.fees import FeeSchedule
from backend.core.instruments import AssetClass
from backend.core.risk import RiskLimits
from backend.core.routing import RoutingPolicy

NonNegativeDecimal = Annotated[Decimal, Field(ge=0, allow_inf_nan=False)]
FiniteDecimal = Annotated[Decimal, Field(allow_inf_nan=False)]


# Alpaca trades US equities, options and spot crypto; it does not trade FX.
DEFAULT_VENUES: dict[AssetClass, str] = {
    AssetClass.EQUITY: "alpaca",
    AssetClass.CRYPTO: "alpaca",
    AssetClass.OPTIONS: "alpaca",
    AssetClass.FOREX: "paper",
}


@dataclass(frozen=True, slots=True)
class SweepLimits:
    """The settlement sweeper's bounds (``EXEC_SWEEP_*``)."""

    older_than: timedelta = timedelta(seconds=60)  # fresher orders are their delivery's to settle
    max_orders: int = 500  # per run
    max_seconds: float = 240.0  # per run: under a scheduled function's timeout
    page_size: int = 100


class ConfigurationError(ValueError):
    """An EXEC_* variable holds a value the engine cannot run with."""


class ExecSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EXEC_", frozen=True, extra="ignore")

    dry_run: bool = True
    kill_switch: bool = False
    max_position_qty: NonNegativeDecimal = Decimal(100)
    # JSON, e.g. EXEC_MAX_POSITION_QTY_BY_ASSET_CLASS='{"FOREX": 100000}'
    max_position_qty_by_asset_class: dict[AssetClass, NonNegativeDecimal] = Field(default_factory=dict)
    max_daily_trades: Annotated[int, Field(ge=0)] = 50
    # The value of a position, in the instrument's quote currency (unset: no value limit).
    max_position_notional: NonNegativeDecimal | None = None
    max_position_notional_by_asset_class: dict[AssetClass, NonNegativeDecimal] = Field(default_factory=dict)
    # One order's value, in its quote currency (unset: no such limit); runtime controls may tighten it.
    max_order_notional: NonNegativeDecimal | None = None
    # How long a function instance trusts the runtime controls it read (kill switches, limit
    # overrides): a flip takes effect everywhere within this many seconds.
    controls_cache_s: Annotated[float, Field(ge=0, le=60, allow_inf_nan=False)] = 5.0
    max_spread_pct: NonNegativeDecimal = Decimal("0.001")
    # JSON, e.g. EXEC_MAX_SPREAD_PCT_BY_ASSET_CLASS='{"OPTIONS": 0.05}'
    max_spread_pct_by_asset_class: dict[AssetClass, NonNegativeDecimal] = Field(default_factory=dict)
    max_quote_age_seconds: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 5.0
    tenant_id: Annotated[str, Field(min_length=1)] = "default"
    uid: Annotated[str, Field(min_length=1)] = "default"
    sqlite_path: Annotated[str, Field(min_length=1)] = ".msr/ledger.sqlite3"
    # auto: Firestore when FIRESTORE_EMULATOR_HOST or a Google Cloud project is configured, else SQLite.
    store: Literal["auto", "sqlite", "firestore"] = "auto"
    # Venue per asset class, overriding DEFAULT_VENUES: JSON, e.g. EXEC_VENUES='{"FOREX": "none"}'.
    venues: dict[AssetClass, Literal["alpaca", "paper", "none"]] = Field(default_factory=dict)
    # A claim's lease: how long the worker that claimed an order has to send it and record the
    # broker's answer before another delivery may settle it (longer than one broker call).
    lease_seconds: Annotated[float, Field(gt=0)] = 60.0
    # An order the broker does not know this long after its last change (and after its lease) was
    # never placed: it is re-sent under the same client order id, or released.
    reconcile_after_seconds: Annotated[float, Field(ge=0)] = 60.0
    # Keys are namespaced by source (api:, run:); an intent delivered again after the upgrade also
    # finds what was stored under its key from before (0 once nothing from then is in flight).
    legacy_idempotency_keys: bool = True
    # How long after its first decision an intent whose send was lost may still be sent again.
    intent_ttl_seconds: Annotated[float, Field(gt=0)] = 300.0
    # The settlement sweeper: open orders unchanged for this long are its to settle; per run at
    # most this many orders and this many seconds (under the scheduled function's timeout).
    sweep_after_seconds: Annotated[float, Field(ge=0)] = 60.0
    sweep_max_orders: Annotated[int, Field(ge=1)] = 500
    sweep_max_seconds: Annotated[float, Field(gt=0)] = 240.0
    # auto: the embedded store fans out inline; on Firestore the ledger trigger does it.
    fanout: Literal["auto", "inline", "trigger"] = "auto"
    # JSON overrides of the fee schedule's figures, e.g. '{"sec_fee_rate": "0", "as_of": "2025-05-14"}'.
    # Kept as text and parsed with exact decimals (a JSON number never passes through a float).
    fee_schedule: str = ""

    @field_validator("fee_schedule")
    @classmethod
    def _valid_fee_schedule(cls, value: str) -> str:
        _fee_schedule(value)
        return value

    def sweep_limits(self) -> SweepLimits:
        return SweepLimits(
            older_than=timedelta(seconds=self.sweep_after_seconds),
            max_orders=self.sweep_max_orders,
            max_seconds=self.sweep_max_seconds,
        )

    def fee_schedule_config(self) -> FeeSchedule:
        return _fee_schedule(self.fee_schedule)

    # Where quotes come from when none is passed in (``MarketDataProvider()``, a ``SmartRouter``
    # without ``market_data``). auto: Alpaca when its keys are set, else EXEC_STATIC_QUOTES when set.
    market_data: Literal["auto", "alpaca", "static", "tapes"] = "auto"
    # JSON bid and ask per symbol, e.g. EXEC_STATIC_QUOTES='{"EUR/USD": ["1.08500", "1.08510"]}'.
    static_quotes: Annotated[dict[str, tuple[FiniteDecimal, FiniteDecimal]] | None, NoDecode] = None
    # A directory of recorded tapes for EXEC_MARKET_DATA=tapes (default: data/quotes).
    quote_tapes: Annotated[str, Field(min_length=1)] | None = None

    @field_validator("static_quotes", mode="before")
    @classmethod
    def _exact_static_quotes(cls, value: Any) -> Any:
        """JSON numbers become Decimals as written: a price never passes through a float."""
        if isinstance(value, str):
            if not value.strip():
                return None
            try:
                return json.loads(value, parse_float=Decimal)
            except json.JSONDecodeError as exc:
                example = '{"EUR/USD": ["1.08500", "1.08510"]}'
                raise ValueError(f"not JSON ({exc}); expected bid and ask per symbol: {example}") from None
        return value

    def venue_table(self) -> dict[AssetClass, str]:
        return {**DEFAULT_VENUES, **self.venues}

    def risk_limits(self) -> RiskLimits:
        return RiskLimits(
            kill_switch=self.kill_switch,
            max_position_qty=self.max_position_qty,
            max_position_qty_by_asset_class=dict(self.max_position_qty_by_asset_class),
            max_daily_trades=self.max_daily_trades,
            max_position_notional=self.max_position_notional,
            max_position_notional_by_asset_class=dict(self.max_position_notional_by_asset_class),
            max_order_notional=self.max_order_notional,
        )

    def routing_policy(self) -> RoutingPolicy:
        return RoutingPolicy.build(
            max_spread_pct=self.max_spread_pct,
            max_spread_pct_by_asset_class=dict(self.max_spread_pct_by_asset_class),
            max_quote_age=timedelta(seconds=self.max_quote_age_seconds),
        )


def _fee_schedule(text: str) -> FeeSchedule:
    if not text.strip():
        return FeeSchedule()
    try:
        overrides = json.loads(text, parse_float=Decimal, parse_int=Decimal)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(overrides, dict):
        raise ValueError("must be a JSON object of fee schedule fields")
    return FeeSchedule.from_overrides(overrides)


def load_settings() -> ExecSettings:
    try:
        return ExecSettings()
    except ValidationError as exc:
        problems = "; ".join(
            f"EXEC_{'_'.join(str(part) for part in error['loc']).upper()}: {error['msg']}"
            for error in exc.errors()
        )
        raise ConfigurationError(f"invalid configuration: {problems}") from None
