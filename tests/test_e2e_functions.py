"""End to end on Google's emulators: the scheduled function publishes a real Pub/Sub message, the
strategy-run function (served by functions-framework) places orders through the real alpaca-py SDK
at the local Alpaca server, ledger rows land in the Firestore emulator, and the fan-out function
receives each row as Eventarc delivers it (a protobuf DocumentEventData of the document read back)
and writes the portfolio history. Then every message and event is delivered again: nothing changes.

Each function is served with the secrets its manifest declares and no others, as deployed: the
fan-out and the re-drive run without the broker keys.
"""

from __future__ import annotations

import contextlib
import io
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import requests

from backend.adapters.documents import LEDGER_ENTRIES, to_document
from backend.adapters.firestore_store import FirestoreExecutionStore
from backend.adapters.market_data import StaticMarketData
from backend.adapters.paper_broker import PaperBroker
from backend.core.intents import OrderIntent
from backend.core.ledger import LedgerTrade
from backend.core.orders import ExecutionStatus
from backend.core.paths import portfolio_trade_path
from backend.execution.engine import ExecutionEngine, RiskManager, SmartRouter
from backend.execution.ports import ManualClock
from backend.execution.settings import ExecSettings
from devtools.alpaca_simulator import FakeAlpaca, running
from devtools.emulators import PROJECT, FirestoreEmulator, PubSubEmulator, emulators_required, missing_reason
from devtools.eventarc import firestore_created_event, pubsub_event
from devtools.served_functions import ServedFunction
from tests.conftest import EngineFactory

TENANT, STRATEGY, UID = "acme_corp", "equity_builder", "u1"
SCHEDULE_TIME = "2026-03-02T15:30:00Z"
BROKER_SECRETS = {"APCA_API_KEY_ID": "test-key", "APCA_API_SECRET_KEY": "test-secret"}


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
) -> Iterator[dict[str, ServedFunction]]:
    with running(fake) as alpaca_url:
        env = {  # plain env, as .env gives it to every function
            "GOOGLE_CLOUD_PROJECT": PROJECT,
            "FIRESTORE_EMULATOR_HOST": firestore_emulator.host,
            "PUBSUB_EMULATOR_HOST": pubsub_emulator.host,
            "EXEC_DRY_RUN": "0",
            "APCA_API_BASE_URL": alpaca_url,
            "APCA_API_DATA_URL": alpaca_url,
        }
        served = {
            "schedule": ServedFunction.for_manifest("schedule_strategy_runs", env, BROKER_SECRETS),
            "run": ServedFunction.for_manifest("run_strategy", env, BROKER_SECRETS, "cloudevent"),
            "fan_out": ServedFunction.for_manifest("fan_out_ledger_trade", env, BROKER_SECRETS, "cloudevent"),
        }
        try:
            with pytest.MonkeyPatch.context() as environ:
                # Keys in this process's own environment must not reach a function either.
                for key in BROKER_SECRETS:
                    environ.setenv(key, "from-the-test-process")
                for function in served.values():
                    function.start()
            yield served
        finally:
            for function in served.values():
                function.stop()


def placed_ledger_row(client: Any, now: datetime) -> LedgerTrade:
    """A ledger row written by the engine to the Firestore store (fan-out left to the trigger)."""
    clock = ManualClock(now)
    market = StaticMarketData(clock=clock)
    market.set_quote("AAPL", "189.99", "190.01")
    engine = ExecutionEngine(
        broker=PaperBroker(market, clock), router=SmartRouter(market_data=market, clock=clock),
        risk=RiskManager(), dry_run=False, store=FirestoreExecutionStore(client), clock=clock,
        settings=ExecSettings(tenant_id=TENANT, uid=UID, fanout="trigger"),
    )  # fmt: skip
    intent = OrderIntent(
        strategy_id="manual", broker_account_id="alpaca_main", symbol="AAPL", side="buy", qty=2,
        idempotency_key=f"row-{uuid.uuid4().hex[:8]}",
    )  # fmt: skip
    result = engine.execute_intent(intent)
    assert result.status is ExecutionStatus.PLACED
    assert result.ledger_path is not None
    trade = FirestoreExecutionStore(client).get_ledger_trade(TENANT, result.ledger_path.rsplit("/", 1)[1])
    assert trade is not None
    return trade


def history_entry(client: Any, trade: LedgerTrade) -> Any:
    return client.document(portfolio_trade_path(trade.uid, trade.trade_id)).get()


def test_fan_out_served_without_broker_secrets_writes_the_history(
    stack: dict[str, ServedFunction], firestore_client: Any
) -> None:
    fan_out = stack["fan_out"]
    assert fan_out.process_env is not None
    assert not BROKER_SECRETS.keys() & fan_out.process_env.keys()  # deployed without them
    trade = placed_ledger_row(firestore_client, datetime.now(UTC))
    assert not history_entry(firestore_client, trade).exists

    headers, body = firestore_created_event(firestore_client, trade.path)
    answer = requests.post(fan_out.url, headers=headers, data=body, timeout=60)
    assert answer.status_code == 200, answer.text
    entry = history_entry(firestore_client, trade)
    assert entry.exists
    assert (entry.get("ledger_path"), Decimal(entry.get("qty"))) == (trade.path, 2)
    assert entry.get("tax")["lot_method"] == "FIFO"


def test_scheduled_run_to_portfolio_history_exactly_once(
    stack: dict[str, ServedFunction],
    firestore_client: Any,
    pubsub_emulator: PubSubEmulator,
    fake: FakeAlpaca,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from google.api_core.exceptions import AlreadyExists
    from google.cloud import pubsub_v1

    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_emulator.host)
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
            stack["schedule"].url, headers={"X-CloudScheduler-ScheduleTime": SCHEDULE_TIME}, timeout=60
        )
        assert answer.status_code == 200, answer.text

    def pull() -> list[Any]:
        response = subscriber.pull(subscription=subscription, max_messages=10, timeout=20)
        subscriber.acknowledge(
            subscription=subscription, ack_ids=[m.ack_id for m in response.received_messages]
        )
        return [m.message for m in response.received_messages]

    # Not Cloud Scheduler (the Firebase CLI's health probe, a stray POST): answered, nothing published.
    assert requests.get(f"{stack['schedule'].url}/__/health", timeout=60).status_code == 200
    assert requests.post(stack["schedule"].url, timeout=60).status_code == 200
    tick()
    messages = pull()
    assert len(messages) == 1  # one enabled strategy, one message: the tick's
    run = json.loads(messages[0].data)
    assert run == {"tenant_id": TENANT, "strategy_id": STRATEGY, "run_id": "20260302T1530Z"}

    headers, body = pubsub_event(messages[0], subscription)
    assert requests.post(stack["run"].url, headers=headers, data=body, timeout=60).status_code == 200
    ledger = list(firestore_client.collection(f"tenants/{TENANT}/ledger_trades").stream())
    assert sorted(doc.get("symbol") for doc in ledger) == ["AAPL", "MSFT"]
    assert all(Decimal(doc.get("qty")) == 5 for doc in ledger)
    assert fake.requests_to("POST", "/v2/orders") == 2
    assert fake.requests_to("GET", "/v2/stocks/quotes/latest") == 1  # one batch for the run

    for doc in ledger:
        event_headers, event_body = firestore_created_event(firestore_client, doc.reference.path)
        answer = requests.post(stack["fan_out"].url, headers=event_headers, data=event_body, timeout=60)
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
        assert requests.post(stack["run"].url, headers=headers, data=body, timeout=60).status_code == 200
    for doc in ledger:
        event_headers, event_body = firestore_created_event(firestore_client, doc.reference.path)
        assert (
            requests.post(
                stack["fan_out"].url, headers=event_headers, data=event_body, timeout=60
            ).status_code
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


@pytest.fixture
def cloud_logs(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """``functions.cloud`` in this process as in a fresh instance with no broker keys: nothing
    built yet, the log lines captured."""
    import functions.app as app
    import functions.cloud as cloud
    from backend.observability.logging import configure_logging

    for key in BROKER_SECRETS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(app, "_stores", None)
    monkeypatch.setattr(app, "_services", None)
    monkeypatch.setattr(cloud, "_configured", True)
    stream = io.StringIO()
    configure_logging("INFO", stream)
    return stream


def logged(stream: io.StringIO, event: str) -> list[dict[str, Any]]:
    return [line for line in map(json.loads, stream.getvalue().splitlines()) if line["event"] == event]


def test_redrive_without_broker_secrets_writes_the_missing_history(
    firestore_client: Any, cloud_logs: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    import functions.app as app
    import functions.cloud as cloud

    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", PROJECT)
    monkeypatch.setenv("EXEC_STORE", "firestore")
    trade = placed_ledger_row(firestore_client, datetime.now(UTC) - timedelta(hours=1))  # no history yet

    report = cloud.redrive_portfolio()
    assert (report.scanned, report.fanned_out) == (1, 1)
    entry = history_entry(firestore_client, trade)
    assert entry.exists
    assert app._services is None  # the stores only: no broker, no market data
    assert cloud.redrive_portfolio().fanned_out == 0


@pytest.fixture
def ledger_document(make_engine: EngineFactory, store: Any) -> dict[str, Any]:
    """A real ledger row, as the trigger receives it (with its server-stamped field)."""
    intent = OrderIntent(
        strategy_id="s", broker_account_id="acct", symbol="AAPL", side="buy", qty=1, idempotency_key="d-1",
        metadata={"tenant_id": TENANT, "uid": UID},
    )  # fmt: skip
    assert make_engine().execute_intent(intent).status is ExecutionStatus.PLACED
    [trade] = store.iter_ledger_trades(TENANT)
    return {**to_document(LEDGER_ENTRIES, trade), "written_at": datetime.now(UTC)}


def test_ledger_trigger_acknowledges_a_malformed_document_and_raises_anything_else(
    cloud_logs: io.StringIO, monkeypatch: pytest.MonkeyPatch, tmp_path: Any, ledger_document: dict[str, Any]
) -> None:
    import functions.app as app
    import functions.cloud as cloud

    monkeypatch.setenv("EXEC_STORE", "sqlite")
    monkeypatch.setenv("EXEC_SQLITE_PATH", str(tmp_path / "trigger.sqlite3"))
    path = f"tenants/{TENANT}/ledger_trades/x"

    assert cloud.ledger_created({"symbol": "AAPL"}, path) is None  # acknowledged: redelivery cannot help
    [bad] = logged(cloud_logs, "portfolio.bad_ledger_document")
    assert (bad["severity"], bad["path"]) == ("ERROR", path)

    def unavailable(*args: object, **kwargs: object) -> None:
        raise RuntimeError("firestore unavailable")

    monkeypatch.setattr(app.stores().portfolio, "apply_history_entry", unavailable)
    with pytest.raises(RuntimeError, match="firestore unavailable"):
        cloud.ledger_created(ledger_document, path)  # the invocation fails; the re-drive retries it
    [failed] = logged(cloud_logs, "portfolio.fanout_failed")
    assert (failed["severity"], failed["path"]) == ("ERROR", path)
    assert "firestore unavailable" in failed["exception"]
    assert len(logged(cloud_logs, "portfolio.bad_ledger_document")) == 1
    assert app._services is None


def test_a_configuration_error_is_not_taken_for_a_bad_ledger_document(
    cloud_logs: io.StringIO, monkeypatch: pytest.MonkeyPatch, ledger_document: dict[str, Any]
) -> None:
    import functions.cloud as cloud
    from backend.execution.settings import ConfigurationError

    monkeypatch.setenv("EXEC_STORE", "mongodb")
    with pytest.raises(ConfigurationError, match="EXEC_STORE"):
        cloud.ledger_created(ledger_document, f"tenants/{TENANT}/ledger_trades/x")
    assert logged(cloud_logs, "portfolio.bad_ledger_document") == []
    assert len(logged(cloud_logs, "portfolio.fanout_failed")) == 1
