"""Money right for every asset class, against hand computations: the option multiplier, fees to
Alpaca's published schedule, crypto fees taken in the asset received (and reconciled with the
broker's fee activities), one spelling per instrument, and documents of the first schema read."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from backend.adapters.alpaca.broker import AlpacaBroker
from backend.adapters.alpaca.market_data import AlpacaMarketData
from backend.adapters.alpaca.settings import AlpacaSettings
from backend.adapters.documents import HISTORY_ENTRIES, LEDGER_ENTRIES, LOTS_SNAPSHOTS, from_document
from backend.adapters.market_data import StaticMarketData
from backend.adapters.sqlite_store import SQLiteExecutionStore
from backend.core.fees import ALPACA_FEES, FeeSchedule, estimate_fees
from backend.core.instruments import AssetClass, InvalidSymbolError, instrument_for
from backend.core.intents import OrderIntent, Side
from backend.core.ledger import LedgerFeeAdjustment, LedgerTrade
from backend.core.lot_documents import BookingKind, plan_booking
from backend.core.reasons import ReasonCode
from backend.core.risk import RiskLimits
from backend.execution.engine import ExecutionEngine, ExecutionStatus, RiskManager, SmartRouter
from backend.execution.fee_settlement import DayNotSettled, settle_asset_fees
from backend.execution.ports import ManualClock, SystemClock
from backend.execution.settings import ExecSettings
from devtools.alpaca_simulator import FakeAlpaca, running
from functions.strategies.base_strategy import BaseStrategy
from tests.conftest import CountingBroker

T0 = datetime(2026, 3, 2, 15, 30, tzinfo=UTC)
OPTION = "AAPL260320C00150000"
D = Decimal


def engine_on(
    store: Any, market: StaticMarketData, clock: ManualClock, limits: RiskLimits | None = None
) -> Any:
    return ExecutionEngine(
        broker=CountingBroker(market, clock),
        router=SmartRouter(market_data=market, clock=clock, max_spread_pct_by_asset_class={"OPTIONS": 0.1}),
        risk=RiskManager(limits or RiskLimits(max_position_qty=D(100_000), max_daily_trades=1000)),
        dry_run=False,
        store=store,
        clock=clock,
        settings=ExecSettings(tenant_id="acme_corp", uid="u1"),
        portfolio=store,
    )


def order(symbol: str, side: str, qty: object, key: str, **extra: Any) -> OrderIntent:
    return OrderIntent(
        strategy_id="s1", broker_account_id="acct", symbol=symbol, side=side, qty=qty, idempotency_key=key,
        **extra,
    )  # fmt: skip


class TestOptionsCarryTheirMultiplier:
    def test_round_trip_buy_3_at_2_15_sell_3_at_2_40(self, contract_store: Any) -> None:
        # By hand, Alpaca's schedule (CAT per equivalent share, ORF and OCC per contract; sells add
        # SEC on the principal and the options TAF), each fee rounded up to the cent:
        #   buy:  notional 3 x 2.15 x 100 = 645.00; CAT 300 x 0.000046 = 0.0138 -> 0.02,
        #         ORF 3 x 0.02685 = 0.08055 -> 0.09, OCC 3 x 0.02 = 0.06          = 0.17
        #   sell: notional 3 x 2.40 x 100 = 720.00; CAT 0.02, ORF 0.09, OCC 0.06,
        #         SEC 720 x 0.0000278 = 0.020016 -> 0.03, TAF 3 x 0.00279 = 0.00837 -> 0.01 = 0.21
        #   basis 645.17, proceeds 719.79, realized P&L 74.62.
        clock = ManualClock(T0)
        market = StaticMarketData(clock=clock)
        engine = engine_on(contract_store, market, clock)
        market.set_quote(OPTION, "2.10", "2.15")
        buy = engine.execute_intent(order(OPTION, "buy", 3, "o-buy"))
        clock.advance(timedelta(days=3))
        market.set_quote(OPTION, "2.40", "2.45")
        sell = engine.execute_intent(order(OPTION, "sell", 3, "o-sell"))
        assert buy.status is sell.status is ExecutionStatus.PLACED

        trades = {t.side: t for t in contract_store.iter_ledger_trades("acme_corp")}
        bought, sold = trades[Side.BUY], trades[Side.SELL]
        assert (bought.multiplier, bought.notional, bought.fees) == (D(100), D("645.00"), D("0.17"))
        assert bought.fee_components == {"CAT": D("0.02"), "ORF": D("0.09"), "OCC": D("0.06")}
        assert (sold.notional, sold.fees) == (D("720.00"), D("0.21"))
        assert sold.fee_components == {
            "CAT": D("0.02"), "ORF": D("0.09"), "OCC": D("0.06"), "SEC": D("0.03"), "TAF": D("0.01")
        }  # fmt: skip

        history = {e.side: e for e in contract_store.history("u1")}
        assert history[Side.BUY].multiplier == D(100)
        assert history[Side.BUY].tax is not None
        assert history[Side.BUY].tax.cost_basis == D("645.17")
        tax = history[Side.SELL].tax
        assert tax is not None
        assert (tax.cost_basis, tax.proceeds, tax.realized_pnl) == (D("645.17"), D("719.79"), D("74.62"))
        lots = contract_store.lots("u1", "default", OPTION)
        assert lots is not None
        assert lots.position == 0
        assert lots.open_lots == ()

        # The decision before the trade priced the spread per share x 100 as well.
        decisions = {r.side: r for r in contract_store.iter_decisions("acme_corp")}
        assert decisions[Side.BUY].notional == D("637.5")  # 3 x 2.125 x 100
        assert decisions[Side.BUY].estimated_cost == D("15.00")  # 3 x 0.05 x 100

    def test_a_5000_contract_order_hits_the_occ_cap(self) -> None:
        # ORF 5000 x 0.02685 = 134.25; OCC 5000 x 0.02 = 100 capped at 55 per trade;
        # CAT 500,000 equivalent shares x 0.000046 = 23.00. ORF + OCC = 189.25 (the code before
        # this schedule charged 235.00 for those two).
        fees = estimate_fees(instrument_for(OPTION), Side.BUY, D(5000), D("1.00"))
        assert dict(fees.components) == {"ORF": D("134.25"), "OCC": D("55.00"), "CAT": D("23.00")}
        assert fees.total == D("212.25")
        assert estimate_fees(instrument_for(OPTION), Side.BUY, D(100), D("1.00")).components["ORF"] == D(
            "2.69"
        )
        below_cap = estimate_fees(instrument_for(OPTION), Side.BUY, D(2750), D("1.00"))
        assert below_cap.components["OCC"] == D("55.00")  # 2,750 contracts is exactly the cap

    def test_a_value_limit_counts_the_multiplier(self, store: SQLiteExecutionStore) -> None:
        clock = ManualClock(T0)
        market = StaticMarketData(clock=clock)
        market.set_quote(OPTION, "4.10", "4.30")  # mid 4.20: one contract is worth 420
        limits = RiskLimits(
            max_position_qty=D(100), max_position_notional_by_asset_class={"OPTIONS": D(1000)}
        )
        engine = engine_on(store, market, clock, limits)
        assert engine.execute_intent(order(OPTION, "buy", 2, "two")).status is ExecutionStatus.PLACED
        refused = engine.execute_intent(order(OPTION, "buy", 1, "third"))  # 3 x 420 = 1260 > 1000
        assert (refused.status, refused.reason_code) == (ExecutionStatus.REJECTED, ReasonCode.POSITION_LIMIT)
        assert "position value 1260.00 USD (limit 1000)" in refused.reason
        # Without a price the value cannot be known: refused, unless the trade reduces the position.
        blind = engine.execute_intent(order(OPTION, "buy", 1, "blind", estimated_slippage=0.01))
        assert blind.reason_code is ReasonCode.POSITION_LIMIT
        assert "no price" in blind.reason
        assert engine.execute_intent(order(OPTION, "sell", 1, "reduce")).status is ExecutionStatus.PLACED


class TestEquityFees:
    def test_equity_sell_pays_sec_taf_and_cat(self) -> None:
        # Sell 100 @ 189.99: CAT 0.0046 -> 0.01; SEC 18999 x 0.0000278 = 0.5281722 -> 0.53;
        # TAF 100 x 0.000166 = 0.0166 -> 0.02. Total 0.56.
        fees = estimate_fees(instrument_for("AAPL"), Side.SELL, D(100), D("189.99"))
        assert dict(fees.components) == {"CAT": D("0.01"), "SEC": D("0.53"), "TAF": D("0.02")}
        assert (fees.total, fees.currency) == (D("0.56"), "USD")

    def test_taf_is_capped_per_trade_and_buys_pay_cat_only(self) -> None:
        # Sell 60,000 @ 10: SEC 600,000 x 0.0000278 = 16.68; TAF 9.96 capped at 8.30; CAT 2.76.
        fees = estimate_fees(instrument_for("F"), Side.SELL, D(60_000), D(10))
        assert dict(fees.components) == {"CAT": D("2.76"), "SEC": D("16.68"), "TAF": D("8.30")}
        assert dict(estimate_fees(instrument_for("F"), Side.BUY, D(60_000), D(10)).components) == {
            "CAT": D("2.76")
        }

    def test_schedule_is_configuration_with_its_date(self, monkeypatch: pytest.MonkeyPatch) -> None:
        assert ALPACA_FEES.as_of == date(2026, 11, 24)
        assert "docs.alpaca.markets" in ALPACA_FEES.source
        monkeypatch.setenv(
            "EXEC_FEE_SCHEDULE", '{"sec_fee_rate": 0, "cat_fee_per_share": 0.0000265, "as_of": "2025-05-14"}'
        )
        schedule = ExecSettings().fee_schedule_config()
        assert (schedule.sec_fee_rate, schedule.cat_fee_per_share) == (D(0), D("0.0000265"))
        assert schedule.as_of == date(2025, 5, 14)
        with pytest.raises(ValueError, match="unknown fee schedule fields"):
            FeeSchedule.from_overrides({"sec_fee": "0"})
        monkeypatch.setenv("EXEC_FEE_SCHEDULE", '{"crypto_taker_bps": -1}')
        with pytest.raises(ValueError, match="crypto_taker_bps"):
            ExecSettings()


@pytest.fixture
def fake() -> FakeAlpaca:
    fake = FakeAlpaca()
    fake.set_quote("BTC/USD", "49995", "50005")
    return fake


@pytest.fixture
def alpaca(fake: FakeAlpaca) -> Iterator[tuple[AlpacaBroker, AlpacaMarketData]]:
    with running(fake) as url:
        settings = AlpacaSettings(
        trading_requests_per_minute=0,  # not what this is about: the pace has its own test
            api_key_id="k", secret_key="s", trading_url=url, data_url=url, timeout_s=2, fill_poll_s=0.01,
            backoff_s=0.01, quote_ttl_s=0,
        )  # fmt: skip
        yield AlpacaBroker(settings), AlpacaMarketData(settings)


def alpaca_engine(store: Any, alpaca: tuple[AlpacaBroker, AlpacaMarketData]) -> ExecutionEngine:
    broker, market_data = alpaca
    return ExecutionEngine(
        broker=broker,
        router=SmartRouter(market_data=market_data),
        risk=RiskManager(RiskLimits(max_position_qty=D(10))),
        dry_run=False,
        store=store,
        clock=SystemClock(),
        settings=ExecSettings(tenant_id="acme_corp", uid="u1"),
        portfolio=store,
    )


def broker_holds(fake: FakeAlpaca, symbol: str = "BTCUSD") -> Decimal:
    return fake.holdings.get(symbol, D(0))


class TestCryptoFeesInTheAsset:
    def test_buy_then_sell_the_whole_position_matches_the_broker(
        self, contract_store: Any, fake: FakeAlpaca, alpaca: Any
    ) -> None:
        # Buy 0.1 BTC at the ask 50005: the broker takes 0.25 % of the BTC received, 0.00025, and
        # holds 0.09975 for 5000.50 USD paid. Selling "the whole position" sells exactly that.
        engine = alpaca_engine(contract_store, alpaca)
        assert engine.execute_intent(order("BTCUSD", "buy", "0.1", "c-buy")).status is ExecutionStatus.PLACED
        [bought] = contract_store.iter_ledger_trades("acme_corp")
        assert (bought.symbol, bought.filled_qty, bought.qty) == ("BTC/USD", D("0.1"), D("0.09975"))
        assert (bought.fee_currency, bought.fee_amount, bought.fees) == ("BTC", D("0.00025"), D("12.50125"))
        assert bought.notional == D("5000.5")
        held = contract_store.positions("acme_corp")["BTC/USD"]
        assert held == broker_holds(fake) == D("0.09975")
        lots = contract_store.lots("u1", "default", "BTC/USD")
        assert lots is not None
        assert (lots.position, lots.open_cost_basis) == (D("0.09975"), D("5000.5"))

        sell = engine.execute_intent(order("BTC/USD", "sell", held, "c-sell"))
        assert sell.status is ExecutionStatus.PLACED
        sold = next(t for t in contract_store.iter_ledger_trades("acme_corp") if t.side is Side.SELL)
        # The sell's fee is taken in USD, the asset received: 0.09975 x 49995 x 0.0025.
        assert (sold.qty, sold.fee_currency, sold.fees) == (D("0.09975"), "USD", D("12.467503125"))
        assert contract_store.positions("acme_corp")["BTC/USD"] == broker_holds(fake) == 0
        entry = next(e for e in contract_store.history("u1") if e.side is Side.SELL)
        assert entry.tax is not None
        # proceeds 4987.00125 - 12.467503125; basis 5000.5.
        assert (entry.tax.proceeds, entry.tax.realized_pnl) == (D("4974.533746875"), D("-25.966253125"))

    def test_the_brokers_fee_activity_settles_a_different_tier(
        self, contract_store: Any, fake: FakeAlpaca, alpaca: Any
    ) -> None:
        fake.crypto_fee_bps = D(22)  # the account reached tier 2; the schedule still says 25
        engine = alpaca_engine(contract_store, alpaca)
        for index in range(2):
            engine.execute_intent(order("BTC/USD", "buy", "0.1", f"buy-{index}"))
        booked = contract_store.positions("acme_corp")["BTC/USD"]
        assert booked == D("0.1995")  # 2 x 0.09975, the 25 bp estimate
        assert broker_holds(fake) == D("0.19956")  # 2 x (0.1 - 0.00022)

        today = datetime.now(UTC).date()
        with pytest.raises(DayNotSettled):
            settle_asset_fees(contract_store, alpaca[0], today, datetime.now(UTC), portfolio=contract_store)
        later = datetime.combine(today + timedelta(days=1), datetime.min.time(), tzinfo=UTC) + timedelta(
            hours=7
        )
        report = settle_asset_fees(contract_store, alpaca[0], today, later, portfolio=contract_store)
        assert (report.fills, report.activities, report.adjustments) == (2, 2, 1)

        [adjustment] = [
            e for e in contract_store.iter_ledger_trades("acme_corp") if isinstance(e, LedgerFeeAdjustment)
        ]
        assert (adjustment.side, adjustment.qty) == (Side.BUY, D("0.00006"))  # 0.0005 booked, 0.00044 taken
        assert (adjustment.estimated_fee, adjustment.actual_fee) == (D("0.0005"), D("0.00044"))
        assert contract_store.positions("acme_corp")["BTC/USD"] == broker_holds(fake) == D("0.19956")
        lots = contract_store.lots("u1", "default", "BTC/USD")
        assert lots is not None
        assert lots.position == D("0.19956")
        assert lots.open_cost_basis == D("10001.0")  # the USD paid: quantities changed, never basis

        again = settle_asset_fees(contract_store, alpaca[0], today, later, portfolio=contract_store)
        assert (again.adjustments, again.already_recorded) == (0, 1)
        assert contract_store.positions("acme_corp")["BTC/USD"] == D("0.19956")


class TestOneSpellingPerInstrument:
    @pytest.mark.parametrize(
        ("symbol", "asset_class", "canonical"),
        [
            ("BTC-USD", AssetClass.CRYPTO, "BTC/USD"),
            ("ETH-USDT", AssetClass.CRYPTO, "ETH/USDT"),
            ("btcusd", AssetClass.CRYPTO, "BTC/USD"),
            ("BTC/USD", AssetClass.CRYPTO, "BTC/USD"),
            ("PEPE-USD", AssetClass.CRYPTO, "PEPE/USD"),
            ("EUR-USD", AssetClass.FOREX, "EUR/USD"),
            ("EURUSD", AssetClass.FOREX, "EUR/USD"),
            ("BRK-B", AssetClass.EQUITY, "BRK-B"),
            ("BRK.B", AssetClass.EQUITY, "BRK.B"),
            ("SPY   251219P00450000", AssetClass.OPTIONS, "SPY251219P00450000"),
        ],
    )
    def test_detection_and_canonical_spelling(
        self, symbol: str, asset_class: AssetClass, canonical: str
    ) -> None:
        assert BaseStrategy.detect_asset_class(symbol) is asset_class
        assert instrument_for(symbol).symbol == canonical

    @pytest.mark.parametrize("bad", [None, 123, 1.5, b"BTC/USD", ["AAPL"], "", "   "])
    def test_non_strings_and_empty_input_are_a_clear_error(self, bad: object) -> None:
        with pytest.raises(InvalidSymbolError, match="symbol must"):
            BaseStrategy.detect_asset_class(bad)  # type: ignore[arg-type]

    def test_a_declared_class_must_agree_with_the_symbol(self) -> None:
        with pytest.raises(InvalidSymbolError, match="is a CRYPTO instrument"):
            instrument_for("BTC-USD", "EQUITY")
        with pytest.raises(InvalidSymbolError, match="not an OCC option symbol"):
            instrument_for("AAPL", "OPTIONS")
        assert instrument_for("ABCUSD", "CRYPTO").symbol == "ABC/USD"  # a token we do not list yet
        assert instrument_for("ABCUSD").asset_class is AssetClass.EQUITY  # never guessed into crypto

    def test_two_spellings_are_one_position(self, store: SQLiteExecutionStore) -> None:
        clock = ManualClock(T0)
        market = StaticMarketData(clock=clock)
        market.set_quote("BTCUSD", "49999", "50001")
        engine = engine_on(store, market, clock)
        for key, spelling in enumerate(("BTCUSD", "BTC/USD", "btc-usd")):
            assert (
                engine.execute_intent(order(spelling, "buy", "0.1", f"k{key}")).status
                is ExecutionStatus.PLACED
            )
        assert store.positions("acme_corp") == {"BTC/USD": D("0.29925")}  # 3 x 0.09975 net of fees
        assert {t.symbol for t in store.iter_ledger_trades("acme_corp")} == {"BTC/USD"}

    def test_the_content_key_keeps_the_spelling_the_caller_sent(self) -> None:
        # An intent without a key is identified by its content as it was always digested: the
        # canonical spelling must not change the client order id of an intent already in flight.
        intent = OrderIntent(strategy_id="s", broker_account_id="a", symbol="btcusd", side="buy", qty="0.5")
        assert intent.symbol == "BTC/USD"
        content = {"strategy_id": "s", "broker_account_id": "a", "symbol": "BTCUSD", "side": "buy",
                   "qty": "0.5", "asset_class": "CRYPTO", "metadata": {}}  # fmt: skip
        digest = hashlib.sha256(
            json.dumps(content, sort_keys=True, separators=(",", ":")).encode()
        ).hexdigest()
        assert intent.resolved_idempotency_key() == "auto-" + digest[:40]


HISTORY_V1_FIELDS = (
    "uid", "tenant_id", "strategy_id", "symbol", "asset_class", "quote_currency", "side", "qty", "price",
    "notional", "fees", "executed_at",
)  # fmt: skip


class TestFirstSchemaDocuments:
    def v1_ledger(self, symbol: str, asset_class: str, qty: str, price: str, notional: str) -> dict[str, Any]:
        routing = {"should_execute": True, "reason_code": "OK", "reason": "ok", "symbol": symbol,
                   "asset_class": asset_class, "threshold_pct": 0.001}  # fmt: skip
        risk = {"approved": True, "reason_code": "OK", "reason": "ok", "checks": []}
        broker = {"broker": "paper", "order_id": "o1", "client_order_id": "msr-1", "status": "filled",
                  "symbol": symbol, "side": "buy", "qty": qty, "filled_qty": qty, "avg_fill_price": price,
                  "submitted_at": T0.isoformat()}  # fmt: skip
        return dict(
            schema_version=1, path="tenants/t/ledger_trades/tr_1", trade_id="tr_1", tenant_id="t", uid="u",
            idempotency_key="k", strategy_id="s", broker_account_id="a", symbol=symbol,
            asset_class=asset_class, quote_currency="USD", side="buy", qty=qty, price=price,
            notional=notional, fees="0.05", routing=routing, risk=risk, broker=broker, intent_metadata={},
            executed_at=T0,
        )  # fmt: skip

    def test_a_version_1_option_row_reads_with_its_multiplier(self) -> None:
        entry = from_document(LEDGER_ENTRIES, self.v1_ledger(OPTION, "OPTIONS", "3", "2.15", "6.45"))
        assert isinstance(entry, LedgerTrade)
        assert (entry.multiplier, entry.notional, entry.filled_qty) == (D(100), D("645.00"), D(3))
        assert (entry.fee_currency, entry.fee_amount, entry.fee_components) == ("USD", D("0.05"), {})

    def test_a_version_1_crypto_row_keeps_what_it_booked(self) -> None:
        entry = from_document(LEDGER_ENTRIES, self.v1_ledger("BTCUSD", "CRYPTO", "0.1", "50000", "5000.0"))
        assert (entry.symbol, entry.qty, entry.filled_qty, entry.fee_currency) == (
            "BTC/USD",
            D("0.1"),
            D("0.1"),
            "USD",
        )

    def test_version_1_history_and_lots_are_recomputed_once(self) -> None:
        v1 = self.v1_ledger(OPTION, "OPTIONS", "3", "2.15", "6.45")
        history = {
            **{k: v1[k] for k in HISTORY_V1_FIELDS},
            "schema_version": 1, "path": "users/u/portfolio/history/trades/tr_2", "history_id": "tr_2",
            "ledger_path": "tenants/t/ledger_trades/tr_2", "broker_account_id": "a",
            "estimated_slippage": None, "spread_pct": None, "trading_date": "2026-03-02", "tax_year": 2026,
            "execution": {"broker": "paper", "order_id": "o", "client_order_id": "c", "status": "filled",
                          "idempotency_key": "k"},
        }  # fmt: skip
        entry = from_document(HISTORY_ENTRIES, history)
        assert (entry.multiplier, entry.notional) == (D(100), D("645.00"))
        lots = from_document(LOTS_SNAPSHOTS, {
            "path": "users/u/portfolio/tax/lots/a~X", "uid": "u", "broker_account_id": "a", "symbol": OPTION,
            "lot_method": "FIFO", "position": "3", "open_cost_basis": "6.50", "open_lots": [], "trades": 1,
            "last_executed_at": T0, "last_trade_id": "tr_1",
        })  # fmt: skip
        assert lots.schema_version == 1
        assert plan_booking(entry, True, lots).kind is BookingKind.REPLAY  # lots under old rules: recompute


def test_an_older_sqlite_file_is_brought_up_to_date(tmp_path: Path) -> None:
    """Positions written under two spellings become one; a signed in-flight quantity becomes the
    in-flight quantity of its side; decisions gain their order columns."""
    import sqlite3

    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as conn:  # the first schema's tables, as an older release wrote them
        conn.executescript(
            """
            CREATE TABLE decisions (path TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, status TEXT NOT NULL,
                                    decided_at TEXT NOT NULL, result TEXT NOT NULL);
            CREATE TABLE positions (tenant_id TEXT NOT NULL, broker_account_id TEXT NOT NULL,
                                    symbol TEXT NOT NULL, qty TEXT NOT NULL,
                                    pending_qty TEXT NOT NULL DEFAULT '0',
                                    PRIMARY KEY (tenant_id, broker_account_id, symbol)) WITHOUT ROWID;
            """
        )
        conn.executemany(
            "INSERT INTO positions (tenant_id, broker_account_id, symbol, qty, pending_qty) "
            "VALUES (?, ?, ?, ?, ?)",
            [
                ("t", "a", "BTCUSD", "0.5", "0"),
                ("t", "a", "BTC/USD", "0.25", "0.1"),
                ("t", "a", "AAPL", "3", "-2"),
            ],
        )
    reopened = SQLiteExecutionStore(path)
    try:
        assert reopened.positions("t") == {"BTC/USD": D("0.75"), "AAPL": D(3)}
        assert reopened.in_flight("t") == {("a", "BTC/USD"): (D("0.1"), D(0)), ("a", "AAPL"): (D(0), D(2))}
        assert reopened.get_exposure("t", "a", "BTC/USD", "2026-03-02", 50).pending_buy_qty == D("0.1")
    finally:
        reopened.close()
