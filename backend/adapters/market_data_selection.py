"""Which market data provider the configuration asks for (``EXEC_MARKET_DATA``), built in one place.

The seed's bare ``MarketDataProvider()`` and a ``SmartRouter`` constructed without a provider both
come here.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import ValidationError

from backend.adapters.alpaca.settings import AlpacaSettings
from backend.adapters.market_data import (
    DEFAULT_TAPE_DIR,
    FixedPriceMarketData,
    StaticMarketData,
    latest_recorded_quotes,
)
from backend.execution.ports import Clock, MarketDataProvider, SystemClock
from backend.execution.settings import ConfigurationError, ExecSettings, load_settings
from backend.observability.logging import log_event

logger = logging.getLogger("msr.market_data")

NOT_CONFIGURED = (
    "market data needs one of: APCA_API_KEY_ID and APCA_API_SECRET_KEY (Alpaca's quotes), "
    "EXEC_STATIC_QUOTES (fixed quotes, JSON), or EXEC_MARKET_DATA=tapes (the recorded quote tapes)"
)
STATIC_EXAMPLE = '{"EUR/USD": ["1.08500", "1.08510"]}'


def alpaca_settings() -> AlpacaSettings:
    try:
        return AlpacaSettings()
    except ValidationError as exc:
        fields = ", ".join(".".join(map(str, error["loc"])) for error in exc.errors())
        raise ConfigurationError(f"invalid Alpaca configuration: {fields}") from None


def market_data_kind(settings: ExecSettings, alpaca: AlpacaSettings) -> str:
    """``alpaca``, ``static`` or ``tapes``. ``auto`` prefers Alpaca's real quotes to fixed ones, so a
    stray ``EXEC_STATIC_QUOTES`` never prices orders where real data is configured; an explicit
    ``EXEC_MARKET_DATA`` always wins. ``auto`` never picks the tapes: their quotes are old."""
    if settings.market_data != "auto":
        return settings.market_data
    if alpaca.has_credentials:
        return "alpaca"
    if settings.static_quotes is not None:
        return "static"
    raise ConfigurationError(NOT_CONFIGURED)


def tape_files(directory: str | None) -> list[Path]:
    folder = Path(directory) if directory else DEFAULT_TAPE_DIR
    if not folder.is_dir():
        raise ConfigurationError(f"EXEC_QUOTE_TAPES: {folder} is not a directory")
    tapes = sorted(folder.glob("*.csv"))
    if not tapes:
        raise ConfigurationError(f"EXEC_QUOTE_TAPES: no quote tapes (*.csv) in {folder}")
    return tapes


def configured_market_data(
    settings: ExecSettings | None = None,
    *,
    clock: Clock | None = None,
    alpaca: AlpacaSettings | None = None,
) -> MarketDataProvider:
    """The provider the environment configures, or ``ConfigurationError`` saying what to set.

    ``clock`` stamps the fixed quotes of ``EXEC_STATIC_QUOTES`` (the system clock by default).
    """
    settings = settings or load_settings()
    alpaca = alpaca or alpaca_settings()
    kind = market_data_kind(settings, alpaca)
    provider: MarketDataProvider
    if kind == "alpaca":
        from backend.adapters.alpaca.market_data import AlpacaMarketData

        provider = AlpacaMarketData(alpaca)
        source = "Alpaca's latest quotes"
    elif kind == "static":
        if not settings.static_quotes:
            raise ConfigurationError(
                f"EXEC_MARKET_DATA=static needs EXEC_STATIC_QUOTES, e.g. {STATIC_EXAMPLE}"
            )
        try:
            provider = FixedPriceMarketData(settings.static_quotes, clock or SystemClock())
        except ValueError as exc:
            raise ConfigurationError(f"EXEC_STATIC_QUOTES: {exc}") from None
        source = f"fixed quotes for {len(settings.static_quotes)} symbol(s), stamped live"
    else:
        tapes = tape_files(settings.quote_tapes)
        try:
            provider = StaticMarketData(latest_recorded_quotes(tapes))
        except ValueError as exc:
            raise ConfigurationError(f"EXEC_QUOTE_TAPES: {exc}") from None
        source = f"the last recorded quote per symbol of {len(tapes)} tape(s), at its recorded time"
    log_event(logger, "exec.market_data_configured", f"Market data: {source}", provider=kind)
    return provider
