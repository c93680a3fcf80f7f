"""Asset classes and symbol parsing: the one place that knows what a symbol means.

Detection rule (precedence, first match wins), documented in the README and tested:

1. OPTIONS: an OCC option symbol, ``ROOT + YYMMDD + C|P + strike*1000 (8 digits)``, the root
   optionally space-padded (``AAPL240119C00150000``, ``SPY   251219P00450000``).
2. A pair written with ``/`` (``BASE/QUOTE``): FOREX when both sides are ISO 4217 currency codes
   (``EUR/USD``, ``USD/JPY``, ``XAU/USD``), otherwise CRYPTO (``BTC/USD``, ``ETH/USDT``,
   ``PEPE/USD``).
3. Six letters, no separator, both halves ISO 4217 codes: FOREX (``EURUSD``). US tickers have at
   most five letters, so this never captures an equity.
4. No separator, a *known* crypto base asset followed by a known quote asset: CRYPTO (``BTCUSD``,
   ``ETHUSDT``). An unknown base stays EQUITY, so a ticker is never turned into crypto by guess.
5. Anything else: EQUITY (``AAPL``, ``BRK.B``).

Where a code is both a currency and a token (``MNT`` is the Mongolian tögrög and the Mantle token),
the ISO 4217 meaning wins.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from enum import StrEnum
from functools import lru_cache


class AssetClass(StrEnum):
    EQUITY = "EQUITY"
    FOREX = "FOREX"
    CRYPTO = "CRYPTO"
    OPTIONS = "OPTIONS"

    @classmethod
    def parse(cls, value: AssetClass | str) -> AssetClass:
        """Accept the enum, its value or its name in any case; anything else is a clear error."""
        if isinstance(value, AssetClass):
            return value
        if isinstance(value, str):
            try:
                return cls(value.strip().upper())
            except ValueError:
                pass
        known = ", ".join(member.value for member in cls)
        raise ValueError(f"unknown asset class {value!r}; expected one of {known}")


# ISO 4217 active currency codes, plus the precious-metal codes FX venues quote (XAU, XAG, XPT, XPD).
ISO_4217_CODES: frozenset[str] = frozenset(
    """
    AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BRL BSD BTN BWP
    BYN BZD CAD CDF CHF CLP CNY COP CRC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP
    GEL GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS KHR
    KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK
    MXN MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD RUB RWF SAR
    SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TND TOP TRY TTD TWD TZS
    UAH UGX USD UYU UZS VES VND VUV WST XAF XCD XCG XOF XPF YER ZAR ZMW ZWG XAU XAG XPT XPD
    """.split()
)

KNOWN_CRYPTO_ASSETS: frozenset[str] = frozenset(
    """
    BTC ETH SOL XRP LTC BCH DOGE ADA AVAX DOT LINK UNI AAVE MATIC POL SHIB TRX BNB ATOM ALGO FIL
    NEAR ARB OP XTZ GRT MKR CRV SUSHI YFI BAT PEPE XLM ETC APT SUI TON HBAR ICP RENDER INJ LDO
    USDT USDC DAI PYUSD BUSD TUSD WBTC
    """.split()
)

# Quote assets a concatenated crypto symbol may end with, longest first so USDT beats USD.
_CRYPTO_QUOTE_ASSETS: tuple[str, ...] = ("USDT", "USDC", "BUSD", "USD", "EUR", "GBP", "BTC", "ETH")

_OCC_PATTERN = re.compile(
    r"^(?P<root>[A-Z][A-Z0-9.]{0,5})\s*(?P<yy>\d{2})(?P<mm>\d{2})(?P<dd>\d{2})"
    r"(?P<right>[CP])(?P<strike>\d{8})$"
)
_PAIR_SIDE = re.compile(r"^[A-Z0-9]{2,10}$")


@dataclass(frozen=True, slots=True)
class OptionContract:
    """An OCC option symbol, parsed. The strike is exact: the OCC field is strike x 1000."""

    root: str
    expiry: date
    right: str  # "C" or "P"
    strike: Decimal


def parse_occ_symbol(symbol: str) -> OptionContract | None:
    match = _OCC_PATTERN.match(symbol.strip().upper())
    if match is None:
        return None
    try:
        expiry = date(2000 + int(match["yy"]), int(match["mm"]), int(match["dd"]))
    except ValueError:
        return None
    strike = Decimal(int(match["strike"])) / 1000
    return OptionContract(root=match["root"], expiry=expiry, right=match["right"], strike=strike)


@dataclass(frozen=True, slots=True)
class SymbolInfo:
    symbol: str
    asset_class: AssetClass
    base: str
    quote_currency: str


@lru_cache(maxsize=8192)
def describe_symbol(symbol: str) -> SymbolInfo:
    """Classify a symbol and name the currency its prices are quoted in."""
    normalized = symbol.strip().upper()
    if not normalized:
        raise ValueError("symbol must not be empty")
    occ = parse_occ_symbol(normalized)
    if occ is not None:
        return SymbolInfo(normalized, AssetClass.OPTIONS, occ.root, "USD")
    if "/" in normalized:
        base, _, quote = normalized.partition("/")
        if _PAIR_SIDE.match(base) and _PAIR_SIDE.match(quote):
            if base in ISO_4217_CODES and quote in ISO_4217_CODES:
                return SymbolInfo(normalized, AssetClass.FOREX, base, quote)
            return SymbolInfo(normalized, AssetClass.CRYPTO, base, quote)
    if len(normalized) == 6 and normalized.isalpha():
        base, quote = normalized[:3], normalized[3:]
        if base in ISO_4217_CODES and quote in ISO_4217_CODES:
            return SymbolInfo(normalized, AssetClass.FOREX, base, quote)
    for quote in _CRYPTO_QUOTE_ASSETS:
        base = normalized[: -len(quote)]
        if normalized.endswith(quote) and base in KNOWN_CRYPTO_ASSETS:
            return SymbolInfo(normalized, AssetClass.CRYPTO, base, quote)
    return SymbolInfo(normalized, AssetClass.EQUITY, normalized, "USD")


def detect_asset_class(symbol: str) -> AssetClass:
    return describe_symbol(symbol).asset_class


def quote_currency(symbol: str) -> str:
    return describe_symbol(symbol).quote_currency
