"""The document codec: what a store reads back is a model of plain values that answers as JSON,
whichever store it came from (Firestore hands timestamps back as its own datetime subclass)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from google.api_core.datetime_helpers import DatetimeWithNanoseconds
from pydantic import TypeAdapter

from backend.adapters.documents import RESULTS, from_document, to_json
from backend.core.intents import OrderIntent
from backend.core.orders import ExecutionStatus
from tests.conftest import T0, EngineFactory


@pytest.fixture
def store(contract_store: Any) -> Any:
    """Both stores: the engine built by ``make_engine`` writes to each in turn."""
    return contract_store


def test_a_result_read_back_from_each_store_is_answered_as_json(
    make_engine: EngineFactory, store: Any
) -> None:
    intent = OrderIntent(
        strategy_id="s", broker_account_id="acct", symbol="AAPL", side="buy", qty=3, idempotency_key="k-1",
        metadata={"tenant_id": "acme_corp", "uid": "u1"},
    )  # fmt: skip
    result = make_engine().execute_intent(intent)
    assert result.status is ExecutionStatus.PLACED
    execution = store.get_execution("acme_corp", "k-1")
    assert execution is not None
    stored = execution.result
    assert type(execution.order.updated_at) is datetime
    assert type(stored.decided_at) is datetime
    assert type(stored.broker_order.submitted_at) is datetime
    [trade] = store.iter_ledger_trades("acme_corp")
    assert type(trade.executed_at) is datetime
    assert orjson.loads(to_json(RESULTS, stored)) == orjson.loads(to_json(RESULTS, result))
    assert orjson.loads(to_json(RESULTS, stored))["decided_at"] == T0.isoformat()


def test_a_datetime_subclass_is_written_as_rfc3339_like_a_datetime() -> None:
    moment = DatetimeWithNanoseconds(2026, 3, 2, 15, 30, 1, 123456, tzinfo=UTC)
    plain = datetime(2026, 3, 2, 15, 30, 1, 123456, tzinfo=UTC)
    adapter = TypeAdapter(dict[str, Any])
    assert to_json(adapter, {"at": moment}) == to_json(adapter, {"at": plain})
    assert orjson.loads(to_json(adapter, {"at": [moment]})) == {"at": ["2026-03-02T15:30:01.123456+00:00"]}


def test_a_document_read_has_plain_datetimes_at_any_depth() -> None:
    moment = DatetimeWithNanoseconds(2026, 3, 2, 15, 30, tzinfo=UTC)
    read = from_document(TypeAdapter(dict[str, Any]), {"at": moment, "nested": {"list": [moment]}})
    assert type(read["at"]) is datetime
    assert type(read["nested"]["list"][0]) is datetime
    assert read["at"] == moment
