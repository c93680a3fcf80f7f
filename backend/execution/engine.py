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
from typing import Any

from pydantic import ValidationError

from backend.core.assets import AssetClass
from backend.core.intents import OrderIntent, Side
from backend.core.ledger import build_decision_record, build_ledger_trade
from backend.core.orders import (
    BrokerOrder,
    BrokerOrderStatus,
    ExecutionResult,
    ExecutionStatus,
    OrderRequest,
    OrderType,
)
from backend.core.paths import client_order_id_for
from backend.core.quotes import Quote
from backend.core.reasons import ReasonCode
from backend.core.risk import Exposure, RiskDecision, RiskLimits, check_risk
from backend.core.routing import RoutingDecision, RoutingPolicy
from backend.execution.ports import (
    Broker,
    BrokerOutcomeUnknownError,
    BrokerRejectedError,
    ClaimOutcome,
    Clock,
    ExecutionStore,
    MarketDataProvider,
    SystemClock,
)
from backend.execution.risk_manager import RiskManager
from backend.execution.router import SmartRouter
from backend.execution.settings import ExecSettings, load_settings
from backend.observability.logging import log_event

__all__ = [
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
    ) -> None:
        self.settings = settings or load_settings()
        self.broker = broker
        self.router = router
        self.risk = risk
        self.enable_smart_routing = enable_smart_routing
        self.dry_run = self.settings.dry_run if dry_run is None else dry_run
        if store is None:
            from backend.adapters.sqlite_store import SQLiteExecutionStore

            store = SQLiteExecutionStore(self.settings.sqlite_path)
        self.store = store
        self.clock = clock or router.clock or SystemClock()

    def execute_intent(
        self, intent: OrderIntent | Mapping[str, Any], quote: Quote | None = None
    ) -> ExecutionResult:
        """Run one intent through the whole flow. ``quote`` lets a batch caller pass a prefetched quote."""
        if not isinstance(intent, OrderIntent):
            try:
                intent = OrderIntent.model_validate(intent)
            except ValidationError as exc:
                log_event(
                    logger,
                    "exec.intent_invalid",
                    f"Invalid intent: {exc.error_count()} error(s)",
                    logging.WARNING,
                    errors=[{"field": ".".join(map(str, e["loc"])), "error": e["msg"]} for e in exc.errors()],
                )
                raise
        tenant_id = intent.tenant_id or self.settings.tenant_id
        uid = intent.uid or self.settings.uid
        key = intent.resolved_idempotency_key()
        log_intent_received(intent, tenant_id, key)

        existing = self.store.get_execution(tenant_id, key)
        if existing is not None:
            return self._replay(existing)

        now = self.clock.now()
        if self.enable_smart_routing:
            routing = self.router.analyze_intent(intent, quote=quote)
        else:
            routing = self.router.bypass(intent, quote=quote)
        log_smart_routing(routing, key)
        result = ExecutionResult(
            status=ExecutionStatus.PENDING,
            reason_code=routing.reason_code,
            reason=routing.reason,
            idempotency_key=key,
            tenant_id=tenant_id,
            uid=uid,
            intent=intent,
            decided_at=now,
            routing=routing,
        )
        if not routing.should_execute:
            status = ExecutionStatus.DOWNGRADED if routing.downgraded else ExecutionStatus.REJECTED
            return self._finish_without_order(replace(result, status=status))

        trading_day = now.date().isoformat()
        exposure = self.store.get_exposure(tenant_id, intent.broker_account_id, intent.symbol, trading_day)
        risk = self.risk.evaluate(intent, exposure)
        result = replace(result, risk=risk)
        if not risk.approved:
            return self._finish_without_order(self._risk_refusal(result, risk))
        if self.dry_run:
            return self._finish_without_order(
                replace(
                    result,
                    status=ExecutionStatus.DRY_RUN,
                    reason_code=ReasonCode.DRY_RUN,
                    reason="Dry run: approved, not sent to the broker",
                )
            )
        return self._place(result, exposure, trading_day)

    # -- outcomes ----------------------------------------------------------------------------

    def _replay(self, existing: ExecutionResult) -> ExecutionResult:
        replayed = replace(existing, replayed=True)
        _log_outcome("exec.duplicate_intent", replayed)
        return replayed

    def _risk_refusal(self, result: ExecutionResult, risk: RiskDecision) -> ExecutionResult:
        return replace(
            result,
            status=ExecutionStatus.REJECTED,
            reason_code=risk.reason_code,
            reason=risk.reason,
            risk=risk,
        )

    def _finish_without_order(self, result: ExecutionResult) -> ExecutionResult:
        stored = self.store.record_outcome(result, build_decision_record(result))
        if stored is not result:
            return self._replay(stored)
        if result.status is ExecutionStatus.REJECTED and result.risk is not None:
            _log_outcome("exec.risk_rejected", result, logging.WARNING)
        elif result.status is ExecutionStatus.DRY_RUN:
            _log_outcome("exec.dry_run", result)
        return result

    def _place(self, result: ExecutionResult, exposure: Exposure, trading_day: str) -> ExecutionResult:
        claim = self.store.claim(result, trading_day, self.risk.limits.max_daily_trades)
        if claim.outcome is ClaimOutcome.DUPLICATE and claim.existing is not None:
            return self._replay(claim.existing)
        if claim.outcome is ClaimOutcome.DAILY_LIMIT:
            # Another worker used the last slot between our read and our claim.
            risk = self.risk.evaluate(result.intent, replace(exposure, trades_today=claim.trades_today))
            return self._finish_without_order(self._risk_refusal(result, risk))

        intent = result.intent
        request = OrderRequest(
            client_order_id=client_order_id_for(result.tenant_id, result.idempotency_key),
            broker_account_id=intent.broker_account_id,
            symbol=intent.symbol,
            asset_class=intent.asset_class,
            side=intent.side,
            qty=intent.qty,
        )
        try:
            order = self.broker.submit_order(request)
        except BrokerRejectedError as exc:
            failed = replace(
                result, status=ExecutionStatus.FAILED, reason_code=exc.code, reason=f"Broker refused: {exc}"
            )
            return self._settle(failed, trading_day, "exec.order_failed")
        except BrokerOutcomeUnknownError as exc:
            return self._settle(self._unknown(result, exc), trading_day, "exec.order_unknown")
        except Exception as exc:
            logger.exception("broker raised an unclassified error")
            return self._settle(self._unknown(result, exc), trading_day, "exec.order_unknown")
        return self._record_order(result, order, trading_day)

    @staticmethod
    def _unknown(result: ExecutionResult, exc: BaseException) -> ExecutionResult:
        return replace(
            result,
            status=ExecutionStatus.UNKNOWN,
            reason_code=ReasonCode.BROKER_OUTCOME_UNKNOWN,
            reason=f"Broker outcome unknown ({type(exc).__name__}: {exc}); reconcile by client order id",
        )

    def _record_order(self, result: ExecutionResult, order: BrokerOrder, trading_day: str) -> ExecutionResult:
        if order.status in (BrokerOrderStatus.REJECTED, BrokerOrderStatus.CANCELED) and order.filled_qty == 0:
            failed = replace(
                result,
                status=ExecutionStatus.FAILED,
                reason_code=ReasonCode.BROKER_REJECTED,
                reason=f"Broker {order.status.value} the order: {order.message or 'no reason given'}",
                broker_order=order,
            )
            return self._settle(failed, trading_day, "exec.order_failed")
        placed = replace(
            result,
            status=ExecutionStatus.PLACED,
            reason_code=ReasonCode.OK,
            reason=f"Order {order.status.value}: {order.filled_qty} {order.symbol} @ {order.avg_fill_price}",
            broker_order=order,
        )
        if order.filled_qty <= 0:
            # Accepted, nothing filled yet: the ledger row is written when a fill is known.
            return self._settle(placed, trading_day, "exec.order_placed")
        trade = build_ledger_trade(placed)
        placed = replace(placed, trade_id=trade.trade_id, ledger_path=trade.path)
        self.store.record_trade(placed, trade, build_decision_record(placed))
        _log_outcome("exec.order_placed", placed)
        return placed

    def _settle(self, result: ExecutionResult, trading_day: str, event: str) -> ExecutionResult:
        self.store.settle_claim(result, build_decision_record(result), trading_day)
        severity = logging.INFO if result.status is ExecutionStatus.PLACED else logging.ERROR
        _log_outcome(event, result, severity)
        return result
