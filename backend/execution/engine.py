"""ExecutionEngine: intent received -> smart routing -> risk -> claim -> broker -> order updates.

This module is the seed's public entry point: every name the seed imports from
``backend.execution.engine`` is importable here, wherever it is implemented.

Exactly once on top of at-least-once delivery, in both directions:

- **Sending.** Each intent has an idempotency key. Before the broker is called the key is
  *claimed* (create-only, with a daily-trade slot and the order's quantity in flight, risk checked
  on what that same commit read), so two workers racing on one key make one order; the broker gets
  a client order id derived from the key, so even a lost answer cannot become a second order.
- **Recording.** The claim holds a *lease*. Everything after it is an order transition
  (``backend.core.order_lifecycle``) applied as a compare-and-set on the stored order's version,
  together with the ledger rows of its new fills, the position, and what it gives back (in-flight
  quantity, the daily slot). A delivery that finds an order not yet final settles it: a live lease
  means another worker is sending (pending); otherwise the broker is asked by client order id, and
  only its answer — or its proven absence after the reconcile window — moves the order on
  (absent: re-priced on a fresh quote and re-sent under the *same* client order id while the
  intent is fresh and still passes the gate, else released).
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import Any

from pydantic import ValidationError

from backend.adapters.alpaca import AlpacaBroker  # the SDK loads when a broker is constructed
from backend.core.controls import EffectiveLimits, RuntimeControls, effective_limits, minute_bucket
from backend.core.fees import FeeSchedule, estimate_fees
from backend.core.instruments import AssetClass
from backend.core.intents import IdempotencyConflict, OrderIntent, Side, differing_fields, legacy_key
from backend.core.ledger import LedgerTrade, build_fill_trade
from backend.core.order_lifecycle import (
    Fill,
    Lease,
    LeaseTaken,
    OrderEvent,
    OrderRecord,
    OrderState,
    Refusal,
    Released,
    SubmitRefused,
    SubmitSent,
    SubmitUnknown,
    apply,
    claimed_order,
    transition_effects,
)
from backend.core.orders import (
    IN_FLIGHT_REASON,
    BrokerOrder,
    BrokerOrderStatus,
    CancelOutcome,
    ExecutionResult,
    ExecutionStatus,
    OrderRequest,
    OrderType,
    order_outcome,
)
from backend.core.paths import client_order_id_for, ledger_trade_path
from backend.core.quotes import Quote
from backend.core.reasons import ReasonCode
from backend.core.risk import Exposure, RiskCheck, RiskDecision, RiskLimits, check_risk
from backend.core.routing import RoutingDecision, RoutingPolicy
from backend.execution.fanout import fan_out_ledger_trade
from backend.execution.ports import (
    Broker,
    BrokerOutcomeUnknownError,
    BrokerRejectedError,
    ClaimOutcome,
    Clock,
    ExecutionStore,
    LedgerIntegrityError,
    MarketDataProvider,
    OrderUpdate,
    PortfolioStore,
    StoredExecution,
    SystemClock,
)
from backend.execution.risk_manager import RiskManager
from backend.execution.router import SmartRouter
from backend.execution.runtime_controls import CachedControls
from backend.execution.settings import ExecSettings, load_settings
from backend.observability.logging import log_event

__all__ = [
    "AlpacaBroker",
    "AssetClass",
    "Broker",
    "BrokerOrder",
    "BrokerOrderStatus",
    "BrokerOutcomeUnknownError",
    "BrokerRejectedError",
    "ExecutionEngine",
    "ExecutionResult",
    "ExecutionStatus",
    "Exposure",
    "MarketDataProvider",
    "OrderIntent",
    "OrderRequest",
    "OrderState",
    "OrderType",
    "Quote",
    "ReasonCode",
    "RiskDecision",
    "RiskLimits",
    "RiskManager",
    "RoutingDecision",
    "RoutingPolicy",
    "Side",
    "SmartRouter",
    "check_risk",
]

logger = logging.getLogger("msr.execution")


def log_intent_received(intent: OrderIntent, tenant_id: str, idempotency_key: str) -> None:
    if logger.isEnabledFor(logging.INFO):
        log_event(
            logger,
            "exec.intent_received",
            f"Intent received: {intent.side.value} {intent.qty} {intent.symbol}",
            tenant_id=tenant_id,
            strategy_id=intent.strategy_id,
            broker_account_id=intent.broker_account_id,
            symbol=intent.symbol,
            asset_class=intent.asset_class.value,
            side=intent.side.value,
            qty=intent.qty,
            idempotency_key=idempotency_key,
        )


def log_smart_routing(decision: RoutingDecision, idempotency_key: str) -> None:
    severity = logging.INFO if decision.should_execute or decision.downgraded else logging.WARNING
    if logger.isEnabledFor(severity):
        log_event(
            logger,
            "exec.smart_routing",
            decision.reason,
            severity,
            should_execute=decision.should_execute,
            reason=decision.reason,
            spread_pct=decision.spread_pct,
            estimated_slippage=decision.estimated_slippage,
            downgraded=decision.downgraded,
            symbol=decision.symbol,
            asset_class=decision.asset_class.value,
            reason_code=decision.reason_code.value,
            idempotency_key=idempotency_key,
        )


def _log_outcome(event: str, result: ExecutionResult, severity: int = logging.INFO) -> None:
    if logger.isEnabledFor(severity):
        order = result.broker_order
        log_event(
            logger,
            event,
            result.reason,
            severity,
            status=result.status.value,
            reason_code=result.reason_code.value,
            tenant_id=result.tenant_id,
            strategy_id=result.intent.strategy_id,
            symbol=result.intent.symbol,
            asset_class=result.intent.asset_class.value,
            side=result.intent.side.value,
            qty=result.intent.qty,
            idempotency_key=result.idempotency_key,
            broker_order_id=order.order_id if order else None,
            client_order_id=order.client_order_id if order else None,
            fill_price=order.avg_fill_price if order else None,
            trade_id=result.trade_id,
        )


class ExecutionEngine:
    def __init__(
        self,
        broker: Broker,
        router: SmartRouter,
        risk: RiskManager,
        enable_smart_routing: bool = True,
        dry_run: bool | None = None,
        *,
        store: ExecutionStore | None = None,
        clock: Clock | None = None,
        settings: ExecSettings | None = None,
        portfolio: PortfolioStore | None = None,
        fee_schedule: FeeSchedule | None = None,
        worker_id: str | None = None,
        controls: CachedControls | None = None,
    ) -> None:
        """``portfolio``: fan each ledger row out to the user's history right after it is written
        (local runs). Leave it None where a Firestore trigger does the fan-out. Without a ``store``
        the configured one is used (``EXEC_STORE``, ``EXEC_FANOUT``; see ``build_stores``).
        ``worker_id`` names this engine as the holder of the leases it takes. ``controls``: the
        runtime controls (kill switches, limit overrides, the order-rate limit), read through their
        cache; without them only the configured limits apply."""
        self.settings = settings or load_settings()
        self.broker = broker
        self.router = router
        self.risk = risk
        self.enable_smart_routing = enable_smart_routing
        self.dry_run = self.settings.dry_run if dry_run is None else dry_run
        if store is None:
            from backend.adapters.stores import build_stores

            store, configured_portfolio = build_stores(self.settings)
            portfolio = portfolio or configured_portfolio
        self.store = store
        self.portfolio = portfolio
        self.fee_schedule = fee_schedule or self.settings.fee_schedule_config()
        self.clock = clock or router.clock or SystemClock()
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.controls = controls

    @property
    def lease(self) -> timedelta:
        return timedelta(seconds=self.settings.lease_seconds)

    @property
    def reconcile_after(self) -> timedelta:
        return timedelta(seconds=self.settings.reconcile_after_seconds)

    @property
    def intent_ttl(self) -> timedelta:
        return timedelta(seconds=self.settings.intent_ttl_seconds)

    def limits_for(self, tenant_id: str) -> EffectiveLimits:
        """The limits in force for the tenant now: the configured ones tightened by the runtime
        controls (as cached: see ``runtime_controls``)."""
        runtime = (
            self.controls.current(tenant_id) if self.controls is not None else RuntimeControls(tenant_id)
        )
        return effective_limits(runtime, self.risk.limits)

    def halted(self, tenant_id: str) -> str | None:
        """Why the tenant may not trade now (a kill switch), or None."""
        return self.limits_for(tenant_id).kill_reason

    def execute_intent(
        self, intent: OrderIntent | Mapping[str, Any], quote: Quote | None = None, *, trusted: bool = True
    ) -> ExecutionResult:
        """Run one intent through the whole flow. ``quote`` lets a batch caller pass a prefetched
        quote. ``trusted=False`` for an intent from outside this process (the HTTP function): its
        figures can only tighten the checks (see ``SmartRouter.analyze_intent``)."""
        if not isinstance(intent, OrderIntent):
            intent = _validated_intent(intent)
        tenant_id = intent.tenant_id or self.settings.tenant_id
        key = intent.resolved_idempotency_key()
        log_intent_received(intent, tenant_id, key)

        stored, key = self._stored_for(tenant_id, key, intent)
        if stored is not None:
            return self._existing(stored, intent, quote, key)

        now = self.clock.now()
        if self.enable_smart_routing:
            routing = self.router.analyze_intent(intent, quote=quote, trusted=trusted)
        else:
            routing = self.router.bypass(intent, quote=quote, trusted=trusted)
        log_smart_routing(routing, key)
        draft = _Draft(intent, tenant_id, intent.uid or self.settings.uid, key, now, routing)
        if routing.mid_price is not None:
            draft.estimated_fees = estimate_fees(
                intent.instrument, intent.side, intent.qty, routing.mid_price, self.fee_schedule
            ).total
        if not routing.should_execute:
            status = ExecutionStatus.DOWNGRADED if routing.downgraded else ExecutionStatus.REJECTED
            return self._finish_without_order(draft.result(status, routing.reason_code, routing.reason))

        trading_day = now.date().isoformat()
        limits = self.limits_for(tenant_id)
        if self.dry_run:
            exposure = self.store.get_exposure(
                tenant_id, intent.broker_account_id, intent.symbol, trading_day, limits.risk.max_daily_trades
            )
            draft.risk = self.risk.evaluate(intent, exposure, routing.mid_price, limits.risk)
            if not draft.risk.approved:
                return self._finish_without_order(draft.risk_refusal())
            return self._finish_without_order(
                draft.result(
                    ExecutionStatus.DRY_RUN, ReasonCode.DRY_RUN, "Dry run: approved, not sent to the broker"
                )
            )
        return self._place(draft, trading_day, limits)

    def settle(self, stored: StoredExecution, quote: Quote | None = None) -> ExecutionResult:
        """Move an order that is not final on, from the broker's own answer (a delivery of its
        intent, or a sweeper, calls this). A live lease: another worker is sending, nothing to do.
        Otherwise the broker is asked by client order id; found, its report is applied; not found,
        nothing is concluded until the reconcile window has passed (evidence is not authority),
        then the order is re-sent under the same client order id or released."""
        if stored.result is None or stored.order is None or stored.order.state.terminal:
            return self._answer(stored)
        order, now = stored.order, self.clock.now()
        if order.state is OrderState.CLAIMED and not order.lease_expired(now):
            return self._answer(stored)
        try:
            found = self.broker.get_order_by_client_order_id(order.client_order_id)
        except Exception:  # noqa: BLE001 - the lookup failing is no evidence either way: ask again later
            log_event(
                logger,
                "exec.reconcile_failed",
                "Broker lookup by client order id failed",
                logging.WARNING,
                exc_info=True,
                idempotency_key=order.idempotency_key,
                client_order_id=order.client_order_id,
            )
            return self._answer(stored)
        if found is not None:
            return self._commit(stored, [found.report(self.clock.now())], found)
        if order.state.resting:
            log_event(
                logger,
                "exec.order_missing_at_broker",
                f"The broker no longer reports order {order.client_order_id}; kept as {order.state.value}",
                logging.ERROR,
                idempotency_key=order.idempotency_key,
                client_order_id=order.client_order_id,
            )
            return self._answer(stored)
        if now < order.updated_at + self.reconcile_after:
            return self._answer(stored)
        return self._resend_or_release(stored, quote)

    def cancel(self, stored: StoredExecution) -> CancelOutcome:
        """Cancel a resting order through the broker; its state then comes from the broker's
        report (settled like any other change), never from the request itself."""
        current = self.settle(stored)  # up to date first: it may have filled or ended meanwhile
        state = current.order_state
        if state is None or state.terminal or state in _UNSETTLED_STATES:
            what = state.value if state else current.status.value
            reason = f"Nothing to cancel: the order is {what}"
            log_event(logger, "exec.cancel_refused", reason, idempotency_key=current.idempotency_key)
            return CancelOutcome(False, ReasonCode.ORDER_NOT_CANCELABLE, reason, current)
        client_order_id = client_order_id_for(current.tenant_id, current.idempotency_key)
        try:
            self.broker.cancel_order(client_order_id)
        except BrokerRejectedError as exc:
            refused = self._settle_key(current)
            log_event(logger, "exec.cancel_refused", f"Broker refused the cancel: {exc}",
                      idempotency_key=current.idempotency_key, client_order_id=client_order_id)  # fmt: skip
            return CancelOutcome(False, exc.code, f"Broker refused the cancel: {exc}", refused)
        except BrokerOutcomeUnknownError as exc:
            unknown = self._settle_key(current)
            reason = f"Cancel sent, answer lost ({exc}): the order's next report settles it"
            log_event(logger, "exec.cancel_unknown", reason, logging.WARNING, client_order_id=client_order_id)
            return CancelOutcome(True, ReasonCode.BROKER_OUTCOME_UNKNOWN, reason, unknown)
        settled = self._settle_key(current)
        reason = f"Cancel requested; the order is {settled.order_state.value if settled.order_state else '?'}"
        log_event(logger, "exec.cancel_requested", reason, idempotency_key=current.idempotency_key,
                  client_order_id=client_order_id)  # fmt: skip
        return CancelOutcome(True, ReasonCode.OK, reason, settled)

    def _settle_key(self, result: ExecutionResult) -> ExecutionResult:
        stored = self.store.get_execution(result.tenant_id, result.idempotency_key)
        return self.settle(stored) if stored is not None else result

    # -- outcomes ----------------------------------------------------------------------------

    def _stored_for(
        self, tenant_id: str, key: str, intent: OrderIntent
    ) -> tuple[StoredExecution | None, str]:
        """What is stored for the key, or, for a namespaced key, for the same intent under the key
        it had before namespaces (an order claimed before the upgrade keeps its client order id);
        with the key it is stored under."""
        stored = self.store.get_execution(tenant_id, key)
        legacy = legacy_key(key) if stored is None and self.settings.legacy_idempotency_keys else None
        if legacy is None:
            return stored, key
        before = self.store.get_execution(tenant_id, legacy)
        if before is None or (before.result is not None and differing_fields(before.result.intent, intent)):
            return None, key  # nothing there, or another intent's: the namespaced key is a new one
        return before, legacy

    def _existing(
        self, stored: StoredExecution, intent: OrderIntent, quote: Quote | None, key: str
    ) -> ExecutionResult:
        if stored.result is None:
            stored = self._adopt_claim(stored, intent, key)
        assert stored.result is not None
        different = differing_fields(stored.result.intent, intent)
        if different:
            log_event(logger, "exec.idempotency_conflict",
                      f"Key {stored.result.idempotency_key} was used for a different intent: "
                      f"{', '.join(different)} differ", logging.WARNING,
                      idempotency_key=stored.result.idempotency_key, fields=different)  # fmt: skip
            raise IdempotencyConflict(stored.result.idempotency_key, different)
        if stored.settled:
            return self._replay(stored.result)  # type: ignore[arg-type]
        return self.settle(stored, quote)

    def _adopt_claim(self, stored: StoredExecution, intent: OrderIntent, key: str) -> StoredExecution:
        """A claim written before orders were recorded carries no order: give it one, as the
        unsettled order it is (its in-flight quantity was reserved; it holds no slot)."""
        tenant_id = intent.tenant_id or self.settings.tenant_id
        now = self.clock.now()
        order = OrderRecord(
            client_order_id=client_order_id_for(tenant_id, key),
            tenant_id=tenant_id,
            idempotency_key=key,
            side=intent.side,
            qty=intent.qty,
            state=OrderState.UNKNOWN,
            version=0,
            claimed_at=now,
            updated_at=now,
            reason="claimed before orders were recorded",
        )
        draft = _Draft(
            intent, tenant_id, intent.uid or self.settings.uid, key, now, self.router.bypass(intent)
        )
        draft.risk = RiskDecision(True, ReasonCode.OK, "Approved when claimed", ())
        template = draft.result(ExecutionStatus.UNKNOWN, ReasonCode.BROKER_OUTCOME_UNKNOWN, order.reason)
        return StoredExecution(template, order)

    def _answer(self, stored: StoredExecution) -> ExecutionResult:
        """What is stored, as of now (a lease may have expired since it was written)."""
        assert stored.result is not None
        if stored.order is None:
            return self._replay(stored.result)
        return self._replay(self._result_for(stored.result, stored.order, stored.result.broker_order))

    def _replay(self, existing: ExecutionResult) -> ExecutionResult:
        replayed = replace(existing, replayed=True)
        _log_outcome("exec.duplicate_intent", replayed)
        return replayed

    def _finish_without_order(self, result: ExecutionResult) -> ExecutionResult:
        stored = self.store.record_outcome(result)
        if stored.result is not result:
            return self._answer(stored) if stored.result is not None else self._replay(result)
        if result.status is ExecutionStatus.REJECTED and result.risk is not None:
            _log_outcome("exec.risk_rejected", result, logging.WARNING)
        elif result.status is ExecutionStatus.DRY_RUN:
            _log_outcome("exec.dry_run", result)
        return result

    def _request(self, result: ExecutionResult) -> OrderRequest:
        intent = result.intent
        return OrderRequest(
            client_order_id=client_order_id_for(result.tenant_id, result.idempotency_key),
            broker_account_id=intent.broker_account_id,
            symbol=intent.symbol,
            side=intent.side,
            qty=intent.qty,
            asset_class=intent.asset_class,
        )

    def _place(self, draft: _Draft, trading_day: str, limits: EffectiveLimits) -> ExecutionResult:
        """Risk is checked inside the claim, atomically with reserving the key, a daily slot and
        the quantity: two workers cannot both spend the same headroom. The order-rate limit is
        taken just before the claim (a slot spent on an intent the claim then refuses stays spent:
        the count errs on the side of fewer orders, never more)."""
        intent = draft.intent
        pending = draft.result(ExecutionStatus.PENDING, ReasonCode.IN_FLIGHT, IN_FLIGHT_REASON)
        request = self._request(pending)
        refusal = self.broker.check(request)
        if refusal is not None:
            code, reason = refusal
            _log_venue_refusal(draft, code, reason)
            return self._finish_without_order(draft.result(ExecutionStatus.REJECTED, code, reason))
        if limits.kill_reason is None and limits.max_orders_per_minute is not None:
            refused = self._rate_refusal(draft, trading_day, limits)
            if refused is not None:
                return self._finish_without_order(refused)
        order = claimed_order(
            request.client_order_id,
            draft.tenant_id,
            draft.key,
            intent.side,
            intent.qty,
            draft.now,
            Lease(self.worker_id, draft.now + self.lease),
        )
        pending = replace(pending, order_state=order.state)
        check = partial(self.risk.evaluate, intent, mark_price=draft.routing.mid_price, limits=limits.risk)
        claim = self.store.claim(pending, order, trading_day, limits.risk.max_daily_trades, check)
        if claim.outcome is ClaimOutcome.DUPLICATE:
            assert claim.stored is not None
            return self._existing(claim.stored, intent, None, draft.key)
        draft.risk = claim.risk
        if claim.outcome is ClaimOutcome.REFUSED:
            return self._finish_without_order(draft.risk_refusal())
        assert claim.stored is not None
        return self._submit(claim.stored, request)

    def _rate_refusal(
        self, draft: _Draft, trading_day: str, limits: EffectiveLimits
    ) -> ExecutionResult | None:
        """Count the order in the tenant's current minute, or refuse it (RATE_LIMIT) when the
        minute's count has reached the limit. The risk checks run first on what the store holds
        now, so an intent they refuse spends no slot (the claim checks again, atomically)."""
        assert self.controls is not None  # a rate limit comes only from the runtime controls
        assert limits.max_orders_per_minute is not None
        intent, per_minute = draft.intent, limits.max_orders_per_minute
        exposure = self.store.get_exposure(
            draft.tenant_id,
            intent.broker_account_id,
            intent.symbol,
            trading_day,
            limits.risk.max_daily_trades,
        )
        draft.risk = self.risk.evaluate(intent, exposure, draft.routing.mid_price, limits.risk)
        if not draft.risk.approved:
            return draft.risk_refusal()
        minute = minute_bucket(draft.now)
        if self.controls.take_rate_slot(draft.tenant_id, minute, per_minute, draft.key) is not None:
            return None
        detail = f"{per_minute} order(s) this minute ({minute}) already (limit {per_minute} per minute)"
        check = RiskCheck("max_orders_per_minute", False, detail)
        draft.risk = RiskDecision(False, ReasonCode.RATE_LIMIT, f"Risk refused: {detail}", (check,))
        return draft.risk_refusal()

    def _submit(self, stored: StoredExecution, request: OrderRequest) -> ExecutionResult:
        """Send under the order's client order id; whatever happens becomes events of the order."""
        events: list[OrderEvent] = [SubmitSent(self.clock.now())]
        broker_order = None
        try:
            broker_order = self.broker.submit_order(request)
        except BrokerRejectedError as exc:
            events.append(SubmitRefused(self.clock.now(), f"Broker refused: {exc}", exc.code))
        except BrokerOutcomeUnknownError as exc:
            events.append(SubmitUnknown(self.clock.now(), f"{type(exc).__name__}: {exc}"))
        except Exception as exc:  # noqa: BLE001 - an unclassified error may follow a sent order
            log_event(
                logger,
                "exec.broker_error",
                f"Broker raised {type(exc).__name__}; outcome treated as unknown",
                logging.ERROR,
                exc_info=True,
                idempotency_key=request.client_order_id,
            )
            events.append(SubmitUnknown(self.clock.now(), f"{type(exc).__name__}: {exc}"))
        else:
            events.append(broker_order.report(self.clock.now()))
        return self._commit(stored, events, broker_order)

    def _resend_or_release(self, stored: StoredExecution, quote: Quote | None) -> ExecutionResult:
        """The broker has no such order after the reconcile window: take the lease, then either
        send again under the same client order id (the intent is fresh, trading is on, and a fresh
        quote still passes the gate) or release what the order holds."""
        assert stored.result is not None
        assert stored.order is not None
        now = self.clock.now()
        taken = apply(stored.order, LeaseTaken(now, Lease(self.worker_id, now + self.lease)))
        if isinstance(taken, Refusal):
            return self._answer(stored)
        update = OrderUpdate(replace(stored.result, order_state=taken.state), taken, stored.order.version)
        commit = self.store.commit_order(update)
        if not commit.committed:
            return self._answer(commit.stored) if commit.stored.result is not None else self._answer(stored)
        held = StoredExecution(update.result, taken)
        intent = stored.result.intent
        why = self._why_not_resend(stored.result, now)
        routing = None
        if why is None:
            # Re-priced on a fresh quote whoever sent it: a figure brought with the intent was
            # about the market of then.
            routing = (
                self.router.analyze_intent(intent, trusted=False)
                if self.enable_smart_routing
                else self.router.bypass(intent, trusted=False)
            )
            log_smart_routing(routing, stored.result.idempotency_key)
            if not routing.should_execute:
                why = (
                    routing.reason_code,
                    f"Re-priced on a fresh quote before sending again: {routing.reason}",
                )
        if why is not None:
            code, reason = why
            return self._commit(held, [Released(now, reason, code)], None)
        log_event(
            logger,
            "exec.order_resent",
            f"No order {taken.client_order_id} at the broker after "
            f"{self.reconcile_after.total_seconds():g}s: sending again under the same client order id",
            logging.WARNING,
            idempotency_key=taken.idempotency_key,
            client_order_id=taken.client_order_id,
        )
        repriced = StoredExecution(replace(update.result, routing=routing), taken)
        return self._submit(repriced, self._request(update.result))

    def _why_not_resend(self, result: ExecutionResult, now: datetime) -> tuple[ReasonCode, str] | None:
        halted = self.halted(result.tenant_id)
        if halted is not None:
            return ReasonCode.KILL_SWITCH, f"Released: {halted}"
        if now - result.decided_at > self.intent_ttl:
            age = (now - result.decided_at).total_seconds()
            return ReasonCode.INTENT_EXPIRED, f"Released: never placed, and the intent is {age:.0f}s old"
        return None

    def _result_for(
        self, template: ExecutionResult, order: OrderRecord, broker_order: BrokerOrder | None
    ) -> ExecutionResult:
        status, code, reason = order_outcome(order, template.intent.symbol, self.clock.now())
        first = order.fills[0].trade_id if order.fills else None
        return replace(
            template,
            status=status,
            reason_code=code,
            reason=reason,
            broker_order=broker_order or template.broker_order,
            trade_id=first,
            ledger_path=ledger_trade_path(template.tenant_id, first) if first else None,
            order_state=order.state,
            trade_ids=tuple(fill.trade_id for fill in order.fills),
            replayed=False,
        )

    def _fill_trades(self, result: ExecutionResult, fills: tuple[Fill, ...]) -> tuple[LedgerTrade, ...]:
        instrument = result.intent.instrument
        return tuple(
            build_fill_trade(
                result,
                fill,
                estimate_fees(instrument, result.intent.side, fill.qty, fill.price, self.fee_schedule),
            )
            for fill in fills
        )

    def _commit(
        self, stored: StoredExecution, events: list[OrderEvent], broker_order: BrokerOrder | None
    ) -> ExecutionResult:
        """Apply ``events`` to the stored order and commit the transition over its version."""
        assert stored.result is not None
        assert stored.order is not None
        before = after = stored.order
        for event in events:
            step = apply(after, event)
            if isinstance(step, Refusal):
                log_event(
                    logger,
                    "exec.event_refused",
                    f"{type(event).__name__} not applied: {step.reason}",
                    logging.WARNING,
                    idempotency_key=before.idempotency_key,
                    client_order_id=before.client_order_id,
                    state=after.state.value,
                )
                continue
            after = step
        if after == before:
            return self._answer(stored)
        effects = transition_effects(before, after)
        result = self._result_for(stored.result, after, broker_order)
        trades = self._fill_trades(result, effects.new_fills)
        update = OrderUpdate(
            result=result,
            order=after,
            expected_version=before.version,
            trades=trades,
            position_delta=sum((t.side.sign * t.qty for t in trades), Decimal(0)),
            release_in_flight=effects.release_in_flight,
            release_slot=effects.release_slot,
        )
        try:
            commit = self.store.commit_order(update)
        except LedgerIntegrityError:
            log_event(
                logger,
                "exec.integrity_error",
                f"Order {after.client_order_id}: the store refused the update",
                logging.ERROR,
                exc_info=True,
                idempotency_key=after.idempotency_key,
            )
            raise
        if not commit.committed:
            log_event(
                logger,
                "exec.order_conflict",
                f"Order {after.client_order_id} moved on meanwhile",
                idempotency_key=after.idempotency_key,
                client_order_id=after.client_order_id,
            )
            return self._answer(commit.stored) if commit.stored.result is not None else self._answer(stored)
        _log_order(result, before, after)
        if self.portfolio is not None:
            for trade in trades:
                _fan_out(trade, self.portfolio)
        return result


def _log_order(result: ExecutionResult, before: OrderRecord, after: OrderRecord) -> None:
    if result.status is ExecutionStatus.PLACED:
        event = "exec.order_placed" if before.state in _UNSETTLED_STATES else "exec.order_updated"
        _log_outcome(event, result)
    elif result.status is ExecutionStatus.UNKNOWN:
        _log_outcome("exec.order_unknown", result, logging.ERROR)
    elif result.status is ExecutionStatus.FAILED:
        _log_outcome("exec.order_failed", result, logging.ERROR)


_UNSETTLED_STATES = (OrderState.CLAIMED, OrderState.SUBMITTED, OrderState.UNKNOWN)


def _log_venue_refusal(draft: _Draft, code: ReasonCode, reason: str) -> None:
    log_event(
        logger,
        "exec.venue_rejected",
        reason,
        logging.WARNING,
        reason_code=code.value,
        symbol=draft.intent.symbol,
        asset_class=draft.intent.asset_class.value,
        idempotency_key=draft.key,
    )


def _fan_out(trade: LedgerTrade, portfolio: PortfolioStore) -> None:
    """The trade stands whatever happens here: a failed fan-out is logged and re-driven later."""
    try:
        fan_out_ledger_trade(trade, portfolio)
    except Exception:  # noqa: BLE001 - the trade is recorded; the re-drive repairs the fan-out
        log_event(
            logger,
            "portfolio.fanout_failed",
            f"Portfolio fan-out failed for {trade.path}; the re-drive will retry it",
            logging.ERROR,
            exc_info=True,
            tenant_id=trade.tenant_id,
            trade_id=trade.trade_id,
        )


def _validated_intent(raw: Mapping[str, Any]) -> OrderIntent:
    try:
        return OrderIntent.model_validate(raw)
    except ValidationError as exc:
        log_event(
            logger,
            "exec.intent_invalid",
            f"Invalid intent: {exc.error_count()} error(s)",
            logging.WARNING,
            errors=[{"field": ".".join(map(str, e["loc"])), "error": e["msg"]} for e in exc.errors()],
        )
        raise


class _Draft:
    """What the engine knows about one intent so far; each outcome is built from it exactly once."""

    __slots__ = ("estimated_fees", "intent", "key", "now", "risk", "routing", "tenant_id", "uid")

    def __init__(
        self, intent: OrderIntent, tenant_id: str, uid: str, key: str, now: datetime, routing: RoutingDecision
    ) -> None:
        self.intent = intent
        self.tenant_id = tenant_id
        self.uid = uid
        self.key = key
        self.now = now
        self.routing = routing
        self.risk: RiskDecision | None = None
        self.estimated_fees: Decimal | None = None

    def result(self, status: ExecutionStatus, reason_code: ReasonCode, reason: str) -> ExecutionResult:
        return ExecutionResult(
            status=status,
            reason_code=reason_code,
            reason=reason,
            idempotency_key=self.key,
            tenant_id=self.tenant_id,
            uid=self.uid,
            intent=self.intent,
            decided_at=self.now,
            routing=self.routing,
            risk=self.risk,
            estimated_fees=self.estimated_fees,
        )

    def risk_refusal(self) -> ExecutionResult:
        assert self.risk is not None
        return self.result(ExecutionStatus.REJECTED, self.risk.reason_code, self.risk.reason)
