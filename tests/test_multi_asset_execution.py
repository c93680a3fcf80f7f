"""The seed's test list: multi-asset intents, slippage, the downgrade rule, smart routing inside the
engine, BaseStrategy, asset-class detection, ledger persistence and an end-to-end flow."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Mapping
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from backend.adapters.market_data import StaticMarketData, TapeMarketData, default_tapes
from backend.adapters.sqlite_store import SQLiteExecutionStore
from backend.core.instruments import AssetClass, InvalidSymbolError, instrument_for, parse_occ_symbol
from backend.core.orders import BrokerOrder, BrokerOrderStatus, OrderRequest
from backend.core.paths import ledger_trade_path
from backend.core.quotes import Quote
from backend.core.risk import RiskLimits
from backend.execution.engine import (
    ExecutionEngine,
    ExecutionStatus,
    MarketDataProvider,
    OrderIntent,
    ReasonCode,
    RiskManager,
    SmartRouter,
)
from backend.execution.ports import Broker, BrokerOutcomeUnknownError, BrokerRejectedError, ManualClock
from backend.execution.settings import ConfigurationError, ExecSettings, load_settings
from backend.observability.logging import CloudLoggingFormatter, configure_logging
from functions.strategies.base_strategy import BaseStrategy, SignalType, TradingSignal
from functions.strategies.examples import CostAwareEquityStrategy, MultiAssetStrategy
from tests.conftest import T0, CountingBroker, EngineFactory


def intent(symbol: str = "AAPL", side: str = "buy", qty: Any = 10, **extra: Any) -> OrderIntent:
    return OrderIntent(
        strategy_id="multi_asset_momentum",
        broker_account_id="alpaca_main",
        symbol=symbol,
        side=side,
        qty=qty,
        **extra,
    )


class _Strategy(BaseStrategy):
    def evaluate(
        self, market_data: Mapping[str, Any], account_snapshot: Mapping[str, Any], regime: str | None = None
    ) -> TradingSignal:
        return TradingSignal(signal_type=SignalType.HOLD, symbol=market_data.get("symbol"))


class TestOrderIntent:
    def test_seed_five_field_form_still_works(self) -> None:
        old = OrderIntent(strategy_id="s1", broker_account_id="acct1", symbol="SPY", side="buy", qty=10)
        assert old.asset_class is AssetClass.EQUITY
        assert old.qty == Decimal(10)
        assert old.estimated_slippage is None
        assert old.metadata == {}

    @pytest.mark.parametrize(
        ("symbol", "expected"),
        [
            ("BTC/USD", AssetClass.CRYPTO),
            ("EUR/USD", AssetClass.FOREX),
            ("AAPL240119C00150000", AssetClass.OPTIONS),
            ("TSLA", AssetClass.EQUITY),
        ],
    )
    def test_asset_class_is_detected_when_omitted(self, symbol: str, expected: AssetClass) -> None:
        assert intent(symbol).asset_class is expected

    def test_seed_multi_asset_example(self) -> None:
        btc = OrderIntent(
            strategy_id="momentum_strategy",
            broker_account_id="alpaca_main",
            symbol="BTC/USD",
            side="buy",
            qty=0.5,
            asset_class="CRYPTO",
            estimated_slippage=0.0008,
            metadata={"tenant_id": "t1", "uid": "u1"},
        )
        assert btc.asset_class is AssetClass.CRYPTO
        assert btc.qty == Decimal("0.5")
        assert (btc.tenant_id, btc.uid) == ("t1", "u1")

    @pytest.mark.parametrize(
        ("field", "value", "message"),
        [
            ("qty", 0, "greater than 0"),
            ("qty", -1, "greater than 0"),
            ("qty", float("nan"), "finite"),
            ("qty", float("inf"), "finite"),
            ("qty", "1.0000000000000000000000000001", "more than 15 significant digits"),
            ("side", "short", "'buy' or 'sell'"),
            ("asset_class", "BONDS", "unknown asset class"),
            ("strategy_id", "  ", "at least 1 character"),
            ("estimated_slippage", -0.001, "greater than or equal to 0"),
        ],
    )
    def test_invalid_intents_fail_with_a_clear_error(self, field: str, value: Any, message: str) -> None:
        fields: dict[str, Any] = {
            "strategy_id": "s",
            "broker_account_id": "a",
            "symbol": "AAPL",
            "side": "buy",
            "qty": 1,
            field: value,
        }
        with pytest.raises(ValidationError) as info:
            OrderIntent(**fields)
        assert message in str(info.value)
        assert field in str(info.value)

    def test_same_content_gives_same_derived_key_and_run_id_changes_it(self) -> None:
        a = intent(qty=10)
        b = intent(qty="10.0")
        c = intent(qty=10, metadata={"run_id": "r2"})
        assert a.resolved_idempotency_key() == b.resolved_idempotency_key()
        assert a.resolved_idempotency_key() != c.resolved_idempotency_key()
        assert intent(idempotency_key="k-1").resolved_idempotency_key() == "k-1"


class TestSlippageEstimation:
    def test_slippage_is_spread_over_mid(self) -> None:
        strategy = _Strategy()
        md = {"symbol": "AAPL", "bid": 149.95, "ask": 150.05}
        assert strategy.estimate_slippage(md) == pytest.approx(0.1 / 150)

    def test_bid_ask_win_over_a_given_spread_pct(self) -> None:
        md = {"symbol": "X", "bid": 99.95, "ask": 100.05, "spread_pct": 0.5}
        assert _Strategy().estimate_slippage(md) == pytest.approx(0.001)

    def test_spread_pct_alone_is_used_when_bid_ask_are_missing(self) -> None:
        assert _Strategy().estimate_slippage({"symbol": "X", "spread_pct": 0.0007}) == pytest.approx(0.0007)

    @pytest.mark.parametrize(
        "md",
        [
            {"symbol": "X"},
            {"symbol": "X", "bid": 101, "ask": 100},
            {"symbol": "X", "bid": 0, "ask": 1},
        ],
    )
    def test_unpriceable_market_data_has_no_slippage_and_downgrades(self, md: dict[str, Any]) -> None:
        strategy = _Strategy()
        assert strategy.estimate_slippage(md) is None
        assert strategy.should_downgrade_signal(md) is True

    def test_quote_exposes_the_seed_fields(self) -> None:
        quote = Quote("EUR/USD", AssetClass.FOREX, Decimal("1.1212"), Decimal("1.12172"), T0)
        assert quote["spread"] == Decimal("0.00052")
        assert quote.mid_price == Decimal("1.12146")
        assert quote.spread_pct == quote.spread / quote.mid_price
        md = quote.to_market_data()
        assert set(md) >= {"symbol", "asset_class", "price", "bid", "ask", "spread", "spread_pct"}
        assert md["asset_class"] == "FOREX"


class TestSignalDowngrade:
    def test_spread_above_threshold_downgrades(self) -> None:
        assert _Strategy().should_downgrade_signal({"symbol": "BTC/USD", "bid": 49950, "ask": 50050})

    def test_spread_exactly_at_threshold_proceeds(self) -> None:
        # 0.10 / 100.00 = 0.001 exactly: at the threshold is not above it.
        assert not _Strategy().should_downgrade_signal({"symbol": "SPY", "bid": 99.95, "ask": 100.05})

    def test_per_class_override(self) -> None:
        strategy = _Strategy({"max_slippage_pct_by_asset_class": {"OPTIONS": 0.05}})
        option = {"symbol": "SPY251219P00450000", "bid": 4.10, "ask": 4.30}
        assert not strategy.should_downgrade_signal(option)
        assert strategy.should_downgrade_signal({**option, "symbol": "SPY"})

    def test_cost_aware_equity_strategy_waits_on_wide_spreads(self) -> None:
        strategy = CostAwareEquityStrategy()
        wide = strategy.evaluate({"symbol": "AAPL", "bid": 149.0, "ask": 151.0}, {"positions": {}})
        tight = strategy.evaluate({"symbol": "AAPL", "bid": 149.99, "ask": 150.01}, {"positions": {}})
        held = strategy.evaluate(
            {"symbol": "AAPL", "bid": 149.99, "ask": 150.01}, {"positions": {"AAPL": 10}}
        )
        assert wide.signal_type is SignalType.WAIT
        assert wide.estimated_slippage == pytest.approx(2 / 150)
        assert tight.signal_type is SignalType.BUY
        assert held.signal_type is SignalType.HOLD


class TestSmartRouter:
    def test_seed_reason_text_for_a_wide_spread(self, market: StaticMarketData, clock: ManualClock) -> None:
        market.set_quote("BTC/USD", "49962.5", "50037.5")  # 0.15 %
        decision = SmartRouter(max_spread_pct=0.001, market_data=market, clock=clock).analyze_intent(
            intent=intent("BTC/USD", qty=0.5)
        )
        assert not decision.should_execute
        assert decision.downgraded
        assert decision.reason == "Spread 0.15% exceeds threshold 0.10%"
        assert decision.reason_code is ReasonCode.SPREAD_TOO_WIDE
        assert decision.spread_pct == pytest.approx(0.0015)
        assert decision.estimated_slippage == pytest.approx(0.0015)

    def test_exactly_at_threshold_executes(self, market: StaticMarketData, clock: ManualClock) -> None:
        market.set_quote("SPY", "99.95", "100.05")
        decision = SmartRouter(market_data=market, clock=clock).analyze_intent(intent("SPY"))
        assert decision.should_execute
        assert decision.reason_code is ReasonCode.OK
        assert decision.spread_pct == 0.001

    def test_just_above_threshold_is_told_apart_in_the_reason(
        self, market: StaticMarketData, clock: ManualClock
    ) -> None:
        market.set_quote("SPY", "99.9499", "100.0501")
        decision = SmartRouter(market_data=market, clock=clock).analyze_intent(intent("SPY"))
        assert not decision.should_execute
        assert decision.reason == "Spread 0.1002% exceeds threshold 0.1000%"

    def test_given_slippage_skips_the_quote_fetch(self, market: StaticMarketData, clock: ManualClock) -> None:
        router = SmartRouter(market_data=market, clock=clock)
        ok = router.analyze_intent(intent("BTC/USD", estimated_slippage=0.0008))
        high = router.analyze_intent(intent("BTC/USD", estimated_slippage=0.0015))
        assert market.requests == 0
        assert ok.should_execute
        assert ok.estimated_slippage == 0.0008
        assert ok.spread_pct is None
        assert not high.should_execute
        assert high.reason_code is ReasonCode.SLIPPAGE_TOO_HIGH
        assert high.reason == "Estimated slippage 0.15% exceeds threshold 0.10%"

    def test_missing_slippage_fetches_the_quote(self, market: StaticMarketData, clock: ManualClock) -> None:
        SmartRouter(market_data=market, clock=clock).analyze_intent(intent("AAPL"))
        assert market.requests == 1

    def test_per_asset_class_thresholds(self, market: StaticMarketData, clock: ManualClock) -> None:
        router = SmartRouter(
            market_data=market,
            clock=clock,
            max_spread_pct_by_asset_class={"OPTIONS": 0.05, "CRYPTO": "0.0025"},
        )
        assert router.analyze_intent(intent("SPY251219P00450000", qty=1)).should_execute
        assert router.analyze_intent(intent("BTC/USD", qty=1)).should_execute
        assert router.analyze_intent(intent("AAPL")).threshold_pct == 0.001

    @pytest.mark.parametrize(
        ("bid", "ask", "age_s", "code"),
        [
            ("101", "100", 0, ReasonCode.QUOTE_CROSSED),
            ("0", "100", 0, ReasonCode.QUOTE_NON_POSITIVE),
            ("-1", "100", 0, ReasonCode.QUOTE_NON_POSITIVE),
            ("99.99", "100.01", 6, ReasonCode.QUOTE_STALE),
        ],
    )
    def test_unusable_quotes_are_never_executed(
        self, market: StaticMarketData, clock: ManualClock, bid: str, ask: str, age_s: int, code: ReasonCode
    ) -> None:
        market.set_quote("MSFT", bid, ask, timestamp=T0 - timedelta(seconds=age_s))
        decision = SmartRouter(market_data=market, clock=clock, max_quote_age_seconds=5).analyze_intent(
            intent("MSFT")
        )
        assert not decision.should_execute
        assert not decision.downgraded
        assert decision.reason_code is code

    def test_missing_quote_and_missing_provider(
        self, market: StaticMarketData, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        assert SmartRouter(market_data=market, clock=clock).analyze_intent(intent("NFLX")).reason_code is (
            ReasonCode.QUOTE_MISSING
        )
        for name in ("APCA_API_KEY_ID", "APCA_API_SECRET_KEY", "EXEC_MARKET_DATA", "EXEC_STATIC_QUOTES"):
            monkeypatch.delenv(name, raising=False)
        unconfigured = SmartRouter().analyze_intent(intent("NFLX"))
        assert unconfigured.reason_code is ReasonCode.QUOTE_MISSING
        assert "no market data is configured" in unconfigured.reason

    def test_negative_threshold_is_refused(self) -> None:
        with pytest.raises(ValueError, match="max_spread_pct must be >= 0"):
            SmartRouter(max_spread_pct=-0.001)

    def test_market_data_provider_is_the_port(self, market: StaticMarketData) -> None:
        class NoQuotes(MarketDataProvider):
            pass

        with pytest.raises(TypeError):
            NoQuotes()  # type: ignore[abstract]
        assert isinstance(market, MarketDataProvider)


class TestRiskManager:
    def test_defaults_come_from_exec_variables(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name in ("EXEC_KILL_SWITCH", "EXEC_MAX_POSITION_QTY", "EXEC_MAX_DAILY_TRADES", "EXEC_DRY_RUN"):
            monkeypatch.delenv(name, raising=False)
        limits = RiskManager().limits
        assert (limits.kill_switch, limits.max_position_qty, limits.max_daily_trades) == (False, 100, 50)
        assert load_settings().dry_run is True
        monkeypatch.setenv("EXEC_KILL_SWITCH", "1")
        monkeypatch.setenv("EXEC_MAX_POSITION_QTY", "250")
        monkeypatch.setenv("EXEC_MAX_DAILY_TRADES", "7")
        limits = RiskManager().limits
        assert (limits.kill_switch, limits.max_position_qty, limits.max_daily_trades) == (True, 250, 7)

    def test_bad_variable_is_named_in_the_error(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("EXEC_MAX_DAILY_TRADES", "lots")
        with pytest.raises(ConfigurationError, match="EXEC_MAX_DAILY_TRADES"):
            load_settings()

    def test_kill_switch_refuses(self, make_engine: EngineFactory, broker: CountingBroker) -> None:
        result = make_engine(RiskLimits(kill_switch=True)).execute_intent(intent())
        assert result.status is ExecutionStatus.REJECTED
        assert result.reason_code is ReasonCode.KILL_SWITCH
        assert broker.calls == []

    def test_position_limit_refuses_growth_but_not_reduction(self, make_engine: EngineFactory) -> None:
        engine = make_engine(RiskLimits(max_position_qty=Decimal(15)))
        assert engine.execute_intent(intent(qty=10, idempotency_key="a")).status is ExecutionStatus.PLACED
        grown = engine.execute_intent(intent(qty=10, idempotency_key="b"))
        assert grown.reason_code is ReasonCode.POSITION_LIMIT
        assert "position 10 -> 20 (limit 15)" in grown.reason
        reduced = engine.execute_intent(intent(side="sell", qty=5, idempotency_key="c"))
        assert reduced.status is ExecutionStatus.PLACED

    def test_daily_trade_limit_is_per_tenant(self, make_engine: EngineFactory, clock: ManualClock) -> None:
        engine = make_engine(RiskLimits(max_daily_trades=2))
        statuses = [
            engine.execute_intent(intent(qty=1, idempotency_key=f"k{i}")).reason_code for i in range(3)
        ]
        assert statuses == [ReasonCode.OK, ReasonCode.OK, ReasonCode.DAILY_LIMIT]
        other_tenant = engine.execute_intent(
            intent(qty=1, idempotency_key="k9", metadata={"tenant_id": "other"})
        )
        assert other_tenant.status is ExecutionStatus.PLACED
        clock.advance(timedelta(days=1))
        engine.router.market_data.set_quote("AAPL", "189.99", "190.01")  # type: ignore[union-attr]
        assert engine.execute_intent(intent(qty=1, idempotency_key="k3")).status is ExecutionStatus.PLACED


class TestExecutionEngineSmartRouting:
    def test_wide_crypto_spread_downgrades_to_wait_and_never_reaches_the_broker(
        self, make_engine: EngineFactory, broker: CountingBroker
    ) -> None:
        result = make_engine().execute_intent(intent=intent("BTC/USD", qty=0.5))
        assert result.status is ExecutionStatus.DOWNGRADED
        assert result.routing is not None
        assert result.routing.reason == "Spread 0.20% exceeds threshold 0.10%"
        assert result.broker_order_id is None
        assert result.risk is None  # routing comes first: risk is not even consulted
        assert broker.calls == []

    def test_tight_spread_is_placed_at_the_ask(
        self, make_engine: EngineFactory, broker: CountingBroker
    ) -> None:
        result = make_engine().execute_intent(intent("EUR/USD", qty=10000))
        assert result.status is ExecutionStatus.PLACED
        assert result.broker_order is not None
        assert result.broker_order.avg_fill_price == Decimal("1.08510")
        assert result.broker_order_id
        assert result.trade_id
        assert result.risk is not None
        assert result.risk.approved
        assert len(broker.calls) == 1
        assert broker.calls[0].client_order_id == result.client_order_id

    def test_sell_fills_at_the_bid(self, make_engine: EngineFactory) -> None:
        result = make_engine(RiskLimits(max_position_qty=Decimal(1000))).execute_intent(intent(side="sell"))
        assert result.broker_order is not None
        assert result.broker_order.avg_fill_price == Decimal("189.99")

    def test_dry_run_is_the_default_and_sends_nothing(
        self,
        broker: CountingBroker,
        market: StaticMarketData,
        clock: ManualClock,
        store: SQLiteExecutionStore,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.delenv("EXEC_DRY_RUN", raising=False)
        engine = ExecutionEngine(
            broker=broker,
            router=SmartRouter(market_data=market, clock=clock),
            risk=RiskManager(),
            store=store,
        )
        result = engine.execute_intent(intent())
        assert engine.dry_run is True
        assert result.status is ExecutionStatus.DRY_RUN
        assert broker.calls == []
        assert list(store.iter_ledger_trades()) == []
        assert [d.status for d in store.iter_decisions()] == [ExecutionStatus.DRY_RUN]

    def test_routing_disabled_lets_wide_spreads_through(
        self, make_engine: EngineFactory, broker: CountingBroker
    ) -> None:
        result = make_engine(enable_smart_routing=False).execute_intent(intent("BTC/USD", qty=0.5))
        assert result.status is ExecutionStatus.PLACED
        assert result.routing is not None
        assert result.routing.reason_code is ReasonCode.ROUTING_DISABLED
        assert result.routing.spread_pct == pytest.approx(0.002)

    def test_broker_rejection_is_a_failure_and_frees_the_daily_slot(
        self, make_engine: EngineFactory, broker: CountingBroker, store: SQLiteExecutionStore
    ) -> None:
        def refuse(request: OrderRequest) -> BrokerOrder:
            raise BrokerRejectedError("insufficient buying power")

        engine = make_engine(RiskLimits(max_daily_trades=1))
        broker.submit_order = refuse  # type: ignore[method-assign]
        failed = engine.execute_intent(intent(idempotency_key="x1"))
        assert failed.status is ExecutionStatus.FAILED
        assert failed.reason_code is ReasonCode.BROKER_REJECTED
        assert "insufficient buying power" in failed.reason
        assert list(store.iter_ledger_trades()) == []
        exposure = store.get_exposure("acme_corp", "default", "AAPL", T0.date().isoformat(), 50)
        assert (exposure.pending_buy_qty, exposure.position_qty) == (0, 0)
        assert store.daily_slots_taken("acme_corp", T0.date().isoformat()) == 0

    @pytest.mark.parametrize(
        ("broker_status", "expected", "ledger_rows", "pending"),
        [
            (BrokerOrderStatus.ACCEPTED, ExecutionStatus.PLACED, 0, Decimal(5)),
            (BrokerOrderStatus.REJECTED, ExecutionStatus.FAILED, 0, Decimal(0)),
        ],
    )
    def test_unfilled_broker_answers_write_no_ledger_row(
        self,
        make_engine: EngineFactory,
        broker: CountingBroker,
        store: SQLiteExecutionStore,
        broker_status: BrokerOrderStatus,
        expected: ExecutionStatus,
        ledger_rows: int,
        pending: Decimal,
    ) -> None:
        def answer(request: OrderRequest) -> BrokerOrder:
            return BrokerOrder(
                broker="test", order_id="o-1", client_order_id=request.client_order_id,
                status=broker_status, symbol=request.symbol, side=request.side, qty=request.qty,
                filled_qty=Decimal(0), avg_fill_price=None, submitted_at=T0, message="market closed",
            )  # fmt: skip

        broker.submit_order = answer  # type: ignore[method-assign]
        result = make_engine().execute_intent(intent(qty=5))
        assert result.status is expected
        assert result.broker_order_id == "o-1"
        assert "None" not in result.reason
        assert len(list(store.iter_ledger_trades())) == ledger_rows
        exposure = store.get_exposure("acme_corp", "default", "AAPL", T0.date().isoformat(), 50)
        assert exposure.pending_buy_qty == pending
        assert exposure.position_qty == 0

    def test_lost_answer_keeps_its_quantity_in_flight_against_the_position_limit(
        self, make_engine: EngineFactory, broker: CountingBroker, store: SQLiteExecutionStore
    ) -> None:
        def lose(request: OrderRequest) -> BrokerOrder:
            raise BrokerOutcomeUnknownError("read timed out")

        engine = make_engine(RiskLimits(max_position_qty=Decimal(15)))
        real_submit = broker.submit_order
        broker.submit_order = lose  # type: ignore[method-assign]
        assert engine.execute_intent(intent(qty=10, idempotency_key="lost")).status is ExecutionStatus.UNKNOWN
        exposure = store.get_exposure("acme_corp", "default", "AAPL", T0.date().isoformat(), 50)
        assert (exposure.position_qty, exposure.pending_buy_qty) == (0, 10)
        assert store.daily_slots_taken("acme_corp", T0.date().isoformat()) == 1
        broker.submit_order = real_submit  # type: ignore[method-assign]
        refused = engine.execute_intent(intent(qty=10, idempotency_key="next"))
        assert refused.reason_code is ReasonCode.POSITION_LIMIT
        assert "incl. 10 in flight" in refused.reason

    def test_filled_order_moves_pending_into_the_position(
        self, make_engine: EngineFactory, store: SQLiteExecutionStore
    ) -> None:
        make_engine().execute_intent(intent(qty=7))
        exposure = store.get_exposure("acme_corp", "default", "AAPL", T0.date().isoformat(), 50)
        assert (exposure.position_qty, exposure.pending_buy_qty) == (7, 0)

    @pytest.mark.parametrize("error", [BrokerOutcomeUnknownError("read timed out"), ConnectionError("reset")])
    def test_lost_broker_answer_is_unknown_not_failed_and_is_not_resent(
        self, make_engine: EngineFactory, broker: CountingBroker, error: Exception
    ) -> None:
        calls: list[OrderRequest] = []

        def lose(request: OrderRequest) -> BrokerOrder:
            calls.append(request)
            raise error

        engine = make_engine()
        broker.submit_order = lose  # type: ignore[method-assign]
        first = engine.execute_intent(intent(idempotency_key="u1"))
        again = engine.execute_intent(intent(idempotency_key="u1"))
        assert first.status is ExecutionStatus.UNKNOWN
        assert first.reason_code is ReasonCode.BROKER_OUTCOME_UNKNOWN
        assert again.status is ExecutionStatus.UNKNOWN
        assert again.replayed
        assert len(calls) == 1

    def test_invalid_dict_intent_is_logged_and_raises(self, make_engine: EngineFactory) -> None:
        stream = io.StringIO()
        configure_logging("INFO", stream)
        with pytest.raises(ValidationError):
            make_engine().execute_intent({"strategy_id": "s", "symbol": "AAPL", "side": "hold", "qty": -1})
        event = json.loads(stream.getvalue().splitlines()[-1])
        assert event["event"] == "exec.intent_invalid"
        assert event["severity"] == "WARNING"
        assert {e["field"] for e in event["errors"]} >= {"side", "qty", "broker_account_id"}


class TestLogging:
    def test_seed_events_are_single_json_lines(self, make_engine: EngineFactory) -> None:
        stream = io.StringIO()
        configure_logging("INFO", stream)
        make_engine().execute_intent(intent("BTC/USD", qty=0.5))
        events = [json.loads(line) for line in stream.getvalue().splitlines()]
        assert [e["event"] for e in events] == ["exec.intent_received", "exec.smart_routing"]
        routing = events[1]
        seed_fields = {
            "event", "should_execute", "reason", "spread_pct", "estimated_slippage",
            "downgraded", "symbol", "asset_class",
        }  # fmt: skip
        assert seed_fields <= set(routing)
        assert routing["should_execute"] is False
        assert routing["downgraded"] is True
        assert routing["spread_pct"] == pytest.approx(0.002)
        assert routing["asset_class"] == "CRYPTO"
        assert routing["severity"] == "INFO"
        assert routing["message"] == routing["reason"]

    def test_placement_is_logged(self, make_engine: EngineFactory) -> None:
        stream = io.StringIO()
        configure_logging("INFO", stream)
        make_engine().execute_intent(intent())
        last = json.loads(stream.getvalue().splitlines()[-1])
        assert last["event"] == "exec.order_placed"
        assert last["fill_price"] == "190.01"

    def test_secret_looking_fields_are_masked(self) -> None:
        record = logging.LogRecord("msr", logging.INFO, __file__, 1, "hello", None, None)
        record.fields = {"event": "x", "api_secret_key": "s3cr3t", "Authorization": "Bearer abc"}
        line = CloudLoggingFormatter().format(record)
        assert "s3cr3t" not in line
        assert "abc" not in line
        assert json.loads(line)["api_secret_key"] == "[REDACTED]"

    def test_logging_off_costs_no_output(self, make_engine: EngineFactory) -> None:
        stream = io.StringIO()
        configure_logging("ERROR", stream)
        make_engine().execute_intent(intent())
        assert stream.getvalue() == ""


class TestBaseStrategy:
    def test_default_config(self) -> None:
        strategy = _Strategy()
        assert strategy.config["max_slippage_pct"] == 0.001
        assert strategy.config["supported_assets"] == list(AssetClass)

    def test_supported_assets_accepts_names(self) -> None:
        strategy = _Strategy({"supported_assets": ["EQUITY", AssetClass.CRYPTO]})
        assert strategy.supports("CRYPTO")
        assert not strategy.supports(AssetClass.FOREX)

    def test_abstract_evaluate(self) -> None:
        with pytest.raises(TypeError):
            BaseStrategy()  # type: ignore[abstract]

    def test_trading_signal_old_minimal_form(self) -> None:
        signal = TradingSignal(signal_type=SignalType.BUY, confidence=0.8)
        assert signal.symbol is None
        assert signal.asset_class is None
        assert signal.estimated_slippage is None

    def test_trading_signal_full_form_and_validation(self) -> None:
        signal = TradingSignal(
            signal_type=SignalType.BUY,
            symbol="EUR/USD",
            asset_class=AssetClass.FOREX,
            confidence=0.85,
            reasoning="Strong momentum signal",
            estimated_slippage=0.0005,
        )
        assert signal.asset_class is AssetClass.FOREX
        assert TradingSignal(signal_type="sell", symbol="ETH/USDT").asset_class is AssetClass.CRYPTO
        with pytest.raises(ValueError, match="confidence"):
            TradingSignal(signal_type=SignalType.BUY, confidence=1.5)

    def test_multi_asset_strategy_checks_costs_first(self) -> None:
        strategy = MultiAssetStrategy()
        wide = strategy.evaluate({"symbol": "BTC/USD", "bid": 49950, "ask": 50050}, {})
        assert wide.signal_type is SignalType.WAIT
        assert wide.reasoning == "High costs for CRYPTO"

    def test_multi_asset_strategy_trades_momentum(self) -> None:
        strategy = MultiAssetStrategy({"momentum": {AssetClass.CRYPTO: (2, 0.001)}})
        prices = [100.0, 100.0, 100.5]
        signals = [
            strategy.evaluate({"symbol": "ETH/USD", "bid": p - 0.01, "ask": p + 0.01}, {}) for p in prices
        ]
        assert [s.signal_type for s in signals] == [SignalType.HOLD, SignalType.HOLD, SignalType.BUY]


class TestAssetClassDetection:
    @pytest.mark.parametrize(
        ("symbol", "expected"),
        [
            ("EUR/USD", AssetClass.FOREX),
            ("EURUSD", AssetClass.FOREX),
            ("GBP/JPY", AssetClass.FOREX),
            ("USD/JPY", AssetClass.FOREX),
            ("eur/usd", AssetClass.FOREX),
            ("XAU/USD", AssetClass.FOREX),
            ("BTC/USD", AssetClass.CRYPTO),
            ("ETH/USDT", AssetClass.CRYPTO),
            ("BTCUSD", AssetClass.CRYPTO),
            ("SOL/USD", AssetClass.CRYPTO),
            ("ETHUSDT", AssetClass.CRYPTO),
            ("USDT/USD", AssetClass.CRYPTO),
            ("PEPE/USD", AssetClass.CRYPTO),
            ("AAPL240119C00150000", AssetClass.OPTIONS),
            ("SPY251219P00450000", AssetClass.OPTIONS),
            ("SPY   251219P00450000", AssetClass.OPTIONS),
            ("AAPL", AssetClass.EQUITY),
            ("SPY", AssetClass.EQUITY),
            ("BRK.B", AssetClass.EQUITY),
            ("TSLA", AssetClass.EQUITY),
            ("F", AssetClass.EQUITY),
        ],
    )
    def test_real_symbols(self, symbol: str, expected: AssetClass) -> None:
        assert BaseStrategy.detect_asset_class(symbol) is expected

    @pytest.mark.parametrize(
        ("symbol", "expected", "why"),
        [
            ("MNT/USD", AssetClass.FOREX, "a code that is both a currency and a token: ISO 4217 wins"),
            ("ABCUSD", AssetClass.EQUITY, "unknown base without a separator is never guessed as crypto"),
            ("USDJPY", AssetClass.FOREX, "six letters, both halves currencies"),
            ("AAPL241345C00150000", AssetClass.EQUITY, "an impossible expiry date is not an OCC symbol"),
        ],
    )
    def test_ambiguous_symbols_follow_the_documented_rule(
        self, symbol: str, expected: AssetClass, why: str
    ) -> None:
        assert BaseStrategy.detect_asset_class(symbol) is expected, why

    def test_quote_currency_and_occ_parsing(self) -> None:
        assert instrument_for("USD/JPY").quote_currency == "JPY"
        assert instrument_for("BTCUSDT").quote_currency == "USDT"
        contract = parse_occ_symbol("SPY251219P00450000")
        assert contract is not None
        assert (contract.root, contract.right, contract.strike, contract.expiry.isoformat()) == (
            "SPY",
            "P",
            Decimal(450),
            "2025-12-19",
        )

    def test_empty_symbol_is_an_error(self) -> None:
        with pytest.raises(InvalidSymbolError, match="symbol must not be empty"):
            instrument_for("  ")


class TestLedgerPersistence:
    def test_placed_trade_is_written_once_at_the_seed_path(
        self, make_engine: EngineFactory, store: SQLiteExecutionStore
    ) -> None:
        engine = make_engine()
        seed_intent = intent("EUR/USD", qty=10000.0, metadata={"tenant_id": "acme_corp", "uid": "user_12345"})
        first = engine.execute_intent(seed_intent)
        second = engine.execute_intent(seed_intent)
        assert first.trade_id is not None
        assert first.ledger_path == ledger_trade_path("acme_corp", first.trade_id)
        assert first.ledger_path.startswith("tenants/acme_corp/ledger_trades/")
        trades = list(store.iter_ledger_trades("acme_corp"))
        assert len(trades) == 1
        assert second.replayed
        assert second.broker_order_id == first.broker_order_id
        trade = trades[0]
        assert trade.notional == Decimal("10851.0000")
        assert (trade.qty, trade.price, trade.fees) == (Decimal(10000), Decimal("1.08510"), Decimal(0))
        assert trade.uid == "user_12345"
        assert trade.quote_currency == "USD"
        assert trade.routing.reason_code is ReasonCode.OK
        assert trade.risk.approved
        assert trade.broker.client_order_id == first.client_order_id
        assert trade.executed_at.utcoffset() == timedelta(0)

    def test_money_is_stored_as_exact_decimal_strings(
        self, make_engine: EngineFactory, store: SQLiteExecutionStore
    ) -> None:
        make_engine().execute_intent(intent("EUR/USD", qty="0.1"))
        raw = store._conn.execute("SELECT document FROM ledger_trades").fetchone()[0]
        document = json.loads(raw)
        assert document["notional"] == "0.108510"
        assert document["price"] == "1.08510"
        assert document["qty"] == "0.1"

    def test_every_decision_is_recorded_including_downgrades(
        self, make_engine: EngineFactory, store: SQLiteExecutionStore
    ) -> None:
        engine = make_engine(RiskLimits(kill_switch=True))
        engine.execute_intent(intent("BTC/USD", qty=0.5))
        engine.execute_intent(intent("AAPL"))
        records = {r.symbol: r for r in store.iter_decisions("acme_corp")}
        assert records["BTC/USD"].status is ExecutionStatus.DOWNGRADED
        assert records["BTC/USD"].estimated_cost == Decimal("50.0")  # 0.5 x (50050 - 49950)
        assert records["AAPL"].reason_code is ReasonCode.KILL_SWITCH

    def test_downgrade_is_replayed_not_reevaluated(
        self, make_engine: EngineFactory, market: StaticMarketData, broker: CountingBroker
    ) -> None:
        engine = make_engine()
        first = engine.execute_intent(intent("BTC/USD", qty=0.5, idempotency_key="d1"))
        market.set_quote("BTC/USD", "49999", "50001")
        again = engine.execute_intent(intent("BTC/USD", qty=0.5, idempotency_key="d1"))
        assert first.status is again.status is ExecutionStatus.DOWNGRADED
        assert again.replayed
        assert broker.calls == []


class TestEndToEnd:
    def test_tape_replay_through_the_engine(self, tmp_path: Any) -> None:
        tapes = [t for t in default_tapes() if "btcusdt" in t.name]
        clock = ManualClock(T0)
        market = TapeMarketData(tapes, clock)
        assert market.count() == 451
        assert market.get_quote("BTC/USDT") is None  # nothing delivered yet
        store = SQLiteExecutionStore(tmp_path / "e2e.sqlite3")
        broker: Broker = CountingBroker(market, clock)
        engine = ExecutionEngine(
            broker=broker,
            router=SmartRouter(max_spread_pct=0.0001, market_data=market, clock=clock),
            risk=RiskManager(RiskLimits(max_position_qty=Decimal(100), max_daily_trades=1000)),
            dry_run=False,
            store=store,
            clock=clock,
            settings=ExecSettings(tenant_id="t", uid="u"),
        )
        statuses: dict[str, int] = {}
        for index, quote in enumerate(market.replay()):
            if index % 10:
                continue
            assert clock.now() == quote.timestamp
            result = engine.execute_intent(intent("BTC/USDT", qty="0.01", idempotency_key=f"tick-{index}"))
            statuses[result.status.value] = statuses.get(result.status.value, 0) + 1
            if result.status is ExecutionStatus.PLACED:
                assert result.broker_order is not None
                assert result.broker_order.avg_fill_price == quote.ask
                assert quote.spread_pct <= Decimal("0.0001")
            else:
                assert quote.spread_pct > Decimal("0.0001")
        trades = list(store.iter_ledger_trades("t"))
        assert statuses["placed"] == len(trades) == len(broker.calls)  # type: ignore[attr-defined]
        assert statuses.get("downgraded", 0) > 0
        # The taker fee is taken in BTC: each buy of 0.01 books 0.01 x (1 - 0.0025) = 0.009975.
        assert all((t.filled_qty, t.qty) == (Decimal("0.01"), Decimal("0.009975")) for t in trades)
        assert store.positions("t") == {"BTC/USDT": Decimal("0.009975") * len(trades)}
        assert sum((t.notional for t in trades), Decimal(0)) == sum(
            (Decimal("0.01") * t.price for t in trades), Decimal(0)
        )


class TestFees:
    def test_equity_sell_fees_reach_the_decision_and_the_ledger(
        self, make_engine: EngineFactory, store: SQLiteExecutionStore
    ) -> None:
        # Sell 100 AAPL: fill at the bid 189.99 -> proceeds 18999.00.
        # CAT 100 x 0.000046 = 0.0046 -> 0.01; SEC 18999 x 0.0000278 = 0.5281722 -> 0.53;
        # TAF 100 x 0.000166 = 0.0166 -> 0.02. Total 0.56 (each rounded up to the cent).
        engine = make_engine(RiskLimits(max_position_qty=Decimal(1000)))
        result = engine.execute_intent(intent(side="sell", qty=100))
        [trade] = store.iter_ledger_trades()
        assert trade.fees == Decimal("0.56")
        [record] = store.iter_decisions()
        assert record.estimated_fees == Decimal("0.56")  # at mid 190.00: SEC 0.5282 -> 0.53 too
        assert result.estimated_fees == record.estimated_fees

    def test_crypto_market_order_pays_the_taker_rate(
        self, make_engine: EngineFactory, store: SQLiteExecutionStore, market: StaticMarketData
    ) -> None:
        market.set_quote("BTC/USD", "49995", "50005")
        make_engine().execute_intent(intent("BTC/USD", qty="0.5"))
        [trade] = store.iter_ledger_trades()
        assert trade.fees == Decimal("0.5") * Decimal(50005) * Decimal("0.0025")  # 62.50625

    def test_fee_schedule_is_configuration(self) -> None:
        from backend.core.fees import FeeSchedule, estimate_fees
        from backend.core.intents import Side

        cheap = FeeSchedule(crypto_taker_bps=Decimal(10))
        btc, eur = instrument_for("BTC/USD"), instrument_for("EUR/USD")
        assert estimate_fees(btc, Side.SELL, Decimal(1), Decimal(100), cheap).total == Decimal("0.1")
        assert estimate_fees(eur, Side.BUY, Decimal(10000), Decimal("1.085")).total == 0
