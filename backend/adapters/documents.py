"""One document shape for every store: what a row looks like in SQLite is what a Firestore
document holds. Money and quantities are exact decimal strings in plain notation ("0.00000001",
"1000.00": never a float, never "1E-8"); enums are their values; timestamps stay datetimes
(Firestore timestamps; RFC 3339 text in SQLite). Firestore hands timestamps back as its own
``datetime`` subclass; a document read is given plain datetimes, so a model reads the same from
either store.

Stored documents are never rewritten when their shape changes: each codec reads every earlier
``schema_version`` through an upgrade function (see ``_ledger_v1`` and friends)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from enum import Enum
from typing import Any, Generic, Protocol, TypeVar

import orjson
from pydantic import TypeAdapter

from backend.core.instruments import OPTION_CONTRACT_MULTIPLIER, AssetClass, instrument_for
from backend.core.ledger import LedgerEntry, LedgerEntryType, LedgerFeeAdjustment, LedgerTrade
from backend.core.lot_documents import OpenLot
from backend.core.order_lifecycle import OrderRecord
from backend.core.orders import ExecutionResult
from backend.core.portfolio import LotsSnapshot, PortfolioTrade

T = TypeVar("T")

Document = dict[str, Any]


class DocumentCodec(Protocol[T]):
    def dump_python(self, value: T) -> Any: ...

    def validate_python(self, document: Document) -> T: ...


class Codec(Generic[T]):
    """A stored model's adapter (built once per process: building one is costly) and the upgrade
    that reads its older document shapes."""

    def __init__(
        self, adapter: TypeAdapter[T], upgrade: Callable[[Document], Document] | None = None
    ) -> None:
        self.adapter = adapter
        self.upgrade = upgrade

    def dump_python(self, value: T) -> Any:
        return self.adapter.dump_python(value)

    def validate_python(self, document: Document) -> T:
        return self.adapter.validate_python(self.upgrade(document) if self.upgrade else document)


class _LedgerEntries:
    """Fills and fee adjustments share the ledger collection; ``entry_type`` tells them apart."""

    def __init__(self) -> None:
        self.fills = TypeAdapter(LedgerTrade)
        self.adjustments = TypeAdapter(LedgerFeeAdjustment)

    def dump_python(self, value: LedgerEntry) -> Any:
        if isinstance(value, LedgerFeeAdjustment):
            return self.adjustments.dump_python(value)
        return self.fills.dump_python(value)

    def validate_python(self, document: Document) -> LedgerEntry:
        if document.get("entry_type") == LedgerEntryType.FEE_ADJUSTMENT.value:
            return self.adjustments.validate_python(document)
        return self.fills.validate_python(_ledger_v1(document))


def _legacy_multiplier(symbol: str, asset_class: str) -> tuple[str, Decimal]:
    """The canonical symbol and multiplier of a symbol stored before instruments existed."""
    try:
        instrument = instrument_for(symbol, asset_class)
    except ValueError:  # stored under a class its symbol contradicts: keep both as they were
        options = asset_class == AssetClass.OPTIONS.value
        return symbol, OPTION_CONTRACT_MULTIPLIER if options else Decimal(1)
    return instrument.symbol, instrument.multiplier


_MONEY_V1_FIELDS = ("symbol", "asset_class", "qty", "price", "quote_currency", "fees")


def _money_v1(document: Document) -> Document:
    """Version 1 wrote no multiplier (an option's notional was 100x too small), booked the whole
    fill and charged every fee in the quote currency. A document missing those fields is left as
    it is, for validation to name what is wrong."""
    if any(not isinstance(document.get(name), str) for name in _MONEY_V1_FIELDS):
        return document
    symbol, multiplier = _legacy_multiplier(document["symbol"], document["asset_class"])
    qty, price = Decimal(document["qty"]), Decimal(document["price"])
    return {
        **document,
        "symbol": symbol,
        "multiplier": format(multiplier, "f"),
        "notional": format(qty * price * multiplier, "f"),
        "filled_qty": document["qty"],
        "fee_currency": document["quote_currency"],
        "fee_amount": document["fees"],
        "entry_type": LedgerEntryType.FILL.value,
    }


def _ledger_v1(document: Document) -> Document:
    if document.get("schema_version", 1) >= 2:
        return document
    return {**_money_v1(document), "fee_components": {}}


def _history_v1(document: Document) -> Document:
    if document.get("schema_version", 1) >= 2:
        return document
    return _money_v1(document)


def _lots_v1(document: Document) -> Document:
    return document if "schema_version" in document else {**document, "schema_version": 1}


def _result_v1(document: Document) -> Document:
    """An intent stored before instruments were checked may name a class its symbol contradicts
    (``BTC-USD`` as EQUITY): read it as the instrument it is."""
    intent = document.get("intent") or {}
    try:
        instrument_for(intent.get("symbol"), intent.get("asset_class"))
    except ValueError:
        return {**document, "intent": {**intent, "asset_class": None}}
    return document


RESULTS = Codec(TypeAdapter(ExecutionResult), _result_v1)
ORDERS = Codec(TypeAdapter(OrderRecord))
LEDGER_ENTRIES = _LedgerEntries()
HISTORY_ENTRIES = Codec(TypeAdapter(PortfolioTrade), _history_v1)
LOTS_SNAPSHOTS = Codec(TypeAdapter(LotsSnapshot), _lots_v1)
OPEN_LOTS = Codec(TypeAdapter(OpenLot))


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


def to_document(codec: DocumentCodec[T], value: T) -> dict[str, Any]:
    return _plain(codec.dump_python(value))  # type: ignore[no-any-return]


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


def from_document(codec: DocumentCodec[T], document: dict[str, Any]) -> T:
    return codec.validate_python(_read(document))


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):  # a subclass (orjson writes a datetime itself, as RFC 3339)
        return plain_datetime(value)
    raise TypeError(f"cannot store {type(value).__name__}")


def to_json(codec: DocumentCodec[T], value: T) -> str:
    """The same document as ``to_document``, as JSON text (orjson walks it in C; only the
    Decimals and datetime subclasses call back into Python)."""
    return orjson.dumps(codec.dump_python(value), default=_json_default).decode()


def from_json(codec: DocumentCodec[T], text: str | bytes) -> T:
    return codec.validate_python(orjson.loads(text))
