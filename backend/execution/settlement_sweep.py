"""The settlement sweeper: orders that no delivery will come back for are settled from the broker.

A scheduled strategy run is done and its next run uses new keys; an HTTP caller may never retry; a
limit order may fill an hour later. The sweeper finds every order not in a final state whose last
change is older than a threshold — across tenants, by an indexed query — and settles each through
the engine (``ExecutionEngine.settle``: the broker is asked by client order id; fills, cancels,
expirations and releases are applied as compare-and-set transitions), so it is idempotent and
safe to run concurrently with itself and with deliveries: whoever commits second finds the order
moved on.

Bounded per run (an order count and a time budget), resumable from a cursor kept in
``ops/settlement_sweep`` (the next run continues after the last order examined; at the end of
the open orders it starts again from the oldest), and paced to the broker's request limit by the
broker adapter (``EXEC_ALPACA_TRADING_REQUESTS_PER_MINUTE``).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from backend.core.orders import ExecutionResult
from backend.core.paths import decision_id_for, decision_path
from backend.execution.engine import ExecutionEngine
from backend.execution.ports import OrderCursor, StoredExecution
from backend.execution.settings import SweepLimits
from backend.observability.logging import log_event

logger = logging.getLogger("msr.sweep")

STATE = "settlement_sweep"


@dataclass
class SweepReport:
    examined: int = 0
    settled: int = 0  # moved to a final state by this run
    changed: int = 0  # moved on, not final yet (a partial fill, a release of a lease...)
    unchanged: int = 0
    skipped: int = 0  # claims from before orders were recorded: only their intent can settle them
    errors: int = 0
    canceled_killed: int = 0  # resting orders of killed tenants asked to cancel
    exhausted: str = ""  # "orders" or "time" when the run stopped at its bound
    finished_pass: bool = False  # reached the newest open order: the next run starts from the oldest
    states: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0


def _cursor_of(stored: StoredExecution) -> OrderCursor:
    assert stored.order is not None
    order = stored.order
    return OrderCursor(
        order.updated_at,
        decision_path(order.tenant_id, decision_id_for(order.tenant_id, order.idempotency_key)),
    )


def _load_cursor(engine: ExecutionEngine) -> OrderCursor | None:
    state = engine.store.get_ops_state(STATE) or {}
    cursor = state.get("cursor")
    if not cursor:
        return None
    return OrderCursor(datetime.fromisoformat(cursor["updated_at"]), cursor["path"])


def _save_cursor(engine: ExecutionEngine, cursor: OrderCursor | None, report: SweepReport) -> None:
    saved = {"updated_at": cursor.updated_at.isoformat(), "path": cursor.path} if cursor else None
    engine.store.put_ops_state(
        STATE, {"cursor": saved, "last_examined": report.examined, "last_settled": report.settled}
    )


def sweep_open_orders(
    engine: ExecutionEngine,
    limits: SweepLimits,
    now: datetime,
    monotonic: Callable[[], float] = time.monotonic,
) -> SweepReport:
    """Settle what the broker knows about every open order older than ``limits.older_than``."""
    started = monotonic()
    report = SweepReport()
    cursor = _load_cursor(engine)
    cutoff = now - limits.older_than
    while not report.exhausted:
        page = engine.store.open_orders(cutoff, after=cursor, limit=limits.page_size)
        if not page:
            report.finished_pass, cursor = True, None
            break
        for stored in page:
            if report.examined >= limits.max_orders:
                report.exhausted = "orders"
                break
            if monotonic() - started >= limits.max_seconds:
                report.exhausted = "time"
                break
            _settle_one(engine, stored, report)
            cursor = _cursor_of(stored)
    _save_cursor(engine, cursor, report)
    report.seconds = monotonic() - started
    _log_report(report)
    return report


def _settle_one(engine: ExecutionEngine, stored: StoredExecution, report: SweepReport) -> None:
    assert stored.order is not None
    report.examined += 1
    before = stored.order
    if stored.result is None:
        report.skipped += 1
        log_event(logger, "sweep.legacy_claim", f"Order {before.client_order_id} was claimed before orders "
                  "were recorded: its intent's next delivery settles it", logging.WARNING,
                  client_order_id=before.client_order_id, tenant_id=before.tenant_id)  # fmt: skip
        return
    try:
        result = _settle_or_cancel(engine, stored, report)
    except Exception as exc:  # noqa: BLE001 - one order's failure must not stop the sweep: next run retries
        report.errors += 1
        log_event(logger, "sweep.error", f"Settling {before.client_order_id} failed: {type(exc).__name__}",
                  logging.ERROR, exc_info=True, client_order_id=before.client_order_id,
                  tenant_id=before.tenant_id)  # fmt: skip
        return
    after = result.order_state
    report.states[after.value if after else result.status.value] += 1
    if result.replayed or after is None:  # nothing new at the broker, or another worker's turn
        report.unchanged += 1
        return
    if after.terminal:
        report.settled += 1
    else:
        report.changed += 1
    log_event(logger, "sweep.order_settled" if after.terminal else "sweep.order_updated",
              f"Order {before.client_order_id}: {before.state.value} -> {after.value}",
              tenant_id=before.tenant_id, client_order_id=before.client_order_id,
              idempotency_key=before.idempotency_key, state_before=before.state.value,
              state_after=after.value, fills=len(result.trade_ids))  # fmt: skip


def _settle_or_cancel(
    engine: ExecutionEngine, stored: StoredExecution, report: SweepReport
) -> ExecutionResult:
    """A resting order of a tenant whose kill switch is engaged is asked to cancel (through the
    engine's cancel, which settles it from the broker first); any other order is settled. An order
    not at the broker yet is settled too: under the kill switch it is released, never sent."""
    assert stored.order is not None
    halted = engine.halted(stored.order.tenant_id) if stored.order.state.resting else None
    if halted is None:
        return engine.settle(stored)
    outcome = engine.cancel(stored)
    if outcome.requested:
        report.canceled_killed += 1
    order = stored.order
    log_event(logger, "sweep.kill_cancel", f"Order {order.client_order_id}: {outcome.reason} ({halted})",
              logging.WARNING, tenant_id=order.tenant_id, client_order_id=order.client_order_id,
              requested=outcome.requested)  # fmt: skip
    return outcome.result


def _log_report(report: SweepReport) -> None:
    severity = logging.WARNING if report.errors or report.exhausted else logging.INFO
    log_event(
        logger,
        "sweep.done",
        f"Sweep: {report.examined} open order(s) examined, {report.settled} settled, "
        f"{report.changed} moved on, {report.unchanged} unchanged, {report.errors} error(s)"
        + (f"; stopped at its {report.exhausted} bound" if report.exhausted else ""),
        severity,
        examined=report.examined,
        settled=report.settled,
        changed=report.changed,
        unchanged=report.unchanged,
        skipped=report.skipped,
        errors=report.errors,
        canceled_killed=report.canceled_killed,
        exhausted=report.exhausted or None,
        finished_pass=report.finished_pass,
        states=dict(report.states),
        seconds=round(report.seconds, 3),
    )
