"""Runtime controls in the running functions: the store port, the short read cache every trading
function goes through, and the operations ``msr controls`` runs (a flip; on a kill, the cancel of
the tenant's resting orders through the engine's own cancel path).

**The cache bound.** Each function instance reads a scope's controls (the global document and the
tenant's) at most once per ``EXEC_CONTROLS_CACHE_S`` seconds (default 5) and trusts what it read
until then: a flip takes effect on every instance within that bound after it is committed (plus
the duration of one read). A read that fails is never trusted as "no controls": the tenant is
treated as killed until a read succeeds (fail closed; logged as ``controls.read_failed``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol

from backend.core.controls import (
    GLOBAL_SCOPE,
    ControlAction,
    ControlAudit,
    ControlLimit,
    ControlState,
    RuntimeControls,
    plan_flip,
)
from backend.core.risk import RiskLimits
from backend.execution.ports import Clock
from backend.observability.logging import log_event

if TYPE_CHECKING:
    from decimal import Decimal

    from backend.execution.engine import ExecutionEngine

logger = logging.getLogger("msr.controls")

FlipPlan = Callable[[ControlState], ControlAudit]


class ControlsStore(Protocol):
    """Where the runtime controls live (``controls/global``, ``tenants/{t}/controls/current``),
    their audit records and the order-rate shards. Each method is one atomic commit."""

    def read_controls(self, tenant_id: str | None) -> ControlState:
        """A tenant's controls, or the global ones (None); a scope never flipped has the defaults."""
        ...

    def flip(self, tenant_id: str | None, plan: FlipPlan) -> ControlAudit:
        """Read the scope's state, plan the flip on it and write the new state and its audit record
        in one commit (the plan runs again if another flip committed meanwhile)."""
        ...

    def audit_records(self, tenant_id: str | None, limit: int = 50) -> list[ControlAudit]:
        """The scope's latest audit records, newest first."""
        ...

    def take_rate_slot(self, tenant_id: str, minute: str, limit: int, probe_key: str) -> int | None:
        """Count one order in ``minute`` if the count stays within ``limit``: the shard that took
        it, or None when the minute is full. Exact under concurrency."""
        ...

    def rate_slots_taken(self, tenant_id: str, minute: str) -> int: ...


@dataclass
class _Entry:
    read_at: datetime
    state: ControlState


class CachedControls:
    """The controls an instance trusts for ``ttl`` after reading them, per scope. ``clock`` is
    injected: tests move it instead of waiting."""

    def __init__(
        self, store: ControlsStore, clock: Clock, ttl: timedelta, deployment_kill_switch: bool = False
    ) -> None:
        self.store = store
        self.clock = clock
        self.ttl = ttl
        self.deployment_kill_switch = deployment_kill_switch
        self._entries: dict[str | None, _Entry] = {}
        self._lock = threading.Lock()

    def _state(self, tenant_id: str | None, now: datetime) -> ControlState:
        with self._lock:
            entry = self._entries.get(tenant_id)
        if entry is not None and entry.read_at <= now < entry.read_at + self.ttl:
            return entry.state
        try:
            state = self.store.read_controls(tenant_id)
        except Exception as exc:  # noqa: BLE001 - whatever the store raised, trading stops (fail closed)
            log_event(
                logger,
                "controls.read_failed",
                f"Runtime controls of {tenant_id or GLOBAL_SCOPE} could not be read "
                f"({type(exc).__name__}): trading treated as killed until a read succeeds",
                logging.ERROR,
                tenant_id=tenant_id,
            )
            return ControlState(kill_switch=True, kill_reason="runtime controls could not be read")
        with self._lock:
            self._entries[tenant_id] = _Entry(now, state)
        return state

    def current(self, tenant_id: str) -> RuntimeControls:
        now = self.clock.now()
        return RuntimeControls(
            tenant_id=tenant_id,
            global_state=self._state(None, now),
            tenant_state=self._state(tenant_id, now),
            deployment_kill_switch=self.deployment_kill_switch,
        )

    def take_rate_slot(self, tenant_id: str, minute: str, limit: int, probe_key: str) -> int | None:
        return self.store.take_rate_slot(tenant_id, minute, limit, probe_key)


# -- operations (``msr controls``) ---------------------------------------------------------------


@dataclass
class CancelReport:
    """The resting orders a kill met and what asking the broker to cancel each did."""

    examined: int = 0
    requested: int = 0
    not_canceled: list[dict[str, str]] = field(default_factory=list)
    errors: int = 0


def flip_controls(
    store: ControlsStore,
    tenant_id: str | None,
    action: ControlAction,
    by: str,
    reason: str,
    now: datetime,
    *,
    limit: ControlLimit | None = None,
    value: Decimal | None = None,
    deployment: RiskLimits | None = None,
) -> ControlAudit:
    """One flip and its audit record, committed together; logged as ``controls.flipped``."""
    scope = GLOBAL_SCOPE if tenant_id is None else tenant_id

    def plan(before: ControlState) -> ControlAudit:
        return plan_flip(
            scope, before, action, by, reason, now, limit=limit, value=value, deployment=deployment
        )

    audit = store.flip(tenant_id, plan)
    log_event(
        logger,
        "controls.flipped",
        f"Controls of {scope}: {action.value}{f' {limit.value}' if limit else ''} by {audit.by}: "
        f"{audit.reason}",
        logging.WARNING,
        scope=scope,
        action=action.value,
        limit=limit.value if limit else None,
        by=audit.by,
        audit_id=audit.audit_id,
        kill_switch=audit.after.kill_switch,
    )
    return audit


def cancel_resting_orders(engine: ExecutionEngine, tenant_id: str | None) -> CancelReport:
    """Ask the broker to cancel every resting order of the tenant (every tenant's: None), each
    through ``ExecutionEngine.cancel``: the order's state then comes from the broker's report, so
    the ledger and the lifecycle stay exact (an order that filled meanwhile is booked as filled)."""
    report = CancelReport()
    for stored in list(engine.store.iter_orders(tenant_id, open_only=True)):
        order = stored.order
        if stored.result is None or order is None or not order.state.resting:
            continue  # not at the broker yet: the kill switch stops it from being sent (or re-sent)
        report.examined += 1
        try:
            outcome = engine.cancel(stored)
        except Exception as exc:  # noqa: BLE001 - one order's failure must not stop the others
            report.errors += 1
            log_event(logger, "controls.cancel_failed", f"Cancel of {order.client_order_id} failed: "
                      f"{type(exc).__name__}", logging.ERROR, exc_info=True,
                      tenant_id=order.tenant_id, client_order_id=order.client_order_id)  # fmt: skip
            continue
        if outcome.requested:
            report.requested += 1
        elif outcome.result.order_state is None or not outcome.result.order_state.terminal:
            report.not_canceled.append({"client_order_id": order.client_order_id, "reason": outcome.reason})
    log_event(
        logger,
        "controls.resting_orders_canceled",
        f"Kill switch: {report.requested} of {report.examined} resting order(s) of "
        f"{tenant_id or 'every tenant'} asked to cancel, {report.errors} error(s)",
        logging.WARNING if report.errors or report.not_canceled else logging.INFO,
        tenant_id=tenant_id,
        examined=report.examined,
        requested=report.requested,
        errors=report.errors,
    )
    return report
