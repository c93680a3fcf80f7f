"""The whole stack on this machine, for trying it by hand:

    python -m devtools.local_stack          (or ./scripts/local_stack.sh, which sets up first)

Starts Google's Firestore (with firestore.rules) and Pub/Sub emulators, the local Alpaca-compatible
simulator, and the functions from main.py, each served by functions-framework on 127.0.0.1; plays
Eventarc's part (Pub/Sub messages and new ledger documents are delivered to their functions as
CloudEvents); seeds a tenant with one strategy; prints where to look. Ctrl-C stops everything.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import requests

from devtools.alpaca_simulator import FakeAlpaca, running
from devtools.emulators import PROJECT, FirestoreEmulator, PubSubEmulator, missing_reason
from devtools.eventarc import firestore_created_event, pubsub_event
from devtools.served_functions import ROOT, ServedFunction
from devtools.tokens import unsigned_token

TENANT, STRATEGY, UID = "demo", "equity_builder", "demo-user"
QUOTES = {"AAPL": ("189.99", "190.01"), "MSFT": ("409.95", "410.05"), "SPY": ("511.20", "511.22"),
          "BTC/USD": ("49995", "50005")}  # fmt: skip


def _relay_messages(subscriber: Any, subscription: str, url: str, stop: threading.Event) -> None:
    """Pub/Sub -> run_strategy, as Eventarc would deliver it (at least once)."""
    while not stop.is_set():
        with contextlib.suppress(Exception):
            response = subscriber.pull(subscription=subscription, max_messages=10, timeout=5)
            for received in response.received_messages:
                headers, body = pubsub_event(received.message, subscription)
                if requests.post(url, headers=headers, data=body, timeout=300).ok:
                    subscriber.acknowledge(subscription=subscription, ack_ids=[received.ack_id])


def _relay_ledger(client: Any, url: str, stop: threading.Event) -> Any:
    """New ledger documents -> fan_out_ledger_trade, as protobuf DocumentEventData."""
    seen: set[str] = set()

    def on_change(snapshots: Any, changes: Any, read_time: Any) -> None:
        for change in changes:
            path = change.document.reference.path
            if change.type.name == "ADDED" and path not in seen and not stop.is_set():
                seen.add(path)
                headers, body = firestore_created_event(client, path)
                requests.post(url, headers=headers, data=body, timeout=60)

    return client.collection_group("ledger_trades").on_snapshot(on_change)


@contextlib.contextmanager
def stack() -> Iterator[dict[str, str]]:
    reason = missing_reason()
    if reason:
        raise SystemExit(f"cannot start the local stack: {reason}")
    firestore_emulator = FirestoreEmulator(rules=ROOT / "firestore.rules")
    pubsub_emulator = PubSubEmulator()
    firestore_emulator.start()
    pubsub_emulator.start()
    fake = FakeAlpaca()
    for symbol, (bid, ask) in QUOTES.items():
        fake.set_quote(symbol, bid, ask)
    served: list[ServedFunction] = []
    stop = threading.Event()
    try:
        with running(fake) as alpaca_url:
            os.environ.update(
                {"GOOGLE_CLOUD_PROJECT": PROJECT, "FIRESTORE_EMULATOR_HOST": firestore_emulator.host,
                 "PUBSUB_EMULATOR_HOST": pubsub_emulator.host,
                 "FIREBASE_AUTH_EMULATOR_HOST": "127.0.0.1:9099"}
            )  # fmt: skip
            env = {"EXEC_DRY_RUN": "0", "APCA_API_BASE_URL": alpaca_url, "APCA_API_DATA_URL": alpaca_url}
            # Each function gets only the secrets its manifest declares, as in deployment.
            secrets = {"APCA_API_KEY_ID": "local", "APCA_API_SECRET_KEY": "local"}
            urls = {}
            for name, kind in (("execute", "http"), ("orders", "http"), ("schedule_strategy_runs", "http"),
                               ("run_strategy", "cloudevent"), ("fan_out_ledger_trade", "cloudevent"),
                               ("redrive_portfolio", "http"), ("check_positions", "http")):  # fmt: skip
                function = ServedFunction.for_manifest(name, env, secrets, kind)
                function.start()
                served.append(function)
                urls[name] = function.url

            from google.cloud import firestore, pubsub_v1

            publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
            topic = publisher.topic_path(PROJECT, "strategy-runs")
            publisher.create_topic(name=topic)
            subscription = subscriber.subscription_path(PROJECT, "strategy-runs-local")
            subscriber.create_subscription(name=subscription, topic=topic)
            client = firestore.Client(project=PROJECT)
            client.document(f"tenants/{TENANT}/strategies/{STRATEGY}").set(
                {"enabled": True, "strategy": "cost_aware_equity", "symbols": ["AAPL", "MSFT"],
                 "broker_account_id": "alpaca_paper", "uid": UID, "config": {"target_qty": 5},
                 "qty": {"EQUITY": "5"}}
            )  # fmt: skip
            relay_args = (subscriber, subscription, urls["run_strategy"], stop)
            threading.Thread(target=_relay_messages, args=relay_args, daemon=True).start()
            watch = _relay_ledger(client, urls["fan_out_ledger_trade"], stop)
            urls["firestore"] = f"http://{firestore_emulator.host}"
            urls["alpaca"] = alpaca_url
            try:
                yield urls
            finally:
                watch.unsubscribe()
    finally:
        stop.set()
        for function in served:
            function.stop()
        pubsub_emulator.stop()
        firestore_emulator.stop()


def main() -> None:
    with stack() as urls:
        token = unsigned_token({"uid": UID, "tenant_id": TENANT, "role": "trader"})
        documents = f"{urls['firestore']}/v1/projects/{PROJECT}/databases/(default)/documents"
        print(f"""
Local stack is up (project {PROJECT}). Ctrl-C stops it.

  execute (HTTPS):      {urls["execute"]}
  orders (HTTPS):       {urls["orders"]}
  strategy tick:        {urls["schedule_strategy_runs"]}
  Alpaca simulator:     {urls["alpaca"]}
  Firestore emulator:   {urls["firestore"]}

Seeded: tenant '{TENANT}' with strategy '{STRATEGY}' (cost_aware_equity on AAPL and MSFT, for user '{UID}').

Run the strategy now (what Cloud Scheduler does; without its header a scheduled function does nothing):
  curl -X POST {urls["schedule_strategy_runs"]} -H 'X-CloudScheduler: true'

Check Alpaca's positions against the ledger (findings in the function log as positions.* events):
  curl -X POST {urls["check_positions"]} -H 'X-CloudScheduler: true'

Send an order as a trader of '{TENANT}' (an emulator ID token; valid for an hour):
  curl -X POST {urls["execute"]} -H 'Content-Type: application/json' \\
    -H 'Authorization: Bearer {token}' \\
    -d '{{"strategy_id": "manual", "broker_account_id": "alpaca_paper", "symbol": "SPY",
         "side": "buy", "qty": 2, "idempotency_key": "first-order"}}'

Read it back (state, fills, ledger rows, decision), or cancel it while it rests:
  curl '{urls["orders"]}/?idempotency_key=first-order' -H 'Authorization: Bearer {token}'
  curl -X POST {urls["orders"]}/cancel -H 'Content-Type: application/json' \\
    -H 'Authorization: Bearer {token}' -d '{{"idempotency_key": "first-order"}}'

Where to look:
  ledger:     curl '{documents}/tenants/{TENANT}/ledger_trades' -H 'Authorization: Bearer owner'
  decisions:  curl '{documents}/tenants/{TENANT}/decisions' -H 'Authorization: Bearer owner'
  history:    curl '{documents}/users/{UID}/portfolio/history/trades' -H 'Authorization: Bearer owner'
  function logs (JSON lines): {os.environ.get("TMPDIR", "/tmp")}/function-*.log
""")
        stopped = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stopped.set())
        with contextlib.suppress(KeyboardInterrupt):
            while not stopped.is_set():
                time.sleep(0.5)


if __name__ == "__main__":
    main()
