"""Firestore figures on Google's emulator: commits per executed trade, the claim and record
transactions' latency, and the fan-out handler's latency.

    python benchmarks/bench_firestore.py [--trades 200]

The emulator is started on a free port and stopped at the end (needs gcloud + java). Emulator
latencies are not production latencies: they show the shape (how many round trips, what grows).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.adapters.market_data import StaticMarketData
from backend.adapters.paper_broker import PaperBroker
from backend.core.risk import RiskLimits
from backend.execution.engine import ExecutionEngine, OrderIntent, RiskManager, SmartRouter
from backend.execution.fanout import fan_out_ledger_trade
from backend.execution.ports import ManualClock
from backend.execution.settings import ExecSettings
from devtools.emulators import PROJECT, FirestoreEmulator, missing_reason


class Timed:
    """Wraps a store and times its claim / commit_order calls (and counts commits)."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.timings: dict[str, list[float]] = {"claim": [], "commit_order": []}

    def __getattr__(self, name: str) -> object:
        attribute = getattr(self.inner, name)
        if name not in self.timings:
            return attribute

        def timed(*args: object, **kwargs: object) -> object:
            start = time.perf_counter()
            try:
                return attribute(*args, **kwargs)
            finally:
                self.timings[name].append((time.perf_counter() - start) * 1000)

        return timed


def p50(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ms" if values else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trades", type=int, default=200)
    args = parser.parse_args()
    reason = missing_reason()
    if reason:
        raise SystemExit(f"cannot run: {reason}")
    emulator = FirestoreEmulator()
    emulator.start()
    os.environ["FIRESTORE_EMULATOR_HOST"] = emulator.host
    try:
        from google.cloud import firestore

        from backend.adapters.firestore_store import FirestoreExecutionStore

        client = firestore.Client(project=PROJECT)
        store = Timed(FirestoreExecutionStore(client))
        clock = ManualClock(datetime(2026, 3, 2, 15, 30, tzinfo=UTC))
        market = StaticMarketData(clock=clock)
        symbols = ["AAPL", "MSFT", "SPY", "TSLA", "NVDA"]
        for symbol in symbols:
            market.set_quote(symbol, "99.99", "100.01")
        engine = ExecutionEngine(
            broker=PaperBroker(market, clock),
            router=SmartRouter(market_data=market, clock=clock),
            risk=RiskManager(RiskLimits(max_position_qty=Decimal(10**9), max_daily_trades=10**9)),
            dry_run=False,
            store=store,  # type: ignore[arg-type]
            clock=clock,
            settings=ExecSettings(tenant_id="bench", uid="bench-user"),
        )
        start = time.perf_counter()
        for i in range(args.trades):
            clock.advance(timedelta(seconds=1))
            for symbol in symbols:
                market.set_quote(symbol, "99.99", "100.01")
            intent = OrderIntent(
                strategy_id="bench",
                broker_account_id="acct",
                symbol=symbols[i % len(symbols)],
                side="buy" if i % 3 else "sell",
                qty=1,
                idempotency_key=f"fs-bench-{i}",
            )
            engine.execute_intent(intent)
        elapsed = time.perf_counter() - start
        trades = list(store.inner.iter_ledger_trades("bench"))  # type: ignore[attr-defined]
        commits = len(store.timings["claim"]) + len(store.timings["commit_order"])
        print(f"executed trades: {len(trades)} in {elapsed:.2f}s ({len(trades) / elapsed:.1f}/s, sequential)")
        print(
            f"commits per executed trade on the request path: {commits / len(trades):.1f} "
            "(claim transaction + order update transaction)"
        )
        print(
            f"claim transaction (key + daily slot + in-flight position):   p50 {p50(store.timings['claim'])}"
        )
        print(
            "order update (order + decision + ledger row + position):     "
            f"p50 {p50(store.timings['commit_order'])}"
        )
        fan_out_ms = []
        for trade in trades:
            begin = time.perf_counter()
            fan_out_ledger_trade(trade, store.inner)  # type: ignore[arg-type]
            fan_out_ms.append((time.perf_counter() - begin) * 1000)
        per_symbol = len(trades) // len(symbols)
        print(
            f"fan-out handler (history + lots, {per_symbol} trades per symbol by the end): "
            f"p50 {p50(fan_out_ms)}, first {fan_out_ms[0]:.2f} ms, last {fan_out_ms[-1]:.2f} ms"
        )
        client.close()
    finally:
        emulator.stop()


if __name__ == "__main__":
    main()
