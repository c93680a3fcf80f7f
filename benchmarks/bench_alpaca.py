"""Alpaca figures, the real alpaca-py SDK against the local Alpaca-compatible test server.

    python benchmarks/bench_alpaca.py [--latency-ms 50]

1. A strategy run over 50 symbols in three asset classes (30 equities, 12 crypto pairs, 8 options):
   quote requests made and quote time per trade (the design document's figure: +50-100 ms per
   trade, one quote request per order).
2. The submit path: AlpacaBroker.submit_order beside a raw HTTP POST of the same order to the same
   server, so the adapter's own overhead shows.
Every request goes to 127.0.0.1, with the server answering after the injected latency.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.adapters.alpaca.broker import AlpacaBroker
from backend.adapters.alpaca.market_data import AlpacaMarketData
from backend.adapters.alpaca.settings import AlpacaSettings
from backend.adapters.sqlite_store import SQLiteExecutionStore
from backend.core.instruments import AssetClass
from backend.core.intents import Side
from backend.core.orders import OrderRequest
from backend.core.risk import RiskLimits
from backend.execution.engine import ExecutionEngine, OrderIntent, RiskManager, SmartRouter
from backend.execution.settings import ExecSettings
from devtools.alpaca_simulator import FakeAlpaca, running

EQUITIES = [f"EQ{i:02d}" for i in range(30)]
CRYPTO = [
    f"{coin}/USD"
    for coin in ("BTC", "ETH", "SOL", "XRP", "LTC", "BCH", "DOGE", "ADA", "AVAX", "DOT", "LINK", "UNI")
]
OPTIONS = [f"SPY2512{19 + i // 4:02d}{'CP'[i % 2]}00{450 + i:03d}000" for i in range(8)]


def settings_for(url: str) -> AlpacaSettings:
    return AlpacaSettings(
        trading_requests_per_minute=0,  # the adapter is measured here, not the pace
        api_key_id="bench",
        secret_key="bench",
        trading_url=url,
        data_url=url,
        timeout_s=5,
        quote_ttl_s=30,
    )


def strategy_run(url: str, fake: FakeAlpaca) -> None:
    settings = settings_for(url)
    market_data = AlpacaMarketData(settings)
    with tempfile.TemporaryDirectory() as folder:
        engine = ExecutionEngine(
            broker=AlpacaBroker(settings),
            router=SmartRouter(max_spread_pct_by_asset_class={"OPTIONS": 0.05}, market_data=market_data),
            risk=RiskManager(RiskLimits(max_position_qty=Decimal(10**6), max_daily_trades=10**6)),
            dry_run=False,
            store=SQLiteExecutionStore(Path(folder) / "bench.sqlite3"),
            settings=ExecSettings(tenant_id="bench", uid="bench"),
        )
        symbols = EQUITIES + CRYPTO + OPTIONS
        before = len(fake.log)
        started = time.perf_counter()
        quotes = market_data.get_quotes(symbols)  # the run's one batch
        quote_s = time.perf_counter() - started
        placed = 0
        for index, symbol in enumerate(symbols):
            intent = OrderIntent(
                strategy_id="bench", broker_account_id="acct", symbol=symbol, side="buy", qty=1,
                idempotency_key=f"run-1:{index}",
            )  # fmt: skip
            placed += engine.execute_intent(intent, quote=quotes[symbol]).status.value == "placed"
        total_s = time.perf_counter() - started
        data_requests = sum(1 for _, path, _ in fake.log[before:] if "quotes" in path)
    latency = fake.latency_s * 1000
    print(f"strategy run, {len(symbols)} symbols in 3 asset classes, {latency:.0f} ms injected per request:")
    print(f"  quote requests: {data_requests} (one per asset class, fetched concurrently); "
          f"quote time {quote_s * 1000:.1f} ms in all = {quote_s * 1000 / len(symbols):.2f} ms per trade "
          f"(design document: +50-100 ms per trade)")  # fmt: skip
    per_trade = total_s * 1000 / len(symbols)
    print(f"  orders placed: {placed}/{len(symbols)}; whole run {total_s:.2f} s "
          f"({per_trade:.1f} ms per trade, the order's own round trip included)")  # fmt: skip


def submit_path(url: str, fake: FakeAlpaca, count: int, label: str) -> None:
    broker = AlpacaBroker(settings_for(url))
    raw = requests.Session()
    headers = {"APCA-API-KEY-ID": "bench", "APCA-API-SECRET-KEY": "bench"}
    adapter_ms, raw_ms = [], []
    for i in range(count):
        request = OrderRequest(
            f"{label}-adapter-{i}", "acct", "EQ00", AssetClass.EQUITY, Side.BUY, Decimal(1)
        )
        start = time.perf_counter()
        broker.submit_order(request)
        adapter_ms.append((time.perf_counter() - start) * 1000)
        body = {"symbol": "EQ00", "qty": 1, "side": "buy", "type": "market", "time_in_force": "day",
                "client_order_id": f"{label}-raw-{i}"}  # fmt: skip
        start = time.perf_counter()
        response = raw.post(f"{url}/v2/orders", json=body, headers=headers, timeout=5)
        response.json()
        raw_ms.append((time.perf_counter() - start) * 1000)
    adapter, plain = statistics.median(adapter_ms), statistics.median(raw_ms)
    latency = fake.latency_s * 1000
    print(f"submit path, {count} orders, {latency:.0f} ms injected: AlpacaBroker p50 {adapter:.2f} ms, "
          f"raw HTTP POST p50 {plain:.2f} ms -> adapter overhead {adapter - plain:.2f} ms")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--latency-ms", type=float, default=50)
    parser.add_argument("--orders", type=int, default=40)
    args = parser.parse_args()
    fake = FakeAlpaca(latency_s=args.latency_ms / 1000)
    for symbol in EQUITIES:
        fake.set_quote(symbol, "99.99", "100.01")
    for symbol in CRYPTO:
        fake.set_quote(symbol, "999.90", "1000.10")
    for symbol in OPTIONS:
        fake.set_quote(symbol, "4.10", "4.12")
    with running(fake) as url:
        strategy_run(url, fake)
        submit_path(url, fake, args.orders, "slow")
        fake.latency_s = 0
        submit_path(url, fake, args.orders, "fast")


if __name__ == "__main__":
    main()
