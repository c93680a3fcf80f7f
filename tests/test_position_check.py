"""The broker position check on both stores, through the real engine and the real alpaca-py SDK at
the local Alpaca simulator: a missing fill, an order placed by hand, a pending crypto fee
adjustment, an order with our prefix the store does not know, a position the broker's list omits,
the positions endpoint failing; one log event per finding; it writes nothing; ``msr positions
check``. The classification itself is unit-tested in ``test_position_reconciliation.py``."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from backend.adapters.alpaca.broker import AlpacaBroker
from backend.adapters.alpaca.market_data import AlpacaMarketData
from backend.adapters.alpaca.settings import AlpacaSettings
from backend.adapters.sqlite_store import SQLiteExecutionStore
from backend.core.intents import OrderIntent
from backend.core.order_lifecycle import OrderState
from backend.core.orders import ExecutionStatus
from backend.core.paths import client_order_id_for
from backend.core.position_reconciliation import DriftCode, DriftReport, UnsettledAssetFee
from backend.core.risk import RiskLimits
from backend.execution.engine import ExecutionEngine, RiskManager, SmartRouter
from backend.execution.fee_settlement import settle_asset_fees
from backend.execution.ports import ManualClock, SystemClock
from backend.execution.position_check import (
    EVENTS,
    broker_account_of,
    check_positions,
    ledger_positions,
    unsettled_asset_fees,
)
from backend.execution.settings import ExecSettings
from backend.observability.logging import configure_logging
from devtools.alpaca_simulator import FakeAlpaca, Fault, FillPlan, FillStep, running
from devtools.emulators import PROJECT
from functions.cli import main

TENANT = "acme_corp"
D = Decimal
SERVER_ERROR = '{"code": 50010000, "message": "internal server error occurred"}'


@pytest.fixture
def fake() -> FakeAlpaca:
    fake = FakeAlpaca()
    fake.set_quote("AAPL", "189.99", "190.01")
    fake.set_quote("BTC/USD", "49995", "50005")
    return fake


@pytest.fixture
def alpaca(fake: FakeAlpaca) -> Iterator[AlpacaSettings]:
    with running(fake) as url:
        yield AlpacaSettings(
            api_key_id="k", secret_key="s", trading_url=url, data_url=url, timeout_s=2, backoff_s=0.01,
            max_wait_s=0.05, fill_polls=2, fill_poll_s=0.01, quote_ttl_s=0,
        )  # fmt: skip


@pytest.fixture
def events() -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """The JSON log lines written so far, as dicts (the 'msr' logger restored afterwards)."""
    logger = logging.getLogger("msr")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    stream = io.StringIO()
    configure_logging("INFO", stream)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate


def position_events(lines: list[dict[str, Any]]) -> list[str]:
    return [line["event"] for line in lines if line.get("event", "").startswith("positions.")]


def engine(store: Any, alpaca: AlpacaSettings) -> ExecutionEngine:
    return ExecutionEngine(
        broker=AlpacaBroker(alpaca),
        router=SmartRouter(market_data=AlpacaMarketData(alpaca)),
        risk=RiskManager(RiskLimits(max_position_qty=D(1000), max_daily_trades=100)),
        dry_run=False,
        store=store,
        clock=SystemClock(),
        settings=ExecSettings(tenant_id=TENANT, uid="u1"),
    )


def intent(symbol: str, side: str, qty: str, key: str) -> OrderIntent:
    return OrderIntent(
        strategy_id="s1", broker_account_id="alpaca_main", symbol=symbol, side=side, qty=qty,
        idempotency_key=key,
    )  # fmt: skip


def place(store: Any, alpaca: AlpacaSettings, symbol: str, side: str, qty: str, key: str) -> Any:
    result = engine(store, alpaca).execute_intent(intent(symbol, side, qty, key))
    assert result.status is ExecutionStatus.PLACED, result.reason
    return result


def by_hand(fake: FakeAlpaca, symbol: str, side: str, qty: str, client_order_id: str | None = None) -> None:
    """An order created at the broker directly: in its web UI (a UUID client order id), or by
    another system."""
    body = {"symbol": symbol, "qty": qty, "side": side, "type": "market", "time_in_force": "day"}
    if client_order_id is not None:
        body["client_order_id"] = client_order_id
    status, _ = fake.create_order(body)
    assert status == 200


def check(store: Any, alpaca: AlpacaSettings, **settings: Any) -> DriftReport:
    return check_positions(store, AlpacaBroker(alpaca), ExecSettings(**settings), datetime.now(UTC))


def store_state(store: Any) -> tuple[Any, ...]:
    return (
        sorted(entry.trade_id for entry in store.iter_ledger_trades()),
        store.all_positions(),
        sorted((s.order.client_order_id, s.order.version, s.order.state) for s in store.iter_orders()),
        len(list(store.iter_decisions())),
    )


def codes(report: DriftReport) -> list[DriftCode]:
    return [finding.code for finding in report.findings]


class TestDriftReport:
    def test_everything_agreeing_is_an_empty_report_and_the_check_writes_nothing(
        self, contract_store: Any, fake: FakeAlpaca, alpaca: AlpacaSettings, events: Any
    ) -> None:
        place(contract_store, alpaca, "AAPL", "buy", "10", "a1")
        place(contract_store, alpaca, "AAPL", "sell", "4", "a2")
        place(contract_store, alpaca, "BTC/USD", "buy", "0.1", "b1")  # the broker's tier is the schedule's
        before, orders_at_broker = store_state(contract_store), len(fake.orders)

        report = check(contract_store, alpaca)

        assert report.findings == ()
        assert (report.available, report.drift) == (True, False)
        assert {(p.symbol, p.ledger.qty, p.broker_qty) for p in report.positions} == {
            ("AAPL", 6, 6), ("BTC/USD", D("0.09975"), D("0.09975")),
        }  # fmt: skip
        assert store_state(contract_store) == before
        assert len(fake.orders) == orders_at_broker
        assert position_events(events()) == ["positions.checked"]

    def test_a_fill_nobody_recorded_yet_is_a_missing_fill_of_exactly_that_quantity(
        self, contract_store: Any, fake: FakeAlpaca, alpaca: AlpacaSettings, events: Any
    ) -> None:
        broker_clock = ManualClock(datetime.now(UTC))
        fake.clock = broker_clock.now
        placed_id = client_order_id_for(TENANT, "rests")
        # 4 of 10 fill at once; the other 6 a minute later, with no delivery and no sweep since.
        fake.plans_by_client_id[placed_id] = FillPlan(
            "rest_then_fill", (FillStep(fraction=D("0.4")), FillStep(after_s=60))
        )
        placed = place(contract_store, alpaca, "AAPL", "buy", "10", "rests")
        assert placed.order_state is OrderState.PARTIALLY_FILLED
        broker_clock.advance(timedelta(minutes=2))

        report = check(contract_store, alpaca)

        [finding] = report.findings
        assert finding.code is DriftCode.MISSING_FILL
        assert (finding.symbol, finding.ledger_qty, finding.broker_qty, finding.difference) == (
            "AAPL",
            4,
            10,
            6,
        )
        assert finding.explained_qty == 6
        assert finding.order is not None
        assert (finding.order.client_order_id, finding.order.broker_filled_qty) == (placed_id, 10)
        assert finding.order.recorded_filled_qty == 4
        assert report.positions[0].unexplained == 0
        [line] = [e for e in events() if e["event"] == "positions.missing_fill"]
        assert (line["severity"], line["reason_code"], line["explained_qty"]) == (
            "WARNING",
            "MISSING_FILL",
            "6",
        )

        # The next delivery of the intent records it: the drift is gone.
        assert engine(contract_store, alpaca).execute_intent(
            intent("AAPL", "buy", "10", "rests")
        ).order_state is (OrderState.FILLED)
        assert check(contract_store, alpaca).findings == ()

    def test_an_order_placed_by_hand_is_external_not_an_error(
        self, contract_store: Any, fake: FakeAlpaca, alpaca: AlpacaSettings, events: Any
    ) -> None:
        place(contract_store, alpaca, "AAPL", "buy", "10", "a1")
        by_hand(fake, "AAPL", "buy", "3")  # Alpaca's UI gives it a UUID client order id

        report = check(contract_store, alpaca)

        [finding] = report.findings
        assert (finding.code, finding.explained_qty, finding.difference) == (DriftCode.EXTERNAL_ORDER, 3, 3)
        assert not finding.order.client_order_id.startswith("msr-")  # type: ignore[union-attr]
        assert not report.needs_attention
        assert report.positions[0].unexplained == 0
        [line] = [e for e in events() if e["event"] == "positions.external_order"]
        assert line["severity"] == "WARNING"

    def test_a_crypto_fee_at_another_tier_is_pending_until_the_day_is_settled(
        self, contract_store: Any, fake: FakeAlpaca, alpaca: AlpacaSettings, events: Any
    ) -> None:
        fake.crypto_fee_bps = D(22)  # the account reached tier 2; the schedule still says 25
        place(contract_store, alpaca, "BTC/USD", "buy", "0.1", "b1")
        place(contract_store, alpaca, "BTC/USD", "buy", "0.1", "b2")
        today = datetime.now(UTC).date()

        report = check(contract_store, alpaca)

        [finding] = report.findings
        assert finding.code is DriftCode.FEE_ADJUSTMENT_PENDING
        # booked 2 x 0.09975 at 25 bps; the broker holds 2 x (0.1 - 0.00022)
        assert (finding.ledger_qty, finding.broker_qty) == (D("0.1995"), D("0.19956"))
        assert (finding.explained_qty, finding.pending_fee, finding.fee_days) == (
            D("0.00006"),
            D("0.0005"),
            (today,),
        )
        assert not report.needs_attention

        venues = ExecSettings().venue_table()
        pending = unsettled_asset_fees(contract_store, "alpaca", venues, today, datetime.now(UTC))
        assert pending == (UnsettledAssetFee("BTC/USD", today, D("0.0005")),)

        later = datetime.combine(today + timedelta(days=1), datetime.min.time(), tzinfo=UTC) + timedelta(
            hours=7
        )
        settled = settle_asset_fees(contract_store, AlpacaBroker(alpaca), today, later)
        assert settled.adjustments == 1
        assert unsettled_asset_fees(contract_store, "alpaca", venues, today, datetime.now(UTC)) == ()
        assert check(contract_store, alpaca).findings == ()
        assert position_events(events()).count("positions.fee_adjustment_pending") == 1

    def test_an_order_with_our_prefix_the_store_has_no_record_of_is_unknown(
        self, contract_store: Any, fake: FakeAlpaca, alpaca: AlpacaSettings
    ) -> None:
        place(contract_store, alpaca, "AAPL", "buy", "10", "a1")
        lost = client_order_id_for("another_deployment", "k9")  # e.g. a second stack on the same keys
        by_hand(fake, "AAPL", "buy", "2", lost)

        report = check(contract_store, alpaca)

        [finding] = report.findings
        assert (finding.code, finding.explained_qty) == (DriftCode.UNKNOWN_ORDER, 2)
        assert finding.order is not None
        assert (finding.order.client_order_id, finding.order.recorded_filled_qty) == (lost, None)
        assert report.needs_attention

    def test_a_position_the_list_omits_is_unconfirmed_until_the_single_query_says_flat(
        self, contract_store: Any, fake: FakeAlpaca, alpaca: AlpacaSettings, events: Any
    ) -> None:
        place(contract_store, alpaca, "AAPL", "buy", "10", "a1")
        fake.holdings["AAPL"] = D(0)  # gone at the broker: its list leaves AAPL out
        fake.faults.extend(
            Fault("GET", "/v2/positions/AAPL", status=500, body=SERVER_ERROR) for _ in range(3)
        )

        unconfirmed = check(contract_store, alpaca)

        [finding] = unconfirmed.findings
        assert (finding.code, finding.ledger_qty, finding.broker_qty) == (
            DriftCode.BROKER_POSITION_UNCONFIRMED, 10, None,
        )  # fmt: skip
        assert fake.requests_to("GET", "/v2/positions/AAPL") == 3

        confirmed = check(contract_store, alpaca)  # the single query answers 404: flat

        [finding] = confirmed.findings
        assert (finding.code, finding.broker_qty, finding.difference) == (DriftCode.POSITION_MISMATCH, 0, -10)
        assert position_events(events()) == [
            "positions.unconfirmed", "positions.checked", "positions.mismatch", "positions.checked",
        ]  # fmt: skip

    @pytest.mark.parametrize("path", ["/v2/positions", "/v2/orders"], ids=["positions", "orders"])
    def test_a_failed_broker_read_is_unavailable_and_never_flat(
        self, contract_store: Any, fake: FakeAlpaca, alpaca: AlpacaSettings, events: Any, path: str
    ) -> None:
        place(contract_store, alpaca, "AAPL", "buy", "10", "a1")
        fake.faults.extend(Fault("GET", path, status=500, body=SERVER_ERROR) for _ in range(3))

        report = check(contract_store, alpaca)

        assert codes(report) == [DriftCode.POSITIONS_UNAVAILABLE]
        assert (report.available, report.positions) == (False, ())
        assert "nothing was compared" in report.findings[0].message
        assert fake.requests_to("GET", "/v2/positions/AAPL") == 0  # nothing asked, nothing concluded
        unavailable = [e for e in events() if e["event"] == "positions.unavailable"]
        assert [e["severity"] for e in unavailable] == ["ERROR"]


def test_one_log_event_per_finding_with_its_numbers(
    store: SQLiteExecutionStore, fake: FakeAlpaca, alpaca: AlpacaSettings, events: Any
) -> None:
    fake.crypto_fee_bps = D(22)
    place(store, alpaca, "AAPL", "buy", "10", "a1")
    place(store, alpaca, "BTC/USD", "buy", "0.1", "b1")
    by_hand(fake, "AAPL", "buy", "3")
    by_hand(fake, "MSFT", "buy", "1", client_order_id_for("elsewhere", "x"))
    fake.holdings["TSLA"] = D(5)  # held at the broker, no order in the window explains it

    report = check(store, alpaca)

    lines = [e for e in events() if e["event"].startswith("positions.")]
    assert [e["event"] for e in lines] == [
        "positions.external_order", "positions.fee_adjustment_pending", "positions.unknown_order",
        "positions.mismatch", "positions.checked",
    ]  # fmt: skip
    assert [EVENTS[f.code][0] for f in report.findings] == [e["event"] for e in lines[:-1]]
    assert [e["severity"] for e in lines] == ["WARNING", "INFO", "ERROR", "ERROR", "WARNING"]
    assert [e["message"] for e in lines[:-1]] == [f.message for f in report.findings]
    mismatch = lines[3]
    assert {k: mismatch[k] for k in ("reason_code", "symbol", "ledger_qty", "broker_qty", "difference")} == {
        "reason_code": "POSITION_MISMATCH", "symbol": "TSLA", "ledger_qty": "0", "broker_qty": "5",
        "difference": "5",
    }  # fmt: skip
    assert lines[1]["fee_days"] == [datetime.now(UTC).date().isoformat()]
    summary = lines[-1]
    assert (summary["compared"], summary["findings"], summary["needs_attention"]) == (4, 4, True)
    assert summary["counts"] == {
        "EXTERNAL_ORDER": 1, "FEE_ADJUSTMENT_PENDING": 1, "UNKNOWN_ORDER": 1, "POSITION_MISMATCH": 1,
    }  # fmt: skip


def test_every_reason_has_its_own_event() -> None:
    assert set(EVENTS) == set(DriftCode)
    assert len({name for name, _ in EVENTS.values()}) == len(DriftCode)


def test_the_ledger_positions_summed_for_the_alpaca_account() -> None:
    # Two tenants and two account labels at Alpaca; FX routes to the paper venue, not Alpaca.
    venues = ExecSettings().venue_table()
    positions = {
        ("t1", "main", "AAPL"): (D(10), D(2), D(0)),
        ("t2", "other", "AAPL"): (D(-3), D(0), D(1)),
        ("t1", "main", "BTC/USD"): (D("0.5"), D(0), D(0)),
        ("t1", "main", "EUR/USD"): (D(1000), D(0), D(0)),
    }
    summed = ledger_positions("alpaca", positions, venues)
    assert {s: (p.qty, p.in_flight_buy, p.in_flight_sell) for s, p in summed.items()} == {
        "AAPL": (7, 2, 1), "BTC/USD": (D("0.5"), 0, 0),
    }  # fmt: skip
    assert broker_account_of("t1", "main", "EUR/USD", venues) == "paper"
    no_fx = ExecSettings(venues={"FOREX": "none"}).venue_table()
    assert broker_account_of("t1", "main", "EUR/USD", no_fx) == "none"
    assert ledger_positions("alpaca", positions, no_fx).keys() == {"AAPL", "BTC/USD"}


class TestAlpacaReads:
    def test_positions_by_canonical_symbol_exactly_with_shorts_negative(
        self, fake: FakeAlpaca, alpaca: AlpacaSettings
    ) -> None:
        by_hand(fake, "AAPL", "sell", "3", "s1")
        fake.create_order(
            {
                "symbol": "BTC/USD",
                "qty": "0.123456789",
                "side": "buy",
                "type": "market",
                "time_in_force": "gtc",
            }
        )
        broker = AlpacaBroker(alpaca)
        assert broker.positions() == {"AAPL": D(-3), "BTC/USD": D("0.123456789") * (1 - D("0.0025"))}
        assert broker.position("BTC/USD") == broker.positions()["BTC/USD"]
        assert broker.position("MSFT") == 0  # 404: no position, flat

    def test_an_answer_that_is_not_a_position_list_is_an_error_not_an_empty_account(
        self, fake: FakeAlpaca, alpaca: AlpacaSettings
    ) -> None:
        broker = AlpacaBroker(alpaca)
        for body in ('{"positions": []}', '[{"symbol": "AAPL"}]'):
            fake.faults.append(Fault("GET", "/v2/positions", status=200, body=body))
            with pytest.raises(ValueError, match="Alpaca"):
                broker.positions()

    def test_recent_orders_read_every_page_even_with_a_shared_time_at_the_boundary(
        self, fake: FakeAlpaca, alpaca: AlpacaSettings
    ) -> None:
        clock = ManualClock(datetime(2026, 3, 2, 15, 30, tzinfo=UTC))
        fake.clock = clock.now
        for index in range(501):
            if index < 498:  # the last three orders share one timestamp, across the page boundary
                clock.advance(timedelta(milliseconds=1))
            by_hand(fake, "AAPL", "buy", "1", f"o{index}")
        orders = AlpacaBroker(alpaca).recent_orders(datetime(2026, 3, 2, 15, 0, tzinfo=UTC))
        assert [o.client_order_id for o in orders] == [f"o{index}" for index in range(501)]
        assert fake.requests_to("GET", "/v2/orders") == 2
        assert AlpacaBroker(alpaca).recent_orders(clock.now()) == []  # after is exclusive


# -- msr positions check ----------------------------------------------------------------------


@pytest.fixture
def configured(
    tmp_path: Path, fake: FakeAlpaca, alpaca: AlpacaSettings, monkeypatch: pytest.MonkeyPatch, events: Any
) -> Path:
    """The configuration ``msr positions check`` reads: the embedded store, Alpaca's keys and URL."""
    path = tmp_path / "ledger.sqlite3"
    monkeypatch.setenv("EXEC_STORE", "sqlite")
    monkeypatch.setenv("EXEC_SQLITE_PATH", str(path))
    monkeypatch.setenv("APCA_API_KEY_ID", "k")
    monkeypatch.setenv("APCA_API_SECRET_KEY", "s")
    monkeypatch.setenv("APCA_API_BASE_URL", alpaca.trading_url or "")
    monkeypatch.setenv("EXEC_ALPACA_BACKOFF_S", "0.01")
    store = SQLiteExecutionStore(path)
    try:
        place(store, alpaca, "AAPL", "buy", "10", "a1")
    finally:
        store.close()
    return path


class TestCommand:
    def test_no_drift_exits_0(self, configured: Path, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["positions", "check"]) == 0
        captured = capsys.readouterr()
        assert captured.out == "Positions at alpaca: 1 instrument(s) compared; no drift\n"
        assert [json.loads(line)["event"] for line in captured.err.splitlines()] == ["positions.checked"]

    def test_drift_exits_3_with_the_report_as_json(
        self, configured: Path, fake: FakeAlpaca, capsys: pytest.CaptureFixture[str]
    ) -> None:
        by_hand(fake, "AAPL", "buy", "3")
        fake.holdings["TSLA"] = D(2)

        assert main(["positions", "check", "--json", "--window-hours", "6"]) == 3

        report = json.loads(capsys.readouterr().out)
        assert (report["broker_account"], report["available"], report["drift"]) == ("alpaca", True, True)
        assert [f["reason_code"] for f in report["findings"]] == ["EXTERNAL_ORDER", "POSITION_MISMATCH"]
        assert report["counts"] == {"EXTERNAL_ORDER": 1, "POSITION_MISMATCH": 1}
        assert report["needs_attention"] is True
        aapl = next(p for p in report["positions"] if p["symbol"] == "AAPL")
        assert (aapl["ledger_qty"], aapl["broker_qty"], aapl["explained"], aapl["unexplained"]) == (
            "10", "13", {"EXTERNAL_ORDER": "3"}, "0",
        )  # fmt: skip

    def test_drift_in_words_one_line_per_finding(
        self, configured: Path, fake: FakeAlpaca, capsys: pytest.CaptureFixture[str]
    ) -> None:
        fake.holdings["AAPL"] = D(12)
        assert main(["positions", "check"]) == 3
        assert capsys.readouterr().out.splitlines() == [
            "POSITION_MISMATCH: AAPL: broker 12, ledger 10 (difference 2): 2 unexplained",
            "Positions at alpaca: 1 instrument(s) compared; 1 POSITION_MISMATCH",
        ]

    def test_positions_unavailable_exits_2(
        self, configured: Path, fake: FakeAlpaca, capsys: pytest.CaptureFixture[str]
    ) -> None:
        fake.faults.extend(Fault("GET", "/v2/positions", status=503, body="unavailable") for _ in range(3))
        assert main(["positions", "check", "--json"]) == 2
        report = json.loads(capsys.readouterr().out)
        assert (report["available"], report["positions"]) == (False, [])
        assert [f["reason_code"] for f in report["findings"]] == ["POSITIONS_UNAVAILABLE"]

    def test_without_alpaca_keys_exits_2_naming_them_and_creates_no_ledger(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        path = tmp_path / "none.sqlite3"
        monkeypatch.setenv("EXEC_STORE", "sqlite")
        monkeypatch.setenv("EXEC_SQLITE_PATH", str(path))
        for name in ("APCA_API_KEY_ID", "EXEC_ALPACA_KEY_ID"):
            monkeypatch.delenv(name, raising=False)
        assert main(["positions", "check"]) == 2
        assert capsys.readouterr().err.startswith("msr positions check: Alpaca keys are not configured")
        assert not path.exists()

    @pytest.mark.parametrize("hours", ["0", "-1", "soon", "nan"])
    def test_a_bad_window_is_refused_by_the_parser(
        self, hours: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        with pytest.raises(SystemExit) as exit_info:
            main(["positions", "check", "--window-hours", hours])
        assert exit_info.value.code == 2
        assert "not a positive number of hours" in capsys.readouterr().err

    def test_help_names_the_reason_codes_and_the_drift_exit_code(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        with pytest.raises(SystemExit):
            main(["positions", "check", "--help"])
        out = capsys.readouterr().out
        for code in DriftCode:
            assert code.value in out
        assert "3  something to look at: drift found" in out
        with pytest.raises(SystemExit):
            main(["--help"])
        assert "positions" in capsys.readouterr().out


def test_the_scheduled_function_checks_with_the_stores_and_the_broker_only(
    firestore_client: Any,
    fake: FakeAlpaca,
    alpaca: AlpacaSettings,
    events: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import functions.app as app
    import functions.cloud as cloud
    from backend.adapters.firestore_store import FirestoreExecutionStore

    for name in ("_stores", "_services", "_position_check"):
        monkeypatch.setattr(app, name, None)
    monkeypatch.setattr(cloud, "_configured", True)  # keep the test's log capture
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", PROJECT)
    monkeypatch.setenv("EXEC_STORE", "firestore")
    monkeypatch.setenv("APCA_API_KEY_ID", "k")
    monkeypatch.setenv("APCA_API_SECRET_KEY", "s")
    monkeypatch.setenv("APCA_API_BASE_URL", alpaca.trading_url or "")
    place(FirestoreExecutionStore(firestore_client), alpaca, "AAPL", "buy", "10", "a1")
    by_hand(fake, "AAPL", "sell", "4")

    report = cloud.check_positions()

    assert codes(report) == [DriftCode.EXTERNAL_ORDER]
    assert report.findings[0].explained_qty == -4
    assert app._services is None  # no market data, no engine
    assert position_events(events()) == ["positions.external_order", "positions.checked"]
