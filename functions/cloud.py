"""What each deployed function does, behind the decorators in ``main.py``.

Kept apart from ``main.py`` so that importing ``main`` (what a cold start and the Firebase CLI's
discovery do) loads only the Firebase Functions SDK; the engine, the stores and the broker SDK are
imported on the first invocation.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from backend.observability.logging import configure_logging, log_event
from functions.scheduled import health_answer, is_health_probe

logger = logging.getLogger("msr.functions")
# The HTTPS functions have 60 s (main.py); a request is answered well before, whatever a dependency
# does: the broker's pace, retries and timeouts stop at this deadline (backend/execution/deadlines.py).
REQUEST_DEADLINE_S = 45.0
_configured = False


def _logging() -> None:
    global _configured
    if not _configured:
        configure_logging("INFO")
        _configured = True


def _db() -> Any:
    from google.cloud import firestore

    from functions.app import project_id

    return firestore.Client(project=project_id())


def execute_http(request: Any) -> Any:
    if is_health_probe(request.method, request.path):  # the Firebase CLI's readiness probe
        return health_answer()
    _logging()
    from backend.execution.deadlines import request_deadline
    from functions.app import services
    from functions.http_auth import serving_refusal, verify_firebase_token
    from functions.http_execute import handle_execute
    from functions.wire import body_settled

    def execute(intent: Any) -> Any:
        return services().execute(intent, trusted=False)  # a caller's figures only tighten checks

    with request_deadline(REQUEST_DEADLINE_S), body_settled(request):
        # An instance that must not authenticate anyone serves nothing (its body unread, settled).
        if (refusal := serving_refusal()) is not None:
            return refusal
        return handle_execute(request, execute, verify_firebase_token)


def orders_http(request: Any) -> Any:
    if is_health_probe(request.method, request.path):
        return health_answer()
    _logging()
    from backend.execution.deadlines import request_deadline
    from functions.app import services
    from functions.http_auth import serving_refusal, verify_firebase_token
    from functions.http_orders import handle_orders
    from functions.wire import body_settled

    with request_deadline(REQUEST_DEADLINE_S), body_settled(request):
        if (refusal := serving_refusal()) is not None:
            return refusal
        return handle_orders(
            request,
            lambda tenant_id, ref: services().show_order(tenant_id, ref),
            lambda tenant_id, ref: services().cancel_order(tenant_id, ref),
            verify_firebase_token,
        )


def schedule_tick(scheduled_at: datetime | None) -> int:
    _logging()
    from google.cloud import pubsub_v1

    from functions.app import STRATEGY_RUNS_TOPIC, project_id
    from functions.strategy_runs import publish_runs, run_id_for

    publisher = pubsub_v1.PublisherClient()
    topic = publisher.topic_path(project_id(), STRATEGY_RUNS_TOPIC)
    return publish_runs(_db(), publisher, topic, run_id_for(scheduled_at or datetime.now(UTC)))


def run_message(message_id: str, data: bytes) -> Any:
    """A strategy-run message. Malformed: logged and acknowledged. Transient: raised (retried)."""
    _logging()
    from functions.app import services
    from functions.strategy_runs import MalformedRun, parse_run_message, run_strategy

    try:
        message = parse_run_message(data)
        return run_strategy(message, message_id, _db(), services)
    except MalformedRun as exc:
        log_event(logger, "runs.malformed", f"Acknowledged without running: {exc}", logging.ERROR,
                  message_id=message_id)  # fmt: skip
        return None


def ledger_created(document: dict[str, Any] | None, path: str) -> Any:
    """The Firestore trigger on a new ledger row: fan it out to the user's portfolio history.

    Only a document that is not a ledger row is logged and acknowledged. Anything else (the store
    unavailable, a configuration error) is logged and raised: the invocation fails visibly, and
    since the SDK never retries Firestore triggers, the scheduled re-drive fans the row out later."""
    _logging()
    from backend.execution.fanout import MalformedLedgerDocument, fan_out_ledger_document
    from functions.app import stores

    if document is None:
        log_event(logger, "portfolio.empty_event", f"No document in the event for {path}", logging.ERROR)
        return None
    try:
        return fan_out_ledger_document(document, stores().portfolio)
    except MalformedLedgerDocument as exc:
        log_event(logger, "portfolio.bad_ledger_document", f"{path}: {exc}", logging.ERROR, path=path)
        return None
    except Exception:
        log_event(logger, "portfolio.fanout_failed", f"Fan-out of {path} failed; the re-drive will retry it",
                  logging.ERROR, exc_info=True, path=path)  # fmt: skip
        raise


def redrive_portfolio() -> Any:
    """Fan out the ledger entries written since the last run's watermark that have no history
    entry (the stores only: this function holds no broker keys)."""
    _logging()
    from backend.execution.fanout import scheduled_redrive
    from functions.app import stores

    built = stores()
    return scheduled_redrive(built.ledger, built.portfolio, datetime.now(UTC))


def settle_orders() -> Any:
    """The settlement sweeper: open orders no delivery came back for, settled from the broker."""
    _logging()
    from backend.execution.settlement_sweep import sweep_open_orders
    from functions.app import services

    built = services()
    return sweep_open_orders(built.engine, built.settings.sweep_limits(), datetime.now(UTC))


def check_positions() -> Any:
    """The scheduled broker position check: Alpaca's positions against the ledger's, one log event
    per finding. It reports; it writes nothing."""
    _logging()
    from backend.execution.position_check import check_positions as check
    from backend.execution.position_check import check_registered_accounts, registered_alpaca_accounts
    from functions.app import position_check

    built, now = position_check(), datetime.now(UTC)
    accounts = built.registry.all_broker_accounts()
    settings = built.stores.settings
    report = check(
        built.stores.ledger, built.broker, settings, now, registered=registered_alpaca_accounts(accounts)
    )
    # Each tenant's registered Alpaca account, through its own keys: its own report and events.
    check_registered_accounts(built.stores.ledger, accounts, built.source_for, settings, now)
    return report
