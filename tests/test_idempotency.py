"""Idempotency keys that cannot be hijacked: namespaced by source, a key reused for a different
intent is a conflict (never a silent replay), and the cut-over to namespaces keeps every order
already in flight under its client order id. On both stores."""

from __future__ import annotations

import uuid
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


# -- through the served execute function, on both stores ------------------------------------------

HTTP_INTENT = {"strategy_id": "manual", "broker_account_id": "alpaca_main", "symbol": "AAPL", "side": "buy"}


@pytest.fixture(scope="module")
def http_fake() -> Any:
    from devtools.alpaca_simulator import FakeAlpaca

    fake = FakeAlpaca()
    fake.set_quote("AAPL", "189.99", "190.01")
    return fake


@pytest.fixture(scope="module", params=["sqlite", "firestore"])
def execute_url(
    request: pytest.FixtureRequest, http_fake: Any, tmp_path_factory: pytest.TempPathFactory
) -> Any:
    from devtools.alpaca_simulator import running
    from tests.test_http_execute import served

    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("idempotency") / "ledger.sqlite3"
        store_env = {"EXEC_STORE": "sqlite", "EXEC_SQLITE_PATH": str(path)}
    else:
        store_env = {
            "EXEC_STORE": "firestore",
            "FIRESTORE_EMULATOR_HOST": request.getfixturevalue("firestore_emulator").host,
        }
    with running(http_fake) as alpaca_url, served("execute", alpaca_url, store_env) as url:
        yield url


def orders_at(fake: Any, client_order_id: str) -> int:
    return sum(1 for order in fake.orders_snapshot() if order["client_order_id"] == client_order_id)


def test_a_caller_sending_the_runners_key_gets_an_order_of_its_own(execute_url: str, http_fake: Any) -> None:
    from tests.test_http_execute import TRADER, post

    runners = run_idempotency_key(TRADER["tenant_id"], "strat", f"run-{uuid.uuid4().hex[:8]}", "AAPL")
    answer = post(execute_url, {**HTTP_INTENT, "qty": 1, "idempotency_key": runners}).json()
    assert answer["idempotency_key"] == f"api:{runners}"
    assert answer["broker_order"]["client_order_id"] == client_order_id_for(
        TRADER["tenant_id"], f"api:{runners}"
    )
    assert answer["broker_order"]["client_order_id"] != client_order_id_for(TRADER["tenant_id"], runners)


def test_the_same_key_with_another_body_is_409_naming_the_fields_and_writes_nothing(
    execute_url: str, http_fake: Any
) -> None:
    from tests.test_http_execute import post

    key = f"k-{uuid.uuid4().hex[:10]}"
    first = post(execute_url, {**HTTP_INTENT, "qty": 2}, headers={"Idempotency-Key": key})
    assert first.status_code == 200, first.text
    orders_before = len(http_fake.orders_snapshot())
    conflict = post(execute_url, {**HTTP_INTENT, "qty": 5, "side": "sell"}, headers={"Idempotency-Key": key})
    assert conflict.status_code == 409, conflict.text
    body = conflict.json()
    assert (body["error"], body["fields"], body["idempotency_key"]) == (
        "idempotency_conflict",
        ["side", "qty"],
        f"api:{key}",
    )
    assert len(http_fake.orders_snapshot()) == orders_before
    again = post(execute_url, {**HTTP_INTENT, "qty": "2.0"}, headers={"Idempotency-Key": key})  # same qty
    assert (again.status_code, again.json()["replayed"]) == (200, True)


def test_concurrent_identical_requests_place_one_order_and_a_different_body_is_409(
    execute_url: str, http_fake: Any
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from tests.test_http_execute import post

    key = f"k-{uuid.uuid4().hex[:10]}"
    bodies = [{**HTTP_INTENT, "qty": 4 if n % 4 else 6} for n in range(8)]  # two of the eight differ
    with ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(lambda body: post(execute_url, body, headers={"Idempotency-Key": key}), bodies)
        )
    statuses = sorted(response.status_code for response in answers)
    placed = [response.json() for response in answers if response.status_code == 200]
    assert {answer["idempotency_key"] for answer in placed} == {f"api:{key}"}
    # An answer while the first request still holds the order is "in flight" (no broker order yet).
    assert {answer["broker_order"]["client_order_id"] for answer in placed if answer["broker_order"]} == {
        client_order_id_for(TENANT, f"api:{key}")
    }
    assert orders_at(http_fake, client_order_id_for(TENANT, f"api:{key}")) == 1
    # Whichever body was first is the order; every other body is a conflict.
    winner = placed[0]["intent"]["qty"]
    assert statuses == ([200] * 6 + [409] * 2 if winner in ("4", 4) else [200] * 2 + [409] * 6)


def test_a_contended_transaction_ends_as_another_writers_outcome_or_as_store_busy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from google.api_core.exceptions import Aborted

    from backend.adapters import firestore_store
    from backend.execution.ports import StoreBusy

    monkeypatch.setattr(firestore_store.time, "sleep", lambda _: None)
    runs: list[int] = []

    def contended() -> str:
        runs.append(1)
        raise ValueError("Failed to commit transaction in 5 attempts.") from Aborted("lock timeout")

    assert firestore_store._through_contention(contended, lambda: "the other's", "claim k") == "the other's"
    with pytest.raises(StoreBusy, match="nothing was written"):
        firestore_store._through_contention(contended, lambda: None, "claim k")
    assert len(runs) == 1 + firestore_store.CONTENTION_ROUNDS
    with pytest.raises(ValueError, match="not contention"):  # any other error is not retried
        firestore_store._through_contention(
            lambda: (_ for _ in ()).throw(ValueError("not contention")), lambda: None, "claim k"
        )
