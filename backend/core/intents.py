"""OrderIntent: what a strategy or an API caller asks the engine to do, validated at the edge."""

from __future__ import annotations

import hashlib
import json
import math
import re
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from backend.core.instruments import AssetClass, Instrument, instrument_for
from backend.core.numbers import bounded_decimal, canonical_decimal, to_decimal


class KeySource(StrEnum):
    """Who chose an idempotency key. Keys are namespaced by source (``api:``, ``run:``), so a caller
    of the HTTP API can never pick a key the strategy runner will use, and the reverse."""

    API = "api"
    RUN = "run"

    def key(self, key: str) -> str:
        return f"{self.value}:{key}"


def legacy_key(key: str) -> str | None:
    """The key as it was before namespaces (``api:abc`` -> ``abc``), or None for a key without one:
    an order claimed before the upgrade is still found under it (its client order id unchanged)."""
    source, separator, rest = key.partition(":")
    return rest if separator and source in {s.value for s in KeySource} else None


class IdempotencyConflict(ValueError):
    """The key was used before for a different intent: answering the first one's result would
    silently trade the wrong thing. ``fields`` names what differs."""

    def __init__(self, key: str, fields: list[str]) -> None:
        super().__init__(
            f"idempotency key {key!r} was used for a different intent ({', '.join(fields)} differ)"
        )
        self.key = key
        self.fields = fields


# What makes two intents the same trade. Metadata is not compared: a strategy's reasoning text may
# be worded differently when a run is delivered again; it does not change what is traded.
TRADING_FIELDS = (
    "strategy_id",
    "broker_account_id",
    "symbol",
    "side",
    "qty",
    "asset_class",
    "estimated_slippage",
)


def differing_fields(first: OrderIntent, second: OrderIntent) -> list[str]:
    return [name for name in TRADING_FIELDS if getattr(first, name) != getattr(second, name)]


class Side(StrEnum):
    BUY = "buy"
    SELL = "sell"

    @property
    def sign(self) -> int:
        return 1 if self is Side.BUY else -1


NonEmptyId = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


# Metadata is copied into the ledger row, the decision and the user's history: bounded here, before
# anything is claimed, so that no write after the broker accepted can fail because of it
# (Firestore refuses reserved field names such as ``__x__``, arrays inside arrays, deep nesting).
METADATA_MAX_BYTES = 4096
METADATA_MAX_DEPTH = 4
METADATA_MAX_ITEMS = 64
METADATA_MAX_STRING = 1024
_METADATA_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
_INT64 = 2**63


# Metadata numbers are stored as what they are, an integer or a double: a decimal from the wire is
# kept only when a double holds that very number (its shortest spelling reads back equal), so what
# is accepted is what every store writes and reads back.
_FLOAT_EXPONENTS = range(-324, 309)  # a double's magnitudes, subnormals included


def _exact_float(value: Decimal, where: str) -> float:
    if not value.is_finite() or value.adjusted() not in _FLOAT_EXPONENTS:
        raise ValueError(f"{where}: a number out of range (magnitude 1e-324 to 1e308)")
    as_float = float(value)  # the exponent is bounded: nothing is expanded
    if value.is_zero():
        return as_float
    if not math.isfinite(as_float) or to_decimal(as_float) != value or as_float == 0:
        raise ValueError(f"{where}: the number {value} cannot be stored exactly (use a string)")
    return as_float


def _exact_metadata(value: Any, where: str, depth: int = 0) -> Any:
    """``value`` with every ``Decimal`` (a JSON number with a point or an exponent, read exactly)
    as the double that holds it exactly; refused when none does. Bounded by the depth check."""
    if isinstance(value, Decimal):
        return _exact_float(value, where)
    if depth > METADATA_MAX_DEPTH + 1:
        return value  # too deep: ``metadata_problem`` says so
    if isinstance(value, dict):
        return {key: _exact_metadata(item, f"{where}.{key}", depth + 1) for key, item in value.items()}
    if isinstance(value, list):
        return [_exact_metadata(item, f"{where}[{index}]", depth + 1) for index, item in enumerate(value)]
    return value


def _metadata_value_problem(value: Any, where: str, depth: int) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return None if -_INT64 <= value < _INT64 else f"{where}: integer out of the 64-bit range"
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{where}: not a finite number"
    if isinstance(value, str):
        return (
            None
            if len(value) <= METADATA_MAX_STRING
            else f"{where}: longer than {METADATA_MAX_STRING} characters"
        )
    if depth >= METADATA_MAX_DEPTH and isinstance(value, dict | list):
        return f"{where}: nested deeper than {METADATA_MAX_DEPTH} levels"
    if isinstance(value, dict):
        return _metadata_object_problem(value, where, depth + 1)
    if isinstance(value, list):
        if len(value) > METADATA_MAX_ITEMS:
            return f"{where}: more than {METADATA_MAX_ITEMS} items"
        for index, item in enumerate(value):
            if isinstance(item, list):
                return f"{where}[{index}]: a list inside a list cannot be stored"
            problem = _metadata_value_problem(item, f"{where}[{index}]", depth + 1)
            if problem:
                return problem
        return None
    return f"{where}: {type(value).__name__} is not a JSON value"


def _metadata_object_problem(value: dict[Any, Any], where: str, depth: int) -> str | None:
    if len(value) > METADATA_MAX_ITEMS:
        return f"{where}: more than {METADATA_MAX_ITEMS} keys"
    for key, item in value.items():
        if not isinstance(key, str) or not _METADATA_KEY.match(key):
            return f"{where}: key {key!r} must match {_METADATA_KEY.pattern}"
        problem = _metadata_value_problem(item, f"{where}.{key}", depth)
        if problem:
            return problem
    return None


def metadata_problem(metadata: dict[str, Any]) -> None:
    """Refuse metadata that cannot be stored as it is: too big, too deep, odd keys or values."""
    problem = _metadata_object_problem(metadata, "metadata", 1)
    if problem is None:
        size = len(json.dumps(metadata, separators=(",", ":"), default=str).encode())
        if size > METADATA_MAX_BYTES:
            problem = f"metadata: {size} bytes, more than {METADATA_MAX_BYTES}"
    if problem:
        raise ValueError(problem)


# 15 significant digits cover any order a venue accepts (0.00000001 BTC steps up to 9,999,999 BTC)
# and leave 13 digits of price inside Decimal's default 28-digit precision: a notional never rounds.
MAX_QTY_DIGITS = 15


class OrderIntent(BaseModel):
    """A request to trade. The seed's five-field form still works; the rest is optional.

    ``symbol`` is stored in the instrument's canonical spelling (``BTCUSD`` -> ``BTC/USD``);
    ``asset_class`` is detected from the symbol when omitted and must agree with it when given.
    ``estimated_slippage`` (a fraction, 0.0005 = 0.05 %), when given, is used by the router
    instead of fetching a quote. ``idempotency_key``, when omitted, is derived from the intent's
    content: two identical intents are one order. Pass a key (or a ``run_id`` in metadata) to
    trade the same thing again.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)

    strategy_id: NonEmptyId
    broker_account_id: NonEmptyId
    symbol: Annotated[str, StringConstraints(to_upper=True, min_length=1, max_length=64)]
    side: Side
    qty: Annotated[Decimal, Field(gt=0, allow_inf_nan=False)]
    asset_class: AssetClass
    estimated_slippage: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: NonEmptyId | None = None
    # The symbol as the caller spelled it: the content-derived key is computed from it, so that
    # canonical spellings never change the client order id of an intent already in flight.
    _symbol_as_given: str | None = PrivateAttr(default=None)

    @model_validator(mode="wrap")
    @classmethod
    def _canonical_instrument(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        """Resolve the instrument before field validation: canonical symbol, agreeing class."""
        given = data.get("symbol") if isinstance(data, dict) else None
        declared = _declared_asset_class(data.get("asset_class")) if isinstance(data, dict) else None
        if isinstance(given, str) and given.strip() and len(given) <= 64 and declared is not False:
            try:
                resolved = instrument_for(given, declared or None)
            except ValueError as exc:
                raise _field_error("symbol", given, str(exc)) from None
            data = {**data, "symbol": resolved.symbol, "asset_class": resolved.asset_class}
        intent = handler(data)
        if isinstance(given, str) and isinstance(intent, OrderIntent):
            problem = intent.instrument.qty_problem(intent.qty)
            if problem is not None:
                raise _field_error("qty", data.get("qty"), problem)
            intent._symbol_as_given = given.strip().upper()
        return intent

    @field_validator("qty", mode="before")
    @classmethod
    def _bounded_qty(cls, value: Any) -> Any:
        """Digits and exponent checked on what was sent, before the number is written out."""
        return bounded_decimal(value, "qty") if isinstance(value, int | float | str | Decimal) else value

    @field_validator("estimated_slippage", mode="before")
    @classmethod
    def _exact_slippage(cls, value: Any) -> Any:
        """A float is taken as it is; a number sent as text or Decimal only when a float holds it
        exactly (a fraction is stored as a float: it must be what was sent)."""
        if value is None or isinstance(value, float) or not isinstance(value, int | str | Decimal):
            return value
        number = bounded_decimal(value, "estimated_slippage")
        as_float = float(number)
        if to_decimal(as_float) != number:
            raise ValueError(f"estimated_slippage {value} has more digits than can be kept exactly")
        return as_float

    @field_validator("qty")
    @classmethod
    def _canonical_qty(cls, value: Decimal) -> Decimal:
        canonical = Decimal(canonical_decimal(value))
        if len(canonical.as_tuple().digits) > MAX_QTY_DIGITS:
            raise ValueError(f"qty has more than {MAX_QTY_DIGITS} significant digits: {value}")
        return canonical

    @field_validator("metadata")
    @classmethod
    def _bounded_metadata(cls, value: dict[str, Any]) -> dict[str, Any]:
        exact: dict[str, Any] = _exact_metadata(value, "metadata")
        metadata_problem(exact)
        return exact

    @field_validator("side", mode="before")
    @classmethod
    def _lower_side(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("asset_class", mode="before")
    @classmethod
    def _parse_asset_class(cls, value: Any) -> Any:
        return AssetClass.parse(value) if isinstance(value, str) else value

    @property
    def instrument(self) -> Instrument:
        return instrument_for(self.symbol, self.asset_class)

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
            "symbol": self._symbol_as_given or self.symbol,
            "side": self.side.value,
            "qty": canonical_decimal(self.qty),
            "asset_class": self.asset_class.value,
            "metadata": self.metadata,
        }
        encoded = json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)
        return "auto-" + hashlib.sha256(encoded.encode()).hexdigest()[:40]


def _field_error(field: str, value: Any, message: str) -> ValidationError:
    """A validation error attached to ``field`` (a model-level check otherwise reports no field)."""
    error = PydanticCustomError("instrument_invalid", "{message}", {"message": message})
    return ValidationError.from_exception_data(
        "OrderIntent", [InitErrorDetails(type=error, loc=(field,), input=value)]
    )


def _declared_asset_class(value: Any) -> AssetClass | bool | None:
    """The caller's asset class; None when absent; False when unreadable (its field reports it)."""
    if value is None:
        return None
    try:
        return AssetClass.parse(value)
    except ValueError:
        return False
