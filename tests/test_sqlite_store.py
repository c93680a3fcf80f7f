"""The embedded SQLite store, for real: files on disk, raw SQL, threads and processes sharing one file."""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from backend.adapters.market_data import StaticMarketData
from backend.adapters.paper_broker import PaperBroker
from backend.adapters.sqlite_store import SQLiteExecutionStore
from backend.core.intents import OrderIntent
from backend.core.orders import BrokerOrder, ExecutionResult, ExecutionStatus, OrderRequest
from backend.core.reasons import ReasonCode
from backend.core.risk import RiskLimits
from backend.execution.engine import ExecutionEngine, RiskManager, SmartRouter
from backend.execution.ports import Broker, ManualClock
from backend.execution.settings import ExecSettings

T0 = datetime(2026, 3, 2, 15, 30, tzinfo=UTC)
TENANT = "acme_corp"
THREADS = 8
BARRIER_TIMEOUT = 30.0


class SubmitCounter(Broker):
    """Wraps one shared PaperBroker and counts every submit_order call; it does not dedupe anything."""

    name = "counting-paper"

    def __init__(self, inner: PaperBroker) -> None:
        self.inner = inner
        self.client_order_ids: list[str] = []
        self._lock = threading.Lock()

    @property
    def calls(self) -> int:
        with self._lock:
            return len(self.client_order_ids)

    def submit_order(self, request: OrderRequest) -> BrokerOrder:
        with self._lock:
            self.client_order_ids.append(request.client_order_id)
        return self.inner.submit_order(request)

    def get_order_by_client_order_id(self, client_order_id: str) -> BrokerOrder | None:
        return self.inner.get_order_by_client_order_id(client_order_id)

    def cancel_order(self, client_order_id: str) -> None:
        self.inner.cancel_order(client_order_id)


@dataclass
class Venue:
    clock: ManualClock
    market: StaticMarketData
    broker: SubmitCounter


def make_venue() -> Venue:
    clock = ManualClock(T0)
    market = StaticMarketData(clock=clock)
    market.set_quote("AAPL", "189.99", "190.01")
    market.set_quote("BTC/USDT", "39432.99", "39433.62")  # the first row of the Binance tape
    return Venue(clock, market, SubmitCounter(PaperBroker(market, clock)))


def make_engine(
    store: SQLiteExecutionStore, venue: Venue, limits: RiskLimits | None = None
) -> ExecutionEngine:
    return ExecutionEngine(
        broker=venue.broker,
        router=SmartRouter(market_data=venue.market, clock=venue.clock),
        risk=RiskManager(limits or RiskLimits()),
        dry_run=False,
        store=store,
        clock=venue.clock,
        settings=ExecSettings(tenant_id=TENANT, uid="user_12345"),
    )


def make_intent(key: str, symbol: str = "AAPL", side: str = "buy", qty: object = 1) -> OrderIntent:
    return OrderIntent(
        strategy_id="store_tests",
        broker_account_id="paper_acct",
        symbol=symbol,
        side=side,
        qty=qty,
        idempotency_key=key,
    )


def ledger_row_count(db_path: Path) -> int:
    with closing(sqlite3.connect(db_path)) as conn:
        return conn.execute("SELECT COUNT(*) FROM ledger_trades").fetchone()[0]


def run_in_threads(
    db_path: Path,
    venue: Venue,
    work: Callable[[int, ExecutionEngine], ExecutionResult],
    limits: RiskLimits | None = None,
) -> list[ExecutionResult]:
    """THREADS workers, each with its OWN store (connection) on the same file and its own engine,
    released together by a barrier. A worker that fails before the barrier breaks it, so the test
    fails at once with that worker's error instead of waiting for the barrier's timeout."""
    barrier = threading.Barrier(THREADS)

    def worker(index: int) -> ExecutionResult:
        try:
            store = SQLiteExecutionStore(db_path)
        except BaseException:
            barrier.abort()
            raise
        try:
            engine = make_engine(store, venue, limits)
            barrier.wait(BARRIER_TIMEOUT)
            return work(index, engine)
        finally:
            store.close()

    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        futures = [pool.submit(worker, index) for index in range(THREADS)]
    errors = [exc for future in futures if (exc := future.exception()) is not None]
    root_causes = [exc for exc in errors if not isinstance(exc, threading.BrokenBarrierError)]
    if errors:
        raise (root_causes or errors)[0]
    return [future.result() for future in futures]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.sqlite3"


@pytest.fixture
def venue() -> Venue:
    return make_venue()


# -- append-only ledger ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE ledger_trades SET document = '{}'",
        "UPDATE ledger_trades SET tenant_id = 'someone_else' WHERE tenant_id = 'acme_corp'",
        "DELETE FROM ledger_trades",
        "DELETE FROM ledger_trades WHERE tenant_id = 'acme_corp'",
    ],
)
def test_ledger_rows_are_append_only_raw_update_or_delete_is_refused(
    db_path: Path, venue: Venue, statement: str
) -> None:
    store = SQLiteExecutionStore(db_path)
    try:
        placed = make_engine(store, venue).execute_intent(make_intent("append-only-1"))
    finally:
        store.close()
    assert placed.status is ExecutionStatus.PLACED
    with closing(sqlite3.connect(db_path)) as conn:
        before = conn.execute("SELECT path, tenant_id, document FROM ledger_trades").fetchall()
        assert len(before) == 1

        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute(statement)

        assert conn.execute("SELECT path, tenant_id, document FROM ledger_trades").fetchall() == before


# -- idempotency -------------------------------------------------------------------------------


def test_same_intent_twice_gives_one_ledger_row_and_replays_the_first_broker_order(
    db_path: Path, venue: Venue
) -> None:
    store = SQLiteExecutionStore(db_path)
    try:
        engine = make_engine(store, venue)
        first = engine.execute_intent(make_intent("twice-1", qty=5))
        second = engine.execute_intent(make_intent("twice-1", qty=5))
        trades = list(store.iter_ledger_trades(TENANT))
    finally:
        store.close()

    assert first.status is ExecutionStatus.PLACED
    assert first.replayed is False
    assert second.status is ExecutionStatus.PLACED
    assert second.replayed is True
    assert first.broker_order_id is not None
    assert second.broker_order_id == first.broker_order_id
    assert second.trade_id == first.trade_id
    assert venue.broker.calls == 1
    assert len(trades) == 1
    assert trades[0].trade_id == first.trade_id
    assert ledger_row_count(db_path) == 1


def test_same_intent_in_a_new_process_store_is_still_a_replay(db_path: Path, venue: Venue) -> None:
    """The key's outcome lives in the file, not in the engine: a restarted worker replays it."""
    for expected_replayed in (False, True):
        store = SQLiteExecutionStore(db_path)
        try:
            result = make_engine(store, venue).execute_intent(make_intent("restart-1"))
        finally:
            store.close()
        assert result.status is ExecutionStatus.PLACED
        assert result.replayed is expected_replayed
    assert venue.broker.calls == 1
    assert ledger_row_count(db_path) == 1


# -- money and positions -------------------------------------------------------------------


def test_money_round_trips_exactly_through_the_store(db_path: Path, venue: Venue) -> None:
    store = SQLiteExecutionStore(db_path)
    try:
        result = make_engine(store, venue).execute_intent(make_intent("money-1", "BTC/USDT", "buy", "0.1"))
    finally:
        store.close()
    assert result.status is ExecutionStatus.PLACED
    assert result.trade_id is not None

    reopened = SQLiteExecutionStore(db_path)  # a fresh connection: nothing comes from memory
    try:
        trade = reopened.get_ledger_trade(TENANT, result.trade_id)
        decisions = list(reopened.iter_decisions(TENANT))
    finally:
        reopened.close()

    assert trade is not None
    assert trade.filled_qty == Decimal("0.1")
    assert trade.qty == Decimal("0.09975")  # the 25 bp taker fee is taken in BTC, the asset received
    assert (trade.fee_currency, trade.fee_amount) == ("BTC", Decimal("0.00025"))
    assert trade.price == Decimal("39433.62")
    assert isinstance(trade.notional, Decimal)
    assert trade.notional == Decimal("3943.362")
    assert str(trade.notional) == "3943.362"
    assert trade.quote_currency == "USDT"
    # On disk: decimal strings in the stored document, never floats.
    with closing(sqlite3.connect(db_path)) as conn:
        (document,) = conn.execute("SELECT document FROM ledger_trades").fetchone()
    stored = json.loads(document)
    assert (stored["filled_qty"], stored["qty"], stored["price"], stored["notional"]) == (
        "0.1",
        "0.09975",
        "39433.62",
        "3943.362",
    )
    # The decision record: notional at mid, cost = qty x spread, both exact.
    assert len(decisions) == 1
    assert decisions[0].notional == Decimal("3943.3305")
    assert decisions[0].estimated_cost == Decimal("0.063")


def test_positions_sum_correctly_after_buy_three_sell_one(db_path: Path, venue: Venue) -> None:
    store = SQLiteExecutionStore(db_path)
    try:
        engine = make_engine(store, venue)
        bought = engine.execute_intent(make_intent("pos-buy", side="buy", qty=3))
        sold = engine.execute_intent(make_intent("pos-sell", side="sell", qty=1))
    finally:
        store.close()
    assert (bought.status, sold.status) == (ExecutionStatus.PLACED, ExecutionStatus.PLACED)

    reopened = SQLiteExecutionStore(db_path)
    try:
        positions = reopened.positions(TENANT)
        exposure = reopened.get_exposure(TENANT, "default", "AAPL", T0.date().isoformat(), 50)
        reopened_slots = reopened.daily_slots_taken(TENANT, T0.date().isoformat())
        trades = list(reopened.iter_ledger_trades(TENANT))
    finally:
        reopened.close()

    assert positions == {"AAPL": Decimal(2)}
    assert exposure.position_qty == Decimal(2)
    assert reopened_slots == 2
    assert sorted((t.side.value, t.qty, t.price) for t in trades) == [
        ("buy", Decimal(3), Decimal("190.01")),
        ("sell", Decimal(1), Decimal("189.99")),
    ]


# -- concurrency: threads ------------------------------------------------------------------


def test_eight_threads_with_own_stores_executing_the_same_intent_make_one_order_and_one_row(
    db_path: Path, venue: Venue
) -> None:
    intent = make_intent("same-key-race", qty=2)
    results = run_in_threads(db_path, venue, lambda _index, engine: engine.execute_intent(intent))

    originals = [r for r in results if not r.replayed]
    assert len(originals) == 1, Counter((r.status.value, r.replayed) for r in results)
    assert originals[0].status is ExecutionStatus.PLACED
    # The others see the key already claimed (pending) or already placed; none fails.
    assert {r.status for r in results if r.replayed} <= {ExecutionStatus.PLACED, ExecutionStatus.PENDING}
    broker_order_ids = {r.broker_order_id for r in results if r.status is ExecutionStatus.PLACED}
    assert broker_order_ids == {originals[0].broker_order_id}
    assert venue.broker.calls == 1
    assert venue.broker.inner.submissions == 1
    assert ledger_row_count(db_path) == 1


def test_eight_threads_opening_a_new_file_at_once_all_succeed(db_path: Path) -> None:
    # Switching a fresh file to WAL does not wait on the busy timeout; the store retries it.
    barrier = threading.Barrier(THREADS)

    def open_store(_index: int) -> int:
        barrier.wait(BARRIER_TIMEOUT)
        store = SQLiteExecutionStore(db_path)
        try:
            return store._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        finally:
            store.close()

    for _ in range(5):
        db_path.unlink(missing_ok=True)
        with ThreadPoolExecutor(THREADS) as pool:
            assert all(pool.map(open_store, range(THREADS)))


def test_position_limit_race_eight_threads_cannot_share_the_same_headroom(
    db_path: Path, venue: Venue
) -> None:
    # Limit 100, each buys 60: one at a time only the first fits, and so it must be under a race.
    results = run_in_threads(
        db_path,
        venue,
        lambda index, engine: engine.execute_intent(make_intent(f"position-race-{index}", qty=60)),
        RiskLimits(max_position_qty=Decimal(100)),
    )

    statuses = Counter((r.status, r.reason_code) for r in results)
    assert statuses == {
        (ExecutionStatus.PLACED, ReasonCode.OK): 1,
        (ExecutionStatus.REJECTED, ReasonCode.POSITION_LIMIT): THREADS - 1,
    }
    assert venue.broker.calls == 1
    with SQLiteExecutionStore(db_path) as store:
        exposure = store.get_exposure(TENANT, "default", "AAPL", T0.date().isoformat(), 50)
    assert (exposure.position_qty, exposure.pending_buy_qty) == (Decimal(60), Decimal(0))


def test_daily_limit_race_eight_threads_eight_intents_limit_three_places_exactly_three(
    db_path: Path, venue: Venue
) -> None:
    results = run_in_threads(
        db_path,
        venue,
        lambda index, engine: engine.execute_intent(make_intent(f"daily-race-{index}", qty=index + 1)),
        RiskLimits(max_daily_trades=3),
    )

    statuses = Counter(r.status for r in results)
    assert statuses == {ExecutionStatus.PLACED: 3, ExecutionStatus.REJECTED: 5}
    assert {r.reason_code for r in results if r.status is ExecutionStatus.REJECTED} == {
        ReasonCode.DAILY_LIMIT
    }
    assert all(not r.replayed for r in results)
    assert venue.broker.calls == 3
    assert ledger_row_count(db_path) == 3
    with closing(sqlite3.connect(db_path)) as conn:
        counted = conn.execute(
            "SELECT COUNT(*) FROM daily_trade_slots WHERE tenant_id = ? AND trading_day = ?",
            (TENANT, T0.date().isoformat()),
        ).fetchone()
    assert counted == (3,)


# -- concurrency: processes ----------------------------------------------------------------

PROCESSES = 4
PROCESS_DAILY_LIMIT = 2


def daily_limit_process_worker(db_path: str, key: str, barrier: Any, results: Any) -> None:
    """Runs in a spawned process: its own venue, store and engine on the shared file."""
    try:
        try:
            store = SQLiteExecutionStore(db_path)
        except BaseException:
            barrier.abort()
            raise
        try:
            engine = make_engine(store, make_venue(), RiskLimits(max_daily_trades=PROCESS_DAILY_LIMIT))
            barrier.wait(BARRIER_TIMEOUT)
            result = engine.execute_intent(make_intent(key))
        finally:
            store.close()
        results.put((key, result.status.value, result.reason_code.value))
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails the test
        results.put((key, "error", f"{type(exc).__name__}: {exc}"))


def test_daily_limit_race_across_four_processes_writes_exactly_the_limit(db_path: Path) -> None:
    SQLiteExecutionStore(db_path).close()
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES)
    queue = ctx.Queue()
    processes = [
        ctx.Process(target=daily_limit_process_worker, args=(str(db_path), f"proc-race-{i}", barrier, queue))
        for i in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    try:
        outcomes = [queue.get(timeout=60) for _ in processes]
    finally:
        for process in processes:
            process.join(timeout=30)
        queue.close()
        queue.join_thread()
    assert [process.exitcode for process in processes] == [0] * PROCESSES

    statuses = Counter((status, code) for _key, status, code in outcomes)
    assert statuses == {
        ("placed", "OK"): PROCESS_DAILY_LIMIT,
        ("rejected", "DAILY_LIMIT"): PROCESSES - PROCESS_DAILY_LIMIT,
    }, outcomes
    assert ledger_row_count(db_path) == PROCESS_DAILY_LIMIT
