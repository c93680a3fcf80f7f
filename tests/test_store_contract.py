"""The ExecutionStore contract, run against both adapters: the embedded SQLite store and Firestore
(on Google's emulator). Same calls, same answers."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from backend.adapters.market_data import StaticMarketData
from backend.core.intents import OrderIntent
from backend.core.ledger import build_ledger_trade
from backend.core.orders import BrokerOrder, BrokerOrderStatus, ExecutionResult, ExecutionStatus
from backend.core.paths import ledger_trade_path, trade_id_for
from backend.core.reasons import ReasonCode
from backend.core.risk import Exposure, RiskDecision, RiskLimits, check_risk
from backend.core.routing import RoutingPolicy, decide_route
from backend.execution.ports import ClaimOutcome, LedgerIntegrityError, ManualClock
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


def filled(result: ExecutionResult, price: str = "190.01") -> ExecutionResult:
    intent = result.intent
    order = BrokerOrder(
        broker="paper",
        order_id="o-" + result.idempotency_key,
        client_order_id="c-" + result.idempotency_key,
        status=BrokerOrderStatus.FILLED,
        symbol=intent.symbol,
        side=intent.side,
        qty=intent.qty,
        filled_qty=intent.qty,
        avg_fill_price=Decimal(price),
        submitted_at=T0,
        filled_at=T0,
    )
    trade_id = trade_id_for(TENANT, result.idempotency_key)
    return ExecutionResult(
        status=ExecutionStatus.PLACED,
        reason_code=ReasonCode.OK,
        reason="filled",
        idempotency_key=result.idempotency_key,
        tenant_id=TENANT,
        uid="u1",
        intent=intent,
        decided_at=T0,
        routing=result.routing,
        risk=check_risk(intent, Exposure(), RiskLimits()),
        broker_order=order,
        trade_id=trade_id,
        ledger_path=ledger_trade_path(TENANT, trade_id),
    )


class TestOutcomes:
    def test_first_outcome_for_a_key_wins(self, store: Any, market: StaticMarketData) -> None:
        intent = make_intent("k1")
        first = result_for(intent, ExecutionStatus.DOWNGRADED, market, ReasonCode.SPREAD_TOO_WIDE)
        assert store.record_outcome(first) is first
        second = result_for(intent, ExecutionStatus.REJECTED, market, ReasonCode.KILL_SWITCH)
        stored = store.record_outcome(second)
        assert stored is not None
        assert (stored.status, stored.reason_code) == (ExecutionStatus.DOWNGRADED, ReasonCode.SPREAD_TOO_WIDE)
        assert store.get_execution(TENANT, "k1") == first

    def test_dry_runs_never_block_the_key(self, store: Any, market: StaticMarketData) -> None:
        intent = make_intent("k2")
        dry = result_for(intent, ExecutionStatus.DRY_RUN, market, ReasonCode.DRY_RUN)
        assert store.record_outcome(dry) is dry
        assert store.record_outcome(dry) is dry
        assert store.get_execution(TENANT, "k2") is None
        assert [d.status for d in store.iter_decisions(TENANT)] == [ExecutionStatus.DRY_RUN] * 2

    def test_unknown_key_has_no_execution(self, store: Any) -> None:
        assert store.get_execution(TENANT, "nothing") is None
        assert store.get_exposure(TENANT, "acct", "AAPL", DAY) == Exposure()


class TestClaim:
    def test_claim_reserves_slot_and_quantity_then_record_moves_it(
        self, store: Any, market: StaticMarketData
    ) -> None:
        intent = make_intent("c1", qty="10")
        pending = result_for(intent, ExecutionStatus.PENDING, market, ReasonCode.IN_FLIGHT)
        claim = store.claim(pending, DAY, approve(intent))
        assert claim.outcome is ClaimOutcome.CLAIMED
        assert claim.risk is not None
        assert claim.risk.approved
        assert store.get_exposure(TENANT, "acct", "AAPL", DAY) == Exposure(Decimal(0), 1, Decimal(10))
        assert store.get_execution(TENANT, "c1") is None  # in flight: not an outcome yet
        assert list(store.iter_decisions(TENANT)) == []

        again = store.claim(pending, DAY, approve(intent))
        assert (again.outcome, again.existing) == (ClaimOutcome.DUPLICATE, None)

        placed = filled(pending)
        trade = build_ledger_trade(placed)
        store.record_trade(placed, trade)
        assert store.get_exposure(TENANT, "acct", "AAPL", DAY) == Exposure(Decimal(10), 1, Decimal(0))
        assert store.get_execution(TENANT, "c1") == placed
        assert store.get_ledger_trade(TENANT, trade.trade_id) == trade
        assert list(store.iter_ledger_trades(TENANT)) == [trade]
        assert store.positions(TENANT) == {"AAPL": Decimal(10)}
        final = store.claim(pending, DAY, approve(intent))
        assert (final.outcome, final.existing) == (ClaimOutcome.DUPLICATE, placed)
        with pytest.raises(LedgerIntegrityError):
            store.record_trade(placed, trade)

    def test_refused_claim_writes_nothing(self, store: Any, market: StaticMarketData) -> None:
        intent = make_intent("c2", qty="150")
        pending = result_for(intent, ExecutionStatus.PENDING, market, ReasonCode.IN_FLIGHT)
        claim = store.claim(pending, DAY, approve(intent, RiskLimits(max_position_qty=Decimal(100))))
        assert claim.outcome is ClaimOutcome.REFUSED
        assert claim.risk is not None
        assert claim.risk.reason_code is ReasonCode.POSITION_LIMIT
        assert store.get_exposure(TENANT, "acct", "AAPL", DAY) == Exposure()
        roomier = approve(intent, RiskLimits(max_position_qty=Decimal(1000)))
        assert store.claim(pending, DAY, roomier).outcome is ClaimOutcome.CLAIMED

    def test_failed_settlement_frees_the_slot_unknown_keeps_it(
        self, store: Any, market: StaticMarketData
    ) -> None:
        failing, losing = make_intent("f1", qty="3"), make_intent("u1", qty="4")
        for intent in (failing, losing):
            pending = result_for(intent, ExecutionStatus.PENDING, market, ReasonCode.IN_FLIGHT)
            assert store.claim(pending, DAY, approve(intent)).outcome is ClaimOutcome.CLAIMED
        assert store.get_exposure(TENANT, "acct", "AAPL", DAY) == Exposure(Decimal(0), 2, Decimal(7))
        store.settle_claim(
            result_for(failing, ExecutionStatus.FAILED, market, ReasonCode.BROKER_REJECTED), DAY
        )
        store.settle_claim(
            result_for(losing, ExecutionStatus.UNKNOWN, market, ReasonCode.BROKER_OUTCOME_UNKNOWN), DAY
        )
        assert store.get_exposure(TENANT, "acct", "AAPL", DAY) == Exposure(Decimal(0), 1, Decimal(4))
        statuses = Counter(d.status for d in store.iter_decisions(TENANT))
        assert statuses == {ExecutionStatus.FAILED: 1, ExecutionStatus.UNKNOWN: 1}


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
    assert store.get_exposure(TENANT, "acct", "AAPL", DAY).position_qty == 2


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
    assert store.get_exposure(TENANT, "acct", "AAPL", DAY).trades_today == 1
