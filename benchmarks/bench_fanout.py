"""Fan-out cost per trade against the number of open lots, and a late trade against a long history.

    python benchmarks/bench_fanout.py [--firestore] [--levels 1000,5000,20000] [--trades 200]

For each level, one symbol gets that many open lots (one buy each), then ``--trades`` in-order
trades are fanned out, alternately a buy (opens a lot) and a FIFO sale of one lot (reads the lot
it consumes): the median is the figure, beside the floor it should stay under. Then a history of
4,000 entries (three buys, one sale, repeated) takes two late trades: a buy after the last sale
(booked alone) and a sale before most of the history (the symbol's history is replayed).

SQLite always; ``--firestore`` also on Google's emulator (started on a free port; needs gcloud +
java; the lots are seeded with batched writes there). Emulator latencies are not production
latencies: they show what grows.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.core.instruments import AssetClass
from backend.core.intents import Side
from backend.core.paths import portfolio_trade_path
from backend.core.portfolio import ExecutionLink, PortfolioTrade
from backend.core.tax_lots import LotMethod

T0 = datetime(2026, 1, 5, 14, 30, tzinfo=UTC)
SQLITE_FLOOR_MS = 1.0
UID = "bench-user"


def entry(
    trade_id: str, side: Side, at: datetime, symbol: str, qty: str = "1", price: str = "100"
) -> PortfolioTrade:
    quantity, unit = Decimal(qty), Decimal(price)
    return PortfolioTrade(
        schema_version=2,
        path=portfolio_trade_path(UID, trade_id),
        history_id=trade_id,
        uid=UID,
        tenant_id="bench",
        ledger_path=f"tenants/bench/ledger_trades/{trade_id}",
        strategy_id="bench",
        broker_account_id="acct",
        asset_class=AssetClass.EQUITY,
        symbol=symbol,
        quote_currency="USD",
        side=side,
        qty=quantity,
        price=unit,
        notional=quantity * unit,
        fees=Decimal(0),
        estimated_slippage=None,
        spread_pct=None,
        executed_at=at,
        trading_date=at.date().isoformat(),
        tax_year=at.year,
        execution=ExecutionLink("paper", f"o-{trade_id}", f"c-{trade_id}", "filled", trade_id),
        multiplier=Decimal(1),
        filled_qty=quantity,
        fee_currency="USD",
        fee_amount=Decimal(0),
    )


def buys(symbol: str, count: int) -> list[PortfolioTrade]:
    return [
        entry(f"{symbol}-b{i:06d}", Side.BUY, T0 + timedelta(minutes=5 * i), symbol, price=str(100 + i % 37))
        for i in range(count)
    ]


def mixed_history(symbol: str, count: int) -> list[PortfolioTrade]:
    """A buy, a sale of one, two buys, repeated (5-minute steps): the last two entries are buys."""
    return [
        entry(
            f"{symbol}-h{i:06d}", Side.SELL if i % 4 == 1 else Side.BUY, T0 + timedelta(minutes=5 * i), symbol
        )
        for i in range(count)
    ]


def seed_sqlite(store: Any, entries: list[PortfolioTrade]) -> None:
    for item in entries:  # the real fan-out, in order: what a live symbol goes through
        store.apply_history_entry(item, LotMethod.FIFO)


def seed_firestore(store: Any, entries: list[PortfolioTrade]) -> None:
    """The state the fan-out would leave, written in batches (a trade at a time is slow there)."""
    from google.cloud import firestore

    from backend.adapters.documents import HISTORY_ENTRIES, LOTS_SNAPSHOTS, OPEN_LOTS, to_document
    from backend.core.lot_documents import replay

    booking = replay(entries, [], LotMethod.FIFO)
    documents = [(e.path, to_document(HISTORY_ENTRIES, e)) for e in booking.changed]
    documents += [(lot.path, to_document(OPEN_LOTS, lot)) for lot in booking.upserts]
    documents.append((booking.summary.path, to_document(LOTS_SNAPSHOTS, booking.summary)))
    client: firestore.Client = store._db
    for start in range(0, len(documents), 400):
        batch = client.batch()
        for path, document in documents[start : start + 400]:
            batch.set(client.document(path), document)
        batch.commit()


def timed(run: Callable[[], object]) -> float:
    begin = time.perf_counter()
    run()
    return (time.perf_counter() - begin) * 1000


def per_trade(store: Any, symbol: str, open_lots: int, trades: int) -> list[float]:
    start = T0 + timedelta(minutes=5 * open_lots)
    figures = []
    for i in range(trades):
        side = Side.SELL if i % 2 else Side.BUY
        item = entry(f"{symbol}-t{i:06d}", side, start + timedelta(minutes=5 * i), symbol, price="120")
        figures.append(timed(lambda item=item: store.apply_history_entry(item, LotMethod.FIFO)))
    return figures


def run(
    name: str, store: Any, seed: Callable[[Any, list[PortfolioTrade]], None], levels: list[int], trades: int
) -> None:
    floor = f" (floor {SQLITE_FLOOR_MS:.0f} ms)" if name == "sqlite" else ""
    for level in levels:
        symbol = f"L{level}"
        began = time.perf_counter()
        seed(store, buys(symbol, level))
        seeded = time.perf_counter() - began
        figures = per_trade(store, symbol, level, trades)
        summary = store.lots(UID, "acct", symbol)
        print(
            f"{name}: fan-out per trade at {level:>6,} open lots: p50 {statistics.median(figures):.3f} ms, "
            f"p95 {sorted(figures)[int(len(figures) * 0.95)]:.3f} ms{floor}; "
            f"buys p50 {statistics.median(figures[0::2]):.3f} ms, "
            f"sales {statistics.median(figures[1::2]):.3f} ms  "
            f"[{len(summary.open_lots):,} lots after; seeded in {seeded:.1f} s]"
        )
    history = mixed_history("LATE", 4000)
    seed(store, history)
    # between the last two buys: late, but after the last sale
    late_buy = entry("LATE-late-buy", Side.BUY, history[-1].executed_at - timedelta(seconds=1), "LATE")
    late_sale = entry("LATE-late-sale", Side.SELL, T0 + timedelta(minutes=5 * 100 + 1), "LATE")
    buy_ms = timed(lambda: store.apply_history_entry(late_buy, LotMethod.FIFO))
    sale_ms = timed(lambda: store.apply_history_entry(late_sale, LotMethod.FIFO))
    print(f"{name}: late buy after the last sale, 4,000 history entries: {buy_ms:.3f} ms (booked alone)")
    print(
        f"{name}: late sale early in a 4,000-entry history: {sale_ms:.1f} ms (replays the symbol's history)"
    )


def emulator_store() -> Iterator[Any]:
    from google.cloud import firestore

    from backend.adapters.firestore_store import FirestoreExecutionStore
    from devtools.emulators import PROJECT, FirestoreEmulator, missing_reason

    reason = missing_reason()
    if reason:
        raise SystemExit(f"cannot run on the emulator: {reason}")
    emulator = FirestoreEmulator()
    emulator.start()
    os.environ["FIRESTORE_EMULATOR_HOST"] = emulator.host
    try:
        client = firestore.Client(project=PROJECT)
        yield FirestoreExecutionStore(client)
        client.close()
    finally:
        emulator.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--levels", default="1000,5000,20000")
    parser.add_argument("--trades", type=int, default=200)
    parser.add_argument("--firestore", action="store_true", help="also on the Firestore emulator")
    args = parser.parse_args()
    levels = [int(level) for level in args.levels.split(",")]
    from backend.adapters.sqlite_store import SQLiteExecutionStore

    with tempfile.TemporaryDirectory() as directory:
        store = SQLiteExecutionStore(Path(directory) / "bench.sqlite3")
        run("sqlite", store, seed_sqlite, levels, args.trades)
    if args.firestore:
        for store in emulator_store():
            run("firestore emulator", store, seed_firestore, levels, min(args.trades, 100))


if __name__ == "__main__":
    main()
