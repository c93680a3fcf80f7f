"""OrderIntent: what a strategy or an API caller asks the engine to do, validated at the edge."""

from __future__ import annotations

import hashlib
import json
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from backend.core.assets import AssetClass, detect_asset_class


class Side(StrEnum):
    BUY = "buy"
    SELL = "sell"

    @property
    def sign(self) -> int:
        return 1 if self is Side.BUY else -1


NonEmptyId = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


def canonical_decimal(value: Decimal) -> str:
    """One spelling per number ('10', not '10.0' or '1E+1'), for keys and documents. Never rounds."""
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


# 15 significant digits cover any order a venue accepts (0.00000001 BTC steps up to 9,999,999 BTC)
# and leave 13 digits of price inside Decimal's default 28-digit precision: a notional never rounds.
MAX_QTY_DIGITS = 15


class OrderIntent(BaseModel):
    """A request to trade. The seed's five-field form still works; the rest is optional.

    ``asset_class`` is detected from the symbol when omitted. ``estimated_slippage`` (a fraction,
    0.0005 = 0.05 %), when given, is used by the router instead of fetching a quote.
    ``idempotency_key``, when omitted, is derived from the intent's content: two identical
    intents are one order. Pass a key (or a ``run_id`` in metadata) to trade the same thing again.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)

    strategy_id: NonEmptyId
    broker_account_id: NonEmptyId
    symbol: Annotated[str, StringConstraints(to_upper=True, min_length=1, max_length=64)]
    side: Side
    qty: Annotated[Decimal, Field(gt=0, allow_inf_nan=False)]
    asset_class: AssetClass
    estimated_slippage: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: NonEmptyId | None = None

    @model_validator(mode="before")
    @classmethod
    def _fill_asset_class(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("asset_class") is None:
            symbol = data.get("symbol")
            if isinstance(symbol, str) and symbol.strip():
                data = {**data, "asset_class": detect_asset_class(symbol)}
        return data

    @field_validator("qty")
    @classmethod
    def _canonical_qty(cls, value: Decimal) -> Decimal:
        canonical = Decimal(canonical_decimal(value))
        if len(canonical.as_tuple().digits) > MAX_QTY_DIGITS:
            raise ValueError(f"qty has more than {MAX_QTY_DIGITS} significant digits: {value}")
        return canonical

    @field_validator("side", mode="before")
    @classmethod
    def _lower_side(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("asset_class", mode="before")
    @classmethod
    def _parse_asset_class(cls, value: Any) -> Any:
        return AssetClass.parse(value) if isinstance(value, str) else value

    @property
    def tenant_id(self) -> str | None:
        value = self.metadata.get("tenant_id")
        return str(value) if value else None

    @property
    def uid(self) -> str | None:
        value = self.metadata.get("uid")
        return str(value) if value else None

    def resolved_idempotency_key(self) -> str:
        """The caller's key, or a digest of everything that makes this intent what it is."""
        if self.idempotency_key:
            return self.idempotency_key
        content = {
            "strategy_id": self.strategy_id,
            "broker_account_id": self.broker_account_id,
            "symbol": self.symbol,
            "side": self.side.value,
            "qty": canonical_decimal(self.qty),
            "asset_class": self.asset_class.value,
            "metadata": self.metadata,
        }
        encoded = json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)
        return "auto-" + hashlib.sha256(encoded.encode()).hexdigest()[:40]
