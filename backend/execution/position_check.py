"""The broker position check: the ledger's positions compared with what a broker account holds
(``backend.core.position_reconciliation``), every finding logged as its own event so log-based
alerts can be set on them. It reads and reports; it never writes the ledger or a position.

Reads, in this order: the ledger's positions and orders, the fees it booked in an asset on days not
settled yet, then the broker's positions and recent orders. The engine records a fill only after the
broker reported it, so a fill landing while the check reads shows as a missing fill (the broker is
ahead), never as the ledger being ahead. A broker read that fails is "unknown": reported as
``POSITIONS_UNAVAILABLE``, and nothing is compared.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, Protocol

from backend.core.broker_accounts import AccountVenue, BrokerAccount
from backend.core.fee_reconciliation import fee_adjustment_id, takes_fee_in_asset
from backend.core.instruments import AssetClass, instrument_for
from backend.core.intents import canonical_decimal
from backend.core.ledger import LedgerTrade
from backend.core.orders import BrokerOrder
from backend.core.position_reconciliation import (
    BrokerView,
    DriftCode,
    DriftReport,
    Finding,
    KnownOrder,
    LedgerPosition,
    LedgerView,
    UnsettledAssetFee,
    positions_unavailable,
    reconcile_positions,
    symbols_to_confirm,
)
from backend.execution.ports import ExecutionStore
from backend.execution.settings import ExecSettings
from backend.observability.logging import log_event

logger = logging.getLogger("msr.positions")

# Fees taken in the asset are settled from 06:00 UTC the next day, and an order may rest for a
# while: two days cover a day's fills until its settlement and the orders that explain them.
DEFAULT_WINDOW = timedelta(hours=48)

# One event per finding, so that an alert can be set on each (see the README's "Logs").
EVENTS: dict[DriftCode, tuple[str, int]] = {
    DriftCode.MISSING_FILL: ("positions.missing_fill", logging.WARNING),
    DriftCode.UNKNOWN_ORDER: ("positions.unknown_order", logging.ERROR),
    DriftCode.EXTERNAL_ORDER: ("positions.external_order", logging.WARNING),
    DriftCode.FEE_ADJUSTMENT_PENDING: ("positions.fee_adjustment_pending", logging.INFO),
    DriftCode.POSITION_MISMATCH: ("positions.mismatch", logging.ERROR),
    DriftCode.BROKER_POSITION_UNCONFIRMED: ("positions.unconfirmed", logging.WARNING),
    DriftCode.POSITIONS_UNAVAILABLE: ("positions.unavailable", logging.ERROR),
}


class PositionSource(Protocol):
    """A broker account's reports as the check reads them (``AlpacaBroker``)."""

    name: str

    def positions(self) -> dict[str, Decimal]: ...

    def position(self, symbol: str) -> Decimal: ...

    def recent_orders(self, after: datetime) -> list[BrokerOrder]: ...


def broker_account_of(
    tenant_id: str,
    account_label: str,
    symbol: str,
    venues: Mapping[AssetClass, str],
    registered: Collection[tuple[str, str]] = (),
) -> str:
    """The broker account a ledger position is held at. The venue that routes the instrument's
    asset class; at Alpaca, a tenant's registered account (``registered``: (tenant, account id)
    pairs) is its own account, named ``tenant/account``, and everything else is the deployment's
    one account (the single-firm install), named by the venue."""
    venue = venues.get(instrument_for(symbol).asset_class, "none")
    if venue == "alpaca" and (tenant_id, account_label) in registered:
        return registered_account_name(tenant_id, account_label)
    return venue


def registered_account_name(tenant_id: str, account_id: str) -> str:
    return f"{tenant_id}/{account_id}"


def check_positions(
    store: ExecutionStore,
    broker: PositionSource,
    settings: ExecSettings,
    now: datetime,
    window: timedelta = DEFAULT_WINDOW,
    *,
    account: str | None = None,
    registered: Collection[tuple[str, str]] = (),
) -> DriftReport:
    """Compare ``broker``'s account with the ledger's positions held there; log one event per
    finding and a summary (``positions.checked``); return the report. ``account``: the account's
    name (default: the broker's, the deployment's own); ``registered``: the tenants' registered
    Alpaca accounts, whose positions are not the deployment account's."""
    account = account or broker.name
    venues = settings.venue_table()
    ledger = _ledger_view(store, account, venues, now, window, registered)
    try:
        held = broker.positions()
        orders = tuple(broker.recent_orders(now - window))
    except Exception as error:  # noqa: BLE001 - a failed read is no evidence: unknown, never flat
        report = positions_unavailable(account, f"{type(error).__name__}: {error}", now)
        _log(report, window)
        return report
    confirmed = {symbol: _confirm(broker, symbol) for symbol in symbols_to_confirm(ledger.positions, held)}
    view = BrokerView(held, orders, confirmed)
    report = reconcile_positions(account, ledger, view, settings.fee_schedule_config(), now)
    _log(report, window)
    return report


def registered_alpaca_accounts(accounts: Collection[BrokerAccount]) -> frozenset[tuple[str, str]]:
    return frozenset((a.tenant_id, a.account_id) for a in accounts if a.venue is AccountVenue.ALPACA)


def check_registered_accounts(
    store: ExecutionStore,
    accounts: Collection[BrokerAccount],
    source_for: Callable[[BrokerAccount], PositionSource],
    settings: ExecSettings,
    now: datetime,
    window: timedelta = DEFAULT_WINDOW,
) -> list[DriftReport]:
    """The same check for each tenant's registered Alpaca account, through its own keys: one
    report (and its events) per account. An account whose broker cannot be built is reported as
    ``POSITIONS_UNAVAILABLE``, never as flat."""
    registered = registered_alpaca_accounts(accounts)
    reports = []
    for account in accounts:
        if account.venue is not AccountVenue.ALPACA:
            continue
        name = registered_account_name(account.tenant_id, account.account_id)
        try:
            source = source_for(account)
        except Exception as error:  # noqa: BLE001 - no keys, nothing compared: unknown, never flat
            report = positions_unavailable(name, f"{type(error).__name__}: no broker for the account", now)
            _log(report, window)
            reports.append(report)
            continue
        reports.append(
            check_positions(store, source, settings, now, window, account=name, registered=registered)
        )
    return reports


def _confirm(broker: PositionSource, symbol: str) -> Decimal | None:
    """The targeted query for a position the list omitted; None when it did not answer."""
    try:
        return broker.position(symbol)
    except Exception:  # noqa: BLE001 - a failed query confirms nothing: the position stays unconfirmed
        return None


def ledger_positions(
    account: str,
    positions: Mapping[tuple[str, str, str], tuple[Decimal, Decimal, Decimal]],
    venues: Mapping[AssetClass, str],
    registered: Collection[tuple[str, str]] = (),
) -> dict[str, LedgerPosition]:
    """The ledger's positions held at ``account``, summed per canonical instrument over the
    tenants and account labels it serves."""
    summed: dict[str, list[Decimal]] = defaultdict(lambda: [Decimal(0)] * 3)
    for (tenant_id, label, symbol), quantities in positions.items():
        if broker_account_of(tenant_id, label, symbol, venues, registered) == account:
            total = summed[symbol]
            for index, qty in enumerate(quantities):
                total[index] += qty
    return {symbol: LedgerPosition(*total) for symbol, total in summed.items()}


def _ledger_view(
    store: ExecutionStore,
    account: str,
    venues: Mapping[AssetClass, str],
    now: datetime,
    window: timedelta,
    registered: Collection[tuple[str, str]] = (),
) -> LedgerView:
    positions = ledger_positions(account, store.all_positions(), venues, registered)
    orders = {
        stored.order.client_order_id: KnownOrder(
            stored.order.client_order_id, stored.order.tenant_id, stored.order.filled_qty, stored.order.state
        )
        for stored in store.iter_orders()
        if stored.order is not None
    }
    first_day = (now - window).astimezone(UTC).date()
    fees = unsettled_asset_fees(store, account, venues, first_day, now, registered)
    return LedgerView(positions, orders, fees)


def unsettled_asset_fees(
    store: ExecutionStore,
    account: str,
    venues: Mapping[AssetClass, str],
    first_day: date,
    now: datetime,
    registered: Collection[tuple[str, str]] = (),
) -> tuple[UnsettledAssetFee, ...]:
    """The fees taken in the asset that fills at ``account`` booked at estimated rates, per
    instrument and UTC day from ``first_day`` (whole days), where the day has no fee adjustment
    for its (tenant, user, account label, instrument) yet."""
    since = datetime.combine(first_day, time.min, tzinfo=UTC)
    booked: dict[tuple[str, str, str, str, date], Decimal] = defaultdict(Decimal)
    for entry in store.ledger_entries_since(since):
        if not isinstance(entry, LedgerTrade) or not takes_fee_in_asset(entry):
            continue
        day = entry.executed_at.astimezone(UTC).date()
        at_account = (
            broker_account_of(entry.tenant_id, entry.broker_account_id, entry.symbol, venues, registered)
            == account
        )
        if at_account and first_day <= day <= now.astimezone(UTC).date():
            booked[(entry.tenant_id, entry.uid, entry.broker_account_id, entry.symbol, day)] += (
                entry.fee_amount
            )
    return tuple(
        UnsettledAssetFee(symbol, day, amount)
        for (tenant_id, uid, label, symbol, day), amount in sorted(booked.items())
        if store.get_ledger_trade(tenant_id, fee_adjustment_id(tenant_id, uid, label, symbol, day)) is None
    )


def finding_fields(finding: Finding) -> dict[str, Any]:
    """A finding as flat fields (log events, JSON): codes and exact decimal strings, no Nones."""
    fields: dict[str, Any] = {
        "reason_code": finding.code.value,
        "broker_account": finding.broker_account,
        "symbol": finding.symbol,
        "ledger_qty": finding.ledger_qty,
        "broker_qty": finding.broker_qty,
        "difference": finding.difference,
        "explained_qty": finding.explained_qty,
        "pending_fee": finding.pending_fee,
        "fee_days": [day.isoformat() for day in finding.fee_days] or None,
    }
    order = finding.order
    if order is not None:
        fields |= {
            "client_order_id": order.client_order_id,
            "broker_order_id": order.broker_order_id,
            "side": order.side.value,
            "order_qty": order.qty,
            "order_status": order.status.value,
            "broker_filled_qty": order.broker_filled_qty,
            "recorded_filled_qty": order.recorded_filled_qty,
            "submitted_at": order.submitted_at.isoformat(),
        }
    return {name: _plain(value) for name, value in fields.items() if value is not None}


def report_fields(report: DriftReport) -> dict[str, Any]:
    """The whole report as JSON-ready values (``msr positions check --json``)."""
    return {
        "broker_account": report.broker_account,
        "checked_at": report.checked_at.isoformat(),
        "available": report.available,
        "drift": report.drift,
        "needs_attention": report.needs_attention,
        "counts": {code.value: count for code, count in report.counts().items()},
        "findings": [{**finding_fields(f), "message": f.message} for f in report.findings],
        "positions": [
            {
                "symbol": p.symbol,
                "ledger_qty": _plain(p.ledger.qty),
                "in_flight_buy": _plain(p.ledger.in_flight_buy),
                "in_flight_sell": _plain(p.ledger.in_flight_sell),
                "broker_qty": _plain(p.broker_qty),
                "explained": {code.value: _plain(qty) for code, qty in p.explained.items()},
                "unexplained": _plain(p.unexplained),
            }
            for p in report.positions
        ],
    }


def _plain(value: Any) -> Any:
    return canonical_decimal(value) if isinstance(value, Decimal) else value


def _log(report: DriftReport, window: timedelta) -> None:
    for finding in report.findings:
        event, severity = EVENTS[finding.code]
        log_event(logger, event, finding.message, severity, **finding_fields(finding))
    counts = {code.value: count for code, count in report.counts().items()}
    summary = ", ".join(f"{count} {code}" for code, count in sorted(counts.items())) or "no drift"
    log_event(
        logger,
        "positions.checked",
        f"Positions at {report.broker_account}: {len(report.positions)} instrument(s) compared; {summary}",
        logging.WARNING if report.needs_attention else logging.INFO,
        broker_account=report.broker_account,
        available=report.available,
        compared=len(report.positions),
        findings=len(report.findings),
        counts=counts,
        needs_attention=report.needs_attention,
        window_hours=window.total_seconds() / 3600,
    )
