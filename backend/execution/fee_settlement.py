"""Settle the fees a broker took in an asset against what the ledger booked (see
``backend.core.fee_reconciliation``): read the broker's fee activities for a finished day, book
the differences as fee adjustments (ledger entry + position, one commit each, recorded once), and
fan them out to the users' histories where the fan-out runs in-process."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Protocol

from backend.core.fee_reconciliation import (
    AssetFeeActivity,
    asset_fee_adjustments,
    settled_day_ready,
    takes_fee_in_asset,
)
from backend.core.ledger import LedgerTrade
from backend.execution.fanout import fan_out_ledger_trade
from backend.execution.ports import ExecutionStore, PortfolioStore
from backend.observability.logging import log_event

logger = logging.getLogger("msr.fees")

# Alpaca posts crypto fee activities at the end of its trading day (US Eastern): by 06:00 UTC
# the next day the previous UTC day is complete.
DEFAULT_POSTING_DELAY = timedelta(hours=6)


class AssetFeeSource(Protocol):
    """A broker that reports the fees it charged in an asset (``AlpacaBroker``)."""

    name: str

    def asset_fee_activities(self, day: date) -> list[AssetFeeActivity]: ...


class DayNotSettled(ValueError):
    """The broker has not posted the day's fees yet: settling it now would book a wrong difference."""


@dataclass(frozen=True, slots=True)
class FeeSettlementReport:
    day: date
    fills: int  # the day's fills at this broker that pay their fee in the asset
    activities: int
    adjustments: int  # booked by this run
    already_recorded: int


def settle_asset_fees(
    store: ExecutionStore,
    source: AssetFeeSource,
    day: date,
    now: datetime,
    portfolio: PortfolioStore | None = None,
    posting_delay: timedelta = DEFAULT_POSTING_DELAY,
) -> FeeSettlementReport:
    if not settled_day_ready(day, now, posting_delay):
        raise DayNotSettled(f"{day} is not settled at {source.name} yet (fees post at the end of the day)")
    fills = [
        entry
        for entry in store.iter_ledger_trades()
        if isinstance(entry, LedgerTrade)
        and entry.broker.broker == source.name
        and takes_fee_in_asset(entry)
        and entry.executed_at.date() == day
    ]
    activities = source.asset_fee_activities(day)
    booked = already = 0
    for adjustment in asset_fee_adjustments(fills, activities, day):
        if not store.record_fee_adjustment(adjustment):
            already += 1
            continue
        booked += 1
        log_event(
            logger,
            "fees.adjusted",
            f"{adjustment.symbol} {day}: broker took {adjustment.actual_fee} {adjustment.fee_currency}, "
            f"fills booked {adjustment.estimated_fee}; {adjustment.side.value} {adjustment.qty}",
            tenant_id=adjustment.tenant_id,
            broker_account_id=adjustment.broker_account_id,
            symbol=adjustment.symbol,
            trade_id=adjustment.trade_id,
            estimated_fee=adjustment.estimated_fee,
            actual_fee=adjustment.actual_fee,
        )
        if portfolio is not None:
            fan_out_ledger_trade(adjustment, portfolio)
    report = FeeSettlementReport(day, len(fills), len(activities), booked, already)
    log_event(
        logger,
        "fees.settled",
        f"Asset fees of {day} at {source.name}: {booked} adjustment(s) booked, {already} already recorded",
        day=day.isoformat(),
        broker=source.name,
        fills=report.fills,
        activities=report.activities,
        adjustments=booked,
        already_recorded=already,
    )
    return report
