"""End to end on Google's emulators: the scheduled function publishes a real Pub/Sub message, the
strategy-run function (served by functions-framework) places orders through the real alpaca-py SDK
at the local Alpaca server, ledger rows land in the Firestore emulator, and the fan-out function
receives each row as Eventarc delivers it (a protobuf DocumentEventData of the document read back)
and writes the portfolio history. Then every message and event is delivered again: nothing changes.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import requests

from devtools.alpaca_simulator import FakeAlpaca, running
from devtools.emulators import PROJECT, FirestoreEmulator, PubSubEmulator, emulators_required, missing_reason
from devtools.eventarc import firestore_created_event, pubsub_event
from devtools.served_functions import ServedFunction

TENANT, STRATEGY, UID = "acme_corp", "equity_builder", "u1"
SCHEDULE_TIME = "2026-03-02T15:30:00Z"


@pytest.fixture(scope="module")
def pubsub_emulator() -> Iterator[PubSubEmulator]:
    reason = missing_reason()
    if reason is not None:
        if emulators_required():
            pytest.fail(reason)
        pytest.skip(reason)
    emulator = PubSubEmulator()
    emulator.start()
    yield emulator
    emulator.stop()


@pytest.fixture(scope="module")
def fake() -> FakeAlpaca:
    fake = FakeAlpaca()
    fake.set_quote("AAPL", "189.99", "190.01")
    fake.set_quote("MSFT", "409.95", "410.05")
    return fake


@pytest.fixture(scope="module")
def stack(
    firestore_emulator: FirestoreEmulator, pubsub_emulator: PubSubEmulator, fake: FakeAlpaca
) -> Iterator[dict[str, str]]:
    with running(fake) as alpaca_url:
        env = {
            "GOOGLE_CLOUD_PROJECT": PROJECT,
            "FIRESTORE_EMULATOR_HOST": firestore_emulator.host,
            "PUBSUB_EMULATOR_HOST": pubsub_emulator.host,
            "EXEC_DRY_RUN": "0",
            "APCA_API_KEY_ID": "test-key",
            "APCA_API_SECRET_KEY": "test-secret",
            "APCA_API_BASE_URL": alpaca_url,
            "APCA_API_DATA_URL": alpaca_url,
        }
        served = {
            "schedule": ServedFunction("schedule_strategy_runs", env),
            "run": ServedFunction("run_strategy", env, "cloudevent"),
            "fan_out": ServedFunction("fan_out_ledger_trade", env, "cloudevent"),
        }
        for function in served.values():
            function.start()
        try:
            yield {name: function.url for name, function in served.items()}
        finally:
            for function in served.values():
                function.stop()


def test_scheduled_run_to_portfolio_history_exactly_once(
    stack: dict[str, str], firestore_client: Any, pubsub_emulator: PubSubEmulator, fake: FakeAlpaca
) -> None:
    import os

    from google.api_core.exceptions import AlreadyExists
    from google.cloud import pubsub_v1

    os.environ["PUBSUB_EMULATOR_HOST"] = pubsub_emulator.host
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic = publisher.topic_path(PROJECT, "strategy-runs")
    with contextlib.suppress(AlreadyExists):  # the emulator has no reset; the topic may exist
        publisher.create_topic(name=topic)
    subscription = subscriber.subscription_path(PROJECT, f"e2e-{uuid.uuid4().hex[:8]}")
    subscriber.create_subscription(name=subscription, topic=topic)

    firestore_client.document(f"tenants/{TENANT}/strategies/{STRATEGY}").set(
        {
            "enabled": True,
            "strategy": "cost_aware_equity",
            "symbols": ["AAPL", "MSFT"],
            "broker_account_id": "alpaca_main",
            "uid": UID,
            "config": {"target_qty": 5},
            "qty": {"EQUITY": "5"},
        }
    )
    firestore_client.document("tenants/other_corp/strategies/paused").set(
        {"enabled": False, "strategy": "cost_aware_equity", "symbols": ["AAPL"], "broker_account_id": "a",
         "uid": "u2"}
    )  # fmt: skip

    def tick() -> None:
        answer = requests.post(
            stack["schedule"], headers={"X-CloudScheduler-ScheduleTime": SCHEDULE_TIME}, timeout=60
        )
        assert answer.status_code == 200, answer.text

    def pull() -> list[Any]:
        response = subscriber.pull(subscription=subscription, max_messages=10, timeout=20)
        subscriber.acknowledge(
            subscription=subscription, ack_ids=[m.ack_id for m in response.received_messages]
        )
        return [m.message for m in response.received_messages]

    tick()
    messages = pull()
    assert len(messages) == 1  # one enabled strategy, one message
    run = json.loads(messages[0].data)
    assert run == {"tenant_id": TENANT, "strategy_id": STRATEGY, "run_id": "20260302T1530Z"}

    headers, body = pubsub_event(messages[0], subscription)
    assert requests.post(stack["run"], headers=headers, data=body, timeout=60).status_code == 200
    ledger = list(firestore_client.collection(f"tenants/{TENANT}/ledger_trades").stream())
    assert sorted(doc.get("symbol") for doc in ledger) == ["AAPL", "MSFT"]
    assert all(Decimal(doc.get("qty")) == 5 for doc in ledger)
    assert fake.requests_to("POST", "/v2/orders") == 2
    assert fake.requests_to("GET", "/v2/stocks/quotes/latest") == 1  # one batch for the run

    for doc in ledger:
        event_headers, event_body = firestore_created_event(firestore_client, doc.reference.path)
        answer = requests.post(stack["fan_out"], headers=event_headers, data=event_body, timeout=60)
        assert answer.status_code == 200, answer.text
    history = list(firestore_client.collection(f"users/{UID}/portfolio/history/trades").stream())
    assert sorted(entry.id for entry in history) == sorted(doc.id for doc in ledger)
    assert all(entry.get("tax")["lot_method"] == "FIFO" for entry in history)

    # Everything again: the tick (same scheduled time), the message, the Firestore events.
    tick()
    again = pull()
    assert len(again) == 1
    assert json.loads(again[0].data)["run_id"] == run["run_id"]
    for message in (messages[0], again[0]):
        headers, body = pubsub_event(message, subscription)
        assert requests.post(stack["run"], headers=headers, data=body, timeout=60).status_code == 200
    for doc in ledger:
        event_headers, event_body = firestore_created_event(firestore_client, doc.reference.path)
        assert (
            requests.post(stack["fan_out"], headers=event_headers, data=event_body, timeout=60).status_code
            == 200
        )

    assert len(list(firestore_client.collection(f"tenants/{TENANT}/ledger_trades").stream())) == 2
    assert len(list(firestore_client.collection(f"users/{UID}/portfolio/history/trades").stream())) == 2
    assert fake.requests_to("POST", "/v2/orders") == 2
    run_record = firestore_client.document(f"tenants/{TENANT}/strategy_runs/{STRATEGY}~{run['run_id']}").get()
    assert run_record.get("status") == "done"
    assert run_record.get("outcomes") == {"placed": 2}


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"not json", "not a strategy-run message"),
        (b'{"tenant_id": "t", "strategy_id": "s"}', "not a strategy-run message"),
        (b'{"tenant_id": "t/x", "strategy_id": "s", "run_id": "r"}', "not a strategy-run message"),
        (b'{"tenant_id": "t", "strategy_id": "missing", "run_id": "r"}', "no strategy missing"),
    ],
)
def test_malformed_runs_are_logged_and_acknowledged(
    firestore_client: Any, monkeypatch: pytest.MonkeyPatch, data: bytes, why: str
) -> None:
    import io

    import functions.cloud as cloud
    from backend.observability.logging import configure_logging

    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", PROJECT)
    monkeypatch.setattr(cloud, "_configured", True)
    stream = io.StringIO()
    configure_logging("INFO", stream)
    assert cloud.run_message("m-1", data) is None  # returned normally: Pub/Sub acknowledges it
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    malformed = [e for e in events if e["event"] == "runs.malformed"]
    assert len(malformed) == 1
    assert why in malformed[0]["message"]
    assert malformed[0]["severity"] == "ERROR"
