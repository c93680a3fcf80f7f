"""Runtime controls: kill switches and limit overrides an operator flips without a redeploy. Pure.

Two scopes hold a ``ControlState``: the whole deployment (``global``) and each tenant. What is in
force for one tenant is the combination of both with the deployment's ``EXEC_*`` configuration:

- **Kill switch**: engaged when ``EXEC_KILL_SWITCH`` (the deployment's floor), the global switch or
  the tenant's switch is engaged. Any one is enough; resuming one never lifts another.
- **Limits** can only **tighten**: the value in force is the smallest of the deployment's limit and
  the global and tenant overrides. An override above the deployment's limit is refused when it is
  set (it could never take effect) and would be ignored if it were stored anyway.

Every flip is planned here (``plan_flip``: the state after it and its audit record: who, when
(UTC), what before and after, why) and committed by a store atomically with its audit record.

The per-tenant order-rate limit counts orders per UTC minute in ``RATE_SHARDS`` shard documents,
so no single document takes every claim: see ``shard_capacity`` for why the count is exact.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from types import MappingProxyType

from backend.core.risk import RiskLimits

GLOBAL_SCOPE = "global"  # the scope name of the deployment-wide controls in audit records
MAX_BY_LENGTH = 200
MAX_REASON_LENGTH = 500
# A limit's value: plain digits with an optional fraction, at most 30 significant characters.
_VALUE = re.compile(r"^\d{1,20}(\.\d{1,10})?$")


class ControlLimit(StrEnum):
    """The limits an operator may tighten at runtime."""

    MAX_ORDER_NOTIONAL = "max_order_notional"  # one order's value, in its quote currency
    MAX_POSITION_QTY = "max_position_qty"  # every asset class's position limit, in its units
    MAX_DAILY_TRADES = "max_daily_trades"
    MAX_ORDERS_PER_MINUTE = "max_orders_per_minute"  # orders claimed per UTC minute


WHOLE_NUMBER_LIMITS = frozenset({ControlLimit.MAX_DAILY_TRADES, ControlLimit.MAX_ORDERS_PER_MINUTE})


class ControlAction(StrEnum):
    KILL = "kill"
    RESUME = "resume"
    SET_LIMIT = "set_limit"
    CLEAR_LIMIT = "clear_limit"


class ControlRefused(ValueError):
    """A flip that must not be made (a widening limit, a missing author or reason): nothing written."""


@dataclass(frozen=True, slots=True)
class ControlState:
    """One scope's controls. ``version`` counts its flips (each flip is a compare-and-set on it)."""

    kill_switch: bool = False
    kill_reason: str = ""
    limits: Mapping[ControlLimit, Decimal] = field(default_factory=lambda: MappingProxyType({}))
    version: int = 0
    updated_at: datetime | None = None
    updated_by: str = ""


@dataclass(frozen=True, slots=True)
class ControlAudit:
    """One flip, as recorded: who, when (UTC), what before and after, why. Never changed."""

    audit_id: str
    scope: str  # GLOBAL_SCOPE or the tenant id
    action: ControlAction
    by: str
    reason: str
    at: datetime
    before: ControlState
    after: ControlState
    limit: ControlLimit | None = None

    @property
    def tenant_id(self) -> str | None:
        return None if self.scope == GLOBAL_SCOPE else self.scope


@dataclass(frozen=True, slots=True)
class RuntimeControls:
    """What the stores hold for one tenant (global and tenant scope) and the deployment's floor."""

    tenant_id: str
    global_state: ControlState = ControlState()
    tenant_state: ControlState = ControlState()
    deployment_kill_switch: bool = False

    def kill_reason(self) -> str | None:
        """Why trading is stopped for the tenant, or None when it is not."""
        if self.deployment_kill_switch:
            return "kill switch engaged by the deployment (EXEC_KILL_SWITCH)"
        if self.global_state.kill_switch:
            return f"kill switch engaged globally: {self.global_state.kill_reason}"
        if self.tenant_state.kill_switch:
            return f"kill switch engaged for tenant {self.tenant_id}: {self.tenant_state.kill_reason}"
        return None

    def override(self, name: ControlLimit) -> Decimal | None:
        """The tighter of the global and the tenant override, or None when neither sets one."""
        values = [s.limits[name] for s in (self.global_state, self.tenant_state) if name in s.limits]
        return min(values) if values else None


@dataclass(frozen=True, slots=True)
class EffectiveLimits:
    """What the engine checks for one tenant now: the risk limits (kill switch and order value
    included) and the order-rate limit (None: no rate limit)."""

    risk: RiskLimits
    max_orders_per_minute: int | None = None

    @property
    def kill_reason(self) -> str | None:
        return self.risk.kill_reason if self.risk.kill_switch else None


def _tighter(configured: Decimal | None, override: Decimal | None) -> Decimal | None:
    if override is None:
        return configured
    return override if configured is None else min(configured, override)


def _capped(configured: Decimal, override: Decimal | None) -> Decimal:
    return configured if override is None else min(configured, override)


def effective_limits(controls: RuntimeControls, deployment: RiskLimits) -> EffectiveLimits:
    """The deployment's limits tightened by the runtime controls; never wider than the deployment's."""
    reason = controls.kill_reason()
    if reason is None and deployment.kill_switch:
        reason = deployment.kill_reason or "kill switch engaged by the deployment (EXEC_KILL_SWITCH)"
    position = controls.override(ControlLimit.MAX_POSITION_QTY)
    daily = controls.override(ControlLimit.MAX_DAILY_TRADES)
    rate = controls.override(ControlLimit.MAX_ORDERS_PER_MINUTE)
    risk = replace(
        deployment,
        kill_switch=deployment.kill_switch or reason is not None,
        kill_reason=reason or "",
        max_position_qty=_capped(deployment.max_position_qty, position),
        max_position_qty_by_asset_class=MappingProxyType(
            {k: _capped(v, position) for k, v in deployment.max_position_qty_by_asset_class.items()}
        ),
        max_daily_trades=int(_capped(Decimal(deployment.max_daily_trades), daily)),
        max_order_notional=_tighter(
            deployment.max_order_notional, controls.override(ControlLimit.MAX_ORDER_NOTIONAL)
        ),
    )
    return EffectiveLimits(risk, int(rate) if rate is not None else None)


def deployment_ceiling(name: ControlLimit, deployment: RiskLimits) -> Decimal | None:
    """The largest value an override of ``name`` could take effect at (None: no ceiling, the
    deployment sets no such limit)."""
    if name is ControlLimit.MAX_POSITION_QTY:
        return max([deployment.max_position_qty, *deployment.max_position_qty_by_asset_class.values()])
    if name is ControlLimit.MAX_DAILY_TRADES:
        return Decimal(deployment.max_daily_trades)
    if name is ControlLimit.MAX_ORDER_NOTIONAL:
        return deployment.max_order_notional
    return None


def parse_limit_value(name: ControlLimit, text: str) -> Decimal:
    """An operator's value, exactly: plain decimal digits (no exponent, no sign), bounded length;
    a whole number for counts."""
    if not _VALUE.match(text.strip()):
        raise ControlRefused(f"{name.value}: {text!r} is not a plain non-negative decimal number")
    try:
        value = Decimal(text.strip())
    except InvalidOperation:  # pragma: no cover - the pattern admits only valid decimals
        raise ControlRefused(f"{name.value}: {text!r} is not a number") from None
    if name in WHOLE_NUMBER_LIMITS and value != value.to_integral_value():
        raise ControlRefused(f"{name.value} counts orders: {text!r} is not a whole number")
    return value


def _required(label: str, text: str, longest: int) -> str:
    text = text.strip()
    if not text:
        raise ControlRefused(f"{label} is required: every flip records who made it and why")
    if len(text) > longest:
        raise ControlRefused(f"{label} is {len(text)} characters long (at most {longest})")
    return text


def audit_id_for(at: datetime, version: int) -> str:
    """Sortable by time, unique per scope (the version a flip creates is taken once)."""
    return f"{at.astimezone(UTC):%Y%m%dT%H%M%S%fZ}-v{version:06d}"


def plan_flip(
    scope: str,
    before: ControlState,
    action: ControlAction,
    by: str,
    reason: str,
    now: datetime,
    *,
    limit: ControlLimit | None = None,
    value: Decimal | None = None,
    deployment: RiskLimits | None = None,
) -> ControlAudit:
    """The flip's audit record, whose ``after`` is the scope's new state. ``now`` must be UTC-aware.
    A limit is set only if it tightens the deployment's (``deployment``: its EXEC_* limits)."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    by = _required("--by (who flips it)", by, MAX_BY_LENGTH)
    reason = _required("--reason (why)", reason, MAX_REASON_LENGTH)
    now = now.astimezone(UTC)
    limits = dict(before.limits)
    kill, kill_reason = before.kill_switch, before.kill_reason
    if action is ControlAction.KILL:
        kill, kill_reason = True, reason
    elif action is ControlAction.RESUME:
        kill, kill_reason = False, ""
    elif limit is None:
        raise ControlRefused(f"{action.value} needs a limit name")
    elif action is ControlAction.CLEAR_LIMIT:
        limits.pop(limit, None)
    else:
        if value is None or not value.is_finite() or value < 0:
            raise ControlRefused(f"{limit.value} needs a non-negative value, got {value}")
        ceiling = deployment_ceiling(limit, deployment) if deployment is not None else None
        if ceiling is not None and value > ceiling:
            raise ControlRefused(
                f"{limit.value} {value} would widen the deployment's limit {ceiling}: "
                "runtime controls only tighten (raise the EXEC_* limit and redeploy to widen)"
            )
        limits[limit] = value
    after = ControlState(
        kill_switch=kill,
        kill_reason=kill_reason,
        limits=MappingProxyType(dict(sorted(limits.items()))),
        version=before.version + 1,
        updated_at=now,
        updated_by=by,
    )
    return ControlAudit(
        audit_id_for(now, after.version), scope, action, by, reason, now, before, after, limit
    )


# -- the per-tenant order-rate limit ----------------------------------------------------------

RATE_SHARDS = 8


def minute_bucket(now: datetime) -> str:
    """The UTC minute an order is counted in, as a document-id-safe name: ``20260302T1530Z``."""
    return now.astimezone(UTC).strftime("%Y%m%dT%H%MZ")


def shard_capacity(limit: int, shard: int, shards: int = RATE_SHARDS) -> int:
    """How many orders shard ``shard`` of a minute may count under ``limit``. The capacities sum
    to ``limit`` exactly, so counts that never pass their shard's capacity never pass the limit;
    each shard's capacity grows with the limit, so a limit lowered within a minute never lets the
    minute's total pass the highest limit it had (the lower one holds exactly from the next minute)."""
    if limit <= 0:
        return 0
    return limit // shards + (1 if shard < limit % shards else 0)


def rate_probe_order(tenant_id: str, probe_key: str, shards: int = RATE_SHARDS) -> list[int]:
    """The order a claim tries the minute's shards in: from a start spread by the intent's key, so
    concurrent claims rarely touch the same shard document."""
    start = int(hashlib.sha256(f"{tenant_id}\x1f{probe_key}".encode()).hexdigest()[:8], 16) % shards
    return [(start + offset) % shards for offset in range(shards)]
