"""The design document's engine examples run as written: Example 3 (``AlpacaBroker`` imported from the
engine module, a ``SmartRouter`` given no market data) and the bare ``MarketDataProvider()``, each
configured only through the environment: the local Alpaca simulator (the real alpaca-py SDK over a
socket), fixed quotes (``EXEC_STATIC_QUOTES``) or the recorded tapes."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from backend.adapters.market_data import DEFAULT_TAPE_DIR, FixedPriceMarketData, load_quote_tape
from backend.adapters.market_data_selection import configured_market_data
from backend.core.reasons import ReasonCode
from backend.execution.engine import (
    AlpacaBroker,
    ExecutionStatus,
    MarketDataProvider,
    OrderIntent,
    SmartRouter,
)
from backend.execution.ports import Broker, ManualClock
from backend.execution.settings import ConfigurationError, ExecSettings, load_settings
from backend.observability.logging import configure_logging
from devtools.alpaca_simulator import FakeAlpaca, running
from tests.conftest import T0

ROOT = Path(__file__).resolve().parents[1]

# Copied verbatim from the design document ("Example 3: Execution Engine Setup").
SEED_EXAMPLE_3 = """\
from backend.execution.engine import (
    ExecutionEngine,
    AlpacaBroker,
    SmartRouter,
    RiskManager,
    OrderIntent,
)

# Initialize components
broker = AlpacaBroker()
router = SmartRouter(max_spread_pct=0.001)  # 0.1% threshold
risk_manager = RiskManager()

# Create execution engine with smart routing
engine = ExecutionEngine(
    broker=broker,
    router=router,
    risk=risk_manager,
    enable_smart_routing=True,  # Enable cost optimization
    dry_run=False,
)

# Execute multi-asset order
intent = OrderIntent(
    strategy_id="multi_asset_momentum",
    broker_account_id="alpaca_main",
    symbol="EUR/USD",
    side="buy",
    qty=10000.0,
    asset_class="FOREX",
    metadata={
        "tenant_id": "acme_corp",
        "uid": "user_12345",
    },
)

result = engine.execute_intent(intent=intent)

if result.status == "downgraded":
    print(f"❌ Trade blocked: {result.routing.reason}")
    print(f"   Spread: {result.routing.spread_pct:.4%}")
elif result.status == "placed":
    print(f"✅ Order placed: {result.broker_order_id}")
    print(f"   Estimated slippage: {result.routing.estimated_slippage:.4%}")
"""

# Copied verbatim from the design document ("1. MarketDataProvider"), under the section that names
# ``backend/execution/engine.py`` as where the name comes from.
SEED_MARKET_DATA = """\
provider = MarketDataProvider()
quote = provider.get_quote(symbol="EUR/USD", asset_class="FOREX")
# Returns: {bid, ask, spread, spread_pct, mid_price}
"""

TIGHT_EUR_USD = '{"EUR/USD": ["1.08500", "1.08510"]}'
WIDE_EUR_USD = '{"EUR/USD": ["1.08400", "1.08600"]}'  # 0.18 %: above the example's 0.1 %
CONFIG_PREFIXES = ("EXEC_", "APCA_")
CLOUD_VARIABLES = ("FIRESTORE_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT", "GCLOUD_PROJECT")


def clean_environ() -> dict[str, str]:
    return {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(CONFIG_PREFIXES) and name not in CLOUD_VARIABLES
    }


@pytest.fixture
def seed_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Nothing configured but the embedded store in a temporary directory."""
    for name in os.environ:
        if name.startswith(CONFIG_PREFIXES) or name in CLOUD_VARIABLES:
            monkeypatch.delenv(name)
    ledger = tmp_path / "ledger.sqlite3"
    monkeypatch.setenv("EXEC_STORE", "sqlite")
    monkeypatch.setenv("EXEC_SQLITE_PATH", str(ledger))
    monkeypatch.chdir(tmp_path)
    return ledger


@pytest.fixture
def fake() -> FakeAlpaca:
    fake = FakeAlpaca()
    fake.set_quote("AAPL", "189.99", "190.01")
    return fake


@pytest.fixture
def alpaca_env(seed_env: Path, fake: FakeAlpaca, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAlpaca]:
    """Alpaca's keys and base URLs pointing at the local simulator, as a user would configure them."""
    with running(fake) as url:
        monkeypatch.setenv("APCA_API_KEY_ID", "seed-key")
        monkeypatch.setenv("APCA_API_SECRET_KEY", "seed-secret")
        monkeypatch.setenv("APCA_API_BASE_URL", url)
        monkeypatch.setenv("APCA_API_DATA_URL", url)
        yield fake


def run_example_3(capsys: pytest.CaptureFixture[str]) -> tuple[dict[str, Any], str]:
    namespace: dict[str, Any] = {}
    try:
        exec(compile(SEED_EXAMPLE_3, "seed: Example 3", "exec"), namespace)
    finally:
        engine = namespace.get("engine")
        if engine is not None:
            engine.store.close()
    return namespace, capsys.readouterr().out


def run_market_data_snippet() -> dict[str, Any]:
    namespace: dict[str, Any] = {"MarketDataProvider": MarketDataProvider}
    exec(compile(SEED_MARKET_DATA, "seed: MarketDataProvider", "exec"), namespace)
    return namespace


def stored_decisions(ledger: Path) -> list[Any]:
    from backend.adapters.sqlite_store import SQLiteExecutionStore

    store = SQLiteExecutionStore(ledger)
    try:
        return list(store.iter_decisions("acme_corp"))
    finally:
        store.close()


def fx_intent() -> OrderIntent:
    return OrderIntent(
        strategy_id="s", broker_account_id="alpaca_main", symbol="EUR/USD", side="buy", qty="10000"
    )


class TestSeedExample3:
    def test_with_alpaca_fx_finds_no_quote_and_nothing_reaches_alpaca(
        self, alpaca_env: FakeAlpaca, seed_env: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        namespace, printed = run_example_3(capsys)
        result = namespace["result"]
        assert type(namespace["router"].market_data).__name__ == "AlpacaMarketData"
        assert (result.status, result.reason_code, result.reason) == (
            ExecutionStatus.REJECTED,
            ReasonCode.QUOTE_MISSING,
            "No quote available",  # Alpaca has no FX data
        )
        assert printed == ""  # neither the "blocked" nor the "placed" branch
        assert alpaca_env.log == []  # no FX quote request, no order
        assert [d.status for d in stored_decisions(seed_env)] == [ExecutionStatus.REJECTED]

    def test_with_a_tight_static_quote_the_alpaca_broker_refuses_fx(
        self,
        alpaca_env: FakeAlpaca,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        monkeypatch.setenv("EXEC_MARKET_DATA", "static")  # explicit: wins over Alpaca's keys
        monkeypatch.setenv("EXEC_STATIC_QUOTES", TIGHT_EUR_USD)
        namespace, printed = run_example_3(capsys)
        result = namespace["result"]
        assert isinstance(namespace["router"].market_data, FixedPriceMarketData)
        assert result.routing.should_execute
        assert (result.status, result.reason_code, result.reason) == (
            ExecutionStatus.REJECTED,
            ReasonCode.NO_VENUE_FOR_ASSET_CLASS,
            "Alpaca does not trade FX",
        )
        assert printed == ""
        assert alpaca_env.requests_to("POST", "/v2/orders") == 0

    def test_with_a_wide_static_spread_it_prints_trade_blocked(
        self,
        alpaca_env: FakeAlpaca,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        monkeypatch.setenv("EXEC_MARKET_DATA", "static")
        monkeypatch.setenv("EXEC_STATIC_QUOTES", WIDE_EUR_USD)
        namespace, printed = run_example_3(capsys)
        result = namespace["result"]
        assert (result.status, result.reason_code) == (ExecutionStatus.DOWNGRADED, ReasonCode.SPREAD_TOO_WIDE)
        assert printed == ("❌ Trade blocked: Spread 0.18% exceeds threshold 0.10%\n   Spread: 0.1843%\n")
        assert alpaca_env.log == []

    def test_without_alpaca_keys_the_broker_names_what_to_configure(
        self, seed_env: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        with pytest.raises(ConfigurationError, match="APCA_API_KEY_ID and APCA_API_SECRET_KEY"):
            run_example_3(capsys)
        with pytest.raises(ConfigurationError, match="APCA_API_KEY_ID and APCA_API_SECRET_KEY"):
            AlpacaBroker()

    def test_alpaca_broker_is_a_broker_named_alpaca(self, alpaca_env: FakeAlpaca) -> None:
        from backend.adapters.alpaca.broker import AlpacaBroker as Adapter

        broker = AlpacaBroker()
        assert type(broker) is Adapter
        assert isinstance(broker, AlpacaBroker)
        assert isinstance(broker, Broker)
        assert AlpacaBroker.name == broker.name == "alpaca"
        assert broker.settings.api_key_id == "seed-key"


def test_importing_the_engine_does_not_load_alpaca_py() -> None:
    """A fresh interpreter: the engine and the ``AlpacaBroker`` name import without the SDK (and a
    router on fixed quotes runs without it); it loads when a broker is constructed (keys given, no
    network call at construction)."""
    code = """
import json, sys
from backend.execution.engine import ExecutionEngine, AlpacaBroker, SmartRouter, RiskManager, OrderIntent
from backend.execution.ports import Broker

def loaded():
    return sorted(m for m in sys.modules if m == "alpaca" or m.startswith("alpaca."))

after_import = loaded()
SmartRouter(max_spread_pct=0.001).analyze_intent(
    OrderIntent(strategy_id="s", broker_account_id="a", symbol="EUR/USD", side="buy", qty=1)
)
after_static_quotes = loaded()
broker = AlpacaBroker()
print(json.dumps({"after_import": after_import, "after_static_quotes": after_static_quotes,
                  "after_construction": len(loaded()),
                  "is_broker": isinstance(broker, Broker), "name": broker.name}))
"""
    env = {
        **clean_environ(),
        "APCA_API_KEY_ID": "k",
        "APCA_API_SECRET_KEY": "s",
        "EXEC_MARKET_DATA": "static",
        "EXEC_STATIC_QUOTES": TIGHT_EUR_USD,
    }
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["after_import"] == []
    assert report["after_static_quotes"] == []  # fixed quotes need no SDK either
    assert report["after_construction"] > 0  # the check sees the SDK once it is loaded
    assert (report["is_broker"], report["name"]) == (True, "alpaca")


class TestSeedMarketDataProvider:
    def test_static_quotes_answer_exact_live_quotes(
        self, seed_env: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("EXEC_STATIC_QUOTES", '{"EUR/USD": [1.08500, 1.08510]}')  # JSON numbers
        before = datetime.now(UTC)
        namespace = run_market_data_snippet()
        quote = namespace["quote"]
        assert isinstance(namespace["provider"], MarketDataProvider)
        assert str(quote["bid"]) == "1.08500"  # as written: never through a float
        assert quote["ask"] == Decimal("1.08510")
        assert quote["spread"] == Decimal("0.00010")
        assert quote["mid_price"] == Decimal("1.08505")
        assert quote["spread_pct"] == Decimal("0.00010") / Decimal("1.08505")
        assert before <= quote.timestamp <= datetime.now(UTC)

    def test_static_quotes_are_stamped_at_each_answer(self) -> None:
        clock = ManualClock(T0)
        provider = configured_market_data(
            ExecSettings(market_data="static", static_quotes={"eur/usd": ("1.085", "1.0851")}),
            clock=clock,
        )
        first = provider.get_quote("EUR/USD")
        clock.advance(timedelta(minutes=1))
        second = provider.get_quote("EUR/USD")
        assert first is not None
        assert second is not None
        assert (first.timestamp, second.timestamp) == (T0, T0 + timedelta(minutes=1))
        assert provider.get_quote("GBP/USD") is None

    def test_alpaca_answers_through_the_sdk_and_has_no_fx(self, alpaca_env: FakeAlpaca) -> None:
        namespace = run_market_data_snippet()
        assert namespace["quote"] is None  # Alpaca has no FX data
        apple = namespace["provider"].get_quote(symbol="AAPL", asset_class="EQUITY")
        assert (apple["bid"], apple["ask"], apple["mid_price"]) == (
            Decimal("189.99"),
            Decimal("190.01"),
            Decimal("190.00"),
        )
        assert alpaca_env.requests_to("GET", "/v2/stocks/quotes/latest") == 1

    def test_nothing_configured_is_a_clear_error(self, seed_env: Path) -> None:
        with pytest.raises(ConfigurationError) as error:
            run_market_data_snippet()
        for what in (
            "APCA_API_KEY_ID",
            "APCA_API_SECRET_KEY",
            "EXEC_STATIC_QUOTES",
            "EXEC_MARKET_DATA=tapes",
        ):
            assert what in str(error.value)

    def test_alpaca_keys_win_over_static_quotes_unless_static_is_chosen(
        self, alpaca_env: FakeAlpaca, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("EXEC_STATIC_QUOTES", TIGHT_EUR_USD)
        assert type(MarketDataProvider()).__name__ == "AlpacaMarketData"
        monkeypatch.setenv("EXEC_MARKET_DATA", "static")
        assert isinstance(MarketDataProvider(), FixedPriceMarketData)

    def test_tapes_answer_the_last_recorded_quote_at_its_recorded_time(
        self, seed_env: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("EXEC_MARKET_DATA", "tapes")
        namespace = run_market_data_snippet()
        recorded = load_quote_tape(DEFAULT_TAPE_DIR / "eurusd_truefx_2020-01-01.csv")[-1]
        assert namespace["quote"] == recorded
        assert namespace["quote"].timestamp == recorded.timestamp  # never re-stamped
        stale = SmartRouter().analyze_intent(fx_intent())
        assert stale.reason_code is ReasonCode.QUOTE_STALE
        ten_years = 10 * 366 * 86400
        assert SmartRouter(max_quote_age_seconds=ten_years).analyze_intent(fx_intent()).should_execute

    def test_a_subclass_is_still_an_ordinary_adapter(self) -> None:
        class Incomplete(MarketDataProvider):
            pass

        with pytest.raises(TypeError):
            Incomplete()  # type: ignore[abstract]
        provider = FixedPriceMarketData({"AAPL": (Decimal(1), Decimal(2))}, ManualClock(T0))
        assert provider.symbols == ["AAPL"]


class TestMarketDataConfiguration:
    @pytest.mark.parametrize(
        ("environ", "message"),
        [
            ({"EXEC_STATIC_QUOTES": "{EUR/USD: 1}"}, "EXEC_STATIC_QUOTES: Value error, not JSON"),
            ({"EXEC_STATIC_QUOTES": '{"EUR/USD": ["NaN", "1"]}'}, "EXEC_STATIC_QUOTES"),
            ({"EXEC_STATIC_QUOTES": '{" ": ["1", "2"]}'}, "EXEC_STATIC_QUOTES: symbol must not be empty"),
            ({"EXEC_MARKET_DATA": "bloomberg"}, "EXEC_MARKET_DATA"),
            ({"EXEC_MARKET_DATA": "static"}, "EXEC_MARKET_DATA=static needs EXEC_STATIC_QUOTES"),
            ({"EXEC_MARKET_DATA": "alpaca"}, "set APCA_API_KEY_ID and APCA_API_SECRET_KEY"),
            ({"EXEC_MARKET_DATA": "tapes", "EXEC_QUOTE_TAPES": "/nonexistent"}, "is not a directory"),
        ],
    )
    def test_a_bad_configuration_names_the_variable(
        self, seed_env: Path, monkeypatch: pytest.MonkeyPatch, environ: dict[str, str], message: str
    ) -> None:
        for name, value in environ.items():
            monkeypatch.setenv(name, value)
        with pytest.raises(ConfigurationError, match=message):
            MarketDataProvider()

    def test_tapes_from_another_directory(self, seed_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        folder = seed_env.parent / "tapes"
        folder.mkdir()
        (folder / "spy.csv").write_text(
            "timestamp,symbol,asset_class,bid,ask\n"
            "2026-03-02T15:30:00Z,SPY,EQUITY,99.99,100.01\n"
            "2026-03-02T15:30:01Z,SPY,EQUITY,100.00,100.02\n"
        )
        monkeypatch.setenv("EXEC_MARKET_DATA", "tapes")
        monkeypatch.setenv("EXEC_QUOTE_TAPES", str(folder))
        quote = MarketDataProvider().get_quote("SPY")
        assert quote is not None
        assert (quote.bid, quote.timestamp) == (Decimal("100.00"), T0 + timedelta(seconds=1))
        assert load_settings().quote_tapes == str(folder)


class TestRouterWithoutMarketData:
    def test_constructing_needs_no_configuration_and_the_provider_is_found_on_first_use(
        self, seed_env: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("EXEC_MARKET_DATA", "not-a-provider")
        router = SmartRouter(max_spread_pct=0.001, clock=ManualClock(T0))  # no error here
        monkeypatch.setenv("EXEC_MARKET_DATA", "static")
        monkeypatch.setenv("EXEC_STATIC_QUOTES", WIDE_EUR_USD)
        decision = router.analyze_intent(fx_intent())
        assert (decision.reason_code, decision.reason) == (
            ReasonCode.SPREAD_TOO_WIDE,
            "Spread 0.18% exceeds threshold 0.10%",
        )
        assert decision.quote_timestamp == T0  # stamped by the router's clock

    def test_nothing_configured_refuses_as_quote_missing_and_says_so_once(self, seed_env: Path) -> None:
        stream = io.StringIO()
        configure_logging("INFO", stream)
        router = SmartRouter(max_spread_pct=0.001)
        decisions = [router.analyze_intent(fx_intent()) for _ in range(3)]
        assert {d.reason_code for d in decisions} == {ReasonCode.QUOTE_MISSING}
        assert decisions[0].reason.startswith("No quote available: no market data is configured (")
        assert "EXEC_STATIC_QUOTES" in decisions[0].reason
        events = [json.loads(line)["event"] for line in stream.getvalue().splitlines()]
        assert events.count("exec.market_data_missing") == 1

    def test_an_invalid_configuration_is_a_refusal_naming_it_not_an_exception(
        self, seed_env: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("EXEC_MARKET_DATA", "not-a-provider")
        decision = SmartRouter().analyze_intent(fx_intent())
        assert decision.reason_code is ReasonCode.QUOTE_MISSING
        assert "EXEC_MARKET_DATA" in decision.reason

    def test_a_given_quote_or_slippage_never_looks_the_provider_up(self, seed_env: Path) -> None:
        stream = io.StringIO()
        configure_logging("INFO", stream)
        router = SmartRouter(clock=ManualClock(T0))
        quote = FixedPriceMarketData({"EUR/USD": (Decimal("1.085"), Decimal("1.0851"))}, ManualClock(T0))
        given = router.analyze_intent(fx_intent(), quote=quote.get_quote("EUR/USD"))
        brought = router.analyze_intent(fx_intent().model_copy(update={"estimated_slippage": 0.0001}))
        assert (given.should_execute, brought.should_execute) == (True, True)
        assert "exec.market_data_missing" not in stream.getvalue()
        assert router.analyze_intent(fx_intent()).reason_code is ReasonCode.QUOTE_MISSING
        assert "exec.market_data_missing" in stream.getvalue()  # the lookup, on the first intent needing it
