"""``order_queries`` without a network: how an order is named, that a final order is answered from
the store alone, and that a ledger row a store lost is reported rather than hidden. (Served over
HTTP against the Alpaca simulator: ``tests/test_http_orders.py``.)"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import ValidationError

from backend.adapters.sqlite_store import SQLiteExecutionStore
from backend.core.intents import OrderIntent
from backend.execution.order_queries import OrderNotFound, OrderRef, cancel_order, show_order
from backend.observability.logging import configure_logging
from tests.conftest import CountingBroker, EngineFactory

TENANT = "acme_corp"


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """The project's JSON log lines, put back as they were afterwards."""
    logger = logging.getLogger("msr")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    stream = io.StringIO()
    configure_logging("INFO", stream)
    yield stream
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate


def filled(make_engine: EngineFactory, key: str = "k-1") -> Any:
    engine = make_engine()
    intent = OrderIntent(
        strategy_id="s", broker_account_id="acct", symbol="AAPL", side="buy", qty=3, idempotency_key=key,
        metadata={"tenant_id": TENANT, "uid": "u1"},
    )  # fmt: skip
    assert engine.execute_intent(intent).order_state.value == "filled"  # the paper venue fills at once
    return engine


@pytest.mark.parametrize(
    "names",
    [{}, {"idempotency_key": "k", "client_order_id": "msr-1"}, {"idempotency_key": " "}, {"other": "k"}],
)
def test_an_order_is_named_by_exactly_one_of_its_two_names(names: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        OrderRef.model_validate(names)


def test_a_name_is_read_as_the_intent_stored_it() -> None:
    assert OrderRef(idempotency_key=" k-1 ").idempotency_key == "k-1"  # intents strip their key too
    assert OrderRef(client_order_id="msr-1").label == "client order id 'msr-1'"
    with pytest.raises(ValidationError):
        OrderRef(client_order_id="x" * 129)  # longer than a broker takes: it cannot exist


def test_a_final_order_is_answered_from_the_store_without_asking_the_broker(
    make_engine: EngineFactory, broker: CountingBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = filled(make_engine)

    def asked(client_order_id: str) -> None:
        raise AssertionError(f"the broker was asked about {client_order_id}")

    monkeypatch.setattr(broker, "get_order_by_client_order_id", asked)
    monkeypatch.setattr(broker, "cancel_order", asked)

    document = show_order(engine, TENANT, OrderRef(idempotency_key="k-1"))
    assert document["order"]["state"] == "filled"
    assert [row["trade_id"] for row in document["ledger_rows"]] == [document["order"]["fills"][0]["trade_id"]]
    refused = cancel_order(engine, TENANT, OrderRef(client_order_id=document["client_order_id"]))
    assert (refused["requested"], refused["reason_code"]) == (False, "ORDER_NOT_CANCELABLE")
    with pytest.raises(
        OrderNotFound, match="tenant 'other_corp' has no execution with idempotency key 'k-1'"
    ):
        show_order(engine, "other_corp", OrderRef(idempotency_key="k-1"))


def test_a_ledger_row_the_store_lost_is_logged_not_hidden(
    make_engine: EngineFactory,
    store: SQLiteExecutionStore,
    monkeypatch: pytest.MonkeyPatch,
    log_lines: io.StringIO,
) -> None:
    engine = filled(make_engine)
    monkeypatch.setattr(store, "get_ledger_trade", lambda tenant_id, trade_id: None)

    document = show_order(engine, TENANT, OrderRef(idempotency_key="k-1"))

    [fill] = document["order"]["fills"]
    assert document["ledger_rows"] == []
    events = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    missing = next(event for event in events if event["event"] == "orders.ledger_row_missing")
    assert (missing["severity"], missing["trade_id"], missing["tenant_id"]) == (
        "ERROR",
        fill["trade_id"],
        TENANT,
    )
