"""Benchmark: decision-path latency, engine throughput, and the full paper run's wall time.

    python benchmarks/bench_engine.py            # prints the figures
    python benchmarks/bench_engine.py --quick    # fewer iterations, for a smoke check

Figures, not assertions: these machines are shared and noisy, so nothing here fails on a number.
"""

from __future__ import annotations

import argparse
import gc
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.adapters.market_data import StaticMarketData
from backend.adapters.paper_broker import PaperBroker
from backend.adapters.sqlite_store import SQLiteExecutionStore
from backend.core.instruments import AssetClass
from backend.core.risk import Exposure, RiskLimits
from backend.execution.engine import (
    ExecutionEngine,
    ExecutionStatus,
    OrderIntent,
    RiskManager,
    SmartRouter,
    log_intent_received,
    log_smart_routing,
)
from backend.execution.ports import ManualClock
from backend.execution.settings import ExecSettings
from backend.observability.logging import configure_logging

NOW = datetime(2026, 3, 2, 15, 30, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[1]


def percentiles(samples_ns: list[int]) -> tuple[float, float]:
    ordered = sorted(samples_ns)
    p50 = ordered[len(ordered) // 2] / 1000
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] / 1000
    return p50, p99


def time_each(func: Callable[[], object], iterations: int) -> list[int]:
    for _ in range(min(iterations // 10, 2000)):  # warm-up
        func()
    samples = []
    clock = time.perf_counter_ns
    gc.disable()
    try:
        for _ in range(iterations):
            start = clock()
            func()
            samples.append(clock() - start)
    finally:
        gc.enable()
    return samples


def bench_decision_path(iterations: int) -> None:
    clock = ManualClock(NOW)
    market = StaticMarketData(clock=clock)
    quote = market.set_quote("EUR/USD", "1.08500", "1.08510")
    router = SmartRouter(market_data=market, clock=clock)
    risk = RiskManager(RiskLimits(max_position_qty_by_asset_class={AssetClass.FOREX: Decimal(10**6)}))
    intent = OrderIntent(
        strategy_id="bench", broker_account_id="paper", symbol="EUR/USD", side="buy", qty=10000
    )
    exposure = Exposure(position_qty=Decimal(20000), trades_today=3)
    key = intent.resolved_idempotency_key()

    def decide() -> None:
        routing = router.analyze_intent(intent, quote=quote)
        risk.evaluate(intent, exposure)
        assert routing.should_execute

    def decide_logged() -> None:
        log_intent_received(intent, "tenant", key)
        routing = router.analyze_intent(intent, quote=quote)
        log_smart_routing(routing, key)
        risk.evaluate(intent, exposure)

    with open(os.devnull, "w") as devnull:
        configure_logging("WARNING", devnull)
        p50, p99 = percentiles(time_each(decide, iterations))
        print(
            f"decision path (route + risk, quote in hand), logging off: p50 {p50:6.2f} us  p99 {p99:6.2f} us"
        )
        configure_logging("INFO", devnull)
        p50, p99 = percentiles(time_each(decide_logged, iterations))
        print(
            f"decision path with the seed's two JSON log lines:         p50 {p50:6.2f} us  p99 {p99:6.2f} us"
        )
        configure_logging("WARNING", devnull)


def bench_commit_floor(count: int) -> None:
    """What one small WAL commit costs on this disk: the floor under every engine figure."""
    with tempfile.TemporaryDirectory() as folder:
        conn = sqlite3.connect(Path(folder) / "floor.sqlite3", isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
        start = time.perf_counter()
        for i in range(count):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t VALUES (?, ?)", (i, "x" * 100))
            conn.execute("COMMIT")
        elapsed = time.perf_counter() - start
        conn.close()
    print(f"floor: one 100-byte SQLite WAL commit on this disk:          {elapsed / count * 1e6:6.1f} us")


def bench_engine(count: int, log_level: str, in_memory: bool = False) -> None:
    with tempfile.TemporaryDirectory() as folder, open(os.devnull, "w") as devnull:
        configure_logging(log_level, devnull)
        clock = ManualClock(NOW)
        market = StaticMarketData(clock=clock)
        symbols = ["AAPL", "MSFT", "EUR/USD", "BTC/USD"]
        for symbol, bid, ask in [
            ("AAPL", "189.99", "190.01"),
            ("MSFT", "409.95", "410.05"),
            ("EUR/USD", "1.08500", "1.08510"),
            ("BTC/USD", "49990", "50010"),
        ]:
            market.set_quote(symbol, bid, ask)
        store = SQLiteExecutionStore(":memory:" if in_memory else Path(folder) / "bench.sqlite3")
        engine = ExecutionEngine(
            broker=PaperBroker(market, clock),
            router=SmartRouter(market_data=market, clock=clock),
            risk=RiskManager(RiskLimits(max_position_qty=Decimal(10**12), max_daily_trades=10**9)),
            dry_run=False,
            store=store,
            clock=clock,
            settings=ExecSettings(tenant_id="bench", uid="bench"),
        )
        intents = [
            OrderIntent(
                strategy_id="bench",
                broker_account_id="paper",
                symbol=symbols[i % len(symbols)],
                side="buy" if i % 3 else "sell",
                qty=1,
                idempotency_key=f"bench-{i}",
            )
            for i in range(count)
        ]
        start = time.perf_counter()
        placed = sum(engine.execute_intent(intent).status is ExecutionStatus.PLACED for intent in intents)
        elapsed = time.perf_counter() - start
        replay_start = time.perf_counter()
        for intent in intents[:1000]:
            engine.execute_intent(intent)
        replay_elapsed = time.perf_counter() - replay_start
        rows = sum(1 for _ in store.iter_ledger_trades("bench"))
        store.close()
        configure_logging("WARNING", devnull)
    where = "in memory" if in_memory else "on disk"
    print(
        f"engine, paper broker + SQLite ledger {where}, logging {log_level:<7}: "
        f"{count / elapsed:7,.0f} intents/s "
        f"({placed:,} placed, {rows:,} ledger rows, {elapsed:.2f}s); "
        f"duplicate replays {1000 / replay_elapsed:,.0f}/s"
    )


def bench_paper_run(repeats: int) -> None:
    walls = []
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(repeats):
            start = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "functions.paper_run", "--no-progress", "--out", folder],
                cwd=ROOT,
                check=True,
                stdout=subprocess.DEVNULL,
            )
            walls.append(time.perf_counter() - start)
    print(
        f"full paper run, all three tapes, process start to exit: median {statistics.median(walls):.2f}s "
        f"over {repeats} runs (min {min(walls):.2f}s, max {max(walls):.2f}s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    iterations = 5_000 if args.quick else 50_000
    count = 2_000 if args.quick else 20_000
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus")
    bench_decision_path(iterations)
    bench_commit_floor(count)
    bench_engine(count, "WARNING")
    bench_engine(count, "INFO")
    bench_engine(count, "WARNING", in_memory=True)
    bench_paper_run(1 if args.quick else 5)


if __name__ == "__main__":
    main()
