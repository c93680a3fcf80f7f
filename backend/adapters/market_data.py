"""Market data adapters for local runs and tests: a replay of recorded quote tapes, static quotes, and
fixed prices that are always current."""

from __future__ import annotations

import csv
import heapq
import threading
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from decimal import Decimal
from pathlib import Path

from backend.core.instruments import AssetClass, instrument_for
from backend.core.quotes import Quote, require_utc, to_decimal
from backend.execution.ports import Clock, ManualClock, MarketDataProvider

DEFAULT_TAPE_DIR = Path(__file__).resolve().parents[2] / "data" / "quotes"


def load_quote_tape(path: str | Path) -> list[Quote]:
    """Read one tape (timestamp,symbol,asset_class,bid,ask,bid_size,ask_size), oldest first."""
    quotes: list[Quote] = []
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        required = {"timestamp", "symbol", "bid", "ask"}
        missing = required - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing columns {sorted(missing)}")
        for line_no, row in enumerate(reader, start=2):
            try:
                raw_class = (row.get("asset_class") or "").strip()
                instrument = instrument_for(row["symbol"], raw_class or None)
                quotes.append(
                    Quote(
                        symbol=instrument.symbol,
                        asset_class=instrument.asset_class,
                        bid=to_decimal(row["bid"], "bid"),
                        ask=to_decimal(row["ask"], "ask"),
                        timestamp=require_utc(datetime.fromisoformat(row["timestamp"])),
                        bid_size=to_decimal(row["bid_size"], "bid_size") if row.get("bid_size") else None,
                        ask_size=to_decimal(row["ask_size"], "ask_size") if row.get("ask_size") else None,
                    )
                )
            except (ValueError, KeyError) as exc:
                raise ValueError(f"{path}:{line_no}: {exc}") from exc
    quotes.sort(key=lambda quote: quote.timestamp)
    return quotes


def default_tapes() -> list[Path]:
    return sorted(DEFAULT_TAPE_DIR.glob("*.csv"))


def latest_recorded_quotes(tapes: Iterable[str | Path]) -> dict[str, Quote]:
    """Each symbol's most recent quote on the tapes, with its recorded timestamp (never re-stamped:
    the router judges its age)."""
    latest: dict[str, Quote] = {}
    for tape in tapes:
        for quote in load_quote_tape(tape):
            current = latest.get(quote.symbol)
            if current is None or quote.timestamp >= current.timestamp:
                latest[quote.symbol] = quote
    return latest


class TapeMarketData(MarketDataProvider):
    """Replays tapes. ``replay()`` delivers the quotes in time order, moving the clock to each one;
    ``get_quote`` answers the last quote the replay delivered for the symbol.

    The paper broker and the router read this one provider, so the quote the cost gate checked is
    the quote that fills, even when a tape holds several quotes in the same millisecond.
    """

    def __init__(self, tapes: Iterable[str | Path], clock: ManualClock) -> None:
        self._clock = clock
        self._quotes: dict[str, list[Quote]] = {}
        for tape in tapes:
            for quote in load_quote_tape(tape):
                self._quotes.setdefault(quote.symbol, []).append(quote)
        for series in self._quotes.values():
            series.sort(key=lambda quote: quote.timestamp)
        self._current: dict[str, Quote] = {}

    @property
    def symbols(self) -> list[str]:
        return sorted(self._quotes)

    def count(self, symbols: Iterable[str] | None = None) -> int:
        return sum(len(self._quotes[symbol]) for symbol in self._chosen(symbols))

    def _chosen(self, symbols: Iterable[str] | None) -> list[str]:
        chosen = self.symbols if symbols is None else [instrument_for(s).symbol for s in symbols]
        unknown = [symbol for symbol in chosen if symbol not in self._quotes]
        if unknown:
            raise ValueError(f"no tape for {unknown}; tapes hold {self.symbols}")
        return chosen

    def replay(self, symbols: Iterable[str] | None = None) -> Iterator[Quote]:
        """Every quote of the chosen symbols, merged in time order, each made current as it is yielded."""
        merged = heapq.merge(*(self._quotes[s] for s in self._chosen(symbols)), key=lambda q: q.timestamp)
        for quote in merged:
            self._clock.set(quote.timestamp)
            self._current[quote.symbol] = quote
            yield quote

    def get_quote(self, symbol: str, asset_class: AssetClass | str | None = None) -> Quote | None:
        return self._current.get(instrument_for(symbol, asset_class).symbol)


class StaticMarketData(MarketDataProvider):
    """Fixed quotes for tests and examples; ``set_quote`` without a timestamp stamps the clock's now."""

    def __init__(self, quotes: Mapping[str, Quote] | None = None, clock: Clock | None = None) -> None:
        self._quotes: dict[str, Quote] = {instrument_for(k).symbol: v for k, v in (quotes or {}).items()}
        self._clock = clock
        self._lock = threading.Lock()
        self.requests = 0

    def set_quote(
        self,
        symbol: str,
        bid: object,
        ask: object,
        timestamp: datetime | None = None,
        asset_class: AssetClass | str | None = None,
    ) -> Quote:
        instrument = instrument_for(symbol, asset_class)
        stamp = timestamp or (self._clock.now() if self._clock else None)
        if stamp is None:
            raise ValueError("StaticMarketData needs a timestamp or a clock")
        quote = Quote(
            symbol=instrument.symbol,
            asset_class=instrument.asset_class,
            bid=to_decimal(bid, "bid"),
            ask=to_decimal(ask, "ask"),
            timestamp=require_utc(stamp),
        )
        with self._lock:
            self._quotes[instrument.symbol] = quote
        return quote

    def get_quote(self, symbol: str, asset_class: AssetClass | str | None = None) -> Quote | None:
        key = instrument_for(symbol, asset_class).symbol
        with self._lock:
            self.requests += 1
            return self._quotes.get(key)


class FixedPriceMarketData(MarketDataProvider):
    """Fixed bid and ask per symbol, stamped with the clock's now at every answer: a quote that is
    always live (the Alpaca simulator's quotes do the same). For local runs and demos, configured
    by ``EXEC_STATIC_QUOTES``."""

    def __init__(self, prices: Mapping[str, tuple[Decimal, Decimal]], clock: Clock) -> None:
        self._books: dict[str, tuple[AssetClass, Decimal, Decimal]] = {}
        for symbol, (bid, ask) in prices.items():
            instrument = instrument_for(symbol)
            self._books[instrument.symbol] = (
                instrument.asset_class,
                to_decimal(bid, f"{instrument.symbol} bid"),
                to_decimal(ask, f"{instrument.symbol} ask"),
            )
        self._clock = clock

    @property
    def symbols(self) -> list[str]:
        return sorted(self._books)

    def get_quote(self, symbol: str, asset_class: AssetClass | str | None = None) -> Quote | None:
        canonical = instrument_for(symbol, asset_class).symbol
        book = self._books.get(canonical)
        if book is None:
            return None
        detected, bid, ask = book
        return Quote(canonical, detected, bid, ask, require_utc(self._clock.now()))
