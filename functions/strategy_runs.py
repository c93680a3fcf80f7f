"""Scheduled strategy runs: the tick fans out one Pub/Sub message per (tenant, strategy); each
message runs one strategy once: quotes in one batch per asset class, signals, intents, engine.

At-least-once everywhere: a duplicated tick publishes the same run id (derived from the tick's
scheduled time), a redelivered message finds its run already done, and either way every intent's
idempotency key is (tenant, strategy, run, symbol), so nothing is ordered twice.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from backend.core.broker_accounts import BrokerAccountRefused
from backend.core.instruments import AssetClass
from backend.core.paths import tenant_collection_path
from backend.observability.logging import log_event
from functions.runner import RunContext, Sizing, evaluate_and_execute
from functions.strategies import STRATEGIES

logger = logging.getLogger("msr.runs")

Id = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^/]+$")]


class RunMessage(BaseModel):
    """The Pub/Sub message body of one strategy run."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tenant_id: Id
    strategy_id: Id
    run_id: Id


class StrategyConfig(BaseModel):
    """``tenants/{tenant_id}/strategies/{strategy_id}``."""

    model_config = ConfigDict(extra="ignore")

    enabled: bool = True
    strategy: str
    symbols: Annotated[list[str], Field(min_length=1, max_length=500)]
    broker_account_id: Id
    uid: Id
    config: dict[str, Any] = Field(default_factory=dict)
    qty: dict[AssetClass, Decimal] = Field(default_factory=dict)


class MalformedRun(ValueError):
    """A message or configuration that retrying cannot fix: logged and acknowledged."""


def run_id_for(scheduled_at: datetime) -> str:
    """The tick's scheduled time, to the minute: a duplicated tick is the same run."""
    return scheduled_at.strftime("%Y%m%dT%H%MZ")


def parse_run_message(data: bytes) -> RunMessage:
    try:
        return RunMessage.model_validate_json(data)
    except ValidationError as exc:
        raise MalformedRun(f"not a strategy-run message: {exc.error_count()} error(s)") from exc


def publish_runs(db: Any, publisher: Any, topic_path: str, run_id: str) -> int:
    """One message per enabled strategy of every tenant; returns how many were published."""
    from google.cloud.firestore_v1.base_query import FieldFilter

    futures = []
    enabled = db.collection_group("strategies").where(filter=FieldFilter("enabled", "==", True))
    for snapshot in enabled.stream():
        tenant_id = snapshot.reference.parent.parent.id
        message = RunMessage(tenant_id=tenant_id, strategy_id=snapshot.id, run_id=run_id)
        futures.append(
            publisher.publish(
                topic_path, message.model_dump_json().encode(), tenant_id=tenant_id, run_id=run_id
            )
        )
    for future in futures:
        future.result(timeout=30)
    log_event(logger, "runs.scheduled", f"Published {len(futures)} strategy runs for {run_id}", run_id=run_id,
              runs=len(futures))  # fmt: skip
    return len(futures)


@dataclass(frozen=True)
class RunReport:
    message: RunMessage
    skipped: str | None
    signals: dict[str, int]
    outcomes: dict[str, int]


def _run_record(db: Any, message: RunMessage) -> Any:
    collection = tenant_collection_path(message.tenant_id, "strategy_runs")
    return db.document(f"{collection}/{message.strategy_id}~{message.run_id}")


def run_strategy(message: RunMessage, message_id: str, db: Any, services: Callable[[], Any]) -> RunReport:
    """Run one strategy once. Transient failures raise (Pub/Sub redelivers); bad input raises
    ``MalformedRun`` (acknowledged). ``services`` is called only once the run is known to be valid."""
    from google.cloud import firestore

    record = _run_record(db, message)
    existing = record.get()
    if existing.exists and (existing.to_dict() or {}).get("status") == "done":
        log_event(logger, "runs.duplicate", f"Run {message.run_id} of {message.strategy_id} already done",
                  message_id=message_id, tenant_id=message.tenant_id)  # fmt: skip
        return RunReport(message, "already done", {}, {})
    config_snapshot = db.document(
        f"{tenant_collection_path(message.tenant_id, 'strategies')}/{message.strategy_id}"
    ).get()
    if not config_snapshot.exists:
        raise MalformedRun(f"no strategy {message.strategy_id} for tenant {message.tenant_id}")
    try:
        config = StrategyConfig.model_validate(config_snapshot.to_dict() or {})
    except ValidationError as exc:
        raise MalformedRun(
            f"strategy {message.strategy_id}: invalid configuration ({exc.error_count()} errors)"
        ) from exc
    if config.strategy not in STRATEGIES:
        raise MalformedRun(f"strategy {message.strategy_id}: unknown strategy type {config.strategy!r}")
    if not config.enabled:
        return RunReport(message, "disabled", {}, {})
    built = services()
    try:  # an account that is not the tenant's refuses the whole run, before anything is written
        built.engine.resolve_account(message.tenant_id, config.broker_account_id)
    except BrokerAccountRefused as exc:
        raise MalformedRun(f"strategy {message.strategy_id}: {exc.reason}") from exc
    record.set(
        {"status": "running", "message_id": message_id, "started_at": firestore.SERVER_TIMESTAMP}, merge=True
    )
    signals, outcomes = _evaluate(message, config, built)
    record.set({"status": "done", "signals": dict(signals), "outcomes": dict(outcomes),
                "finished_at": firestore.SERVER_TIMESTAMP}, merge=True)  # fmt: skip
    log_event(logger, "runs.done", f"Run {message.run_id} of {message.strategy_id}: {dict(outcomes)}",
              tenant_id=message.tenant_id, strategy_id=message.strategy_id, run_id=message.run_id,
              message_id=message_id, signals=dict(signals), outcomes=dict(outcomes))  # fmt: skip
    return RunReport(message, None, dict(signals), dict(outcomes))


def _evaluate(
    message: RunMessage, config: StrategyConfig, services: Any
) -> tuple[Counter[str], Counter[str]]:
    strategy = STRATEGIES[config.strategy](dict(config.config))
    symbols: Iterable[str] = [s.strip().upper() for s in config.symbols]
    quotes = services.market_data.get_quotes(symbols)  # one request per asset class
    positions = services.store.positions(message.tenant_id)
    context = RunContext(
        strategy_id=message.strategy_id,
        broker_account_id=config.broker_account_id,
        tenant_id=message.tenant_id,
        uid=config.uid,
        run_id=message.run_id,
        sizing=Sizing.with_overrides(config.qty),
    )
    signals: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    for symbol in symbols:
        quote = quotes.get(symbol)
        if quote is None or not strategy.supports(quote.asset_class):
            signals["no_quote" if quote is None else "unsupported"] += 1
            continue
        signal, result = evaluate_and_execute(strategy, quote, positions, services.engine, context)
        signals[signal.signal_type.value] += 1
        if result is not None:
            outcomes[result.status.value] += 1
    return signals, outcomes
