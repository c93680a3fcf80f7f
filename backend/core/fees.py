"""Fees per instrument, from a fee schedule kept as configuration (pure).

The default is Alpaca's published schedule (``ALPACA_FEES``; its source and the date it was read
travel with it):

- US equities: no commission. CAT on every executed share, both sides; on sells the SEC fee (a
  rate on the principal) and the FINRA TAF (per share, capped per trade).
- US equity options: per contract the ORF and the OCC clearing fee (capped per trade), CAT per
  executed *equivalent share* (contracts x the multiplier), and on sells the SEC fee on the
  principal (contracts x price x multiplier) and the options TAF per contract.
- Crypto: a rate on the notional, taker for market orders, maker for resting limit orders,
  charged **in the asset received**: a buy of BTC/USD pays in BTC (the position grows by less
  than the fill), a sell pays in USD (the proceeds shrink).
- FX: a rate on the notional for the configured FX venue (0 on the paper venue).

Each regulatory fee is rounded up to the cent per trade (Alpaca rounds the day's cumulative
total up to the cent, so a day's booked fees can exceed the charged total by under a cent per fee
type and trade). Crypto fees are exact amounts of the asset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from decimal import ROUND_UP, Decimal
from types import MappingProxyType
from typing import Any

from backend.core.instruments import AssetClass, Instrument
from backend.core.intents import Side
from backend.core.orders import OrderType

_CENT = Decimal("0.01")
_BPS = Decimal("0.0001")
_ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class FeeSchedule:
    """Rates in the units their publisher uses: per share, per contract, a fraction of principal,
    or basis points. ``source`` and ``as_of`` say where the figures come from and when they were
    read; override any of them with ``EXEC_FEE_SCHEDULE`` (JSON)."""

    source: str = "https://docs.alpaca.markets/docs/regulatory-fees (effective rates table)"
    as_of: date = date(2026, 11, 24)
    crypto_taker_bps: Decimal = Decimal(25)  # Alpaca crypto, 30-day volume tier 1
    crypto_maker_bps: Decimal = Decimal(15)
    sec_fee_rate: Decimal = Decimal("0.0000278")  # of sells' principal, equities and options
    finra_taf_per_share: Decimal = Decimal("0.000166")  # equity sells
    finra_taf_max: Decimal = Decimal("8.30")  # per trade (reached at 50,000 shares)
    cat_fee_per_share: Decimal = Decimal("0.000046")  # per executed equivalent share, both sides
    options_orf_per_contract: Decimal = Decimal("0.02685")
    options_occ_per_contract: Decimal = Decimal("0.02")
    options_occ_max: Decimal = Decimal(55)  # per trade (reached at 2,750 contracts)
    options_taf_per_contract: Decimal = Decimal("0.00279")  # option sells
    fx_bps: Decimal = _ZERO

    @classmethod
    def from_overrides(cls, overrides: dict[str, Any]) -> FeeSchedule:
        """The default schedule with some figures replaced (decimal strings, or a date for ``as_of``)."""
        known = {name for name in cls.__dataclass_fields__}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown fee schedule fields {unknown}; known: {sorted(known)}")
        values: dict[str, Any] = {}
        for name, value in overrides.items():
            if name == "source":
                values[name] = str(value)
            elif name == "as_of":
                values[name] = value if isinstance(value, date) else date.fromisoformat(str(value))
            else:
                amount = Decimal(str(value))
                if not amount.is_finite() or amount < 0:
                    raise ValueError(f"fee schedule {name} must be a finite amount >= 0, got {value!r}")
                values[name] = amount
        return cls(**values)


ALPACA_FEES = FeeSchedule()


@dataclass(frozen=True, slots=True)
class FeeEstimate:
    """What a fill costs in fees. ``total`` is the value in the instrument's quote currency (what
    cost analysis adds up); ``currency`` and ``amount`` say what is actually charged: the quote
    currency, or the base asset for a crypto buy."""

    total: Decimal
    currency: str
    amount: Decimal
    components: MappingProxyType[str, Decimal] = field(default_factory=lambda: MappingProxyType({}))


def _up(amount: Decimal) -> Decimal:
    return amount.quantize(_CENT, rounding=ROUND_UP)


def _regulatory(
    instrument: Instrument, side: Side, qty: Decimal, principal: Decimal, schedule: FeeSchedule
) -> dict[str, Decimal]:
    equivalent_shares = qty * instrument.multiplier
    components = {"CAT": _up(equivalent_shares * schedule.cat_fee_per_share)}
    if instrument.asset_class is AssetClass.OPTIONS:
        components["ORF"] = _up(qty * schedule.options_orf_per_contract)
        components["OCC"] = min(_up(qty * schedule.options_occ_per_contract), schedule.options_occ_max)
    if side is Side.SELL:
        components["SEC"] = _up(principal * schedule.sec_fee_rate)
        if instrument.asset_class is AssetClass.OPTIONS:
            components["TAF"] = _up(qty * schedule.options_taf_per_contract)
        else:
            components["TAF"] = min(_up(qty * schedule.finra_taf_per_share), schedule.finra_taf_max)
    return {name: amount for name, amount in components.items() if amount}


def estimate_fees(
    instrument: Instrument,
    side: Side,
    qty: Decimal,
    price: Decimal,
    schedule: FeeSchedule = ALPACA_FEES,
    order_type: OrderType = OrderType.MARKET,
) -> FeeEstimate:
    """Fees for ``qty`` of ``instrument`` filled at ``price`` (never negative)."""
    principal = instrument.notional(qty, price)
    quote = instrument.quote_currency
    if instrument.asset_class is AssetClass.CRYPTO:
        taker = order_type is OrderType.MARKET
        rate = (schedule.crypto_taker_bps if taker else schedule.crypto_maker_bps) * _BPS
        name = "CRYPTO_TAKER" if taker else "CRYPTO_MAKER"
        total = principal * rate
        if side is Side.BUY:  # charged in the asset received: the base asset
            return FeeEstimate(total, instrument.base, qty * rate, MappingProxyType({name: total}))
        return FeeEstimate(total, quote, total, MappingProxyType({name: total}))
    if instrument.asset_class is AssetClass.FOREX:
        total = principal * schedule.fx_bps * _BPS
        return FeeEstimate(total, quote, total, MappingProxyType({"FX": total} if total else {}))
    components = _regulatory(instrument, side, qty, principal, schedule)
    total = sum(components.values(), _ZERO)
    return FeeEstimate(total, quote, total, MappingProxyType(components))
