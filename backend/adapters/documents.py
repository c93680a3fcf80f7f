"""One document shape for every store: what a row looks like in SQLite is what a Firestore
document holds. Money and quantities are exact decimal strings in plain notation ("0.00000001",
"1000.00": never a float, never "1E-8"); enums are their values; timestamps stay datetimes
(Firestore timestamps; RFC 3339 text in SQLite). Firestore hands timestamps back as its own
``datetime`` subclass; a document read is given plain datetimes, so a model reads the same from
either store."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import Enum
from typing import Any, TypeVar

import orjson
from pydantic import TypeAdapter

from backend.core.ledger import LedgerTrade
from backend.core.orders import ExecutionResult
from backend.core.portfolio import LotsSnapshot, PortfolioTrade

T = TypeVar("T")

# The stored models, one adapter each (building a TypeAdapter is costly: once per process).
RESULTS = TypeAdapter(ExecutionResult)
LEDGER_TRADES = TypeAdapter(LedgerTrade)
HISTORY_ENTRIES = TypeAdapter(PortfolioTrade)
LOTS_SNAPSHOTS = TypeAdapter(LotsSnapshot)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, Enum):
        return value.value
    return value


SERVER_FIELDS = ("written_at", "recorded_at", "updated_at")


def without_server_fields(document: dict[str, Any]) -> dict[str, Any]:
    """Drop the fields a store stamps with server time: they are not part of the model."""
    return {key: value for key, value in document.items() if key not in SERVER_FIELDS}


def to_document(adapter: TypeAdapter[T], value: T) -> dict[str, Any]:
    return _plain(adapter.dump_python(value))  # type: ignore[no-any-return]


def plain_datetime(value: datetime) -> datetime:
    """``value`` as a ``datetime`` itself (Firestore's ``DatetimeWithNanoseconds`` keeps the
    microseconds; pydantic passes a subclass through unchanged and orjson refuses one)."""
    if type(value) is datetime:
        return value
    return datetime(
        value.year, value.month, value.day, value.hour, value.minute, value.second, value.microsecond,
        value.tzinfo, fold=value.fold,
    )  # fmt: skip


def _read(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _read(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_read(item) for item in value]
    if isinstance(value, datetime):
        return plain_datetime(value)
    return value


def from_document(adapter: TypeAdapter[T], document: dict[str, Any]) -> T:
    return adapter.validate_python(_read(document))


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):  # a subclass (orjson writes a datetime itself, as RFC 3339)
        return plain_datetime(value)
    raise TypeError(f"cannot store {type(value).__name__}")


def to_json(adapter: TypeAdapter[T], value: T) -> str:
    """The same document as ``to_document``, as JSON text (orjson walks it in C; only the
    Decimals and datetime subclasses call back into Python)."""
    return orjson.dumps(adapter.dump_python(value), default=_json_default).decode()


def from_json(adapter: TypeAdapter[T], text: str | bytes) -> T:
    return adapter.validate_python(orjson.loads(text))
