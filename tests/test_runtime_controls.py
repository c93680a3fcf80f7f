"""Runtime controls: the pure rules (only tighten, any kill switch stops, exact shard capacities),
the store contract on both stores (a flip and its audit record in one commit, the order-rate limit
exact under concurrency), the engine honouring a flip within the cache bound (an injected clock
moved past the bound, never a wait), and kill switches canceling resting orders at the local
Alpaca server, by the operator's command and by the settlement sweeper."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backend.adapters.alpaca.broker import AlpacaBroker
from backend.adapters.alpaca.market_data import AlpacaMarketData
from backend.adapters.alpaca.settings import AlpacaSettings
from backend.adapters.controls_store import FirestoreControlsStore, SQLiteControlsStore
from backend.adapters.market_data import StaticMarketData
from backend.core.controls import (
    RATE_SHARDS,
    ControlAction,
    ControlLimit,
    ControlRefused,
    ControlState,
    RuntimeControls,
    effective_limits,
    minute_bucket,
    parse_limit_value,
    plan_flip,
    shard_capacity,
)
from backend.core.instruments import AssetClass
from backend.core.intents import OrderIntent
from backend.core.order_lifecycle import OrderState
from backend.core.reasons import ReasonCode
from backend.core.risk import RiskLimits
from backend.execution.engine import ExecutionEngine, ExecutionStatus, RiskManager, SmartRouter
from backend.execution.ports import ManualClock, SystemClock
from backend.execution.runtime_controls import CachedControls, cancel_resting_orders, flip_controls
from backend.execution.settings import ExecSettings, SweepLimits
from backend.execution.settlement_sweep import sweep_open_orders
from devtools.alpaca_simulator import FakeAlpaca, running
from tests.conftest import T0, CountingBroker

TENANT = "acme_corp"
OTHER = "globex"
BOUND = timedelta(seconds=5)
DEPLOYMENT = RiskLimits(
    max_position_qty=Decimal(100),
    max_position_qty_by_asset_class={AssetClass.FOREX: Decimal(1_000_000)},
    max_daily_trades=50,
)


def flip(store: Any, tenant: str | None, action: ControlAction, **options: Any) -> Any:
    return flip_controls(store, tenant, action, "ops@firm", f"{action.value} for the test", T0, **options)


# -- the pure rules -------------------------------------------------------------------------------


def test_an_override_tightens_and_never_widens_the_deployments_limits() -> None:
    tighter = ControlState(
        limits={ControlLimit.MAX_POSITION_QTY: Decimal(10), ControlLimit.MAX_DAILY_TRADES: 3}
    )
    wider = ControlState(
        limits={ControlLimit.MAX_POSITION_QTY: Decimal(10**9), ControlLimit.MAX_DAILY_TRADES: 999}
    )
    limits = effective_limits(RuntimeControls(TENANT, tenant_state=tighter), DEPLOYMENT).risk
    assert (limits.max_position_qty, limits.max_daily_trades) == (10, 3)
    assert limits.max_position_qty_by_asset_class[AssetClass.FOREX] == 10
    stored_wider = effective_limits(RuntimeControls(TENANT, global_state=wider), DEPLOYMENT).risk
    assert (stored_wider.max_position_qty, stored_wider.max_daily_trades) == (100, 50)
    assert stored_wider.max_position_qty_by_asset_class[AssetClass.FOREX] == 1_000_000
    both = effective_limits(RuntimeControls(TENANT, global_state=tighter, tenant_state=wider), DEPLOYMENT)
    assert both.risk.max_daily_trades == 3  # the tighter of global and tenant


def test_setting_a_wider_limit_is_refused_and_a_flip_needs_an_author_and_a_reason() -> None:
    def set_daily(value: int) -> Any:
        daily = ControlLimit.MAX_DAILY_TRADES
        return plan_flip(TENANT, ControlState(), ControlAction.SET_LIMIT, "ops", "why", T0,
                         limit=daily, value=Decimal(value), deployment=DEPLOYMENT)  # fmt: skip

    with pytest.raises(ControlRefused, match="would widen the deployment's limit 50"):
        set_daily(51)
    audit = set_daily(50)
    assert audit.after.limits == {ControlLimit.MAX_DAILY_TRADES: 50}
    for by, reason in (("", "why"), ("ops", "  "), ("x" * 201, "why")):
        with pytest.raises(ControlRefused):
            plan_flip(TENANT, ControlState(), ControlAction.KILL, by, reason, T0)
    for text in ("1e3", "-1", "1.5", " ", "NaN", "9" * 21):
        with pytest.raises(ControlRefused):
            parse_limit_value(ControlLimit.MAX_ORDERS_PER_MINUTE, text)
    assert parse_limit_value(ControlLimit.MAX_ORDER_NOTIONAL, "2500.50") == Decimal("2500.50")


def test_any_engaged_kill_switch_stops_the_tenant_and_resuming_one_lifts_no_other() -> None:
    killed = plan_flip(TENANT, ControlState(), ControlAction.KILL, "ops", "incident 7", T0).after
    assert killed.kill_switch
    assert killed.version == 1
    assert RuntimeControls(TENANT).kill_reason() is None
    assert "incident 7" in (RuntimeControls(TENANT, global_state=killed).kill_reason() or "")
    assert "incident 7" in (RuntimeControls(TENANT, tenant_state=killed).kill_reason() or "")
    assert RuntimeControls(TENANT, deployment_kill_switch=True).kill_reason() is not None
    resumed = plan_flip(TENANT, killed, ControlAction.RESUME, "ops", "over", T0).after
    assert RuntimeControls(TENANT, global_state=killed, tenant_state=resumed).kill_reason() is not None
    floor = effective_limits(RuntimeControls(TENANT), RiskLimits(kill_switch=True))
    assert floor.kill_reason
    assert "EXEC_KILL_SWITCH" in floor.kill_reason


@given(st.integers(0, 5000), st.integers(0, 5000))
def test_shard_capacities_sum_to_the_limit_and_grow_with_it(low: int, high: int) -> None:
    low, high = sorted((low, high))
    assert sum(shard_capacity(high, shard) for shard in range(RATE_SHARDS)) == high
    assert all(shard_capacity(low, s) <= shard_capacity(high, s) for s in range(RATE_SHARDS))
    # Counts bounded by each shard's capacity under any limit seen in a minute never pass the largest.
    assert sum(max(shard_capacity(low, s), shard_capacity(high, s)) for s in range(RATE_SHARDS)) == high


# -- the store contract, on both stores ---------------------------------------------------------


@pytest.fixture(params=["sqlite", "firestore"])
def controls_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "sqlite":
        store = SQLiteControlsStore(tmp_path / "ledger.sqlite3")
        yield store
        store.close()
        return
    yield FirestoreControlsStore(request.getfixturevalue("firestore_client"))


def test_a_flip_and_its_audit_record_are_one_commit(controls_store: Any) -> None:
    assert controls_store.read_controls(TENANT) == ControlState()
    killed = flip(controls_store, TENANT, ControlAction.KILL)
    limited = flip(controls_store, TENANT, ControlAction.SET_LIMIT, limit=ControlLimit.MAX_ORDER_NOTIONAL,
                   value=Decimal("1000.50"))  # fmt: skip
    state = controls_store.read_controls(TENANT)
    assert state.kill_switch
    assert state.limits == {ControlLimit.MAX_ORDER_NOTIONAL: Decimal("1000.50")}
    assert (state.version, state.updated_by, state.updated_at) == (2, "ops@firm", T0)
    assert controls_store.read_controls(None) == ControlState()  # the global scope is another document
    assert controls_store.read_controls(OTHER) == ControlState()
    assert controls_store.audit_records(TENANT) == [limited, killed]  # newest first, read back exactly
    assert (killed.before.kill_switch, killed.after.kill_switch, killed.by) == (False, True, "ops@firm")

    def refuses(before: ControlState) -> Any:
        raise ControlRefused("no")

    with pytest.raises(ControlRefused):
        controls_store.flip(TENANT, refuses)
    assert controls_store.read_controls(TENANT) == state
    assert len(controls_store.audit_records(TENANT)) == 2
    glob = flip(controls_store, None, ControlAction.KILL)
    assert controls_store.audit_records(None) == [glob]
    assert controls_store.read_controls(None).kill_switch


def test_the_order_rate_limit_is_exact_under_concurrent_claims(controls_store: Any) -> None:
    firestore = isinstance(controls_store, FirestoreControlsStore)
    limit, threads, attempts = (3, 2, 3) if firestore else (7, 4, 4)  # emulator contention is slow
    minute = minute_bucket(T0)
    taken: list[int | None] = []
    lock = threading.Lock()

    def claim(worker: int) -> None:
        for attempt in range(attempts):
            shard = controls_store.take_rate_slot(TENANT, minute, limit, f"k-{worker}-{attempt}")
            with lock:
                taken.append(shard)

    workers = [threading.Thread(target=claim, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert sum(shard is not None for shard in taken) == limit
    assert controls_store.rate_slots_taken(TENANT, minute) == limit
    assert controls_store.take_rate_slot(TENANT, minute, limit, "late") is None
    later = minute_bucket(T0 + timedelta(minutes=1))  # a new minute counts afresh
    assert controls_store.take_rate_slot(TENANT, later, limit, "next") is not None
    assert controls_store.take_rate_slot(OTHER, minute, limit, "other") is not None  # per tenant


# -- the engine: a flip takes effect within the cache bound, on both stores ----------------------


@pytest.fixture
def ledger(request: pytest.FixtureRequest, controls_store: Any, tmp_path: Path) -> Iterator[Any]:
    """The execution store on the same backend as ``controls_store``."""
    if isinstance(controls_store, SQLiteControlsStore):
        from backend.adapters.sqlite_store import SQLiteExecutionStore

        store = SQLiteExecutionStore(tmp_path / "ledger.sqlite3")
        yield store
        store.close()
        return
    from backend.adapters.firestore_store import FirestoreExecutionStore

    yield FirestoreExecutionStore(request.getfixturevalue("firestore_client"))


def paper_engine(ledger: Any, controls: CachedControls, broker: Any, market: Any, clock: ManualClock) -> Any:
    return ExecutionEngine(
        broker=broker,
        router=SmartRouter(market_data=market, clock=clock),
        risk=RiskManager(DEPLOYMENT),
        dry_run=False,
        store=ledger,
        clock=clock,
        settings=ExecSettings(tenant_id=TENANT, uid="u1"),
        controls=controls,
    )


def aapl(key: str, qty: str = "1", tenant: str = TENANT) -> OrderIntent:
    return OrderIntent(strategy_id="s", broker_account_id="acct", symbol="AAPL", side="buy", qty=qty,
                       idempotency_key=key, metadata={"tenant_id": tenant})  # fmt: skip


def test_a_kill_flip_stops_the_tenant_within_the_cache_bound_and_a_resume_restarts_it(
    controls_store: Any, ledger: Any, clock: ManualClock, market: StaticMarketData, broker: CountingBroker
) -> None:
    engine = paper_engine(ledger, CachedControls(controls_store, clock, BOUND), broker, market, clock)
    assert engine.execute_intent(aapl("before")).status is ExecutionStatus.PLACED
    flip(controls_store, TENANT, ControlAction.KILL)
    clock.advance(BOUND - timedelta(microseconds=1))  # still what this instance read: at most the bound
    market.set_quote("AAPL", "189.99", "190.01")
    assert engine.execute_intent(aapl("cached")).status is ExecutionStatus.PLACED
    clock.advance(timedelta(microseconds=1))  # the bound has passed: the flip is in force
    sent = len(broker.calls)
    killed = engine.execute_intent(aapl("after"))
    assert (killed.status, killed.reason_code) == (ExecutionStatus.REJECTED, ReasonCode.KILL_SWITCH)
    assert "kill for the test" in killed.reason
    assert engine.execute_intent(aapl("other", tenant=OTHER)).status is ExecutionStatus.PLACED
    assert len(broker.calls) == sent + 1  # only the other tenant's order was sent
    flip(controls_store, TENANT, ControlAction.RESUME)
    clock.advance(BOUND)
    market.set_quote("AAPL", "189.99", "190.01")
    assert engine.execute_intent(aapl("resumed")).status is ExecutionStatus.PLACED


def test_a_global_kill_and_tightened_limits_take_effect_within_the_bound(
    controls_store: Any, ledger: Any, clock: ManualClock, market: StaticMarketData, broker: CountingBroker
) -> None:
    engine = paper_engine(ledger, CachedControls(controls_store, clock, BOUND), broker, market, clock)
    assert engine.execute_intent(aapl("warm")).status is ExecutionStatus.PLACED  # the cache is filled
    flip(controls_store, TENANT, ControlAction.SET_LIMIT, limit=ControlLimit.MAX_ORDER_NOTIONAL,
         value=Decimal(1000), deployment=DEPLOYMENT)  # fmt: skip
    flip(controls_store, TENANT, ControlAction.SET_LIMIT, limit=ControlLimit.MAX_ORDERS_PER_MINUTE,
         value=Decimal(2))  # fmt: skip
    clock.advance(BOUND)
    market.set_quote("AAPL", "189.99", "190.01")
    big = engine.execute_intent(aapl("big", qty="6"))  # 6 x 190.01 = 1140.06 > 1000
    assert (big.status, big.reason_code) == (ExecutionStatus.REJECTED, ReasonCode.ORDER_NOTIONAL_LIMIT)
    results = [engine.execute_intent(aapl(f"small-{n}")) for n in range(3)]
    assert [r.status for r in results[:2]] == [ExecutionStatus.PLACED] * 2
    assert (results[2].status, results[2].reason_code) == (ExecutionStatus.REJECTED, ReasonCode.RATE_LIMIT)
    flip(controls_store, None, ControlAction.KILL)
    clock.advance(timedelta(minutes=1))  # a new minute: the rate limit would let it through
    market.set_quote("AAPL", "189.99", "190.01")
    stopped = engine.execute_intent(aapl("global", tenant=OTHER))
    assert (stopped.status, stopped.reason_code) == (ExecutionStatus.REJECTED, ReasonCode.KILL_SWITCH)
    assert "globally" in stopped.reason


class Crash(BaseException):
    """The worker dies here, after the claim and before the broker call."""


def test_an_order_claimed_and_never_sent_is_released_not_sent_once_the_tenant_is_killed(
    controls_store: Any, ledger: Any, clock: ManualClock, market: StaticMarketData, broker: CountingBroker
) -> None:
    def dies(request: Any) -> Any:
        raise Crash

    engine = paper_engine(ledger, CachedControls(controls_store, clock, BOUND), broker, market, clock)
    original, broker.submit_order = broker.submit_order, dies  # type: ignore[method-assign]
    with pytest.raises(Crash):
        engine.execute_intent(aapl("lost"))
    broker.submit_order = original  # type: ignore[method-assign]
    flip(controls_store, TENANT, ControlAction.KILL)
    clock.advance(timedelta(seconds=engine.settings.lease_seconds + engine.settings.reconcile_after_seconds))
    market.set_quote("AAPL", "189.99", "190.01")
    settled = engine.execute_intent(aapl("lost"))  # the intent's next delivery settles it
    assert (settled.reason_code, settled.order_state) == (ReasonCode.KILL_SWITCH, OrderState.FAILED)
    assert broker.calls == []
    exposure = ledger.get_exposure(TENANT, "acct", "AAPL", T0.date().isoformat(), 50)
    assert exposure.pending_buy_qty == 0


def test_unreadable_controls_stop_trading_rather_than_lift_the_switches(
    clock: ManualClock, market: StaticMarketData, broker: CountingBroker, store: Any
) -> None:
    class Broken(SQLiteControlsStore):
        def read_controls(self, tenant_id: str | None) -> ControlState:
            raise OSError("disk gone")

    controls = CachedControls(Broken(":memory:"), clock, BOUND)
    result = paper_engine(store, controls, broker, market, clock).execute_intent(aapl("k"))
    assert (result.reason_code, broker.calls) == (ReasonCode.KILL_SWITCH, [])


# -- kill switches cancel resting orders at the local Alpaca server ------------------------------


@pytest.fixture
def fake() -> FakeAlpaca:
    fake = FakeAlpaca()
    fake.set_quote("AAPL", "189.99", "190.01")
    fake.fill, fake.polls_to_fill = "new", 1000  # orders rest until a test says otherwise
    return fake


@pytest.fixture
def alpaca(fake: FakeAlpaca) -> Iterator[AlpacaSettings]:
    with running(fake) as url:
        yield AlpacaSettings(
            trading_requests_per_minute=0, api_key_id="k", secret_key="s", trading_url=url, data_url=url,
            timeout_s=1, backoff_s=0.01, max_wait_s=0.05, lookup_grace_s=0.2, fill_polls=1, fill_poll_s=0.01,
            quote_ttl_s=0,
        )  # fmt: skip


def alpaca_engine(ledger: Any, controls_store: Any, alpaca: AlpacaSettings) -> ExecutionEngine:
    return ExecutionEngine(
        broker=AlpacaBroker(alpaca),
        router=SmartRouter(market_data=AlpacaMarketData(alpaca)),
        risk=RiskManager(DEPLOYMENT),
        dry_run=False,
        store=ledger,
        clock=SystemClock(),
        settings=ExecSettings(tenant_id=TENANT, uid="u1", lease_seconds=0.05, reconcile_after_seconds=0),
        controls=CachedControls(controls_store, SystemClock(), timedelta(0)),  # read at every use
    )


def status_at(fake: FakeAlpaca, result: Any) -> str:
    return str(fake.order_for(result.client_order_id)["status"])  # type: ignore[index]


def test_engaging_a_kill_switch_cancels_the_tenants_resting_orders_at_the_broker(
    controls_store: Any, ledger: Any, fake: FakeAlpaca, alpaca: AlpacaSettings
) -> None:
    engine = alpaca_engine(ledger, controls_store, alpaca)
    ours = [engine.execute_intent(aapl(f"rest-{n}")) for n in range(2)]
    theirs = engine.execute_intent(aapl("rest-other", tenant=OTHER))
    assert {r.order_state for r in [*ours, theirs]} == {OrderState.ACCEPTED}

    flip(controls_store, TENANT, ControlAction.KILL)
    report = cancel_resting_orders(engine, TENANT)

    assert (report.examined, report.requested, report.errors, report.not_canceled) == (2, 2, 0, [])
    assert [status_at(fake, r) for r in ours] == ["canceled", "canceled"]
    assert status_at(fake, theirs) == "accepted"  # another tenant's order is left alone
    for result in ours:  # the lifecycle knows it from the broker's report: nothing left in flight
        stored = ledger.get_execution(TENANT, result.idempotency_key)
        assert stored.order.state is OrderState.CANCELED
    exposure = ledger.get_exposure(TENANT, "acct", "AAPL", T0.date().isoformat(), 50)
    assert exposure.pending_buy_qty == 0
    orders_before = fake.requests_to("POST", "/v2/orders")
    refused = engine.execute_intent(aapl("after-kill"))
    assert refused.reason_code is ReasonCode.KILL_SWITCH
    assert fake.requests_to("POST", "/v2/orders") == orders_before  # nothing sent

    flip(controls_store, None, ControlAction.KILL)
    everyone = cancel_resting_orders(engine, None)
    assert (everyone.requested, status_at(fake, theirs)) == (1, "canceled")


def test_the_sweeper_cancels_resting_orders_of_a_killed_tenant_it_meets(
    controls_store: Any, ledger: Any, fake: FakeAlpaca, alpaca: AlpacaSettings
) -> None:
    engine = alpaca_engine(ledger, controls_store, alpaca)
    ours = engine.execute_intent(aapl("rest"))
    theirs = engine.execute_intent(aapl("rest-other", tenant=OTHER))
    flip(controls_store, TENANT, ControlAction.KILL)
    limits = SweepLimits(older_than=timedelta(0), max_orders=10, max_seconds=60)
    report = sweep_open_orders(engine, limits, SystemClock().now() + timedelta(seconds=1))
    assert report.canceled_killed == 1
    assert (status_at(fake, ours), status_at(fake, theirs)) == ("canceled", "accepted")
    assert ledger.get_execution(TENANT, ours.idempotency_key).order.state is OrderState.CANCELED
