"""The ``orders`` HTTPS function, served by functions-framework from main.py beside ``execute`` (the
secrets their manifests declare, one store for both), the real alpaca-py SDK at the local Alpaca
simulator, on both stores: an order placed through ``execute`` that rests at the broker, read by
either of its names, filled, canceled; another tenant's order, a viewer, and malformed requests
refused without writing anything."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
import requests

from backend.adapters.sqlite_store import SQLiteExecutionStore
from backend.core.paths import client_order_id_for
from devtools.alpaca_simulator import FakeAlpaca, running
from devtools.emulators import PROJECT
from devtools.tokens import unsigned_token
from tests.test_http_execute import served

TENANT, OTHER = "tenant_a", "tenant_b"
TRADER = {"uid": "u1", "tenant_id": TENANT, "role": "trader"}
ADMIN = {"uid": "u2", "tenant_id": TENANT, "role": "admin"}
VIEWER = {"uid": "u3", "tenant_id": TENANT, "role": "viewer"}
OTHER_TRADER = {"uid": "u9", "tenant_id": OTHER, "role": "trader"}
ORDERS = "/v2/orders"


@pytest.fixture(scope="module")
def fake() -> FakeAlpaca:
    fake = FakeAlpaca(fill="new", polls_to_fill=1000)  # every order rests until a test fills it
    fake.set_quote("AAPL", "189.99", "190.01")
    fake.set_quote("MSFT", "400.00", "404.00")  # 1 %: the cost gate downgrades it
    return fake


@pytest.fixture(scope="module")
def alpaca_url(fake: FakeAlpaca) -> Iterator[str]:
    with running(fake) as url:
        yield url


@dataclass
class Stack:
    execute_url: str
    orders_url: str
    store: Any  # the same store, opened by the test process, to see what was written

    def written(self) -> tuple[int, int]:
        """(decisions, ledger rows) of every tenant."""
        return len(list(self.store.iter_decisions())), len(list(self.store.iter_ledger_trades()))

    def in_flight(self, account: str) -> Any:
        day = datetime.now(UTC).date().isoformat()
        return self.store.get_exposure(TENANT, account, "AAPL", day, 50).pending_buy_qty


@pytest.fixture(scope="module", params=["sqlite", "firestore"])
def stack(
    request: pytest.FixtureRequest, alpaca_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    # One bounded poll after the submit: a resting order is answered at once, as accepted.
    env = {"EXEC_ALPACA_FILL_POLLS": "1", "EXEC_ALPACA_FILL_POLL_S": "0.01"}
    with ExitStack() as stack:
        if request.param == "sqlite":
            path = tmp_path_factory.mktemp("orders") / "ledger.sqlite3"
            env |= {"EXEC_STORE": "sqlite", "EXEC_SQLITE_PATH": str(path)}
            store: Any = SQLiteExecutionStore(path)
            stack.callback(store.close)
        else:
            from google.cloud import firestore

            from backend.adapters.firestore_store import FirestoreExecutionStore

            emulator = request.getfixturevalue("firestore_emulator")
            emulator.wipe()
            env |= {"EXEC_STORE": "firestore", "FIRESTORE_EMULATOR_HOST": emulator.host}
            client = firestore.Client(project=PROJECT)
            stack.callback(client.close)
            store = FirestoreExecutionStore(client)
        execute_url = stack.enter_context(served("execute", alpaca_url, env))
        orders_url = stack.enter_context(served("orders", alpaca_url, env))
        yield Stack(execute_url, orders_url, store)


def auth(claims: dict[str, Any] | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {unsigned_token(claims)}"} if claims else {}


def place(stack: Stack, key: str, account: str = "alpaca_main", symbol: str = "AAPL") -> dict[str, Any]:
    intent = {
        "strategy_id": "manual",
        "broker_account_id": account,
        "symbol": symbol,
        "side": "buy",
        "qty": 3,
    }
    response = requests.post(
        stack.execute_url, json=intent, headers={**auth(TRADER), "Idempotency-Key": key}, timeout=30
    )
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def show(stack: Stack, claims: dict[str, Any] | None = TRADER, **params: str) -> requests.Response:
    return requests.get(f"{stack.orders_url}/", params=params, headers=auth(claims), timeout=30)


def cancel(stack: Stack, body: Any, claims: dict[str, Any] | None = TRADER) -> requests.Response:
    return requests.post(f"{stack.orders_url}/cancel", json=body, headers=auth(claims), timeout=30)


def fill_at_the_broker(fake: FakeAlpaca, order_id: str) -> None:
    """The market comes to the resting order: the simulator fills it on its next reads."""
    for _ in range(fake.polls_to_fill):
        fake.get_order(order_id)


def decimals(document: dict[str, Any], *names: str) -> tuple[Decimal, ...]:
    assert all(isinstance(document[name], str) for name in names), document
    return tuple(Decimal(document[name]) for name in names)


D = Decimal


def deletes(fake: FakeAlpaca) -> int:
    """Cancels the broker was asked for, of any order."""
    with fake.lock:
        return sum(1 for method, _, _ in fake.log if method == "DELETE")


def new_key() -> str:
    return f"k-{uuid.uuid4().hex[:10]}"


def test_a_resting_order_is_answered_by_either_name_and_then_as_filled(
    stack: Stack, fake: FakeAlpaca
) -> None:
    key = new_key()
    placed = place(stack, key)
    assert placed["order_state"] == "accepted"
    client_order_id, order_id = placed["broker_order"]["client_order_id"], placed["broker_order"]["order_id"]

    by_key = show(stack, idempotency_key=key)
    assert by_key.status_code == 200, by_key.text
    answer = by_key.json()
    # The key as stored: in the API callers' namespace (tests/test_idempotency.py).
    assert (answer["idempotency_key"], answer["client_order_id"]) == (f"api:{key}", client_order_id)
    assert placed["idempotency_key"] == f"api:{key}"
    order = answer["order"]
    assert order["state"] == "accepted"
    assert decimals(order, "qty", "filled_qty", "leaves_qty") == (3, 0, 3)
    assert (order["broker"], order["broker_order_id"], order["attempts"]) == ("alpaca", order_id, 1)
    assert (order["avg_fill_price"], order["fills"], answer["ledger_rows"]) == (None, [], [])
    assert (answer["result"]["status"], answer["result"]["reason_code"]) == ("placed", "OK")
    assert answer["result"]["routing"]["should_execute"] is True  # the decision
    assert answer["result"]["intent"]["metadata"]["tenant_id"] == TENANT
    assert show(stack, client_order_id=client_order_id).json() == answer
    # The same route with the function's name in front, as some URLs of a deployed function pass it.
    named = requests.get(
        f"{stack.orders_url}/orders", params={"idempotency_key": key}, headers=auth(TRADER), timeout=30
    )
    assert named.json() == answer

    fill_at_the_broker(fake, order_id)
    filled = show(stack, ADMIN, client_order_id=client_order_id).json()
    order = filled["order"]
    assert order["state"] == "filled"
    # Money and quantities as exact decimal strings (the broker's own figures: "3.0" from Alpaca).
    assert decimals(order, "filled_qty", "leaves_qty", "avg_fill_price") == (3, 0, D("190.01"))
    [fill] = order["fills"]
    assert decimals(fill, "qty", "price", "cum_qty") == (3, D("190.01"), 3)
    assert datetime.fromisoformat(fill["at"]).tzinfo is not None  # RFC 3339, with its offset
    [row] = filled["ledger_rows"]
    assert row["trade_id"] == fill["trade_id"]
    assert decimals(row, "qty", "price", "notional") == (3, D("190.01"), D("570.03"))
    assert stack.store.get_ledger_trade(TENANT, fill["trade_id"]) is not None  # recorded, not only told
    assert (filled["result"]["order_state"], filled["result"]["trade_ids"]) == ("filled", [fill["trade_id"]])
    assert show(stack, idempotency_key=key).json() == filled  # asked again: the same, recorded once
    assert stack.store.positions(TENANT)["AAPL"] == 3


def test_a_resting_order_is_canceled_at_the_broker_and_a_second_cancel_is_refused(
    stack: Stack, fake: FakeAlpaca
) -> None:
    key, account = new_key(), "default"  # the single-firm install: every label is its one account
    before = stack.in_flight(account)
    placed = place(stack, key, f"acct-{uuid.uuid4().hex[:6]}")
    client_order_id, order_id = placed["broker_order"]["client_order_id"], placed["broker_order"]["order_id"]
    assert stack.in_flight(account) == before + 3

    response = cancel(stack, {"idempotency_key": key})

    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["requested"], answer["reason_code"]) == (True, "OK")
    assert (answer["order"]["state"], answer["order"]["leaves_qty"]) == ("canceled", "0")
    assert (answer["result"]["status"], answer["result"]["reason_code"]) == ("failed", "ORDER_CANCELED")
    assert answer["client_order_id"] == client_order_id
    assert fake.order_for(client_order_id)["status"] == "canceled"  # type: ignore[index]
    assert stack.in_flight(account) == before  # released with the broker's report

    again = requests.post(
        f"{stack.orders_url}/orders/cancel",
        json={"client_order_id": client_order_id},
        headers=auth(ADMIN),
        timeout=30,
    )
    assert again.status_code == 200, again.text
    assert (again.json()["requested"], again.json()["reason_code"]) == (False, "ORDER_NOT_CANCELABLE")
    assert "canceled" in again.json()["reason"]
    assert fake.requests_to("DELETE", f"{ORDERS}/{order_id}") == 1
    assert stack.in_flight(account) == 0


def test_another_tenants_order_is_not_found_and_left_alone(stack: Stack, fake: FakeAlpaca) -> None:
    key = new_key()
    placed = place(stack, key)
    client_order_id, order_id = placed["broker_order"]["client_order_id"], placed["broker_order"]["order_id"]
    before = stack.written()

    asked = [
        show(stack, OTHER_TRADER, idempotency_key=key),
        show(stack, OTHER_TRADER, client_order_id=client_order_id),
        cancel(stack, {"idempotency_key": key}, OTHER_TRADER),
        cancel(stack, {"client_order_id": client_order_id}, OTHER_TRADER),
    ]

    assert [response.status_code for response in asked] == [404] * 4
    # Exactly what a name nobody has gets: nothing says that tenant_a has it.
    assert asked[0].json() == show(stack, OTHER_TRADER, idempotency_key=new_key() + "x").json() | {
        "reason": f"tenant 'tenant_b' has no execution with idempotency key {key!r}"
    }
    assert asked[1].json() == {
        "error": "not_found",
        "reason": f"tenant 'tenant_b' has no execution with client order id {client_order_id!r}",
        "tenant_id": OTHER,
    }
    assert all(TENANT not in response.text for response in asked)
    assert fake.order_for(client_order_id)["status"] == "accepted"  # type: ignore[index]
    assert fake.requests_to("DELETE", f"{ORDERS}/{order_id}") == 0
    assert stack.written() == before
    assert show(stack, idempotency_key=key).json()["order"]["state"] == "accepted"


def test_an_intent_that_never_reached_the_broker_has_no_order_but_its_decision(stack: Stack) -> None:
    key = new_key()
    assert place(stack, key, symbol="MSFT")["status"] == "downgraded"

    answer = show(stack, idempotency_key=key).json()

    assert (answer["order"], answer["client_order_id"], answer["ledger_rows"]) == (None, None, [])
    assert (answer["result"]["status"], answer["result"]["reason_code"]) == ("downgraded", "SPREAD_TOO_WIDE")
    assert "exceeds threshold" in answer["result"]["reason"]
    refused = cancel(stack, {"idempotency_key": key}).json()
    assert (refused["requested"], refused["reason_code"]) == (False, "ORDER_NOT_CANCELABLE")
    assert show(stack, client_order_id=client_order_id_for(TENANT, key)).status_code == 404


def test_a_viewer_may_read_but_not_cancel(stack: Stack, fake: FakeAlpaca) -> None:
    key = new_key()
    client_order_id = place(stack, key)["broker_order"]["client_order_id"]
    cancels = deletes(fake)

    assert show(stack, VIEWER, idempotency_key=key).json()["order"]["state"] == "accepted"
    refused = cancel(stack, {"idempotency_key": key}, VIEWER)

    assert refused.status_code == 403
    assert refused.json()["reason"] == "role 'viewer' may not cancel orders"
    assert fake.order_for(client_order_id)["status"] == "accepted"  # type: ignore[index]
    assert deletes(fake) == cancels


@pytest.mark.parametrize(
    ("claims", "status", "reason"),
    [
        (None, 401, "Authorization: Bearer"),
        ({"uid": "u1", "role": "trader"}, 403, "no tenant_id claim"),
        ({"uid": "u1", "tenant_id": TENANT, "role": "guest"}, 403, "role 'guest' may not read orders"),
        ({"uid": "u1", "tenant_id": TENANT}, 403, "role None may not read orders"),
    ],
)
def test_reading_needs_a_token_a_tenant_and_a_role(
    stack: Stack, claims: dict[str, Any] | None, status: int, reason: str
) -> None:
    response = show(stack, claims, idempotency_key="anything")
    assert response.status_code == status
    assert reason in response.json()["reason"]


def raw_cancel(stack: Stack, data: bytes) -> requests.Response:
    headers = {**auth(TRADER), "Content-Type": "application/json"}
    return requests.post(f"{stack.orders_url}/cancel", data=data, headers=headers, timeout=30)


BAD_REQUESTS = [
    pytest.param(
        lambda s: show(s), 400, "exactly one of idempotency_key or client_order_id", id="get-neither"
    ),
    pytest.param(
        lambda s: show(s, idempotency_key="a", client_order_id="b"), 400, "exactly one", id="get-both"
    ),
    pytest.param(
        lambda s: show(s, idempotency_key="  "), 400, "idempotency_key: String should", id="get-blank"
    ),
    pytest.param(lambda s: show(s, key="a"), 400, "key: Extra inputs are not permitted", id="get-unknown"),
    pytest.param(
        lambda s: requests.get(
            f"{s.orders_url}/?idempotency_key=a&idempotency_key=b", headers=auth(TRADER), timeout=30
        ),
        400,
        "idempotency_key is given more than once",
        id="get-repeated",
    ),
    pytest.param(lambda s: cancel(s, {}), 400, "exactly one", id="cancel-neither"),
    pytest.param(
        lambda s: cancel(s, {"idempotency_key": "a", "client_order_id": "b"}),
        400,
        "exactly one",
        id="cancel-both",
    ),
    pytest.param(
        lambda s: cancel(s, {"idempotency_key": 7}),
        400,
        "idempotency_key: Input should be a valid string",
        id="cancel-not-a-string",
    ),
    pytest.param(lambda s: raw_cancel(s, b"{not json"), 400, "not valid JSON", id="cancel-bad-json"),
    pytest.param(lambda s: raw_cancel(s, b'["a"]'), 400, "must be a JSON object", id="cancel-array"),
    pytest.param(
        lambda s: cancel(s, {"idempotency_key": "x" * 20_000}), 413, "over 16384 bytes", id="cancel-too-big"
    ),
    pytest.param(
        lambda s: requests.get(f"{s.orders_url}/cancel?idempotency_key=a", headers=auth(TRADER), timeout=30),
        405,
        "GET is not allowed; use POST",
        id="get-on-cancel",
    ),
    pytest.param(
        lambda s: requests.post(
            f"{s.orders_url}/", json={"idempotency_key": "a"}, headers=auth(TRADER), timeout=30
        ),
        405,
        "POST is not allowed; use GET",
        id="post-on-read",
    ),
    pytest.param(
        lambda s: requests.get(f"{s.orders_url}/nope", headers=auth(TRADER), timeout=30),
        404,
        "no route /nope",
        id="unknown-route",
    ),
    pytest.param(
        lambda s: cancel(s, {"idempotency_key": "never-sent"}), 404, "has no execution", id="cancel-unknown"
    ),
]


@pytest.mark.parametrize(("ask", "status", "reason"), BAD_REQUESTS)
def test_bad_requests_are_refused_with_a_reason_and_write_nothing(
    stack: Stack, fake: FakeAlpaca, ask: Any, status: int, reason: str
) -> None:
    before, calls = stack.written(), len(fake.log)

    response = ask(stack)

    assert response.status_code == status, response.text
    assert reason in response.json()["reason"]
    if status == 405:
        assert response.headers["Allow"] == ("POST" if "use POST" in reason else "GET")
    assert stack.written() == before
    assert len(fake.log) == calls  # the broker was not asked anything
