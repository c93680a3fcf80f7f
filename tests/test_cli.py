"""The ``msr`` command: its subcommands, the paper run through it, the console script's declaration,
and ``msr fees settle`` against the local Alpaca simulator with the store from configuration."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from backend.adapters.alpaca.broker import AlpacaBroker
from backend.adapters.alpaca.market_data import AlpacaMarketData
from backend.adapters.alpaca.settings import AlpacaSettings
from backend.adapters.sqlite_store import SQLiteExecutionStore
from backend.core.intents import OrderIntent
from backend.core.ledger import LedgerFeeAdjustment, LedgerTrade
from backend.core.orders import ExecutionStatus
from backend.core.risk import RiskLimits
from backend.execution.engine import ExecutionEngine, RiskManager, SmartRouter
from backend.execution.ports import SystemClock
from backend.execution.settings import ExecSettings
from devtools.alpaca_simulator import FakeAlpaca, running
from functions.cli import main
from functions.paper_run import DECISION_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
BTC_TAPE = ROOT / "data" / "quotes" / "btcusdt_binance_2021-01-08.csv"
D = Decimal


@pytest.fixture(autouse=True)
def restore_msr_logging() -> Iterator[None]:
    """The commands point the 'msr' logger at the (captured) stderr; put it back for the other tests."""
    logger = logging.getLogger("msr")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate


def exit_code_of(argv: list[str]) -> int:
    """``main`` returns its code; argparse (help, bad options) exits through SystemExit."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert isinstance(exit_info.value.code, int)
    return exit_info.value.code


def test_msr_help_lists_the_subcommands_and_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_code_of(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: msr ")
    assert "paper-run" in out
    assert "replay the recorded quote tapes" in out
    assert "fees" in out
    assert "orders" in out
    assert "exit codes:" in out
    assert "2  nothing done" in out

    assert exit_code_of(["fees", "--help"]) == 0
    assert "settle" in capsys.readouterr().out
    assert exit_code_of(["fees", "settle", "--help"]) == 0
    settle_help = capsys.readouterr().out
    for option in ("--day", "--now", "--json", "--log-level"):
        assert option in settle_help
    assert "CFEE activities" in settle_help

    for action in ("show", "cancel"):
        assert exit_code_of(["orders", action, "--help"]) == 0
        action_help = capsys.readouterr().out
        for option in ("--key", "--client-order-id", "--tenant", "--json", "--log-level"):
            assert option in action_help


def test_msr_paper_run_help_shows_the_paper_runs_own_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_code_of(["paper-run", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: msr paper-run ")
    for option in ("--tape", "--max-spread", "--keep-ledger", "--strategy", "--out"):
        assert option in out


@pytest.mark.parametrize("argv", [[], ["fees"], ["nope"], ["fees", "settle", "--day", "2026-13-01"]])
def test_a_missing_or_bad_command_or_option_exits_2_with_argparses_message(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert exit_code_of(argv) == 2
    captured = capsys.readouterr()
    assert "error:" in captured.err
    assert captured.out == ""


def test_msr_paper_run_on_one_tape_writes_its_outputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["paper-run", "--out", str(tmp_path), "--no-progress", "--tape", str(BTC_TAPE)]
    assert main([*argv, "--max-spread", "CRYPTO=0.0001"]) == 0

    out = capsys.readouterr().out
    assert out.startswith("Paper run: 451 quotes from 1 tape(s), strategy mean_reversion")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["quotes"] == 451
    assert summary["thresholds"]["by_asset_class"] == {"CRYPTO": "0.0001"}
    assert summary["intents"] > 0
    assert summary["new_orders"] == summary["ledger_rows"] > 0
    decisions = (tmp_path / "decisions.csv").read_text().splitlines()
    assert decisions[0] == ",".join(DECISION_COLUMNS)
    assert len(decisions) == 1 + summary["intents"]
    assert (tmp_path / "ledger.sqlite3").is_file()


def test_msr_paper_run_refuses_bad_input_through_its_own_parser(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert exit_code_of(["paper-run", "--out", str(tmp_path), "--no-progress", "--max-spread", "FOREX"]) == 2
    err = capsys.readouterr().err
    assert "msr paper-run: error: --max-spread takes CLASS=VALUE, got 'FOREX'" in err
    assert not (tmp_path / "summary.json").exists()


def test_the_msr_console_script_is_declared_for_the_products_packages() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["msr"] == "functions.cli:main"
    assert project["build-system"]["build-backend"] == "setuptools.build_meta"
    assert project["tool"]["setuptools"]["packages"]["find"]["include"] == ["backend*", "functions*"]
    # The pins have one home, requirements.txt (what `firebase deploy` installs).
    assert project["project"]["dynamic"] == ["dependencies"]
    assert project["tool"]["setuptools"]["dynamic"]["dependencies"] == {"file": ["requirements.txt"]}


def msr_process() -> Any:
    """The console script of the venv running the tests, where ``scripts/_venv.sh`` installed it;
    otherwise the same entry point as ``python -m functions.cli``. The test id says which ran."""
    installed = shutil.which("msr", path=str(Path(sys.executable).parent))
    if installed:
        return pytest.param([installed], id="installed-console-script")
    fallback = [sys.executable, "-m", "functions.cli"]
    return pytest.param(fallback, id="no-msr-in-this-venv-python-m-functions-cli")


@pytest.mark.parametrize("command", [msr_process()])
def test_msr_help_runs_as_a_process(command: list[str]) -> None:
    # PYTHONPATH puts this checkout first, so an install made from another checkout runs this code.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [*command, "--help"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: msr ")
    assert "paper-run" in done.stdout
    assert "fees" in done.stdout


# -- msr fees settle against the local Alpaca simulator ------------------------------------------


@pytest.fixture
def simulator() -> Iterator[tuple[FakeAlpaca, str]]:
    fake = FakeAlpaca()
    fake.set_quote("BTC/USD", "49995", "50005")
    fake.crypto_fee_bps = D(22)  # the account reached tier 2; the engine's schedule still says 25
    with running(fake) as url:
        yield fake, url


@pytest.fixture
def ledger_path(tmp_path: Path, simulator: tuple[FakeAlpaca, str], monkeypatch: pytest.MonkeyPatch) -> Path:
    """The configuration ``msr fees settle`` reads: the embedded store in tmp, Alpaca's keys and URLs."""
    _, url = simulator
    path = tmp_path / "ledger.sqlite3"
    monkeypatch.setenv("EXEC_STORE", "sqlite")
    monkeypatch.setenv("EXEC_SQLITE_PATH", str(path))
    monkeypatch.delenv("EXEC_FANOUT", raising=False)  # auto: inline with the embedded store
    monkeypatch.setenv("APCA_API_KEY_ID", "k")
    monkeypatch.setenv("APCA_API_SECRET_KEY", "s")
    monkeypatch.setenv("APCA_API_BASE_URL", url)
    monkeypatch.setenv("APCA_API_DATA_URL", url)
    return path


def buy_btc_twice(path: Path, url: str) -> date:
    """Two 0.1 BTC buys through the engine and Alpaca's SDK; returns the UTC day they filled on."""
    settings = AlpacaSettings(
        trading_requests_per_minute=0,  # not what this is about: the pace has its own test
        api_key_id="k", secret_key="s", trading_url=url, data_url=url, timeout_s=2, fill_poll_s=0.01,
        backoff_s=0.01, quote_ttl_s=0,
    )  # fmt: skip
    store = SQLiteExecutionStore(path)
    try:
        engine = ExecutionEngine(
            broker=AlpacaBroker(settings),
            router=SmartRouter(market_data=AlpacaMarketData(settings)),
            risk=RiskManager(RiskLimits(max_position_qty=D(10))),
            dry_run=False,
            store=store,
            clock=SystemClock(),
            settings=ExecSettings(tenant_id="acme_corp", uid="u1"),
            portfolio=store,
        )
        for index in range(2):
            intent = OrderIntent(
                strategy_id="s1", broker_account_id="acct", symbol="BTC/USD", side="buy", qty="0.1",
                idempotency_key=f"buy-{index}",
            )  # fmt: skip
            assert engine.execute_intent(intent).status is ExecutionStatus.PLACED
        assert store.positions("acme_corp")["BTC/USD"] == D("0.1995")  # 2 x 0.09975: the 25 bp estimate
        [day] = {e.executed_at.date() for e in store.iter_ledger_trades() if isinstance(e, LedgerTrade)}
    finally:
        store.close()
    return day


def after_posting(day: date) -> str:
    """07:00 UTC the next day: past the 06:00 posting deadline."""
    return (datetime.combine(day + timedelta(days=1), time(7), tzinfo=UTC)).isoformat()


def fee_adjustments(path: Path) -> list[LedgerFeeAdjustment]:
    store = SQLiteExecutionStore(path)
    try:
        return [e for e in store.iter_ledger_trades("acme_corp") if isinstance(e, LedgerFeeAdjustment)]
    finally:
        store.close()


def test_fees_settle_books_the_brokers_tier_once_and_a_rerun_books_nothing(
    simulator: tuple[FakeAlpaca, str], ledger_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake, url = simulator
    day = buy_btc_twice(ledger_path, url)
    argv = ["fees", "settle", "--day", day.isoformat(), "--now", after_posting(day)]

    assert main([*argv, "--json"]) == 0

    captured = capsys.readouterr()
    assert json.loads(captured.out) == {
        "broker": "alpaca", "day": day.isoformat(), "fills": 2, "activities": 2, "adjustments": 1,
        "already_recorded": 0,
    }  # fmt: skip
    events = [json.loads(line)["event"] for line in captured.err.splitlines()]
    assert events.count("fees.adjusted") == 1  # the logs: JSON lines on stderr
    assert events[-1] == "fees.settled"
    [adjustment] = fee_adjustments(ledger_path)
    assert (adjustment.qty, adjustment.estimated_fee, adjustment.actual_fee) == (
        D("0.00006"), D("0.0005"), D("0.00044"),
    )  # fmt: skip
    store = SQLiteExecutionStore(ledger_path)
    try:
        assert store.positions("acme_corp")["BTC/USD"] == fake.holdings["BTCUSD"] == D("0.19956")
        lots = store.lots("u1", "default", "BTC/USD")  # fanned out inline, as EXEC_FANOUT=auto says
        assert lots is not None
        assert lots.position == D("0.19956")
    finally:
        store.close()

    assert main(argv) == 0

    assert capsys.readouterr().out == (
        f"Asset fees of {day} at alpaca: 0 adjustment(s) booked, 1 already recorded "
        "(2 fill(s) paying their fee in the asset, 2 fee activities)\n"
    )
    assert len(fee_adjustments(ledger_path)) == 1


def test_fees_settle_refuses_a_day_not_posted_yet_with_exit_2_and_books_nothing(
    simulator: tuple[FakeAlpaca, str], ledger_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, url = simulator
    day = buy_btc_twice(ledger_path, url)

    assert main(["fees", "settle", "--day", day.isoformat()]) == 2  # today, by the system clock

    captured = capsys.readouterr()
    assert captured.err.strip() == (
        f"msr fees settle: {day} is not settled at alpaca yet (fees post at the end of the day)"
    )
    assert captured.out == ""
    assert fee_adjustments(ledger_path) == []


def test_fees_settle_defaults_to_the_day_before_now_and_waits_for_the_posting_deadline(
    ledger_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["fees", "settle", "--now", "2026-03-03T05:59:59Z"]) == 2
    assert "2026-03-02 is not settled at alpaca yet" in capsys.readouterr().err

    assert main(["fees", "settle", "--now", "2026-03-03T06:00:00+00:00", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["day"], report["fills"], report["adjustments"]) == ("2026-03-02", 0, 0)


def test_fees_settle_without_alpaca_keys_exits_2_naming_them_and_creates_no_ledger(
    ledger_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("APCA_API_KEY_ID")
    monkeypatch.delenv("EXEC_ALPACA_KEY_ID", raising=False)

    assert main(["fees", "settle"]) == 2

    err = capsys.readouterr().err
    assert err.startswith("msr fees settle: Alpaca keys are not configured: set APCA_API_KEY_ID")
    assert not ledger_path.exists()


def test_fees_settle_with_invalid_configuration_exits_2_naming_the_variable(
    ledger_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("EXEC_STORE", "postgres")

    assert main(["fees", "settle"]) == 2

    assert "EXEC_STORE" in capsys.readouterr().err
    assert not ledger_path.exists()


# -- msr orders against the local Alpaca simulator ------------------------------------------------


def rest_orders(path: Path, url: str, *keys: str) -> dict[str, Any]:
    """One resting 3-share AAPL order per key, placed by the engine through Alpaca's SDK into the
    ledger at ``path``; returns the results by key."""
    settings = AlpacaSettings(
        api_key_id="k", secret_key="s", trading_url=url, data_url=url, timeout_s=2, fill_polls=1,
        fill_poll_s=0.01, backoff_s=0.01, quote_ttl_s=0,
    )  # fmt: skip
    store = SQLiteExecutionStore(path)
    try:
        engine = ExecutionEngine(
            broker=AlpacaBroker(settings),
            router=SmartRouter(market_data=AlpacaMarketData(settings)),
            risk=RiskManager(RiskLimits(max_position_qty=D(100))),
            dry_run=False,
            store=store,
            clock=SystemClock(),
            settings=ExecSettings(tenant_id="acme_corp", uid="u1"),
        )
        results = {}
        for key in keys:
            intent = OrderIntent(
                strategy_id="s1", broker_account_id="acct", symbol="AAPL", side="buy", qty="3",
                idempotency_key=key,
            )  # fmt: skip
            results[key] = engine.execute_intent(intent)
        return results
    finally:
        store.close()


@pytest.fixture
def resting(simulator: tuple[FakeAlpaca, str], ledger_path: Path) -> tuple[FakeAlpaca, dict[str, Any]]:
    """Two orders resting at the simulator (it fills them only when a test says so)."""
    fake, url = simulator
    fake.fill, fake.polls_to_fill = "new", 1000
    fake.set_quote("AAPL", "189.99", "190.01")
    results = rest_orders(ledger_path, url, "rest-1", "rest-2")
    assert {result.order_state.value for result in results.values()} == {"accepted"}
    return fake, results


def test_orders_show_answers_the_document_of_the_http_api_and_follows_the_fill(
    resting: tuple[FakeAlpaca, dict[str, Any]], ledger_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake, results = resting
    placed = results["rest-1"]

    assert main(["orders", "show", "--key", "rest-1", "--tenant", "acme_corp", "--json"]) == 0

    document = json.loads(capsys.readouterr().out)
    assert set(document) == {"idempotency_key", "client_order_id", "order", "result", "ledger_rows"}
    assert (document["idempotency_key"], document["client_order_id"]) == ("rest-1", placed.client_order_id)
    assert (document["order"]["state"], document["order"]["fills"], document["ledger_rows"]) == (
        "accepted",
        [],
        [],
    )
    assert document["result"]["status"] == "placed"

    for _ in range(fake.polls_to_fill):  # the broker fills it
        fake.get_order(placed.broker_order_id or "")
    assert (
        main(["orders", "show", "--client-order-id", placed.client_order_id or "", "--tenant", "acme_corp"])
        == 0
    )

    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"Order {placed.client_order_id} (idempotency key 'rest-1'): filled"
    assert out[1] == "  buy 3 AAPL: filled 3.0, leaves 0, average price 190.01"
    assert out[3] == "  decision: placed OK: Order filled: 3.0 AAPL @ 190.01"
    [fill] = [line for line in out if line.startswith("  fill ")]
    assert fill.startswith("  fill 3.0 @ 190.01 at ")
    store = SQLiteExecutionStore(ledger_path)
    try:  # the fill the query found is in the ledger, once, and fanned out (inline with SQLite)
        [row] = list(store.iter_ledger_trades("acme_corp"))
        assert fill.endswith(f"(ledger row {row.trade_id})")
        lots = store.lots("u1", "default", "AAPL")
        assert lots is not None
        assert lots.position == 3
    finally:
        store.close()


def test_orders_cancel_cancels_at_the_broker_and_a_second_cancel_exits_2(
    resting: tuple[FakeAlpaca, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, results = resting
    placed = results["rest-2"]

    assert main(["orders", "cancel", "--key", "rest-2", "--tenant", "acme_corp"]) == 0

    out = capsys.readouterr().out.splitlines()
    assert out[0] == "Cancel requested: Cancel requested; the order is canceled"
    assert out[1] == f"Order {placed.client_order_id} (idempotency key 'rest-2'): canceled"
    assert fake.order_for(placed.client_order_id or "")["status"] == "canceled"  # type: ignore[index]
    assert fake.order_for(results["rest-1"].client_order_id or "")["status"] == "accepted"  # type: ignore[index]

    argv = ["orders", "cancel", "--client-order-id", placed.client_order_id or "", "--tenant", "acme_corp"]
    assert main([*argv, "--json"]) == 2

    document = json.loads(capsys.readouterr().out)
    assert (document["requested"], document["reason_code"]) == (False, "ORDER_NOT_CANCELABLE")
    assert document["order"]["state"] == "canceled"


NO_EXECUTION = "tenant {!r} has no execution with idempotency key {!r}"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["show", "--key", "nope", "--tenant", "acme_corp"], NO_EXECUTION.format("acme_corp", "nope")),
        (["show", "--key", "rest-1", "--tenant", "other_corp"], NO_EXECUTION.format("other_corp", "rest-1")),
        (
            ["cancel", "--key", "rest-1", "--tenant", "other_corp"],
            NO_EXECUTION.format("other_corp", "rest-1"),
        ),
        (["show", "--key", "   ", "--tenant", "acme_corp"], "String should have at least 1 character"),
    ],
)
def test_orders_of_another_tenant_or_unknown_exit_2_with_the_reason_and_change_nothing(
    resting: tuple[FakeAlpaca, dict[str, Any]],
    argv: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake, results = resting

    assert main(["orders", *argv]) == 2

    captured = capsys.readouterr()
    assert captured.err.splitlines()[-1] == f"msr orders {argv[0]}: {message}"
    assert captured.out == ""
    assert fake.order_for(results["rest-1"].client_order_id or "")["status"] == "accepted"  # type: ignore[index]
    assert fake.requests_to("DELETE", f"/v2/orders/{results['rest-1'].broker_order_id}") == 0


def test_orders_without_a_ledger_or_the_broker_keys_exit_2_and_create_no_ledger(
    ledger_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["orders", "show", "--key", "k", "--tenant", "acme_corp"]) == 2
    assert capsys.readouterr().err.strip() == f"msr orders show: EXEC_SQLITE_PATH: no ledger at {ledger_path}"
    assert not ledger_path.exists()

    SQLiteExecutionStore(ledger_path).close()
    monkeypatch.delenv("APCA_API_KEY_ID")
    assert main(["orders", "cancel", "--key", "k", "--tenant", "acme_corp"]) == 2
    assert "APCA_API_KEY_ID" in capsys.readouterr().err


def test_orders_take_exactly_one_name_and_a_tenant(capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_code_of(["orders", "show", "--key", "a", "--client-order-id", "b", "--tenant", "t"]) == 2
    assert "not allowed with argument" in capsys.readouterr().err
    assert exit_code_of(["orders", "cancel", "--tenant", "t"]) == 2
    assert "one of the arguments --key --client-order-id is required" in capsys.readouterr().err
    assert exit_code_of(["orders", "show", "--key", "a"]) == 2
    assert "--tenant" in capsys.readouterr().err


def test_orders_sweep_settles_what_the_broker_did_with_no_delivery_and_resumes_from_its_cursor(
    resting: tuple[FakeAlpaca, dict[str, Any]], ledger_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake, results = resting
    fresh = ["orders", "sweep", "--json"]  # the default threshold: orders changed a minute ago or more
    assert main(fresh) == 0
    assert json.loads(capsys.readouterr().out)["examined"] == 0  # both were placed just now

    for placed in results.values():  # the broker fills both; no delivery of either intent comes back
        for _ in range(fake.polls_to_fill):
            fake.get_order(placed.broker_order_id or "")
    assert main(["orders", "sweep", "--older-than", "0", "--max-orders", "1", "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert (first["examined"], first["settled"], first["exhausted"], first["states"]) == (
        1,
        1,
        "orders",
        {"filled": 1},
    )
    assert main(["orders", "sweep", "--older-than", "0"]) == 0  # continues after the first: the other
    assert capsys.readouterr().out.startswith("Swept 1 open order(s) in ")

    store = SQLiteExecutionStore(ledger_path)
    try:
        assert len(list(store.iter_ledger_trades("acme_corp"))) == 2
        assert store.open_orders(datetime.now(UTC), limit=10) == []
    finally:
        store.close()
    assert main(["orders", "sweep", "--older-than", "0", "--json"]) == 0  # nothing left: nothing written
    assert json.loads(capsys.readouterr().out)["examined"] == 0
    assert main(["orders", "sweep", "--max-orders", "-1"]) == 2
