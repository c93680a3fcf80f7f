"""Instruments: what is traded, in one spelling, and the one place that knows what a symbol means.

An ``Instrument`` is the canonical symbol (one spelling per instrument), its asset class, the
currency its prices are quoted in, its contract multiplier (a US equity option is 100 shares) and
the lot rule where one is known (options trade in whole contracts). Every key, position, limit,
ledger row and money computation goes through it, so a notional is always
``qty x price x multiplier`` and two spellings (``BTCUSD``, ``BTC-USD``, ``btc/usd``) are never two
positions. Venue spellings (Alpaca takes ``BTC/USD`` in orders and reports ``BTCUSD`` in
positions) are mapped in the venue's adapter.

Canonical spellings: equities as the ticker (``AAPL``, ``BRK.B``); FX and crypto pairs as
``BASE/QUOTE`` (``EUR/USD``, ``BTC/USD``); options as the compact OCC symbol
(``AAPL240119C00150000``, the root's padding removed).

Detection rule (precedence, first match wins), documented in the README and tested:

1. OPTIONS: an OCC option symbol, ``ROOT + YYMMDD + C|P + strike*1000 (8 digits)``, the root
   optionally space-padded (``AAPL240119C00150000``, ``SPY   251219P00450000``).
2. A pair written with ``/`` (``BASE/QUOTE``): FOREX when both sides are ISO 4217 currency codes
   (``EUR/USD``, ``USD/JPY``, ``XAU/USD``), otherwise CRYPTO (``BTC/USD``, ``ETH/USDT``,
   ``PEPE/USD``).
3. A pair written with ``-``: FOREX when both sides are ISO 4217 codes, CRYPTO when the quote side
   is a crypto quote asset (``BTC-USD``, ``ETH-USDT``); share classes such as ``BRK-B`` have a
   one-letter suffix and stay equities.
4. Six letters, no separator, both halves ISO 4217 codes: FOREX (``EURUSD``). US tickers have at
   most five letters, so this never captures an equity.
5. No separator, a *known* crypto base asset followed by a known quote asset: CRYPTO (``BTCUSD``,
   ``ETHUSDT``). An unknown base stays EQUITY, so a ticker is never turned into crypto by guess.
6. Anything else: EQUITY (``AAPL``, ``BRK.B``).

Where a code is both a currency and a token (``MNT`` is the Mongolian tögrög and the Mantle token),
the ISO 4217 meaning wins.

An asset class given by the caller must agree with a positive detection (rules 1-5); a symbol
that only falls through to EQUITY may be declared CRYPTO when it reads as a pair (``ABCUSD`` ->
``ABC/USD``), never OPTIONS or FOREX.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from enum import StrEnum
from functools import lru_cache
from types import MappingProxyType

from backend.core.numbers import canonical_decimal


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


class InvalidSymbolError(ValueError, TypeError):
    """A symbol that names no instrument: not a string, empty, or at odds with its asset class."""


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
CRYPTO_QUOTE_ASSETS: tuple[str, ...] = ("USDT", "USDC", "BUSD", "USD", "EUR", "GBP", "BTC", "ETH")

OPTION_CONTRACT_MULTIPLIER = Decimal(100)  # shares per standard US equity option contract
_ONE = Decimal(1)


@dataclass(frozen=True, slots=True)
class QtyBounds:
    """The quantities an order may have: ``minimum`` to ``maximum``, in steps of ``step``. Sane
    bounds, not a venue's exact rules: they stop a typo or an attacker's ``1e-400`` before
    anything is priced, claimed or sent (the venue still applies its own)."""

    minimum: Decimal
    maximum: Decimal
    step: Decimal

    def problem(self, qty: Decimal, asset_class: AssetClass) -> str | None:
        minimum, maximum, step, got = (
            canonical_decimal(n) for n in (self.minimum, self.maximum, self.step, qty)
        )
        if not self.minimum <= qty <= self.maximum:
            return f"{asset_class.value} qty must be between {minimum} and {maximum}, got {got}"
        if qty % self.step != 0:
            unit = "whole contracts" if self.step == _ONE else f"steps of {step}"
            return f"{asset_class.value} trade in {unit}, got qty {got}"
        return None


_NANO = Decimal("0.000000001")
# Alpaca takes fractional shares and crypto quantities to 9 decimal places; options trade in whole
# contracts; FX (paper venue) in hundredths of a unit. The maxima are far above any real order
# (ten million shares, ten thousand contracts, a hundred billion units of a token priced in
# millionths of a dollar) and far below what would make a notional lose a cent.
QTY_BOUNDS: Mapping[AssetClass, QtyBounds] = MappingProxyType(
    {
        AssetClass.EQUITY: QtyBounds(_NANO, Decimal(10_000_000), _NANO),
        AssetClass.OPTIONS: QtyBounds(_ONE, Decimal(10_000), _ONE),
        AssetClass.CRYPTO: QtyBounds(_NANO, Decimal(100_000_000_000), _NANO),
        AssetClass.FOREX: QtyBounds(Decimal("0.01"), Decimal(1_000_000_000), Decimal("0.01")),
    }
)

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

    @property
    def occ_symbol(self) -> str:
        """The compact OCC symbol (no padding): the canonical spelling of the contract."""
        return f"{self.root}{self.expiry:%y%m%d}{self.right}{int(self.strike * 1000):08d}"


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
class Instrument:
    """What is traded. ``base`` is the ticker, the option's root, or the pair's base asset."""

    symbol: str
    asset_class: AssetClass
    base: str
    quote_currency: str
    multiplier: Decimal = _ONE
    option: OptionContract | None = None

    @property
    def qty_bounds(self) -> QtyBounds:
        return QTY_BOUNDS[self.asset_class]

    def notional(self, qty: Decimal, price: Decimal) -> Decimal:
        """What ``qty`` at ``price`` is worth in the quote currency: the one place the multiplier
        enters money."""
        return qty * price * self.multiplier

    def qty_problem(self, qty: Decimal) -> str | None:
        """Why ``qty`` cannot be traded in this instrument, or None."""
        return self.qty_bounds.problem(qty, self.asset_class)


def _pair(base: str, quote: str, asset_class: AssetClass) -> Instrument:
    return Instrument(f"{base}/{quote}", asset_class, base, quote)


def _option(contract: OptionContract) -> Instrument:
    return Instrument(
        contract.occ_symbol,
        AssetClass.OPTIONS,
        contract.root,
        "USD",
        multiplier=OPTION_CONTRACT_MULTIPLIER,
        option=contract,
    )


def _split_pair(normalized: str) -> tuple[str, str, str] | None:
    """(base, separator, quote) of a ``BASE/QUOTE`` or ``BASE-QUOTE`` spelling, sides trimmed."""
    for separator in ("/", "-"):
        if separator in normalized:
            base, _, quote = normalized.partition(separator)
            base, quote = base.strip(), quote.strip()
            if _PAIR_SIDE.match(base) and _PAIR_SIDE.match(quote):
                return base, separator, quote
            return None
    return None


def _split_concatenated_crypto(normalized: str, known_base_only: bool) -> tuple[str, str] | None:
    for quote in CRYPTO_QUOTE_ASSETS:
        base = normalized[: -len(quote)]
        known = base in KNOWN_CRYPTO_ASSETS or not known_base_only
        if normalized.endswith(quote) and _PAIR_SIDE.match(base) and known:
            return base, quote
    return None


def _detect(normalized: str) -> Instrument | None:
    """The instrument a symbol positively names (rules 1-5), or None: a plain ticker."""
    occ = parse_occ_symbol(normalized)
    if occ is not None:
        return _option(occ)
    pair = _split_pair(normalized)
    if pair is not None:
        base, separator, quote = pair
        if base in ISO_4217_CODES and quote in ISO_4217_CODES:
            return _pair(base, quote, AssetClass.FOREX)
        if separator == "/" or quote in CRYPTO_QUOTE_ASSETS:
            return _pair(base, quote, AssetClass.CRYPTO)
        return None
    if len(normalized) == 6 and normalized.isalpha():
        base, quote = normalized[:3], normalized[3:]
        if base in ISO_4217_CODES and quote in ISO_4217_CODES:
            return _pair(base, quote, AssetClass.FOREX)
    concatenated = _split_concatenated_crypto(normalized, known_base_only=True)
    if concatenated is not None:
        return _pair(*concatenated, AssetClass.CRYPTO)
    return None


def _normalized(symbol: object) -> str:
    if not isinstance(symbol, str):
        raise InvalidSymbolError(f"symbol must be a string, got {type(symbol).__name__} ({symbol!r})")
    normalized = symbol.strip().upper()
    if not normalized:
        raise InvalidSymbolError("symbol must not be empty")
    return normalized


@lru_cache(maxsize=8192)
def _instrument(normalized: str, declared: AssetClass | None) -> Instrument:
    detected = _detect(normalized)
    if declared is None or (detected is not None and detected.asset_class is declared):
        return detected or Instrument(normalized, AssetClass.EQUITY, normalized, "USD")
    if detected is not None:
        raise InvalidSymbolError(
            f"{normalized} is a {detected.asset_class.value} instrument ({detected.symbol}), "
            f"not {declared.value}"
        )
    if declared is AssetClass.EQUITY:
        return Instrument(normalized, AssetClass.EQUITY, normalized, "USD")
    if declared is AssetClass.CRYPTO:
        pair = _split_pair(normalized)
        split = (pair[0], pair[2]) if pair else _split_concatenated_crypto(normalized, known_base_only=False)
        if split is not None:
            return _pair(*split, AssetClass.CRYPTO)
        raise InvalidSymbolError(f"{normalized} does not read as a crypto pair (BASE/QUOTE)")
    what = "an OCC option symbol" if declared is AssetClass.OPTIONS else "a currency pair of ISO 4217 codes"
    raise InvalidSymbolError(f"{normalized} is not {what}, so it cannot be {declared.value}")


def instrument_for(symbol: str, asset_class: AssetClass | str | None = None) -> Instrument:
    """The instrument ``symbol`` names, in its canonical spelling. ``asset_class``, when given,
    must agree with what the symbol positively is (see the module docstring)."""
    declared = AssetClass.parse(asset_class) if asset_class is not None else None
    return _instrument(_normalized(symbol), declared)


def canonical_symbol(symbol: str, asset_class: AssetClass | str | None = None) -> str:
    return instrument_for(symbol, asset_class).symbol


def detect_asset_class(symbol: str) -> AssetClass:
    return instrument_for(symbol).asset_class


def quote_currency(symbol: str) -> str:
    return instrument_for(symbol).quote_currency
