"""The settlement sweeper, through the real SDK at the local Alpaca server, on both stores, with
the engine's and the broker's clocks injected: orders settle with no delivery of their intent."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from backend.adapters.alpaca.broker import AlpacaBroker
from backend.adapters.alpaca.market_data import AlpacaMarketData
from backend.adapters.alpaca.settings import AlpacaSettings
from backend.core.intents import OrderIntent
from backend.core.order_lifecycle import OrderState
from backend.core.paths import client_order_id_for
from backend.core.reasons import ReasonCode
from backend.core.risk import RiskLimits
from backend.execution.engine import ExecutionEngine, ExecutionStatus, RiskManager, SmartRouter
from backend.execution.ports import ManualClock
from backend.execution.settings import ExecSettings, SweepLimits
from backend.execution.settlement_sweep import sweep_open_orders
from devtools.alpaca_simulator import FakeAlpaca, Fault, FillPlan, FillStep, StepAction, running

TENANT = "acme_corp"
T0 = datetime(2026, 3, 2, 15, 30, tzinfo=UTC)
SWEEP = SweepLimits(older_than=timedelta(seconds=60))


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def fake(clock: ManualClock) -> FakeAlpaca:
    fake = FakeAlpaca(clock=clock.now)
    fake.set_quote("AAPL", "189.99", "190.01")
    return fake


@pytest.fixture
def alpaca(fake: FakeAlpaca) -> Iterator[AlpacaSettings]:
    with running(fake) as url:
        yield AlpacaSettings(
            api_key_id="k", secret_key="s", trading_url=url, data_url=url, timeout_s=1, backoff_s=0.01,
            max_wait_s=0.05, lookup_grace_s=0.2, fill_polls=2, fill_poll_s=0.01, quote_ttl_s=0,
            trading_requests_per_minute=0,
        )  # fmt: skip


def engine(store: Any, alpaca: AlpacaSettings, clock: ManualClock, **settings: Any) -> ExecutionEngine:
    return ExecutionEngine(
        broker=AlpacaBroker(alpaca),
        router=SmartRouter(market_data=AlpacaMarketData(alpaca), clock=clock),
        risk=RiskManager(RiskLimits(max_position_qty=Decimal(1000), max_daily_trades=50)),
        dry_run=False,
        store=store,
        clock=clock,
        settings=ExecSettings(tenant_id=TENANT, uid="u1", **settings),
    )


def intent(key: str, qty: str = "10") -> OrderIntent:
    return OrderIntent(
        strategy_id="s", broker_account_id="acct", symbol="AAPL", side="buy", qty=qty, idempotency_key=key
    )


def plan(fake: FakeAlpaca, key: str, *steps: FillStep) -> None:
    fake.plans_by_client_id[client_order_id_for(TENANT, key)] = FillPlan("test", steps)


def figures(store: Any) -> tuple[int, Decimal, Decimal, int]:
    """(ledger rows, position, in flight, daily slots taken)."""
    exposure = store.get_exposure(TENANT, "default", "AAPL", T0.date().isoformat(), 50)
    rows = len(list(store.iter_ledger_trades(TENANT)))
    return (
        rows,
        exposure.position_qty,
        exposure.pending_buy_qty,
        store.daily_slots_taken(TENANT, T0.date().isoformat()),
    )


def state_of(store: Any, key: str) -> OrderState:
    return store.get_execution(TENANT, key).order.state  # type: ignore[no-any-return]


def test_an_order_accepted_now_and_filled_an_hour_later_is_recorded_by_the_sweeper(
    contract_store: Any, fake: FakeAlpaca, alpaca: AlpacaSettings, clock: ManualClock
) -> None:
    plan(fake, "late", FillStep(after_s=3600))
    placing = engine(contract_store, alpaca, clock)
    assert placing.execute_intent(intent("late")).order_state is OrderState.ACCEPTED
    clock.advance(timedelta(minutes=30))
    quiet = sweep_open_orders(placing, SWEEP, clock.now())
    assert (quiet.examined, quiet.unchanged, quiet.settled) == (1, 1, 0)
    assert figures(contract_store) == (0, 0, 10, 1)
    clock.advance(timedelta(minutes=31))  # the broker fills it at T0 + 1 h
    report = sweep_open_orders(placing, SWEEP, clock.now())
    assert (report.examined, report.settled) == (1, 1)
    assert state_of(contract_store, "late") is OrderState.FILLED
    [trade] = list(contract_store.iter_ledger_trades(TENANT))
    assert trade.executed_at == T0 + timedelta(hours=1)  # dated by the broker's fill
    assert figures(contract_store) == (1, 10, 0, 1)
    assert sweep_open_orders(placing, SWEEP, clock.now()).examined == 0  # nothing open any more


def test_partial_fills_spread_over_several_sweeps_are_one_row_each(
    contract_store: Any, fake: FakeAlpaca, alpaca: AlpacaSettings, clock: ManualClock
) -> None:
    plan(
        fake, "slices",
        FillStep(fraction=Decimal("0.3"), after_s=600), FillStep(fraction=Decimal("0.3"), after_s=1200),
        FillStep(after_s=1800),
    )  # fmt: skip
    placing = engine(contract_store, alpaca, clock)
    placing.execute_intent(intent("slices"))
    states = []
    for _ in range(3):
        clock.advance(timedelta(minutes=10, seconds=1))
        sweep_open_orders(placing, SWEEP, clock.now())
        states.append(state_of(contract_store, "slices"))
    assert states == [OrderState.PARTIALLY_FILLED, OrderState.PARTIALLY_FILLED, OrderState.FILLED]
    trades = list(contract_store.iter_ledger_trades(TENANT))
    assert sorted(t.filled_qty for t in trades) == [3, 3, 4]
    assert len({t.trade_id for t in trades}) == 3
    order_id = contract_store.get_execution(TENANT, "slices").order.broker_order_id
    assert sum((t.notional for t in trades), Decimal(0)) == sum(
        f.qty * f.price for f in fake.fills_of(order_id)
    )
    assert figures(contract_store) == (3, 10, 0, 1)


@pytest.mark.parametrize(
    ("step", "final", "leaves"),
    [
        (FillStep(StepAction.CANCEL, after_s=900), OrderState.CANCELED, "canceled by the broker"),
        (FillStep(StepAction.EXPIRE, after_s=900), OrderState.EXPIRED, "its time in force ran out"),
    ],
)
def test_a_cancel_or_an_expiration_at_the_broker_gives_back_what_did_not_fill(
    contract_store: Any, fake: FakeAlpaca, alpaca: AlpacaSettings, clock: ManualClock, step: FillStep,
    final: OrderState, leaves: str,
) -> None:  # fmt: skip
    plan(fake, "ends", FillStep(fraction=Decimal("0.4")), step)
    placing = engine(contract_store, alpaca, clock)
    assert placing.execute_intent(intent("ends")).order_state is OrderState.PARTIALLY_FILLED
    assert figures(contract_store) == (1, 4, 6, 1)
    clock.advance(timedelta(minutes=16))
    assert sweep_open_orders(placing, SWEEP, clock.now()).settled == 1, leaves
    assert state_of(contract_store, "ends") is final
    assert figures(contract_store) == (1, 4, 0, 1)  # the 6 that never filled are no longer in flight


@pytest.mark.parametrize("ttl", [3600.0, 60.0], ids=["sent-again", "released"])
def test_an_order_the_broker_never_got_is_settled_by_the_sweeper(
    contract_store: Any, fake: FakeAlpaca, alpaca: AlpacaSettings, clock: ManualClock, ttl: float
) -> None:
    # The send failed before the broker created anything, and the lookups right after failed too:
    # the order is unknown. After the reconcile window the sweeper finds it absent.
    fake.faults.append(Fault("POST", "/v2/orders", status=503))
    fake.faults.extend(Fault("GET", "/v2/orders:by_client_order_id", status=503) for _ in range(40))
    placing = engine(contract_store, alpaca, clock, intent_ttl_seconds=ttl, reconcile_after_seconds=60)
    assert placing.execute_intent(intent("lost")).status is ExecutionStatus.UNKNOWN
    fake.faults.clear()
    clock.advance(timedelta(minutes=2))
    report = sweep_open_orders(placing, SWEEP, clock.now())
    assert report.examined == 1
    stored = contract_store.get_execution(TENANT, "lost")
    if ttl > 120:  # still fresh: sent again under the same client order id
        assert stored.order.state is OrderState.FILLED
        assert len(fake.orders) == 1
        assert figures(contract_store) == (1, 10, 0, 1)
    else:
        assert (stored.order.state, stored.order.reason_code) == (
            OrderState.FAILED,
            ReasonCode.INTENT_EXPIRED,
        )
        assert len(fake.orders) == 0
        assert figures(contract_store) == (0, 0, 0, 0)


def test_a_sweep_is_bounded_and_continues_from_its_cursor(
    store: Any, fake: FakeAlpaca, alpaca: AlpacaSettings, clock: ManualClock
) -> None:
    placing = engine(store, alpaca, clock)
    for index in range(5):
        plan(fake, f"r{index}", FillStep(after_s=100_000))
        placing.execute_intent(intent(f"r{index}", qty="1"))
        clock.advance(timedelta(seconds=1))
    clock.advance(timedelta(minutes=5))
    bounded = SweepLimits(older_than=timedelta(seconds=60), max_orders=2, page_size=2)
    runs = [sweep_open_orders(placing, bounded, clock.now()) for _ in range(3)]
    assert [r.examined for r in runs] == [2, 2, 1]
    assert [r.exhausted for r in runs] == ["orders", "orders", ""]
    assert runs[2].finished_pass
    assert store.get_ops_state("settlement_sweep")["cursor"] is None  # the next pass starts from the oldest
    assert sweep_open_orders(placing, bounded, clock.now()).examined == 2


def test_two_sweepers_and_a_delivery_at_once_settle_each_order_once(
    contract_store: Any, fake: FakeAlpaca, alpaca: AlpacaSettings, clock: ManualClock
) -> None:
    # Six orders: three rest and fill later, three lost their send's answer (the order exists).
    placing = engine(contract_store, alpaca, clock)
    keys = [f"c{index}" for index in range(6)]
    for key in keys[:3]:
        plan(fake, key, FillStep(after_s=600))
        placing.execute_intent(intent(key, qty="2"))
    for key in keys[3:]:
        fake.faults.append(Fault("POST", "/v2/orders", status=503, then_process=True))
        fake.faults.extend(Fault("GET", "/v2/orders:by_client_order_id", status=503) for _ in range(40))
        assert placing.execute_intent(intent(key, qty="2")).status is ExecutionStatus.UNKNOWN
        fake.faults.clear()
    clock.advance(timedelta(minutes=11))
    workers = [engine(contract_store, alpaca, clock) for _ in range(3)]
    barrier = threading.Barrier(3)
    failures: list[BaseException] = []

    def run(index: int) -> None:
        barrier.wait(30)
        try:
            if index < 2:
                sweep_open_orders(workers[index], SWEEP, clock.now())
            else:
                for key in keys:
                    workers[index].execute_intent(intent(key, qty="2"))
        except BaseException as exc:  # noqa: BLE001 - reported to the test below
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert failures == []
    assert {state_of(contract_store, key) for key in keys} == {OrderState.FILLED}
    assert len(fake.orders) == 6
    assert figures(contract_store) == (6, 12, 0, 6)  # one row per fill, nothing held twice
