"""Fees the broker takes in an asset, reconciled with what the fills booked (pure).

A crypto buy pays its fee in the asset received, so the ledger books the fill net of an
*estimated* fee (the fee schedule's rate). The broker reports what it actually took later, as fee
activities (Alpaca: ``CFEE``, posted at the end of the day, one per trade, naming the symbol and
the day but not the order). Where the two differ (another volume tier, rounding) a
``LedgerFeeAdjustment`` books the difference, so positions and lots equal what the broker holds.

The broker charges one rate per account, so a day's actual fee for a symbol is shared among the
ledger's fills of that day in proportion to their filled quantity: exact when one tenant, user and
account label trade the broker account (a single-firm install), proportional otherwise.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_EVEN, Decimal

from backend.core.intents import Side
from backend.core.ledger import LEDGER_SCHEMA_VERSION, LedgerEntryType, LedgerFeeAdjustment, LedgerTrade
from backend.core.paths import ledger_trade_path, trade_id_for

# Alpaca reports crypto quantities to 9 decimals.
ASSET_QUANTUM = Decimal("0.000000001")


@dataclass(frozen=True, slots=True)
class AssetFeeActivity:
    """One fee the broker charged in an asset. ``amount`` is positive: what was taken."""

    activity_id: str
    symbol: str  # canonical instrument
    day: date
    asset: str
    amount: Decimal


def takes_fee_in_asset(trade: LedgerTrade) -> bool:
    return trade.fee_currency != trade.quote_currency


def fee_adjustment_id(tenant_id: str, uid: str, broker_account_id: str, symbol: str, day: date) -> str:
    """One adjustment per (tenant, user, account, symbol, day): recorded once, however often the
    reconciliation runs."""
    return trade_id_for(tenant_id, f"fee-adjustment\x1f{uid}\x1f{broker_account_id}\x1f{symbol}\x1f{day}")


def _shares(total: Decimal, weights: list[Decimal]) -> list[Decimal]:
    """``total`` split in proportion to ``weights``; the last share takes the exact remainder."""
    whole = sum(weights, Decimal(0))
    shares: list[Decimal] = []
    for weight in weights[:-1]:
        share = (total * weight / whole) if whole else total / len(weights)
        shares.append(share.quantize(ASSET_QUANTUM, rounding=ROUND_HALF_EVEN))
    shares.append(total - sum(shares, Decimal(0)))
    return shares


def asset_fee_adjustments(
    fills: Iterable[LedgerTrade], activities: Iterable[AssetFeeActivity], day: date
) -> list[LedgerFeeAdjustment]:
    """The adjustments that make ``day``'s fills (those paying their fee in the asset) agree with
    the broker's fee activities of that day. A symbol without activities is left alone: a fee not
    posted yet looks the same as no fee."""
    by_symbol: dict[str, list[LedgerTrade]] = defaultdict(list)
    for fill in fills:
        if fill.executed_at.astimezone(UTC).date() == day and takes_fee_in_asset(fill):
            by_symbol[fill.symbol].append(fill)
    charged: dict[str, list[AssetFeeActivity]] = defaultdict(list)
    for activity in activities:
        if activity.day == day:
            charged[activity.symbol].append(activity)
    adjustments: list[LedgerFeeAdjustment] = []
    for symbol in sorted(set(by_symbol) & set(charged)):
        adjustments.extend(_symbol_adjustments(symbol, by_symbol[symbol], charged[symbol], day))
    return adjustments


def _symbol_adjustments(
    symbol: str, fills: list[LedgerTrade], activities: list[AssetFeeActivity], day: date
) -> list[LedgerFeeAdjustment]:
    groups: dict[tuple[str, str, str], list[LedgerTrade]] = defaultdict(list)
    for fill in fills:
        groups[(fill.tenant_id, fill.uid, fill.broker_account_id)].append(fill)
    keys = sorted(groups)
    actual_total = sum((a.amount for a in activities), Decimal(0))
    actual_shares = _shares(actual_total, [sum((f.filled_qty for f in groups[k]), Decimal(0)) for k in keys])
    activity_ids = tuple(sorted(a.activity_id for a in activities))
    at = datetime.combine(day, time.max, tzinfo=UTC)  # after every fill of the day
    adjustments = []
    for key, actual in zip(keys, actual_shares, strict=True):
        tenant_id, uid, account = key
        group = sorted(groups[key], key=lambda f: (f.executed_at, f.trade_id))
        estimated = sum((f.fee_amount for f in group), Decimal(0))
        difference = actual - estimated
        if difference == 0:
            continue
        first = group[0]
        entry_id = fee_adjustment_id(tenant_id, uid, account, symbol, day)
        adjustments.append(
            LedgerFeeAdjustment(
                schema_version=LEDGER_SCHEMA_VERSION,
                entry_type=LedgerEntryType.FEE_ADJUSTMENT,
                path=ledger_trade_path(tenant_id, entry_id),
                trade_id=entry_id,
                tenant_id=tenant_id,
                uid=uid,
                broker_account_id=account,
                symbol=symbol,
                asset_class=first.asset_class,
                quote_currency=first.quote_currency,
                # The broker took more than booked: units leave the position; less: they come back.
                side=Side.SELL if difference > 0 else Side.BUY,
                qty=abs(difference),
                fee_currency=first.fee_currency,
                estimated_fee=estimated,
                actual_fee=actual,
                adjusts=tuple(f.trade_id for f in group),
                activity_ids=activity_ids,
                trading_day=day.isoformat(),
                executed_at=at,
            )
        )
    return adjustments


def settled_day_ready(day: date, now: datetime, posting_delay: timedelta) -> bool:
    """Fee activities for ``day`` are complete once the broker's end-of-day posting has passed."""
    return now >= datetime.combine(day + timedelta(days=1), time.min, tzinfo=UTC) + posting_delay
