"""Alpaca's spellings of our instruments, both ways.

Alpaca takes crypto pairs as ``BTC/USD`` in orders and market data but reports crypto positions
(and fee activities) as ``BTCUSD``; option contracts are compact OCC symbols; equities are tickers.
Everything that crosses into or out of the SDK goes through here, so the rest of the code only
ever sees canonical symbols (``backend.core.instruments``).
"""

from __future__ import annotations

from backend.core.instruments import AssetClass, Instrument, instrument_for

# Alpaca's ``asset_class`` values.
ALPACA_ASSET_CLASSES: dict[str, AssetClass] = {
    "us_equity": AssetClass.EQUITY,
    "crypto": AssetClass.CRYPTO,
    "us_option": AssetClass.OPTIONS,
}


def order_symbol(instrument: Instrument) -> str:
    """The symbol Alpaca's order and market-data endpoints take (crypto ``BASE/QUOTE``)."""
    if instrument.asset_class is AssetClass.CRYPTO:
        return f"{instrument.base}/{instrument.quote_currency}"
    return instrument.symbol


def position_symbol(instrument: Instrument) -> str:
    """The symbol Alpaca reports positions and fee activities under (crypto ``BASEQUOTE``)."""
    if instrument.asset_class is AssetClass.CRYPTO:
        return f"{instrument.base}{instrument.quote_currency}"
    return instrument.symbol


def instrument_from_alpaca(symbol: str, alpaca_asset_class: object = None) -> Instrument:
    """The instrument behind any Alpaca spelling; Alpaca's own class (its enum or its value),
    when given, decides what a bare symbol is (a crypto pair the detection rules would not know)."""
    value = getattr(alpaca_asset_class, "value", alpaca_asset_class)
    declared = ALPACA_ASSET_CLASSES.get(str(value or "").lower())
    return instrument_for(symbol, declared)
