"""Idempotency keys that cannot be hijacked: namespaced by source, a key reused for a different
intent is a conflict (never a silent replay), and the cut-over to namespaces keeps every order
already in flight under its client order id. On both stores."""

from __future__ import annotations

from typing import Any

import pytest

from backend.core.intents import IdempotencyConflict, KeySource, OrderIntent, legacy_key
from backend.core.paths import client_order_id_for
from backend.execution.engine import ExecutionStatus
from functions.runner import run_idempotency_key
from tests.conftest import EngineFactory

TENANT = "acme_corp"


@pytest.fixture
def store(contract_store: Any) -> Any:
    return contract_store


def intent(key: str, qty: str = "3", **extra: Any) -> OrderIntent:
    return OrderIntent(
        strategy_id="s", broker_account_id="acct", symbol="AAPL", side="buy", qty=qty, idempotency_key=key,
        metadata={"tenant_id": TENANT, **extra},
    )  # fmt: skip


def test_keys_are_namespaced_by_source() -> None:
    runner = run_idempotency_key(TENANT, "strat", "20260302T1530Z", "AAPL")
    assert runner == "run:acme_corp:strat:20260302T1530Z:AAPL"
    # Whatever an API caller sends, its key lands in the api: namespace: even the runner's spelling.
    assert KeySource.API.key(runner) == "api:run:acme_corp:strat:20260302T1530Z:AAPL"
    assert KeySource.API.key(runner) != runner
    assert (legacy_key("api:abc"), legacy_key("run:x:y"), legacy_key("abc"), legacy_key("other:abc")) == (
        "abc", "x:y", None, None,
    )  # fmt: skip


def test_the_same_key_for_a_different_intent_is_a_conflict_naming_the_fields(
    make_engine: EngineFactory, store: Any
) -> None:
    engine = make_engine()
    first = engine.execute_intent(intent("api:k1"))
    assert first.status is ExecutionStatus.PLACED
    with pytest.raises(IdempotencyConflict) as conflict:
        engine.execute_intent(intent("api:k1", qty="5"))
    assert conflict.value.fields == ["qty"]
    with pytest.raises(IdempotencyConflict) as other:
        engine.execute_intent(intent("api:k1", qty="5").model_copy(update={"symbol": "MSFT"}))
    assert other.value.fields == ["symbol", "qty"]
    # Metadata (a strategy's reasoning text, say) is not what is traded: a replay, not a conflict.
    again = engine.execute_intent(intent("api:k1", note="worded differently"))
    assert (again.replayed, again.broker_order_id) == (True, first.broker_order_id)
    assert len(list(store.iter_ledger_trades(TENANT))) == 1


def test_an_order_from_before_namespaces_keeps_its_client_order_id(
    make_engine: EngineFactory, store: Any, broker: Any
) -> None:
    engine = make_engine()
    before = engine.execute_intent(intent("legacy-key"))  # claimed under the key as it was
    after = engine.execute_intent(intent(KeySource.API.key("legacy-key")))
    assert after.replayed
    assert after.client_order_id == before.client_order_id == client_order_id_for(TENANT, "legacy-key")
    assert len(broker.calls) == 1
    # A namespaced key whose old spelling holds *another* intent is a new key, never that order.
    hijack = engine.execute_intent(intent(KeySource.API.key("legacy-key"), qty="7"))
    assert not hijack.replayed
    assert hijack.client_order_id == client_order_id_for(TENANT, "api:legacy-key")
    assert len(broker.calls) == 2


def test_without_legacy_keys_a_namespaced_key_is_only_itself(make_engine: EngineFactory, broker: Any) -> None:
    engine = make_engine()
    engine.execute_intent(intent("old"))
    engine.settings = engine.settings.model_copy(update={"legacy_idempotency_keys": False})
    assert not engine.execute_intent(intent("api:old")).replayed
    assert len(broker.calls) == 2
