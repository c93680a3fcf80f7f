"""AlpacaBroker and AlpacaMarketData: the real alpaca-py SDK, over a real socket, against a local
server that speaks Alpaca's REST API (tests/alpaca_server.py)."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from alpaca.common.exceptions import APIError
from pydantic import ValidationError

from backend.adapters.alpaca.broker import AlpacaBroker
from backend.adapters.alpaca.http import RequestPacer
from backend.adapters.alpaca.market_data import AlpacaMarketData
from backend.adapters.alpaca.settings import AlpacaSettings
from backend.adapters.market_data import StaticMarketData
from backend.adapters.paper_broker import PaperBroker
from backend.adapters.sqlite_store import SQLiteExecutionStore
from backend.adapters.venues import VenueRouter
from backend.core.instruments import AssetClass, instrument_for
from backend.core.intents import Side
from backend.core.orders import OrderRequest
from backend.core.paths import client_order_id_for
from backend.core.risk import RiskLimits
from backend.execution.deadlines import request_deadline
from backend.execution.engine import (
    BrokerRejectedError,
    ExecutionEngine,
    ExecutionStatus,
    OrderIntent,
    ReasonCode,
    RiskManager,
    SmartRouter,
)
from backend.execution.ports import BrokerOutcomeUnknownError, ManualClock, SystemClock
from backend.execution.settings import ExecSettings
from backend.observability.logging import configure_logging
from devtools.alpaca_simulator import FakeAlpaca, Fault, RateLimit, running

SECRET = "s3cr3t-do-not-log"
ORDERS = "/v2/orders"
BY_CLIENT_ID = "/v2/orders:by_client_order_id"
OPTION = "SPY251219P00450000"


@pytest.fixture
def fake() -> FakeAlpaca:
    fake = FakeAlpaca()
    fake.set_quote("AAPL", "189.99", "190.01")
    fake.set_quote("MSFT", "409.95", "410.05")
    fake.set_quote("BTC/USD", "49995", "50005")
    fake.set_quote(OPTION, "4.10", "4.12")
    return fake


@pytest.fixture
def alpaca_url(fake: FakeAlpaca) -> Iterator[str]:
    with running(fake) as url:
        yield url


@pytest.fixture
def settings(alpaca_url: str) -> AlpacaSettings:
    return AlpacaSettings(
        trading_requests_per_minute=0,  # not what this is about: the pace has its own test
        api_key_id="test-key",
        secret_key=SECRET,
        trading_url=alpaca_url,
        data_url=alpaca_url,
        timeout_s=0.5,
        read_attempts=3,
        backoff_s=0.01,
        max_wait_s=0.05,
        fill_polls=5,
        fill_poll_s=0.01,
        lookup_grace_s=1.5,
        quote_ttl_s=60,
    )


@pytest.fixture
def broker(settings: AlpacaSettings) -> AlpacaBroker:
    return AlpacaBroker(settings)


@pytest.fixture
def market_data(settings: AlpacaSettings) -> AlpacaMarketData:
    return AlpacaMarketData(settings)


def make_engine(
    tmp_path: Path, broker: Any, market_data: Any, limits: RiskLimits | None = None
) -> ExecutionEngine:
    return ExecutionEngine(
        broker=broker,
        router=SmartRouter(max_spread_pct_by_asset_class={"OPTIONS": 0.05}, market_data=market_data),
        risk=RiskManager(limits or RiskLimits(max_position_qty=Decimal(1000))),
        dry_run=False,
        store=SQLiteExecutionStore(tmp_path / "alpaca.sqlite3"),
        clock=SystemClock(),
        settings=ExecSettings(tenant_id="acme_corp", uid="u1"),
    )


def intent(symbol: str = "AAPL", qty: str = "10", side: str = "buy", key: str = "k1") -> OrderIntent:
    return OrderIntent(
        strategy_id="s",
        broker_account_id="alpaca_main",
        symbol=symbol,
        side=side,
        qty=qty,
        idempotency_key=key,
    )


def posted_bodies(fake: FakeAlpaca) -> int:
    return fake.requests_to("POST", ORDERS)


class TestPlacement:
    @pytest.mark.parametrize(
        ("symbol", "qty", "venue_symbol", "tif", "fill"),
        [
            ("AAPL", "10", "AAPL", "day", "190.01"),
            ("BTCUSD", "0.5", "BTC/USD", "gtc", "50005"),
            (OPTION, "2", OPTION, "day", "4.12"),
        ],
    )
    def test_each_asset_class_is_placed_with_its_own_rules(
        self,
        tmp_path: Path,
        fake: FakeAlpaca,
        broker: AlpacaBroker,
        market_data: AlpacaMarketData,
        symbol: str,
        qty: str,
        venue_symbol: str,
        tif: str,
        fill: str,
    ) -> None:
        engine = make_engine(tmp_path, broker, market_data)
        result = engine.execute_intent(intent(symbol, qty))
        assert result.status is ExecutionStatus.PLACED, result.reason
        assert result.broker_order is not None
        assert result.broker_order.avg_fill_price == Decimal(fill)
        order = fake.orders[result.broker_order.order_id]
        assert (order["symbol"], order["time_in_force"], Decimal(order["qty"])) == (
            venue_symbol,
            tif,
            Decimal(qty),
        )
        assert order["client_order_id"] == result.client_order_id
        assert len(result.client_order_id or "") <= 128
        trades = list(engine.store.iter_ledger_trades("acme_corp"))
        assert [(t.filled_qty, t.price) for t in trades] == [(Decimal(qty), Decimal(fill))]
        assert trades[0].symbol == instrument_for(symbol).symbol  # one spelling: BTCUSD is BTC/USD
        assert posted_bodies(fake) == 1

    def test_same_intent_twice_is_one_post(
        self, tmp_path: Path, fake: FakeAlpaca, broker: AlpacaBroker, market_data: AlpacaMarketData
    ) -> None:
        engine = make_engine(tmp_path, broker, market_data)
        first = engine.execute_intent(intent())
        second = engine.execute_intent(intent())
        assert second.replayed
        assert second.broker_order_id == first.broker_order_id
        assert posted_bodies(fake) == 1

    def test_fractional_options_and_fx_are_refused_before_the_network(
        self, tmp_path: Path, fake: FakeAlpaca, broker: AlpacaBroker, market_data: AlpacaMarketData
    ) -> None:
        with pytest.raises(ValidationError, match="whole contracts"):
            intent(OPTION, "1.5", key="o")  # refused where the intent is made
        request = OrderRequest("c1", "alpaca_main", OPTION, AssetClass.OPTIONS, Side.BUY, Decimal("1.5"))
        assert broker.check(request) == (
            ReasonCode.ORDER_INVALID,
            "OPTIONS trade in whole contracts, got qty 1.5",
        )
        with pytest.raises(BrokerRejectedError, match="whole contracts"):
            broker.submit_order(request)
        assert posted_bodies(fake) == 0

    def test_fill_is_tracked_until_final(
        self, tmp_path: Path, fake: FakeAlpaca, broker: AlpacaBroker, market_data: AlpacaMarketData
    ) -> None:
        fake.fill, fake.polls_to_fill = "new", 2
        engine = make_engine(tmp_path, broker, market_data)
        result = engine.execute_intent(intent())
        assert result.broker_order is not None
        assert result.broker_order.status.value == "filled"
        order_id = result.broker_order.order_id
        assert fake.requests_to("GET", f"{ORDERS}/{order_id}") == 2
        assert len(list(engine.store.iter_ledger_trades())) == 1


class TestExactlyOnce:
    def test_timeout_on_submit_then_lookup_finds_the_order(
        self, tmp_path: Path, fake: FakeAlpaca, broker: AlpacaBroker, market_data: AlpacaMarketData
    ) -> None:
        fake.faults.append(Fault("POST", ORDERS, hang_s=1.0, then_process=True))
        engine = make_engine(tmp_path, broker, market_data)
        result = engine.execute_intent(intent())
        assert result.status is ExecutionStatus.PLACED, result.reason
        assert posted_bodies(fake) == 1
        assert fake.requests_to("GET", BY_CLIENT_ID) >= 1
        assert len(fake.orders) == 1

    def test_504_after_processing_then_lookup_finds_the_order(
        self, tmp_path: Path, fake: FakeAlpaca, broker: AlpacaBroker, market_data: AlpacaMarketData
    ) -> None:
        fake.faults.append(Fault("POST", ORDERS, status=504, body="upstream timeout", then_process=True))
        result = make_engine(tmp_path, broker, market_data).execute_intent(intent())
        assert result.status is ExecutionStatus.PLACED
        assert (posted_bodies(fake), len(fake.orders)) == (1, 1)

    def test_504_without_an_order_is_unknown_then_reconciled(
        self, tmp_path: Path, fake: FakeAlpaca, broker: AlpacaBroker, market_data: AlpacaMarketData
    ) -> None:
        fake.faults.append(Fault("POST", ORDERS, status=504, body="upstream timeout"))
        engine = make_engine(tmp_path, broker, market_data)
        first = engine.execute_intent(intent())
        assert (first.status, first.reason_code) == (
            ExecutionStatus.UNKNOWN,
            ReasonCode.BROKER_OUTCOME_UNKNOWN,
        )
        assert list(engine.store.iter_ledger_trades()) == []
        # The order shows up at the broker later (it was queued): a retry reconciles, not resends.
        fake.create_order(
            {
                "symbol": "AAPL",
                "qty": "10",
                "side": "buy",
                "time_in_force": "day",
                "client_order_id": first_cid(first),
            }
        )
        second = engine.execute_intent(intent())
        assert second.status is ExecutionStatus.PLACED
        assert posted_bodies(fake) == 1
        assert len(list(engine.store.iter_ledger_trades())) == 1

    def test_unknown_not_found_after_the_window_is_sent_again_under_the_same_client_order_id(
        self, tmp_path: Path, fake: FakeAlpaca, broker: AlpacaBroker, market_data: AlpacaMarketData
    ) -> None:
        fake.faults.append(Fault("POST", ORDERS, status=503, body="unavailable"))  # nothing created
        engine = make_engine(tmp_path, broker, market_data)
        engine.settings = ExecSettings(tenant_id="acme_corp", uid="u1", reconcile_after_seconds=0)
        first = engine.execute_intent(intent())
        assert first.status is ExecutionStatus.UNKNOWN
        settled = engine.execute_intent(intent())  # not at the broker, intent fresh, quote fine
        assert settled.status is ExecutionStatus.PLACED
        assert settled.client_order_id == client_order_id_for("acme_corp", "k1")
        assert posted_bodies(fake) == 2
        assert len(fake.orders) == 1
        assert len(list(engine.store.iter_ledger_trades())) == 1

    def test_unknown_not_found_after_the_window_is_released_when_the_intent_is_old(
        self, tmp_path: Path, fake: FakeAlpaca, broker: AlpacaBroker, market_data: AlpacaMarketData
    ) -> None:
        fake.faults.append(Fault("POST", ORDERS, status=503, body="unavailable"))
        engine = make_engine(tmp_path, broker, market_data)
        engine.settings = ExecSettings(
            tenant_id="acme_corp", uid="u1", reconcile_after_seconds=0, intent_ttl_seconds=0.001
        )
        assert engine.execute_intent(intent()).status is ExecutionStatus.UNKNOWN
        time.sleep(0.01)
        settled = engine.execute_intent(intent())
        assert (settled.status, settled.reason_code) == (ExecutionStatus.FAILED, ReasonCode.INTENT_EXPIRED)
        assert "never placed" in settled.reason
        day = datetime.now(UTC).date().isoformat()
        exposure = engine.store.get_exposure("acme_corp", "default", "AAPL", day, 50)
        assert exposure.pending_buy_qty == 0  # the quantity given back, and the slot:
        assert engine.store.daily_slots_taken("acme_corp", day) == 0
        assert posted_bodies(fake) == 1

    def test_422_duplicate_returns_the_existing_order(
        self, tmp_path: Path, fake: FakeAlpaca, broker: AlpacaBroker, market_data: AlpacaMarketData
    ) -> None:
        engine = make_engine(tmp_path, broker, market_data)
        # An earlier attempt (another worker, before a crash) already placed this client order id.
        cid = client_order_id_for("acme_corp", "k1")
        _, existing = fake.create_order(
            {"symbol": "AAPL", "qty": "10", "side": "buy", "time_in_force": "day", "client_order_id": cid}
        )
        result = engine.execute_intent(intent())
        assert result.status is ExecutionStatus.PLACED
        assert result.broker_order_id == existing["id"]
        assert len(fake.orders) == 1

    def test_429_then_success(
        self, tmp_path: Path, fake: FakeAlpaca, broker: AlpacaBroker, market_data: AlpacaMarketData
    ) -> None:
        reset = str(time.time() + 0.02)
        fake.faults.append(Fault("POST", ORDERS, status=429, body='{"message": "too many requests"}',
                                 headers={"X-RateLimit-Reset": reset}))  # fmt: skip
        result = make_engine(tmp_path, broker, market_data).execute_intent(intent())
        assert result.status is ExecutionStatus.PLACED
        assert (posted_bodies(fake), len(fake.orders)) == (2, 1)

    def test_hung_server_times_out_in_bounded_time(
        self, tmp_path: Path, fake: FakeAlpaca, broker: AlpacaBroker, market_data: AlpacaMarketData
    ) -> None:
        fake.faults.append(Fault("POST", ORDERS, hang_s=5.0))
        engine = make_engine(tmp_path, broker, market_data)
        started = time.monotonic()
        result = engine.execute_intent(intent())
        elapsed = time.monotonic() - started
        assert result.status is ExecutionStatus.UNKNOWN
        assert elapsed < 4.0  # the 0.5 s timeout, then a lookup: far from the 5 s hang
        assert len(fake.orders) == 0

    def test_malformed_success_body_is_not_recorded_as_placed(
        self, tmp_path: Path, fake: FakeAlpaca, broker: AlpacaBroker, market_data: AlpacaMarketData
    ) -> None:
        fake.faults.append(Fault("POST", ORDERS, status=200, body="{not json"))
        engine = make_engine(tmp_path, broker, market_data)
        result = engine.execute_intent(intent())
        assert result.status is ExecutionStatus.UNKNOWN
        assert "malformed" in result.reason
        assert list(engine.store.iter_ledger_trades()) == []

    @pytest.mark.parametrize("body", ["null", "[]", '{"id": 1}'])
    def test_an_answer_the_sdk_cannot_read_after_the_order_was_made_is_looked_up(
        self, tmp_path: Path, fake: FakeAlpaca, broker: AlpacaBroker, market_data: AlpacaMarketData, body: str
    ) -> None:
        # JSON null or an array makes alpaca-py raise TypeError (Order(**None)), a wrong shape a
        # ValidationError: either way the order exists and is found by its client order id.
        fake.faults.append(Fault("POST", ORDERS, status=200, body=body, then_process=True))
        engine = make_engine(tmp_path, broker, market_data)
        result = engine.execute_intent(intent())
        assert result.status is ExecutionStatus.PLACED
        assert (posted_bodies(fake), len(fake.orders)) == (1, 1)
        assert len(list(engine.store.iter_ledger_trades())) == 1


class TestBrokerAnswers:
    def test_rejected_order_is_a_failure(
        self, tmp_path: Path, fake: FakeAlpaca, broker: AlpacaBroker, market_data: AlpacaMarketData
    ) -> None:
        fake.fill = "rejected"
        engine = make_engine(tmp_path, broker, market_data)
        result = engine.execute_intent(intent())
        assert (result.status, result.reason_code) == (ExecutionStatus.FAILED, ReasonCode.BROKER_REJECTED)
        assert list(engine.store.iter_ledger_trades()) == []

    def test_partial_fill_reaches_the_ledger_as_partial(
        self, tmp_path: Path, fake: FakeAlpaca, broker: AlpacaBroker, market_data: AlpacaMarketData
    ) -> None:
        fake.fill = "partial"
        settings = broker.settings.model_copy(update={"fill_polls": 1})
        engine = make_engine(tmp_path, AlpacaBroker(settings), market_data)
        result = engine.execute_intent(intent(qty="10"))
        assert result.broker_order is not None
        assert result.broker_order.status.value == "partially_filled"
        [trade] = engine.store.iter_ledger_trades()
        assert trade.qty == Decimal(5)
        day = datetime.now(UTC).date().isoformat()
        exposure = engine.store.get_exposure("acme_corp", "default", "AAPL", day, 50)
        assert (exposure.position_qty, exposure.pending_buy_qty) == (5, 5)

    @pytest.mark.parametrize(
        ("status", "message", "code"),
        [
            (403, "insufficient buying power", ReasonCode.INSUFFICIENT_BUYING_POWER),
            (422, "asset XYZ is not tradable", ReasonCode.ASSET_NOT_TRADABLE),
            (403, "market is closed", ReasonCode.MARKET_CLOSED),
            (422, "qty must be > 0", ReasonCode.BROKER_REJECTED),
        ],
    )
    def test_refusals_map_to_reason_codes_and_keep_the_message(
        self,
        tmp_path: Path,
        fake: FakeAlpaca,
        broker: AlpacaBroker,
        market_data: AlpacaMarketData,
        status: int,
        message: str,
        code: ReasonCode,
    ) -> None:
        fake.faults.append(
            Fault("POST", ORDERS, status=status, body=json.dumps({"code": 1, "message": message}))
        )
        result = make_engine(tmp_path, broker, market_data).execute_intent(intent())
        assert (result.status, result.reason_code) == (ExecutionStatus.FAILED, code)
        assert message in result.reason

    def test_keys_are_never_logged(
        self, tmp_path: Path, fake: FakeAlpaca, settings: AlpacaSettings, market_data: AlpacaMarketData
    ) -> None:
        stream = io.StringIO()
        configure_logging("DEBUG", stream)
        fake.faults.append(Fault("POST", ORDERS, status=504, body="x"))
        make_engine(tmp_path, AlpacaBroker(settings), market_data).execute_intent(intent())
        assert stream.getvalue()
        assert SECRET not in stream.getvalue()
        assert SECRET not in repr(settings)
        assert fake.log  # requests were made, with the headers the server saw


class TestVenues:
    def test_forex_never_reaches_alpaca(
        self, tmp_path: Path, fake: FakeAlpaca, broker: AlpacaBroker, market_data: AlpacaMarketData
    ) -> None:
        clock = SystemClock()
        fx_quotes = StaticMarketData(clock=clock)
        fx_quotes.set_quote("EUR/USD", "1.08500", "1.08510")
        paper_fx = PaperBroker(fx_quotes, clock)
        no_fx = VenueRouter(
            {AssetClass.EQUITY: broker, AssetClass.CRYPTO: broker, AssetClass.OPTIONS: broker}
        )
        with_fx = VenueRouter({**no_fx.venues, AssetClass.FOREX: paper_fx})
        limits = RiskLimits(max_position_qty_by_asset_class={AssetClass.FOREX: Decimal(10**6)})
        refused = make_engine(tmp_path, no_fx, fx_quotes, limits).execute_intent(
            intent("EUR/USD", "10000", key="fx1")
        )
        assert (refused.status, refused.reason_code) == (
            ExecutionStatus.REJECTED,
            ReasonCode.NO_VENUE_FOR_ASSET_CLASS,
        )
        placed = make_engine(tmp_path / "b", with_fx, fx_quotes, limits).execute_intent(
            intent("EUR/USD", "10000", key="fx2")
        )
        assert placed.status is ExecutionStatus.PLACED
        assert placed.broker_order is not None
        assert placed.broker_order.broker == "paper"
        assert all("EUR" not in path and "EUR" not in query for _, path, query in fake.log)
        assert AlpacaBroker.check(broker, refused_request()) is not None


def refused_request() -> Any:
    return OrderRequest("c", "a", "EUR/USD", AssetClass.FOREX, Side.BUY, Decimal(1))


def first_cid(result: Any) -> str:

    return client_order_id_for(result.tenant_id, result.idempotency_key)


class TestMarketData:
    def test_one_request_per_asset_class_and_a_cache(
        self, fake: FakeAlpaca, market_data: AlpacaMarketData
    ) -> None:
        stocks = [f"S{i:02d}" for i in range(20)]
        coins = ["BTC/USD", "ETH/USD", "SOL/USD"]
        options = [OPTION, "AAPL240119C00150000"]
        for symbol in stocks:
            fake.set_quote(symbol, "10.00", "10.01")
        for symbol in coins[1:] + options[1:]:
            fake.set_quote(symbol, "1.00", "1.01")
        quotes = market_data.get_quotes([*stocks, *coins, *options, "EUR/USD"])
        assert fake.requests_to("GET", "/v2/stocks/quotes/latest") == 1
        assert fake.requests_to("GET", "/v1beta3/crypto/us/latest/quotes") == 1
        assert fake.requests_to("GET", "/v1beta1/options/quotes/latest") == 1
        assert quotes["EUR/USD"] is None
        btc = quotes["BTC/USD"]
        assert btc is not None
        assert (btc.bid, btc.ask, btc.asset_class) == (
            Decimal("49995.0"),
            Decimal("50005.0"),
            AssetClass.CRYPTO,
        )
        assert quotes["S00"] is not None
        assert quotes["S00"].ask == Decimal("10.01")
        market_data.get_quotes(stocks)
        assert market_data.requests == 3  # served from the cache

    def test_stale_and_missing_quotes_are_refused_by_the_router(
        self, tmp_path: Path, fake: FakeAlpaca, broker: AlpacaBroker, market_data: AlpacaMarketData
    ) -> None:
        old = (datetime.now(UTC) - timedelta(minutes=5)).isoformat().replace("+00:00", "Z")
        fake.set_quote("MSFT", "409.95", "410.05", timestamp=old)
        engine = make_engine(tmp_path, broker, market_data)
        assert engine.execute_intent(intent("MSFT", key="m")).reason_code is ReasonCode.QUOTE_STALE
        assert engine.execute_intent(intent("NOPE", key="n")).reason_code is ReasonCode.QUOTE_MISSING
        assert posted_bodies(fake) == 0

    def test_a_data_outage_means_no_quote_not_a_crash(
        self, tmp_path: Path, fake: FakeAlpaca, broker: AlpacaBroker, market_data: AlpacaMarketData
    ) -> None:
        for _ in range(3):
            fake.faults.append(Fault("GET", "/v2/stocks/quotes/latest", status=500, body="down"))
        result = make_engine(tmp_path, broker, market_data).execute_intent(intent())
        assert result.reason_code is ReasonCode.QUOTE_MISSING
        assert posted_bodies(fake) == 0


class TestVenueTable:
    def test_table_from_configuration(self, broker: AlpacaBroker) -> None:
        from backend.adapters.venues import build_venues

        paper = PaperBroker(StaticMarketData(clock=SystemClock()), SystemClock())
        made: list[str] = []

        def make_alpaca() -> AlpacaBroker:
            made.append("alpaca")
            return broker

        table = ExecSettings(venues={"FOREX": "none"}).venue_table()  # type: ignore[arg-type]
        router = build_venues(table, make_alpaca, lambda: paper)
        assert router.venue_for(AssetClass.EQUITY) is broker
        assert router.venue_for(AssetClass.CRYPTO) is broker
        assert router.venue_for(AssetClass.FOREX) is None
        assert made == ["alpaca"]  # one client for all the classes it serves
        with pytest.raises(ValueError, match="Alpaca does not trade FX"):
            build_venues({"FOREX": "alpaca"}, make_alpaca, lambda: paper)
        with pytest.raises(ValueError, match="unknown venue 'ibkr'"):
            build_venues({"EQUITY": "ibkr"}, make_alpaca, lambda: paper)


class TestPacing:
    def test_the_pace_allows_at_most_n_requests_in_any_minute(self) -> None:
        now = [0.0]
        waits: list[float] = []

        def sleep(seconds: float) -> None:
            waits.append(seconds)
            now[0] += seconds

        pacer = RequestPacer(3, clock=lambda: now[0], sleep=sleep)
        sent = []
        for moment in (0.0, 1.0, 2.0, 2.5, 30.0, 61.0):
            now[0] = max(now[0], moment)
            pacer.acquire()
            sent.append(now[0])
        assert sent == [0.0, 1.0, 2.0, 60.0, 61.0, 62.0]  # the 4th waits for the 1st to age out
        assert all(sum(1 for t in sent if start <= t < start + 60) <= 3 for start in sent)
        assert pacer.waited_s == sum(waits)
        RequestPacer(0, clock=lambda: now[0], sleep=sleep).acquire()  # 0: not paced

    def test_a_paced_broker_is_never_throttled_by_alpacas_limit(
        self, fake: FakeAlpaca, alpaca_url: str
    ) -> None:
        # The simulator enforces 10 requests per minute; the broker paces itself to 10: 25 lookups
        # all answer, waiting (on a shared manual clock) instead of being refused with 429.
        clock = ManualClock(datetime(2026, 3, 2, 15, 30, tzinfo=UTC))
        fake.clock, fake.rate_limit = clock.now, RateLimit(requests=10, window_s=60)
        pacer = RequestPacer(
            10, clock=lambda: clock.now().timestamp(), sleep=lambda s: clock.advance(timedelta(seconds=s))
        )
        settings = AlpacaSettings(
            api_key_id="paced", secret_key="s", trading_url=alpaca_url, data_url=alpaca_url, timeout_s=2,
            read_attempts=1,
        )  # fmt: skip
        broker = AlpacaBroker(settings, pacer=pacer)
        for index in range(25):
            assert broker.get_order_by_client_order_id(f"msr-none-{index}") is None
        assert fake.throttled == 0
        assert pacer.waited_s >= 120  # 25 requests at 10 a minute: two full waits
        unpaced = AlpacaBroker(
            settings.model_copy(update={"api_key_id": "unpaced", "trading_requests_per_minute": 0})
        )
        for index in range(10):
            unpaced.get_order_by_client_order_id(f"msr-none-{index}")
        with pytest.raises(APIError, match="rate limit"):  # the 11th in the minute: refused
            unpaced.get_order_by_client_order_id("msr-none-10")
        assert fake.throttled == 1


class TestTimeBudget:
    """A broker call ends within its budget whatever the network does; what is not known by then
    is the order lifecycle's (an unknown outcome), never waited for."""

    def test_a_submit_to_a_server_that_never_answers_ends_within_the_budget_as_unknown(
        self, fake: FakeAlpaca, settings: AlpacaSettings
    ) -> None:
        # Every request hangs past the timeout: the submit, then each lookup by client order id.
        slow = settings.model_copy(update={"timeout_s": 5.0, "call_budget_s": 1.0, "lookup_grace_s": 30.0})
        fake.latency_s = 3.0
        broker = AlpacaBroker(slow)
        request = OrderRequest(client_order_id="msr-budget-1", broker_account_id="a", symbol="AAPL",
                               side=Side.BUY, qty=Decimal(1), asset_class=AssetClass.EQUITY)  # fmt: skip
        started = time.monotonic()
        with pytest.raises(BrokerOutcomeUnknownError):
            broker.submit_order(request)
        assert time.monotonic() - started < 2.5  # the 1 s budget and one request's slack, not 5 s x n

    def test_fill_polls_stop_at_the_budget_and_answer_the_order_as_accepted(
        self, fake: FakeAlpaca, settings: AlpacaSettings
    ) -> None:
        fake.fill, fake.polls_to_fill = "new", 1000  # rests
        resting = settings.model_copy(update={"call_budget_s": 0.3, "fill_polls": 50, "fill_poll_s": 0.05})
        request = OrderRequest(client_order_id="msr-budget-2", broker_account_id="a", symbol="AAPL",
                               side=Side.BUY, qty=Decimal(1), asset_class=AssetClass.EQUITY)  # fmt: skip
        started = time.monotonic()
        order = AlpacaBroker(resting).submit_order(request)
        assert time.monotonic() - started < 1.0  # 50 polls of growing pauses would take a minute
        assert order.status.value == "accepted"

    def test_a_wait_for_the_pace_past_the_requests_deadline_sends_nothing(
        self, fake: FakeAlpaca, settings: AlpacaSettings
    ) -> None:
        paced = settings.model_copy(update={"api_key_id": "deadline", "trading_requests_per_minute": 1})
        broker = AlpacaBroker(paced, pacer=RequestPacer(1))
        assert broker.get_order_by_client_order_id("msr-none-1") is None  # uses the minute's request
        posts = posted_bodies(fake)
        request = OrderRequest(client_order_id="msr-budget-3", broker_account_id="a", symbol="AAPL",
                               side=Side.BUY, qty=Decimal(1), asset_class=AssetClass.EQUITY)  # fmt: skip
        started = time.monotonic()
        with request_deadline(0.5), pytest.raises(BrokerOutcomeUnknownError, match="not sent"):
            broker.submit_order(request)
        assert time.monotonic() - started < 0.5
        assert posted_bodies(fake) == posts
        assert fake.order_for("msr-budget-3") is None
