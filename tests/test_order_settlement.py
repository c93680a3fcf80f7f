"""Recording exactly once, through the real SDK at the local Alpaca server, on both stores: a
worker that dies after the claim or after the broker accepted, a store error after the broker
accepted, two deliveries settling one order at once, an order that rests and fills later."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from backend.adapters.alpaca.broker import AlpacaBroker
from backend.adapters.alpaca.market_data import AlpacaMarketData
from backend.adapters.alpaca.settings import AlpacaSettings
from backend.core.intents import OrderIntent
from backend.core.order_lifecycle import OrderState
from backend.core.orders import BrokerOrder, OrderRequest
from backend.core.paths import client_order_id_for
from backend.core.reasons import ReasonCode
from backend.core.risk import RiskLimits
from backend.execution.engine import ExecutionEngine, ExecutionStatus, RiskManager, SmartRouter
from backend.execution.ports import SystemClock
from backend.execution.settings import ExecSettings
from devtools.alpaca_simulator import FakeAlpaca, Fault, running

TENANT = "acme_corp"
ORDERS = "/v2/orders"


class Crash(BaseException):
    """The worker dies here: nothing after this line of the engine runs."""


@pytest.fixture
def fake() -> FakeAlpaca:
    fake = FakeAlpaca()
    fake.set_quote("AAPL", "189.99", "190.01")
    return fake


@pytest.fixture
def alpaca(fake: FakeAlpaca) -> Iterator[AlpacaSettings]:
    with running(fake) as url:
        yield AlpacaSettings(
        trading_requests_per_minute=0,  # not what this is about: the pace has its own test
            api_key_id="k", secret_key="s", trading_url=url, data_url=url, timeout_s=1, backoff_s=0.01,
            max_wait_s=0.05, lookup_grace_s=0.2, fill_polls=2, fill_poll_s=0.01, quote_ttl_s=0,
        )  # fmt: skip


def engine(store: Any, alpaca: AlpacaSettings, broker: Any = None, **settings: Any) -> ExecutionEngine:
    options = {"lease_seconds": 0.05, "reconcile_after_seconds": 0, **settings}
    return ExecutionEngine(
        broker=broker or AlpacaBroker(alpaca),
        router=SmartRouter(market_data=AlpacaMarketData(alpaca)),
        risk=RiskManager(RiskLimits(max_position_qty=Decimal(1000), max_daily_trades=5)),
        dry_run=False,
        store=store,
        clock=SystemClock(),
        settings=ExecSettings(tenant_id=TENANT, uid="u1", **options),
    )


def intent(key: str = "k1", qty: str = "10") -> OrderIntent:
    return OrderIntent(
        strategy_id="s",
        broker_account_id="alpaca_main",
        symbol="AAPL",
        side="buy",
        qty=qty,
        idempotency_key=key,
    )


class DiesAt(AlpacaBroker):
    """The real adapter, in a worker that dies before or after the broker call."""

    def __init__(self, settings: AlpacaSettings, after_send: bool) -> None:
        super().__init__(settings)
        self.after_send = after_send

    def submit_order(self, request: OrderRequest) -> BrokerOrder:
        if not self.after_send:
            raise Crash("killed after the claim")
        super().submit_order(request)
        raise Crash("killed after the broker accepted")


def settle_later(store: Any, alpaca: AlpacaSettings, key: str = "k1", **settings: Any) -> Any:
    """Another worker delivers the intent again once the first one's lease has run out."""
    threading.Event().wait(0.1)
    return engine(store, alpaca, **settings).execute_intent(intent(key))


def totals(store: Any) -> tuple[int, Decimal, Decimal, int]:
    """(ledger rows, position, in flight, daily slots taken)."""
    exposure = store.get_exposure(TENANT, "default", "AAPL", datetime.now(UTC).date().isoformat(), 5)
    rows = len(list(store.iter_ledger_trades(TENANT)))
    return (
        rows,
        exposure.position_qty,
        exposure.pending_buy_qty,
        store.daily_slots_taken(TENANT, datetime.now(UTC).date().isoformat()),
    )


@pytest.mark.parametrize("after_send", [False, True], ids=["killed-after-claim", "killed-after-accept"])
def test_a_worker_killed_mid_order_is_settled_by_the_next_delivery(
    contract_store: Any, fake: FakeAlpaca, alpaca: AlpacaSettings, after_send: bool
) -> None:
    with pytest.raises(Crash):
        engine(contract_store, alpaca, DiesAt(alpaca, after_send)).execute_intent(intent())
    stored = contract_store.get_execution(TENANT, "k1")
    assert stored.order.state is OrderState.CLAIMED
    assert totals(contract_store) == (0, 0, 10, 1)  # held, not leaked

    settled = settle_later(contract_store, alpaca)
    assert (settled.status, settled.order_state) == (ExecutionStatus.PLACED, OrderState.FILLED)
    assert settled.client_order_id == client_order_id_for(TENANT, "k1")
    assert len(fake.orders) == 1  # sent once after the claim-only death, never twice
    assert fake.requests_to("POST", ORDERS) == 1
    assert totals(contract_store) == (1, 10, 0, 1)


def test_a_store_error_after_the_broker_accepted_is_settled_by_the_next_delivery(
    contract_store: Any, fake: FakeAlpaca, alpaca: AlpacaSettings
) -> None:
    failing = engine(contract_store, alpaca)
    real_commit = contract_store.commit_order

    def commit_fails(update: Any) -> Any:
        raise RuntimeError("Failed to commit transaction in 5 attempts")

    contract_store.commit_order = commit_fails
    with pytest.raises(RuntimeError, match="5 attempts"):
        failing.execute_intent(intent())
    contract_store.commit_order = real_commit
    assert len(fake.orders) == 1
    assert totals(contract_store) == (0, 0, 10, 1)
    settled = settle_later(contract_store, alpaca)
    assert settled.status is ExecutionStatus.PLACED
    assert len(fake.orders) == 1
    assert totals(contract_store) == (1, 10, 0, 1)


@pytest.mark.parametrize("at_broker", [True, False], ids=["found-at-broker", "never-placed"])
def test_two_deliveries_settling_one_lost_order_settle_it_once(
    contract_store: Any, fake: FakeAlpaca, alpaca: AlpacaSettings, at_broker: bool
) -> None:
    # The send's answer is lost (the order exists, or nothing was created) and so are the lookups
    # right after it; both later deliveries find the lease expired and settle at the same moment.
    fake.faults.append(Fault("POST", ORDERS, status=503, body="unavailable", then_process=at_broker))
    fake.faults.extend(Fault("GET", "/v2/orders:by_client_order_id", status=503) for _ in range(60))
    first = engine(contract_store, alpaca, intent_ttl_seconds=0.01).execute_intent(intent())
    assert first.status is ExecutionStatus.UNKNOWN
    fake.faults.clear()
    threading.Event().wait(0.1)
    engines = [engine(contract_store, alpaca, intent_ttl_seconds=0.01) for _ in range(2)]
    barrier = threading.Barrier(2)
    results: list[Any] = []

    def deliver(index: int) -> None:
        barrier.wait(30)
        results.append(engines[index].execute_intent(intent()))

    threads = [threading.Thread(target=deliver, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(results) == 2
    # The loser of the race answers what it saw (in flight, or already settled); nothing is
    # recorded or given back twice (a second release of the slot would raise).
    final = engine(contract_store, alpaca).execute_intent(intent())
    assert final.replayed
    if at_broker:
        assert final.status is ExecutionStatus.PLACED
        assert ExecutionStatus.PLACED in {r.status for r in results}
        assert totals(contract_store) == (1, 10, 0, 1)
    else:  # proven absent, too old to send again: released exactly once
        assert final.reason_code is ReasonCode.INTENT_EXPIRED
        assert ReasonCode.INTENT_EXPIRED in {r.reason_code for r in results}
        assert totals(contract_store) == (0, 0, 0, 0)
    assert len(fake.orders) == (1 if at_broker else 0)


def test_an_order_that_rests_is_recorded_when_it_fills(
    contract_store: Any, fake: FakeAlpaca, alpaca: AlpacaSettings
) -> None:
    fake.fill, fake.polls_to_fill = "new", 5  # beyond the request's bounded wait (2 polls)
    placing = engine(contract_store, alpaca)
    first = placing.execute_intent(intent())
    assert (first.status, first.order_state) == (ExecutionStatus.PLACED, OrderState.ACCEPTED)
    assert totals(contract_store) == (0, 0, 10, 1)
    later = placing.execute_intent(intent())  # the broker has not filled it yet
    assert later.order_state is OrderState.ACCEPTED
    assert totals(contract_store) == (0, 0, 10, 1)
    for _ in range(fake.polls_to_fill):  # meanwhile the market moves and the broker fills it
        fake.get_order(first.broker_order_id or "")
    result = placing.execute_intent(intent())
    assert (result.status, result.order_state) == (ExecutionStatus.PLACED, OrderState.FILLED)
    assert len(result.trade_ids) == 1
    assert totals(contract_store) == (1, 10, 0, 1)
    again = placing.execute_intent(intent())
    assert again.replayed
    assert totals(contract_store) == (1, 10, 0, 1)


def test_a_resting_order_is_canceled_through_the_broker_and_settled_from_its_report(
    contract_store: Any, fake: FakeAlpaca, alpaca: AlpacaSettings
) -> None:
    fake.fill, fake.polls_to_fill = "new", 1000
    placing = engine(contract_store, alpaca)
    resting = placing.execute_intent(intent())
    assert resting.order_state is OrderState.ACCEPTED
    outcome = placing.cancel(contract_store.get_execution(TENANT, "k1"))
    assert outcome.requested
    assert (outcome.result.status, outcome.result.reason_code) == (
        ExecutionStatus.FAILED,
        ReasonCode.ORDER_CANCELED,
    )
    assert outcome.result.order_state is OrderState.CANCELED
    assert fake.order_for(resting.client_order_id or "")["status"] == "canceled"
    assert totals(contract_store) == (0, 0, 0, 1)  # nothing in flight; it was placed: the slot stays
    again = placing.cancel(contract_store.get_execution(TENANT, "k1"))
    assert (again.requested, again.reason_code) == (False, ReasonCode.ORDER_NOT_CANCELABLE)
    assert "canceled" in again.reason
