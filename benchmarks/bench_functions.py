"""Cloud Functions figures: cold-start import cost, and HTTP throughput of the served execute function.

    python benchmarks/bench_functions.py [--requests 2000] [--clients 8] [--max-seconds 60]

1. Cold start: a fresh interpreter importing the deployed ``main.py``, beside one importing the
   Firebase Functions SDK alone (median of several runs each).
2. Throughput: a bounded load (loopback only, a fixed number of requests, a time cap) against
   ``execute`` served by functions-framework — paper broker, embedded SQLite store, quotes from the
   local Alpaca-compatible server — beside the same load against a trivial functions-framework
   function. Requests/s, p50 and p99.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devtools.alpaca_simulator import FakeAlpaca, running  # noqa: E402
from devtools.emulators import PROJECT  # noqa: E402
from devtools.served_functions import ServedFunction  # noqa: E402
from devtools.tokens import unsigned_token  # noqa: E402

SDK_ONLY = "from firebase_functions import firestore_fn, https_fn, pubsub_fn, scheduler_fn"


def import_seconds(code: str, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cold_start(runs: int) -> None:
    bare = import_seconds("pass", runs)
    sdk = import_seconds(SDK_ONLY, runs) - bare
    ours = import_seconds("import main", runs) - bare
    print(f"cold start (median of {runs}, interpreter start {bare * 1000:.0f} ms excluded): "
          f"Firebase Functions SDK alone {sdk * 1000:.0f} ms, main.py {ours * 1000:.0f} ms "
          f"-> {ours / sdk:.2f}x the SDK")  # fmt: skip


def load(url: str, total: int, clients: int, max_seconds: float, body: dict[str, object] | None) -> None:
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    counter = iter(range(total))
    deadline = time.monotonic() + max_seconds
    token = unsigned_token({"uid": "bench", "tenant_id": "bench", "role": "trader"})

    def client() -> None:
        nonlocal errors
        session = requests.Session()
        while time.monotonic() < deadline:
            with lock:
                index = next(counter, None)
            if index is None:
                return
            headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": f"load-{index}"}
            # Buys and sells alternate: a position (and its open tax lots) stays small.
            payload = {**body, "side": "buy" if index % 2 else "sell"} if body else {}
            start = time.perf_counter()
            response = session.post(url, json=payload, headers=headers, timeout=10)
            elapsed = time.perf_counter() - start
            with lock:
                latencies.append(elapsed)
                errors += response.status_code != 200

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    ordered = sorted(latencies)
    p50 = ordered[len(ordered) // 2] * 1000
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
    rate = len(latencies) / wall
    print(f"  {len(latencies)} requests, {clients} clients, {wall:.2f} s: {rate:,.0f} req/s, "
          f"p50 {p50:.2f} ms, p99 {p99:.2f} ms, non-200: {errors}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-seconds", type=float, default=60)
    parser.add_argument("--import-runs", type=int, default=5)
    args = parser.parse_args()
    cold_start(args.import_runs)

    fake = FakeAlpaca()
    fake.set_quote("AAPL", "189.99", "190.01")
    with tempfile.TemporaryDirectory() as folder, running(fake) as alpaca_url:
        execute = ServedFunction(
            "execute",
            {
                "GOOGLE_CLOUD_PROJECT": PROJECT,
                "FIREBASE_AUTH_EMULATOR_HOST": "127.0.0.1:9099",
                "EXEC_STORE": "sqlite",
                "EXEC_SQLITE_PATH": str(Path(folder) / "ledger.sqlite3"),
                "EXEC_DRY_RUN": "0",
                "EXEC_VENUES": '{"EQUITY": "paper", "CRYPTO": "paper", "OPTIONS": "paper"}',
                "EXEC_MAX_POSITION_QTY": "1000000000",
                "EXEC_MAX_DAILY_TRADES": "1000000000",
                "APCA_API_KEY_ID": "bench",
                "APCA_API_SECRET_KEY": "bench",
                "APCA_API_BASE_URL": alpaca_url,
                "APCA_API_DATA_URL": alpaca_url,
                "EXEC_ALPACA_QUOTE_TTL_S": os.environ.get("EXEC_ALPACA_QUOTE_TTL_S", "1"),
            },
        )
        execute.start()
        try:
            body = {
                "strategy_id": "load",
                "broker_account_id": "paper",
                "symbol": "AAPL",
                "side": "buy",
                "qty": 1,
            }
            # One accepted request first: the instance builds its engine on its first call.
            warm = unsigned_token({"uid": "bench", "tenant_id": "bench", "role": "trader"})
            requests.post(execute.url, json=body, headers={"Authorization": f"Bearer {warm}"}, timeout=30)
            print("execute (paper broker, SQLite store, Firebase ID token, JSON logs):")
            load(execute.url, args.requests, args.clients, args.max_seconds, body)
        finally:
            execute.stop()
    print("trivial functions-framework function (the baseline):")
    baseline(args)


def baseline(args: argparse.Namespace) -> None:
    from devtools.emulators import free_port

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "functions_framework", "--target", "hello",
         "--source", str(ROOT / "benchmarks" / "trivial_function.py"),
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                requests.post(url, json={}, timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        load(url, args.requests, args.clients, args.max_seconds, {})
    finally:
        os.killpg(process.pid, 15)
        process.wait(timeout=10)


if __name__ == "__main__":
    main()
