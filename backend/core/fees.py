"""Fees per asset class, as configuration; Alpaca's published schedule is the default (pure).

- Crypto: a percentage of notional, taker for market orders (25 bps at the lowest 30-day volume
  tier), maker for limit orders (15 bps). A market crypto order pays more in fees alone than the
  default 0.1 % spread threshold: the cost gate prices the spread, these figures sit beside it.
- US equities: no commission; the CAT fee on every share; on sells the SEC fee (a rate on the
  proceeds) and the FINRA TAF (per share, capped).
- Options: per-contract regulatory fees (ORF, OCC), and the TAF on sells.
- FX: a percentage of notional for the configured FX venue (0 on the paper venue).

Each regulatory fee is rounded up to the cent, as brokers pass them on.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_UP, Decimal

from backend.core.assets import AssetClass
from backend.core.intents import Side
from backend.core.orders import OrderType

_CENT = Decimal("0.01")
_BPS = Decimal("0.0001")


@dataclass(frozen=True, slots=True)
class FeeSchedule:
    crypto_taker_bps: Decimal = Decimal(25)
    crypto_maker_bps: Decimal = Decimal(15)
    equity_sec_fee_rate: Decimal = Decimal("0.0000278")
    equity_finra_taf_per_share: Decimal = Decimal("0.000166")
    equity_finra_taf_max: Decimal = Decimal("8.30")
    equity_cat_fee_per_share: Decimal = Decimal("0.000046")
    options_orf_per_contract: Decimal = Decimal("0.027")
    options_occ_per_contract: Decimal = Decimal("0.02")
    options_taf_per_contract: Decimal = Decimal("0.00279")
    fx_bps: Decimal = Decimal(0)


ALPACA_FEES = FeeSchedule()


def _up(amount: Decimal) -> Decimal:
    return amount.quantize(_CENT, rounding=ROUND_UP)


def estimate_fees(
    asset_class: AssetClass,
    side: Side,
    qty: Decimal,
    price: Decimal,
    schedule: FeeSchedule = ALPACA_FEES,
    order_type: OrderType = OrderType.MARKET,
) -> Decimal:
    """Fees in the instrument's quote currency for ``qty`` at ``price`` (never negative)."""
    notional = qty * price
    if asset_class is AssetClass.CRYPTO:
        bps = schedule.crypto_taker_bps if order_type is OrderType.MARKET else schedule.crypto_maker_bps
        return notional * bps * _BPS
    if asset_class is AssetClass.FOREX:
        return notional * schedule.fx_bps * _BPS
    if asset_class is AssetClass.OPTIONS:
        per_contract = schedule.options_orf_per_contract + schedule.options_occ_per_contract
        fees = _up(qty * per_contract)
        if side is Side.SELL:
            fees += _up(qty * schedule.options_taf_per_contract)
        return fees
    fees = _up(qty * schedule.equity_cat_fee_per_share)
    if side is Side.SELL:
        fees += _up(notional * schedule.equity_sec_fee_rate)
        fees += min(_up(qty * schedule.equity_finra_taf_per_share), schedule.equity_finra_taf_max)
    return fees
