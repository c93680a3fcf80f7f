"""The ExecutionStore contract, run against both adapters: the embedded SQLite store and Firestore
(on Google's emulator). Same calls, same answers."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from backend.adapters.market_data import StaticMarketData
from backend.core.intents import OrderIntent
from backend.core.ledger import build_fill_trade
from backend.core.order_lifecycle import (
    BrokerReport,
    Lease,
    OrderState,
    Refusal,
    Released,
    SubmitSent,
    SubmitUnknown,
    apply,
    claimed_order,
    transition_effects,
)
from backend.core.orders import BrokerOrder, BrokerOrderStatus, ExecutionResult, ExecutionStatus
from backend.core.paths import client_order_id_for
from backend.core.reasons import ReasonCode
from backend.core.risk import Exposure, RiskDecision, RiskLimits, check_risk
from backend.core.routing import RoutingPolicy, decide_route
from backend.execution.ports import (
    ClaimOutcome,
    LedgerIntegrityError,
    ManualClock,
    OrderCursor,
    OrderUpdate,
    StoredExecution,
)
from tests.conftest import T0, EngineFactory

TENANT = "acme_corp"
DAY = T0.date().isoformat()


@pytest.fixture
def store(contract_store: Any) -> Any:
    """Overrides the SQLite-only fixture: this module, and the engines built here, use both."""
    return contract_store


def make_intent(key: str, qty: str = "10", side: str = "buy", symbol: str = "AAPL") -> OrderIntent:
    return OrderIntent(
        strategy_id="contract",
        broker_account_id="acct",
        symbol=symbol,
        side=side,
        qty=qty,
        idempotency_key=key,
        metadata={"tenant_id": TENANT, "uid": "u1"},
    )


def result_for(
    intent: OrderIntent, status: ExecutionStatus, market: StaticMarketData, code: ReasonCode = ReasonCode.OK
) -> ExecutionResult:
    routing = decide_route(intent, market.get_quote(intent.symbol), RoutingPolicy(), T0)
    return ExecutionResult(
        status=status,
        reason_code=code,
        reason=f"{status.value} for the contract",
        idempotency_key=intent.resolved_idempotency_key(),
        tenant_id=TENANT,
        uid="u1",
        intent=intent,
        decided_at=T0,
        routing=routing,
    )


def approve(intent: OrderIntent, limits: RiskLimits | None = None) -> Any:
    def check(exposure: Exposure) -> RiskDecision:
        return check_risk(intent, exposure, limits or RiskLimits())

    return check


def figures(store: Any, symbol: str = "AAPL", account: str = "acct") -> tuple[Decimal, Decimal, Decimal, int]:
    """(position, in-flight buys, in-flight sells, daily slots taken), the same on every store.
    ``account``: "default" for what an engine placed (the single-firm install's one account)."""
    exposure = store.get_exposure(TENANT, account, symbol, DAY, 50)
    return (
        exposure.position_qty,
        exposure.pending_buy_qty,
        exposure.pending_sell_qty,
        store.daily_slots_taken(TENANT, DAY),
    )


def claim_order(
    store: Any, intent: OrderIntent, market: StaticMarketData, limits: RiskLimits | None = None
) -> Any:
    pending = result_for(intent, ExecutionStatus.PENDING, market, ReasonCode.IN_FLIGHT)
    key = intent.resolved_idempotency_key()
    order = claimed_order(
        client_order_id_for(TENANT, key),
        TENANT,
        key,
        intent.side,
        intent.qty,
        T0,
        Lease("w1", T0 + timedelta(minutes=1)),
    )
    return store.claim(
        pending, order, DAY, 50 if limits is None else limits.max_daily_trades, approve(intent, limits)
    )


def transition(stored: StoredExecution, *events: Any) -> OrderUpdate:
    """The update the engine would commit for ``events`` (fills priced as reported)."""
    assert stored.result is not None
    assert stored.order is not None
    after = stored.order
    for event in events:
        after = apply(after, event)
        assert not isinstance(after, Refusal), after
    effects = transition_effects(stored.order, after)
    broker = BrokerOrder(
        "paper", "o1", after.client_order_id, BrokerOrderStatus.FILLED, stored.result.intent.symbol,
        after.side, after.qty, after.filled_qty, after.avg_fill_price, T0, T0,
    )  # fmt: skip
    result = replace(
        stored.result, status=ExecutionStatus.PLACED, broker_order=broker, order_state=after.state
    )
    result = replace(result, risk=check_risk(result.intent, Exposure(), RiskLimits()))
    trades = tuple(build_fill_trade(result, fill) for fill in effects.new_fills)
    return OrderUpdate(
        result, after, stored.order.version, trades, sum((t.side.sign * t.qty for t in trades), Decimal(0)),
        effects.release_in_flight, effects.release_slot,
    )  # fmt: skip


def decision_path_of(stored: StoredExecution) -> str:
    from backend.core.paths import decision_id_for, decision_path

    assert stored.result is not None
    return decision_path(TENANT, decision_id_for(TENANT, stored.result.idempotency_key))


def report(state: OrderState, filled: str, price: str | None = "190.01") -> BrokerReport:
    return BrokerReport(T0, "paper", "o1", state, Decimal(filled), Decimal(price) if price else None)


class TestOutcomes:
    def test_first_outcome_for_a_key_wins(self, store: Any, market: StaticMarketData) -> None:
        intent = make_intent("k1")
        first = result_for(intent, ExecutionStatus.DOWNGRADED, market, ReasonCode.SPREAD_TOO_WIDE)
        assert store.record_outcome(first).result is first
        second = result_for(intent, ExecutionStatus.REJECTED, market, ReasonCode.KILL_SWITCH)
        stored = store.record_outcome(second).result
        assert (stored.status, stored.reason_code) == (ExecutionStatus.DOWNGRADED, ReasonCode.SPREAD_TOO_WIDE)
        assert store.get_execution(TENANT, "k1") == StoredExecution(first)

    def test_dry_runs_never_block_the_key(self, store: Any, market: StaticMarketData) -> None:
        intent = make_intent("k2")
        dry = result_for(intent, ExecutionStatus.DRY_RUN, market, ReasonCode.DRY_RUN)
        assert store.record_outcome(dry).result is dry
        assert store.record_outcome(dry).result is dry
        assert store.get_execution(TENANT, "k2") is None
        assert [d.status for d in store.iter_decisions(TENANT)] == [ExecutionStatus.DRY_RUN] * 2

    def test_unknown_key_has_no_execution(self, store: Any) -> None:
        assert store.get_execution(TENANT, "nothing") is None
        assert figures(store) == (0, 0, 0, 0)
        assert store.get_exposure(TENANT, "acct", "AAPL", DAY, 50).daily_slot is not None
        assert store.get_exposure(TENANT, "acct", "AAPL", DAY, 0).daily_slot is None


class TestClaimAndOrderUpdates:
    def test_claim_reserves_a_slot_and_the_quantity_on_its_side(
        self, store: Any, market: StaticMarketData
    ) -> None:
        claim = claim_order(store, make_intent("c1", qty="10"), market)
        assert claim.outcome is ClaimOutcome.CLAIMED
        assert claim.risk.approved
        assert claim.stored.order.slot is not None
        assert figures(store) == (0, 10, 0, 1)
        assert store.get_execution(TENANT, "c1") == claim.stored
        assert list(store.iter_decisions(TENANT)) == []  # in flight: not a decision yet
        assert [s.order.state for s in store.iter_orders(TENANT, open_only=True)] == [OrderState.CLAIMED]
        claim_order(store, make_intent("c2", qty="4", side="sell"), market)
        assert figures(store) == (0, 10, 4, 2)  # never netted

        again = claim_order(store, make_intent("c1", qty="10"), market)
        assert (again.outcome, again.stored) == (ClaimOutcome.DUPLICATE, claim.stored)

    def test_fills_are_recorded_once_each_over_the_version_they_were_computed_from(
        self, store: Any, market: StaticMarketData
    ) -> None:
        stored = claim_order(store, make_intent("f1", qty="10"), market).stored
        partial = transition(stored, SubmitSent(T0), report(OrderState.PARTIALLY_FILLED, "4"))
        assert store.commit_order(partial).committed
        assert figures(store) == (4, 6, 0, 1)
        stale = store.commit_order(partial)  # a second delivery computed from the same version
        assert not stale.committed
        assert stale.stored.order == partial.order
        assert figures(store) == (4, 6, 0, 1)

        done = transition(
            StoredExecution(partial.result, partial.order), report(OrderState.FILLED, "10", "190.03")
        )
        assert store.commit_order(done).committed
        assert figures(store) == (10, 0, 0, 1)
        trades = list(store.iter_ledger_trades(TENANT))
        assert sorted(t.filled_qty for t in trades) == [4, 6]
        assert sum((t.notional for t in trades), Decimal(0)) == Decimal("1900.30")  # 10 x 190.03
        assert {t.fill_id for t in trades} == {f.fill_id for f in done.order.fills}
        last = done.order.fills[1]
        assert store.get_ledger_trade(TENANT, last.trade_id).filled_qty == 6
        assert list(store.iter_orders(TENANT, open_only=True)) == []
        assert store.get_execution(TENANT, "f1").order.state is OrderState.FILLED

    def test_a_ledger_row_that_exists_refuses_the_whole_update(
        self, store: Any, market: StaticMarketData
    ) -> None:
        stored = claim_order(store, make_intent("dup", qty="2"), market).stored
        filled = transition(stored, SubmitSent(T0), report(OrderState.FILLED, "2"))
        assert store.commit_order(filled).committed
        forged = replace(
            filled, expected_version=filled.order.version, order=replace(filled.order, version=99)
        )
        with pytest.raises(LedgerIntegrityError):
            store.commit_order(forged)
        assert figures(store) == (2, 0, 0, 1)
        assert store.get_execution(TENANT, "dup").order.version == filled.order.version

    def test_in_flight_never_goes_negative(self, store: Any, market: StaticMarketData) -> None:
        stored = claim_order(store, make_intent("neg", qty="3"), market).stored
        update = transition(stored, SubmitSent(T0), SubmitUnknown(T0, "lost"))
        with pytest.raises(LedgerIntegrityError, match="negative"):
            store.commit_order(replace(update, release_in_flight=Decimal(5)))
        assert figures(store) == (0, 3, 0, 1)  # nothing written
        assert store.get_execution(TENANT, "neg").order.state is OrderState.CLAIMED

    def test_a_released_order_gives_back_its_slot_and_quantity_once(
        self, store: Any, market: StaticMarketData
    ) -> None:
        stored = claim_order(store, make_intent("r1", qty="3"), market).stored
        claim_order(store, make_intent("r2", qty="4"), market)
        unknown = transition(stored, SubmitSent(T0), SubmitUnknown(T0, "timeout"))
        assert store.commit_order(unknown).committed
        assert figures(store) == (0, 7, 0, 2)  # unknown keeps both
        released = transition(StoredExecution(unknown.result, unknown.order), Released(T0, "absent"))
        assert released.release_slot == stored.order.slot
        assert store.commit_order(released).committed
        assert figures(store) == (0, 4, 0, 1)
        again = replace(released, expected_version=released.order.version)
        with pytest.raises(LedgerIntegrityError, match="slot"):
            store.commit_order(again)  # a slot is given back once
        assert figures(store) == (0, 4, 0, 1)

    def test_refused_claim_writes_nothing(self, store: Any, market: StaticMarketData) -> None:
        intent = make_intent("c2", qty="150")
        claim = claim_order(store, intent, market, RiskLimits(max_position_qty=Decimal(100)))
        assert claim.outcome is ClaimOutcome.REFUSED
        assert claim.risk.reason_code is ReasonCode.POSITION_LIMIT
        assert figures(store) == (0, 0, 0, 0)
        assert store.get_execution(TENANT, "c2") is None
        roomier = RiskLimits(max_position_qty=Decimal(1000))
        assert claim_order(store, intent, market, roomier).outcome is ClaimOutcome.CLAIMED

    def test_a_slot_given_back_is_taken_again(self, store: Any, market: StaticMarketData) -> None:
        limits = RiskLimits(max_daily_trades=2)
        first = claim_order(store, make_intent("h1", qty="1"), market, limits).stored
        assert claim_order(store, make_intent("h2", qty="1"), market, limits).outcome is ClaimOutcome.CLAIMED
        released = transition(first, Released(T0, "absent"))
        assert store.commit_order(released).committed
        third = claim_order(store, make_intent("h3", qty="1"), market, limits)
        assert third.outcome is ClaimOutcome.CLAIMED
        assert third.stored.order.slot == first.order.slot  # the hole is found
        refused = claim_order(store, make_intent("h4", qty="1"), market, limits)
        assert (refused.outcome, refused.risk.reason_code) == (ClaimOutcome.REFUSED, ReasonCode.DAILY_LIMIT)
        assert store.daily_slots_taken(TENANT, DAY) == 2

    def test_the_daily_limit_is_its_slots(self, store: Any, market: StaticMarketData) -> None:
        limits = RiskLimits(max_daily_trades=2)
        assert claim_order(store, make_intent("s1", qty="1"), market, limits).outcome is ClaimOutcome.CLAIMED
        assert claim_order(store, make_intent("s2", qty="1"), market, limits).outcome is ClaimOutcome.CLAIMED
        full = claim_order(store, make_intent("s3", qty="1"), market, limits)
        assert (full.outcome, full.risk.reason_code) == (ClaimOutcome.REFUSED, ReasonCode.DAILY_LIMIT)
        assert "2" in full.risk.reason
        assert store.daily_slots_taken(TENANT, DAY) == 2


class TestQueriesForOperations:
    def test_an_order_is_found_by_its_client_order_id_within_its_tenant(
        self, store: Any, market: StaticMarketData
    ) -> None:
        stored = claim_order(store, make_intent("q1"), market).stored
        assert store.find_order(TENANT, stored.order.client_order_id) == stored
        assert store.find_order("someone_else", stored.order.client_order_id) is None
        assert store.find_order(TENANT, "msr-nothing") is None

    def test_open_orders_older_than_a_cutoff_page_by_a_cursor(
        self, store: Any, market: StaticMarketData
    ) -> None:
        keys = [f"o{i}" for i in range(5)]
        stored = {key: claim_order(store, make_intent(key, qty="1"), market).stored for key in keys}
        done = transition(stored["o2"], SubmitSent(T0), report(OrderState.FILLED, "1"))
        assert store.commit_order(done).committed  # final: no longer open
        later = T0 + timedelta(seconds=5)
        assert store.open_orders(T0) == []  # nothing changed before T0
        first = store.open_orders(later, limit=2)
        assert len(first) == 2
        cursor = OrderCursor(first[-1].order.updated_at, decision_path_of(first[-1]))
        rest = store.open_orders(later, after=cursor, limit=10)
        seen = [s.order.idempotency_key for s in first + rest]
        assert sorted(seen) == ["o0", "o1", "o3", "o4"]
        assert len(set(seen)) == 4  # no order twice across pages

    def test_ledger_entries_since_a_write_time(self, store: Any, market: StaticMarketData) -> None:
        before = datetime.now(UTC) - timedelta(seconds=5)
        stored = claim_order(store, make_intent("w1", qty="2"), market).stored
        assert store.commit_order(
            transition(stored, SubmitSent(T0), report(OrderState.FILLED, "2"))
        ).committed
        assert [e.qty for e in store.ledger_entries_since(before)] == [2]
        assert list(store.ledger_entries_since(datetime.now(UTC) + timedelta(minutes=5))) == []

    def test_positions_of_every_tenant_and_ops_state(self, store: Any, market: StaticMarketData) -> None:
        claim_order(store, make_intent("p1", qty="3"), market)
        assert store.all_positions()[(TENANT, "acct", "AAPL")] == (0, 3, 0)
        assert store.get_ops_state("sweep") is None
        state = {
            "cursor": {"updated_at": "2026-03-02T15:30:00+00:00", "path": "tenants/t/decisions/d"},
            "runs": 3,
        }
        store.put_ops_state("sweep", state)
        assert store.get_ops_state("sweep") == state


class TestEngineOnEachStore:
    def test_seed_flow_placed_downgraded_replayed(self, make_engine: EngineFactory, store: Any) -> None:
        engine = make_engine()
        placed = engine.execute_intent(make_intent("e1"))
        downgraded = engine.execute_intent(make_intent("e2", qty="0.5", symbol="BTC/USD"))
        replayed = engine.execute_intent(make_intent("e1"))
        assert placed.status is ExecutionStatus.PLACED
        assert downgraded.status is ExecutionStatus.DOWNGRADED
        assert replayed.replayed
        assert replayed.broker_order_id == placed.broker_order_id
        trades = list(store.iter_ledger_trades(TENANT))
        assert len(trades) == 1
        assert trades[0].notional == Decimal("1900.10")
        # Same clock reading for both: ties are ordered by document id, so compare as a multiset.
        assert Counter(d.status for d in store.iter_decisions(TENANT)) == {
            ExecutionStatus.PLACED: 1,
            ExecutionStatus.DOWNGRADED: 1,
        }

    def test_daily_limit_holds_across_days(
        self, make_engine: EngineFactory, store: Any, clock: ManualClock, market: StaticMarketData
    ) -> None:
        engine = make_engine(RiskLimits(max_daily_trades=1))
        assert engine.execute_intent(make_intent("d1", qty="1")).status is ExecutionStatus.PLACED
        assert engine.execute_intent(make_intent("d2", qty="1")).reason_code is ReasonCode.DAILY_LIMIT
        clock.advance(timedelta(days=1))
        market.set_quote("AAPL", "189.99", "190.01")
        assert engine.execute_intent(make_intent("d3", qty="1")).status is ExecutionStatus.PLACED


def test_two_workers_racing_on_one_key_make_one_order(
    make_engine: EngineFactory, store: Any, broker: Any
) -> None:
    # Small on purpose: the emulator resolves a contended transaction after a ~2 s lock wait.
    engines = [make_engine(), make_engine()]
    barrier = threading.Barrier(2)
    results: list[ExecutionResult] = []
    lock = threading.Lock()

    def work(engine: Any) -> None:
        barrier.wait(30)
        for _ in range(3):
            outcome = engine.execute_intent(make_intent("race", qty="2"))
            with lock:
                results.append(outcome)

    threads = [threading.Thread(target=work, args=(engine,)) for engine in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(results) == 6
    assert sum(not r.replayed for r in results) == 1
    assert len(broker.calls) == 1
    assert len(list(store.iter_ledger_trades(TENANT))) == 1
    assert figures(store, account="default") == (2, 0, 0, 1)


@pytest.mark.parametrize(
    ("configured", "environ", "kind", "inline"),
    [
        ({}, {}, "sqlite", True),
        ({}, {"FIRESTORE_EMULATOR_HOST": "127.0.0.1:1"}, "firestore", False),
        ({}, {"GOOGLE_CLOUD_PROJECT": "prod-project"}, "firestore", False),
        ({"store": "sqlite"}, {"GOOGLE_CLOUD_PROJECT": "prod-project"}, "sqlite", True),
        ({"store": "firestore", "fanout": "inline"}, {}, "firestore", True),
        ({"fanout": "trigger"}, {}, "sqlite", False),
    ],
)
def test_store_is_chosen_by_configuration(
    tmp_path: Any, configured: dict[str, str], environ: dict[str, str], kind: str, inline: bool
) -> None:
    from backend.adapters.stores import build_stores, store_kind
    from backend.execution.settings import ExecSettings

    settings = ExecSettings(sqlite_path=str(tmp_path / "s.sqlite3"), **configured)  # type: ignore[arg-type]
    assert store_kind(settings, environ) == kind
    if kind == "sqlite":
        store, portfolio = build_stores(settings, environ)
        assert (portfolio is store) is inline
        store.close()


def test_two_workers_racing_for_the_last_daily_slot_place_one_order(
    make_engine: EngineFactory, store: Any, broker: Any
) -> None:
    engines = [make_engine(RiskLimits(max_daily_trades=1)), make_engine(RiskLimits(max_daily_trades=1))]
    barrier = threading.Barrier(2)
    results: list[ExecutionResult] = []

    def work(index: int) -> None:
        barrier.wait(30)
        results.append(engines[index].execute_intent(make_intent(f"slot-{index}", qty="1")))

    threads = [threading.Thread(target=work, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sorted((r.status.value, r.reason_code.value) for r in results) == [
        ("placed", "OK"),
        ("rejected", "DAILY_LIMIT"),
    ]
    assert len(broker.calls) == 1
    assert store.daily_slots_taken(TENANT, DAY) == 1
