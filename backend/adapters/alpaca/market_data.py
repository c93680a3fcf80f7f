"""Latest quotes from Alpaca's stock, crypto and option data clients (alpaca-py), batched.

``get_quotes`` makes one request per asset class for all the symbols it is asked about, and keeps
the answers for ``quote_ttl_s`` so that the cost check and the fill of the same run see the same
snapshot. Quotes are passed on as Alpaca reports them (an old timestamp, a zero or crossed book):
the router refuses those. FX is not on Alpaca: its quotes are None.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC
from decimal import Decimal

from alpaca.common.exceptions import APIError
from alpaca.data.historical import (
    CryptoHistoricalDataClient,
    OptionHistoricalDataClient,
    StockHistoricalDataClient,
)
from alpaca.data.models.quotes import Quote as AlpacaQuote
from alpaca.data.requests import CryptoLatestQuoteRequest, OptionLatestQuoteRequest, StockLatestQuoteRequest
from pydantic import ValidationError

from backend.adapters.alpaca.http import NETWORK_ERRORS, harden, with_read_retries
from backend.adapters.alpaca.settings import AlpacaSettings
from backend.adapters.alpaca.symbols import order_symbol
from backend.core.instruments import AssetClass, instrument_for
from backend.core.quotes import Quote
from backend.execution.ports import MarketDataProvider
from backend.observability.logging import log_event

logger = logging.getLogger("msr.alpaca")


def _decimal(value: float) -> Decimal:
    return Decimal(repr(value))  # the shortest repr is the decimal Alpaca sent


def to_quote(symbol: str, asset_class: AssetClass, quote: AlpacaQuote) -> Quote:
    timestamp = quote.timestamp if quote.timestamp.tzinfo else quote.timestamp.replace(tzinfo=UTC)
    return Quote(
        symbol=symbol,
        asset_class=asset_class,
        bid=_decimal(quote.bid_price),
        ask=_decimal(quote.ask_price),
        timestamp=timestamp.astimezone(UTC),
        bid_size=_decimal(quote.bid_size),
        ask_size=_decimal(quote.ask_size),
    )


class AlpacaMarketData(MarketDataProvider):
    def __init__(
        self,
        settings: AlpacaSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings or AlpacaSettings()
        credentials = self.settings.required_credentials()
        url = self.settings.data_url
        self._stocks = harden(
            StockHistoricalDataClient(**credentials, url_override=url), self.settings.timeout_s
        )
        self._crypto = harden(
            CryptoHistoricalDataClient(**credentials, url_override=url), self.settings.timeout_s
        )
        self._options = harden(
            OptionHistoricalDataClient(**credentials, url_override=url), self.settings.timeout_s
        )
        self._clock = clock
        self._cache: dict[str, tuple[float, Quote | None]] = {}
        self._lock = threading.Lock()
        self.requests = 0  # data requests actually made, for tests and benchmarks

    def _fetch(self, asset_class: AssetClass, symbols: list[str]) -> dict[str, Quote | None]:
        """One request for every symbol of one asset class."""
        venue_symbols = {order_symbol(instrument_for(symbol, asset_class)): symbol for symbol in symbols}
        wanted = list(venue_symbols)

        def call() -> dict[str, AlpacaQuote]:
            if asset_class is AssetClass.EQUITY:
                return self._stocks.get_stock_latest_quote(StockLatestQuoteRequest(symbol_or_symbols=wanted))  # type: ignore[return-value]
            if asset_class is AssetClass.CRYPTO:
                return self._crypto.get_crypto_latest_quote(
                    CryptoLatestQuoteRequest(symbol_or_symbols=wanted)
                )  # type: ignore[return-value]
            return self._options.get_option_latest_quote(OptionLatestQuoteRequest(symbol_or_symbols=wanted))  # type: ignore[return-value]

        with self._lock:
            self.requests += 1
        settings = self.settings
        try:
            answer = with_read_retries(call, settings.read_attempts, settings.backoff_s, settings.max_wait_s)
        except (APIError, *NETWORK_ERRORS, ValidationError, ValueError, TypeError) as error:
            # No quote is an answer the router understands (QUOTE_MISSING): never trade blind.
            log_event(
                logger,
                "alpaca.quotes_unavailable",
                f"Latest {asset_class.value} quotes unavailable: {type(error).__name__}",
                logging.WARNING,
                asset_class=asset_class.value,
                symbols=len(symbols),
            )
            return {symbol: None for symbol in symbols}
        quotes: dict[str, Quote | None] = {symbol: None for symbol in symbols}
        for venue_symbol, alpaca_quote in answer.items():
            symbol = venue_symbols.get(venue_symbol)
            if symbol is not None:
                quotes[symbol] = to_quote(symbol, asset_class, alpaca_quote)
        return quotes

    def get_quotes(
        self, symbols: Iterable[str], asset_classes: Mapping[str, AssetClass] | None = None
    ) -> dict[str, Quote | None]:
        classes = asset_classes or {}
        now = self._clock()
        result: dict[str, Quote | None] = {}
        missing: dict[AssetClass, list[str]] = {}
        with self._lock:
            for symbol in dict.fromkeys(s.strip().upper() for s in symbols):
                cached = self._cache.get(symbol)
                if cached is not None and now - cached[0] <= self.settings.quote_ttl_s:
                    result[symbol] = cached[1]
                    continue
                asset_class = classes.get(symbol) or instrument_for(symbol).asset_class
                if asset_class is AssetClass.FOREX:
                    result[symbol] = None  # no FX data on Alpaca
                    continue
                missing.setdefault(asset_class, []).append(symbol)
        # One request per asset class, the classes fetched concurrently: a run waits for one
        # round trip, not three.
        batches = list(missing.items())
        if len(batches) > 1:
            with ThreadPoolExecutor(max_workers=len(batches)) as pool:
                answers = list(pool.map(lambda item: self._fetch(*item), batches))
        else:
            answers = [self._fetch(*item) for item in batches]
        for fetched in answers:
            with self._lock:
                for symbol, quote in fetched.items():
                    self._cache[symbol] = (now, quote)
            result.update(fetched)
        return result

    def get_quote(self, symbol: str, asset_class: AssetClass | str | None = None) -> Quote | None:
        classes = {symbol.strip().upper(): AssetClass.parse(asset_class)} if asset_class else None
        return self.get_quotes([symbol], classes)[symbol.strip().upper()]
