"""ExecutionEngine: intent received -> smart routing -> risk -> claim -> broker -> ledger.

This module is the seed's public entry point: every name the seed imports from
``backend.execution.engine`` is importable here, wherever it is implemented.

Exactly-once on top of at-least-once delivery: each intent has an idempotency key. A key that
already has an outcome returns that outcome (``replayed=True``) without routing again. Before the
broker is called the key is *claimed* in the store (create-only, together with the daily trade
count), so two workers racing on one key make one order, and the broker receives a client order id
derived from the key, so even a lost answer cannot turn into a second order.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from functools import partial
from typing import Any

from pydantic import ValidationError

from backend.adapters.alpaca import AlpacaBroker  # the SDK loads when a broker is constructed
from backend.core.fees import FeeSchedule, estimate_fees
from backend.core.instruments import AssetClass
from backend.core.intents import OrderIntent, Side
from backend.core.ledger import LedgerTrade, build_ledger_trade
from backend.core.orders import (
    BrokerOrder,
    BrokerOrderStatus,
    ExecutionResult,
    ExecutionStatus,
    OrderRequest,
    OrderType,
)
from backend.core.paths import client_order_id_for, ledger_trade_path, trade_id_for
from backend.core.quotes import Quote
from backend.core.reasons import ReasonCode
from backend.core.risk import Exposure, RiskDecision, RiskLimits, check_risk
from backend.core.routing import RoutingDecision, RoutingPolicy
from backend.execution.fanout import fan_out_ledger_trade
from backend.execution.ports import (
    Broker,
    BrokerOutcomeUnknownError,
    BrokerRejectedError,
    ClaimOutcome,
    Clock,
    ExecutionStore,
    MarketDataProvider,
    PortfolioStore,
    SystemClock,
)
from backend.execution.risk_manager import RiskManager
from backend.execution.router import SmartRouter
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

IN_FLIGHT_REASON = "Another worker holds this idempotency key and is calling the broker"


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
    ) -> None:
        """``portfolio``: fan each ledger row out to the user's history right after it is written
        (local runs). Leave it None where a Firestore trigger does the fan-out. Without a ``store``
        the configured one is used (``EXEC_STORE``, ``EXEC_FANOUT``; see ``build_stores``)."""
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

    def execute_intent(
        self, intent: OrderIntent | Mapping[str, Any], quote: Quote | None = None
    ) -> ExecutionResult:
        """Run one intent through the whole flow. ``quote`` lets a batch caller pass a prefetched quote."""
        if not isinstance(intent, OrderIntent):
            intent = _validated_intent(intent)
        tenant_id = intent.tenant_id or self.settings.tenant_id
        key = intent.resolved_idempotency_key()
        log_intent_received(intent, tenant_id, key)

        existing = self.store.get_execution(tenant_id, key)
        if existing is not None:
            if existing.status is ExecutionStatus.UNKNOWN:
                return self.reconcile(existing)
            return self._replay(existing)

        now = self.clock.now()
        if self.enable_smart_routing:
            routing = self.router.analyze_intent(intent, quote=quote)
        else:
            routing = self.router.bypass(intent, quote=quote)
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
        if self.dry_run:
            exposure = self.store.get_exposure(
                tenant_id, intent.broker_account_id, intent.symbol, trading_day
            )
            draft.risk = self.risk.evaluate(intent, exposure, routing.mid_price)
            if not draft.risk.approved:
                return self._finish_without_order(draft.risk_refusal())
            return self._finish_without_order(
                draft.result(
                    ExecutionStatus.DRY_RUN, ReasonCode.DRY_RUN, "Dry run: approved, not sent to the broker"
                )
            )
        return self._place(draft, trading_day)

    def reconcile(self, unknown: ExecutionResult) -> ExecutionResult:
        """Settle an ``unknown`` outcome by asking the broker for the client order id.

        Found: recorded as the broker reports it (a fill reaches the ledger). Not found after
        ``EXEC_RECONCILE_AFTER_SECONDS``: it was never placed (``failed``; the daily slot and the
        quantity are released). Otherwise it stays unknown and a later retry asks again.
        """
        draft = _Draft(
            unknown.intent, unknown.tenant_id, unknown.uid, unknown.idempotency_key, unknown.decided_at,
            unknown.routing,  # type: ignore[arg-type]
        )  # fmt: skip
        draft.risk = unknown.risk
        draft.estimated_fees = unknown.estimated_fees
        trading_day = unknown.decided_at.date().isoformat()
        client_order_id = client_order_id_for(unknown.tenant_id, unknown.idempotency_key)
        try:
            order = self.broker.get_order_by_client_order_id(client_order_id)
        except Exception:  # noqa: BLE001 - still unknown; the next retry asks again
            log_event(logger, "exec.reconcile_failed", "Reconciliation lookup failed", logging.WARNING,
                      exc_info=True, idempotency_key=unknown.idempotency_key)  # fmt: skip
            return self._replay(unknown)
        if order is not None:
            log_event(logger, "exec.reconciled", f"Broker has {client_order_id}: {order.status.value}",
                      idempotency_key=unknown.idempotency_key, broker_order_id=order.order_id)  # fmt: skip
            return self._record_order(draft, order, trading_day)
        waited = (self.clock.now() - unknown.decided_at).total_seconds()
        if waited < self.settings.reconcile_after_seconds:
            return self._replay(unknown)
        never_placed = draft.result(
            ExecutionStatus.FAILED,
            ReasonCode.BROKER_REJECTED,
            f"Reconciled: no order {client_order_id} at the broker after {waited:.0f}s; never placed",
        )
        return self._settle(never_placed, trading_day, "exec.order_failed")

    # -- outcomes ----------------------------------------------------------------------------

    def _replay(self, existing: ExecutionResult) -> ExecutionResult:
        replayed = replace(existing, replayed=True)
        _log_outcome("exec.duplicate_intent", replayed)
        return replayed

    def _finish_without_order(self, result: ExecutionResult) -> ExecutionResult:
        stored = self.store.record_outcome(result)
        if stored is None:
            return self._replay(_in_flight(result))
        if stored is not result:
            return self._replay(stored)
        if result.status is ExecutionStatus.REJECTED and result.risk is not None:
            _log_outcome("exec.risk_rejected", result, logging.WARNING)
        elif result.status is ExecutionStatus.DRY_RUN:
            _log_outcome("exec.dry_run", result)
        return result

    def _place(self, draft: _Draft, trading_day: str) -> ExecutionResult:
        """Risk is checked inside the claim, atomically with reserving the key, the daily slot and
        the quantity: two workers cannot both spend the same headroom."""
        intent = draft.intent
        request = OrderRequest(
            client_order_id=client_order_id_for(draft.tenant_id, draft.key),
            broker_account_id=intent.broker_account_id,
            symbol=intent.symbol,
            side=intent.side,
            qty=intent.qty,
            asset_class=intent.asset_class,
        )
        refusal = self.broker.check(request)
        if refusal is not None:
            code, reason = refusal
            _log_venue_refusal(draft, code, reason)
            return self._finish_without_order(draft.result(ExecutionStatus.REJECTED, code, reason))
        pending = draft.result(ExecutionStatus.PENDING, ReasonCode.IN_FLIGHT, IN_FLIGHT_REASON)
        claim = self.store.claim(
            pending,
            trading_day,
            partial(self.risk.evaluate, draft.intent, mark_price=draft.routing.mid_price),
        )
        if claim.outcome is ClaimOutcome.DUPLICATE:
            return self._replay(claim.existing or pending)
        draft.risk = claim.risk
        if claim.outcome is ClaimOutcome.REFUSED:
            return self._finish_without_order(draft.risk_refusal())

        try:
            order = self.broker.submit_order(request)
        except BrokerRejectedError as exc:
            failed = draft.result(ExecutionStatus.FAILED, exc.code, f"Broker refused: {exc}")
            return self._settle(failed, trading_day, "exec.order_failed")
        except BrokerOutcomeUnknownError as exc:
            return self._settle(draft.unknown(exc), trading_day, "exec.order_unknown")
        except Exception as exc:  # noqa: BLE001 - an unclassified error may follow a sent order
            log_event(
                logger,
                "exec.broker_error",
                f"Broker raised {type(exc).__name__}; outcome treated as unknown",
                logging.ERROR,
                exc_info=True,
                idempotency_key=draft.key,
            )
            return self._settle(draft.unknown(exc), trading_day, "exec.order_unknown")
        return self._record_order(draft, order, trading_day)

    def _record_order(self, draft: _Draft, order: BrokerOrder, trading_day: str) -> ExecutionResult:
        if order.status in (BrokerOrderStatus.REJECTED, BrokerOrderStatus.CANCELED) and order.filled_qty == 0:
            failed = draft.result(
                ExecutionStatus.FAILED,
                ReasonCode.BROKER_REJECTED,
                f"Broker {order.status.value} the order: {order.message or 'no reason given'}",
                broker_order=order,
            )
            return self._settle(failed, trading_day, "exec.order_failed")
        if order.filled_qty <= 0:
            # Accepted, nothing filled yet: the ledger row is written when a fill is known.
            reason = f"Order {order.status.value}: {order.qty} {order.symbol}, not filled yet"
            accepted = draft.result(ExecutionStatus.PLACED, ReasonCode.OK, reason, broker_order=order)
            return self._settle(accepted, trading_day, "exec.order_placed")
        reason = f"Order {order.status.value}: {order.filled_qty} {order.symbol} @ {order.avg_fill_price}"
        trade_id = trade_id_for(draft.tenant_id, draft.key)
        placed = draft.result(
            ExecutionStatus.PLACED,
            ReasonCode.OK,
            reason,
            broker_order=order,
            trade_id=trade_id,
            ledger_path=ledger_trade_path(draft.tenant_id, trade_id),
        )
        fees = estimate_fees(
            placed.intent.instrument, order.side, order.filled_qty, order.avg_fill_price or Decimal(0),
            self.fee_schedule,
        )  # fmt: skip
        trade = build_ledger_trade(placed, fees)
        self.store.record_trade(placed, trade)
        _log_outcome("exec.order_placed", placed)
        if self.portfolio is not None:
            _fan_out(trade, self.portfolio)
        return placed

    def _settle(self, result: ExecutionResult, trading_day: str, event: str) -> ExecutionResult:
        self.store.settle_claim(result, trading_day)
        severity = logging.INFO if result.status is ExecutionStatus.PLACED else logging.ERROR
        _log_outcome(event, result, severity)
        return result


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


def _in_flight(result: ExecutionResult) -> ExecutionResult:
    return replace(
        result,
        status=ExecutionStatus.PENDING,
        reason_code=ReasonCode.IN_FLIGHT,
        reason=IN_FLIGHT_REASON,
    )


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

    def result(
        self,
        status: ExecutionStatus,
        reason_code: ReasonCode,
        reason: str,
        broker_order: BrokerOrder | None = None,
        trade_id: str | None = None,
        ledger_path: str | None = None,
    ) -> ExecutionResult:
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
            broker_order=broker_order,
            trade_id=trade_id,
            ledger_path=ledger_path,
            estimated_fees=self.estimated_fees,
        )

    def risk_refusal(self) -> ExecutionResult:
        assert self.risk is not None
        return self.result(ExecutionStatus.REJECTED, self.risk.reason_code, self.risk.reason)

    def unknown(self, exc: BaseException) -> ExecutionResult:
        return self.result(
            ExecutionStatus.UNKNOWN,
            ReasonCode.BROKER_OUTCOME_UNKNOWN,
            f"Broker outcome unknown ({type(exc).__name__}: {exc}); reconcile by client order id",
        )
