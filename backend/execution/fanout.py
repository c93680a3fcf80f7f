"""The ledger -> portfolio-history fan-out, and its re-drive.

In deployment a Firestore trigger on ``tenants/{tenant_id}/ledger_trades/{trade_id}`` calls
``fan_out_ledger_trade`` with the new ledger row; locally the engine calls it right after the
ledger write. Deliveries may repeat or come out of order: the entry id is the ledger trade id
(create-once), and a late entry that could change a booked sale replays the user's trades in that
symbol (see ``backend/core/lot_documents``), so neither changes the outcome. Triggers are not
retried, so ``redrive`` finds ledger rows without a history entry and fans them out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from backend.adapters.documents import LEDGER_ENTRIES, from_document, without_server_fields
from backend.core.ledger import LedgerEntry
from backend.core.portfolio import FanOutResult, history_entry
from backend.core.tax_lots import LotMethod
from backend.execution.ports import ExecutionStore, PortfolioStore
from backend.observability.logging import log_event

logger = logging.getLogger("msr.portfolio")


def fan_out_ledger_trade(
    trade: LedgerEntry, portfolio: PortfolioStore, method: LotMethod | None = None
) -> FanOutResult:
    started = time.perf_counter()
    result = portfolio.apply_history_entry(history_entry(trade), method)
    log_event(
        logger,
        "portfolio.fanned_out" if result.created else "portfolio.duplicate_delivery",
        f"{'Recorded' if result.created else 'Already recorded'} {trade.side.value} {trade.qty} "
        f"{trade.symbol} in {result.history_path}",
        uid=trade.uid,
        tenant_id=trade.tenant_id,
        trade_id=trade.trade_id,
        history_path=result.history_path,
        entries_updated=result.updated,
        position=result.lots.position,
        lot_method=result.lots.lot_method.value,
        elapsed_ms=round((time.perf_counter() - started) * 1000, 3),
    )
    return result


class MalformedLedgerDocument(ValueError):
    """A document that is not a ledger row: delivering it again cannot help. Its own type, so that
    a caller acknowledging it never acknowledges another ``ValueError`` (a configuration error)."""


def fan_out_ledger_document(
    document: Mapping[str, Any], portfolio: PortfolioStore, method: LotMethod | None = None
) -> FanOutResult:
    """The trigger's entry point: a ledger document as Firestore delivers it (server-stamped
    fields included). A document that is not a ledger row raises ``MalformedLedgerDocument``."""
    try:
        trade = from_document(LEDGER_ENTRIES, without_server_fields(dict(document)))
    except ValidationError as exc:
        raise MalformedLedgerDocument(
            f"not a ledger trade document: {exc.error_count()} error(s): {exc}"
        ) from exc
    return fan_out_ledger_trade(trade, portfolio, method)


@dataclass(frozen=True, slots=True)
class RedriveReport:
    since: datetime
    scanned: int
    fanned_out: int


REDRIVE_STATE = "portfolio_redrive"
# The next run starts this far before the last one did: an entry written while a run was
# scanning (server time against this clock) is not missed.
REDRIVE_OVERLAP = timedelta(minutes=10)
FIRST_REDRIVE_WINDOW = timedelta(hours=48)


def redrive(
    ledger: ExecutionStore,
    portfolio: PortfolioStore,
    since: datetime,
    tenant_id: str | None = None,
) -> RedriveReport:
    """Fan out every ledger entry written at or after ``since`` (an indexed query on the write
    time, across tenants) that has no history entry."""
    scanned = fanned_out = 0
    for entry in ledger.ledger_entries_since(since):
        if tenant_id is not None and entry.tenant_id != tenant_id:
            continue
        scanned += 1
        if not portfolio.has_history(entry.uid, entry.trade_id):
            fan_out_ledger_trade(entry, portfolio)
            fanned_out += 1
    log_event(
        logger,
        "portfolio.redrive",
        f"Re-drive: {fanned_out} of {scanned} ledger entries written since {since.isoformat()} had no "
        "history entry",
        tenant_id=tenant_id,
        since=since.isoformat(),
        scanned=scanned,
        fanned_out=fanned_out,
    )
    return RedriveReport(since, scanned, fanned_out)


def scheduled_redrive(ledger: ExecutionStore, portfolio: PortfolioStore, now: datetime) -> RedriveReport:
    """The scheduled re-drive: from the watermark the previous run left (``ops/portfolio_redrive``),
    or the last 48 hours the first time; leaves the next watermark for the next run."""
    state = ledger.get_ops_state(REDRIVE_STATE) or {}
    watermark = state.get("watermark")
    since = datetime.fromisoformat(watermark) if watermark else now - FIRST_REDRIVE_WINDOW
    report = redrive(ledger, portfolio, since)
    ledger.put_ops_state(
        REDRIVE_STATE,
        {
            "watermark": (now - REDRIVE_OVERLAP).isoformat(),
            "scanned": report.scanned,
            "fanned_out": report.fanned_out,
        },
    )
    return report
