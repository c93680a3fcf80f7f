"""Property tests: spread arithmetic, the cost gate, the engine's broker boundary, costs and keys."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, Decimal
from pathlib import Path

from hypothesis import event, given, settings
from hypothesis import strategies as st

from backend.adapters.market_data import StaticMarketData
from backend.adapters.paper_broker import PaperBroker
from backend.adapters.sqlite_store import SQLiteExecutionStore
from backend.core.instruments import AssetClass, detect_asset_class, instrument_for
from backend.core.intents import OrderIntent, Side
from backend.core.ledger import build_decision_record, new_decision_id
from backend.core.orders import BrokerOrder, ExecutionResult, ExecutionStatus, OrderRequest
from backend.core.paths import client_order_id_for
from backend.core.quotes import Quote, spread_fraction
from backend.core.reasons import COST_DOWNGRADE_CODES, ReasonCode
from backend.core.risk import RiskLimits
from backend.core.routing import RoutingDecision, RoutingPolicy, decide_route, routing_bypassed
from backend.execution.engine import ExecutionEngine, RiskManager, SmartRouter
from backend.execution.ports import ManualClock
from backend.execution.settings import ExecSettings

PROPERTY_SETTINGS = settings(max_examples=200, deadline=None)

T0 = datetime(2026, 3, 2, 15, 30, tzinfo=UTC)
TENANT = "prop_tenant"
MAX_QUOTE_AGE = timedelta(seconds=5)
# One symbol per asset class, so every class's threshold is exercised.
SYMBOLS: tuple[str, ...] = ("AAPL", "EUR/USD", "BTC/USD", "SPY251219P00450000")

prices = st.decimals(
    min_value=Decimal("0.0001"), max_value=Decimal("1000000"), places=8, allow_nan=False, allow_infinity=False
)
mids = st.decimals(
    min_value=Decimal("0.01"), max_value=Decimal("1000000"), places=4, allow_nan=False, allow_infinity=False
)
thresholds = st.decimals(
    min_value=Decimal(0), max_value=Decimal("0.05"), places=8, allow_nan=False, allow_infinity=False
)
symbols = st.sampled_from(SYMBOLS)
sides = st.sampled_from(list(Side))
asset_classes = st.sampled_from(list(AssetClass))


def tradable(symbol: str, qty: Decimal) -> Decimal:
    """``qty`` in a quantity the instrument allows (options: whole contracts, at least one)."""
    bounds = instrument_for(symbol).qty_bounds
    stepped = (qty / bounds.step).to_integral_value(ROUND_CEILING) * bounds.step
    return min(max(stepped, bounds.minimum), bounds.maximum)


def make_intent(symbol: str, side: Side = Side.BUY, qty: object = 1, **extra: object) -> OrderIntent:
    return OrderIntent(
        strategy_id="prop", broker_account_id="acct", symbol=symbol, side=side, qty=qty, **extra
    )


def quote_around(symbol: str, mid: Decimal, spread: Decimal, timestamp: datetime = T0) -> Quote:
    """A quote with exactly this mid and this absolute spread."""
    half = spread / 2
    return Quote(symbol, detect_asset_class(symbol), mid - half, mid + half, timestamp)


# -- spread arithmetic -------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(first=prices, second=prices)
def test_spread_pct_of_any_valid_quote_is_non_negative_and_exactly_spread_over_mid(
    first: Decimal, second: Decimal
) -> None:
    bid, ask = min(first, second), max(first, second)
    quote = Quote("EUR/USD", AssetClass.FOREX, bid, ask, T0)
    mid = (bid + ask) / 2

    assert isinstance(quote.spread_pct, Decimal)
    assert quote.spread_pct >= 0
    assert quote.spread_pct == (ask - bid) / mid
    assert spread_fraction(bid, ask) == (ask - bid) / mid
    assert quote.mid_price == mid
    assert (quote.spread_pct == 0) == (bid == ask)


# -- the cost gate -----------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(
    symbol=symbols,
    side=sides,
    mid=mids,
    relative_spreads=st.tuples(thresholds, thresholds),
    threshold=thresholds,
    default_threshold=thresholds,
    override_own_class=st.booleans(),
)
def test_wider_spread_at_the_same_mid_is_downgraded_whenever_a_narrower_one_is(
    symbol: str,
    side: Side,
    mid: Decimal,
    relative_spreads: tuple[Decimal, Decimal],
    threshold: Decimal,
    default_threshold: Decimal,
    override_own_class: bool,
) -> None:
    asset_class = detect_asset_class(symbol)
    overridden = asset_class if override_own_class else AssetClass.OPTIONS
    policy = RoutingPolicy.build(
        max_spread_pct=default_threshold, max_spread_pct_by_asset_class={overridden: threshold}
    )
    effective = policy.threshold_for(asset_class)
    narrow, wide = sorted(relative * mid for relative in relative_spreads)
    intent = make_intent(symbol, side)

    narrow_quote, wide_quote = quote_around(symbol, mid, narrow), quote_around(symbol, mid, wide)
    assert narrow_quote.mid_price == wide_quote.mid_price == mid
    narrow_decision = decide_route(intent, narrow_quote, policy, T0)
    wide_decision = decide_route(intent, wide_quote, policy, T0)

    if narrow_decision.downgraded:
        assert wide_decision.downgraded
        assert not wide_decision.should_execute
    if wide_decision.should_execute:
        assert narrow_decision.should_execute
    # And the gate is exactly "spread > threshold", never anything else, for a usable quote.
    for quote, decision in ((narrow_quote, narrow_decision), (wide_quote, wide_decision)):
        assert decision.downgraded == (quote.spread_pct > effective)
        assert decision.should_execute == (not decision.downgraded)
        expected_code = ReasonCode.SPREAD_TOO_WIDE if decision.downgraded else ReasonCode.OK
        assert decision.reason_code is expected_code
        assert decision.threshold_pct == float(effective)


@PROPERTY_SETTINGS
@given(
    symbol=symbols,
    mid=mids,
    relative_spread=thresholds,
    threshold=thresholds,
    brought=st.one_of(st.none(), thresholds, st.just(Decimal(0))),
    age_seconds=st.sampled_from([0, 4, 6, 3600]),
    crossed=st.booleans(),
)
def test_an_untrusted_callers_figure_never_loosens_the_gate(
    symbol: str,
    mid: Decimal,
    relative_spread: Decimal,
    threshold: Decimal,
    brought: Decimal | None,
    age_seconds: int,
    crossed: bool,
) -> None:
    """From an untrusted caller, the verdict with any brought ``estimated_slippage`` is at most as
    permissive as the quote's alone; an unusable quote is refused whatever was brought."""
    policy = RoutingPolicy.build(max_spread_pct=threshold, max_quote_age=MAX_QUOTE_AGE)
    quote = quote_around(symbol, mid, relative_spread * mid, T0 - timedelta(seconds=age_seconds))
    if crossed and quote.ask > quote.bid:
        quote = Quote(symbol, quote.asset_class, quote.ask, quote.bid, quote.timestamp)
    plain = decide_route(make_intent(symbol), quote, policy, T0, trusted=False)
    brought_intent = make_intent(symbol, estimated_slippage=brought)
    decision = decide_route(brought_intent, quote, policy, T0, trusted=False)

    usable = age_seconds <= MAX_QUOTE_AGE.total_seconds() and quote.ask >= quote.bid
    if decision.should_execute:
        assert plain.should_execute
        assert usable
        assert quote.spread_pct <= threshold
        assert brought is None or brought <= threshold
    if not usable:
        assert not decision.should_execute
        assert decision.reason_code in {ReasonCode.QUOTE_STALE, ReasonCode.QUOTE_CROSSED}
    elif brought is not None:
        assert decision.estimated_slippage is not None
        assert plain.estimated_slippage is not None
        assert decision.estimated_slippage >= plain.estimated_slippage
    # And without a quote nothing passes, whatever was brought.
    assert (
        decide_route(brought_intent, None, policy, T0, trusted=False).reason_code is ReasonCode.QUOTE_MISSING
    )


@PROPERTY_SETTINGS
@given(
    symbol=symbols,
    side=sides,
    threshold=st.decimals(
        min_value=Decimal(0), max_value=Decimal(1), places=8, allow_nan=False, allow_infinity=False
    ),
    mid=st.one_of(st.just(Decimal(100)), mids),
)
def test_spread_exactly_at_the_threshold_is_never_downgraded_and_one_tick_wider_is(
    symbol: str, side: Side, threshold: Decimal, mid: Decimal
) -> None:
    asset_class = detect_asset_class(symbol)
    policy = RoutingPolicy.build(max_spread_pct="0.5", max_spread_pct_by_asset_class={asset_class: threshold})
    quote = quote_around(symbol, mid, threshold * mid)
    assert quote.spread_pct == threshold  # built to sit exactly on the line

    decision = decide_route(make_intent(symbol, side), quote, policy, T0)
    assert decision.should_execute
    assert not decision.downgraded
    assert decision.reason_code is ReasonCode.OK

    wider = Quote(symbol, asset_class, quote.bid, quote.ask + Decimal("0.00000001"), T0)
    assert wider.spread_pct > threshold
    wider_decision = decide_route(make_intent(symbol, side), wider, policy, T0)
    assert wider_decision.downgraded
    assert wider_decision.reason_code is ReasonCode.SPREAD_TOO_WIDE


# -- a downgraded or rejected intent never reaches the broker ------------------------------


class CallCountingBroker(PaperBroker):
    """The paper broker, recording every submit_order call, duplicates included."""

    def __init__(self, market: StaticMarketData, clock: ManualClock) -> None:
        super().__init__(market, clock)
        self.calls: list[OrderRequest] = []

    def submit_order(self, request: OrderRequest) -> BrokerOrder:
        self.calls.append(request)
        return super().submit_order(request)


@dataclass(frozen=True)
class QuoteSpec:
    kind: str  # valid | crossed | zero | stale | missing
    bid: Decimal
    ask: Decimal
    age: timedelta


@dataclass(frozen=True)
class IntentSpec:
    symbol: str
    side: Side
    qty: int
    estimated_slippage: float | None


@st.composite
def quote_specs(draw: st.DrawFn) -> QuoteSpec:
    kind = draw(st.sampled_from(["valid", "valid", "valid", "valid", "crossed", "zero", "stale", "missing"]))
    mid = draw(st.decimals(min_value=Decimal(1), max_value=Decimal(1000), places=2))
    spread = mid * draw(st.decimals(min_value=Decimal(0), max_value=Decimal("0.003"), places=5))
    bid, ask = mid - spread / 2, mid + spread / 2
    age = timedelta(0)
    if kind == "crossed":
        bid, ask = ask + Decimal("0.01"), bid
    elif kind == "zero":
        bid, ask = draw(st.sampled_from([(Decimal(0), ask), (bid, Decimal(0)), (Decimal(0), Decimal(0))]))
    elif kind == "stale":
        age = MAX_QUOTE_AGE + timedelta(milliseconds=draw(st.integers(1, 3_600_000)))
    return QuoteSpec(kind, bid, ask, age)


intent_specs = st.builds(
    IntentSpec,
    symbol=symbols,
    side=sides,
    qty=st.integers(1, 3),
    # Mostly None (the router fetches the quote); sometimes the caller's own slippage figure.
    estimated_slippage=st.one_of(st.none(), st.none(), st.none(), st.floats(0, 0.003, allow_nan=False)),
)


@PROPERTY_SETTINGS
@given(
    quotes=st.fixed_dictionaries({symbol: quote_specs() for symbol in SYMBOLS}),
    threshold=st.sampled_from([Decimal("0.0005"), Decimal("0.001"), Decimal("0.002")]),
    kill_switch=st.sampled_from([False, False, False, True]),
    max_position_qty=st.integers(0, 10),
    max_daily_trades=st.integers(0, 3),
    specs=st.lists(intent_specs, min_size=1, max_size=8),
)
def test_downgraded_or_rejected_intent_never_reaches_the_broker(
    quotes: dict[str, QuoteSpec],
    threshold: Decimal,
    kill_switch: bool,
    max_position_qty: int,
    max_daily_trades: int,
    specs: list[IntentSpec],
) -> None:
    clock = ManualClock(T0)
    market = StaticMarketData(clock=clock)
    for symbol, spec in quotes.items():
        if spec.kind != "missing":
            market.set_quote(symbol, spec.bid, spec.ask, timestamp=T0 - spec.age)
    broker = CallCountingBroker(market, clock)
    limits = RiskLimits(
        kill_switch=kill_switch, max_position_qty=Decimal(max_position_qty), max_daily_trades=max_daily_trades
    )
    intents = [
        make_intent(
            spec.symbol,
            spec.side,
            spec.qty,
            estimated_slippage=spec.estimated_slippage,
            idempotency_key=f"prop-{index}",
        )
        for index, spec in enumerate(specs)
    ]

    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteExecutionStore(Path(tmp) / "ledger.sqlite3")
        try:
            engine = ExecutionEngine(
                broker=broker,
                router=SmartRouter(
                    max_spread_pct=threshold,
                    market_data=market,
                    clock=clock,
                    max_quote_age_seconds=MAX_QUOTE_AGE.total_seconds(),
                ),
                risk=RiskManager(limits),
                dry_run=False,
                store=store,
                clock=clock,
                settings=ExecSettings(tenant_id=TENANT, uid="prop_user"),
            )
            results = [engine.execute_intent(intent) for intent in intents]
            calls_after_first_pass = len(broker.calls)
            replays = [engine.execute_intent(intent) for intent in intents]
            ledger_trade_ids = {trade.trade_id for trade in store.iter_ledger_trades(TENANT)}
            positions = store.positions(TENANT)
        finally:
            store.close()

    called_ids = [request.client_order_id for request in broker.calls]
    by_status = {status: [r for r in results if r.status is status] for status in ExecutionStatus}
    placed, failed = by_status[ExecutionStatus.PLACED], by_status[ExecutionStatus.FAILED]
    for status, members in by_status.items():
        if members:
            event(f"some {status.value}")

    assert len(called_ids) == len(set(called_ids)), "one client order id was sent twice"
    # Only placed orders and broker refusals ever touched the broker. A refusal is only possible when
    # the intent's own estimated_slippage skipped the quote check and the venue had no usable quote.
    assert len(called_ids) == len(placed) + len(failed)
    for result in failed:
        assert result.intent.estimated_slippage is not None
        assert quotes[result.intent.symbol].kind != "valid"
        assert result.reason_code is ReasonCode.BROKER_REJECTED
    for result in placed:
        expected_id = client_order_id_for(TENANT, result.idempotency_key)
        assert result.client_order_id == expected_id
        assert expected_id in called_ids
    for result in by_status[ExecutionStatus.DOWNGRADED] + by_status[ExecutionStatus.REJECTED]:
        assert client_order_id_for(TENANT, result.idempotency_key) not in called_ids
        assert result.broker_order is None
        assert result.trade_id is None
    for result in by_status[ExecutionStatus.DOWNGRADED]:
        assert result.reason_code in COST_DOWNGRADE_CODES
    assert not by_status[ExecutionStatus.UNKNOWN]
    assert not by_status[ExecutionStatus.PENDING]
    assert not by_status[ExecutionStatus.DRY_RUN]

    # Risk limits held.
    assert len(placed) <= max_daily_trades
    if kill_switch:
        assert not placed
    assert all(abs(qty) <= max_position_qty for qty in positions.values())
    # Exactly the placed orders are in the ledger.
    assert ledger_trade_ids == {result.trade_id for result in placed}

    # Redelivering every intent changes nothing and calls nobody.
    assert len(broker.calls) == calls_after_first_pass
    assert all(replay.replayed for replay in replays)
    assert [replay.status for replay in replays] == [result.status for result in results]


# -- costs -------------------------------------------------------------------------------------

any_prices = st.decimals(
    min_value=Decimal(-10), max_value=Decimal(1_000_000), places=6, allow_nan=False, allow_infinity=False
)


@PROPERTY_SETTINGS
@given(
    symbol=symbols,
    side=sides,
    qty=st.decimals(min_value=Decimal("0.00000001"), max_value=Decimal(100_000), places=8),
    bid=any_prices,
    ask=any_prices,
    age_seconds=st.sampled_from([0, 1, 10, 3600]),
    estimated_slippage=st.one_of(st.none(), st.floats(0, 0.01, allow_nan=False)),
    bypass=st.booleans(),
    status=st.sampled_from(list(ExecutionStatus)),
)
def test_decision_estimated_cost_is_never_negative(
    symbol: str,
    side: Side,
    qty: Decimal,
    bid: Decimal,
    ask: Decimal,
    age_seconds: int,
    estimated_slippage: float | None,
    bypass: bool,
    status: ExecutionStatus,
) -> None:
    intent = make_intent(symbol, side, tradable(symbol, qty), estimated_slippage=estimated_slippage)
    quote = Quote(symbol, intent.asset_class, bid, ask, T0 - timedelta(seconds=age_seconds))
    policy = RoutingPolicy.build(max_spread_pct="0.001")
    routing: RoutingDecision = (
        routing_bypassed(intent, quote, policy) if bypass else decide_route(intent, quote, policy, T0)
    )
    result = ExecutionResult(
        status=status,
        reason_code=routing.reason_code,
        reason=routing.reason,
        idempotency_key=intent.resolved_idempotency_key(),
        tenant_id=TENANT,
        uid="prop_user",
        intent=intent,
        decided_at=T0,
        routing=routing,
    )

    record = build_decision_record(result, new_decision_id(result))

    assert record.estimated_cost is None or record.estimated_cost >= 0
    assert record.notional is None or record.notional > 0
    if routing.bid is not None and routing.ask is not None and 0 < routing.bid <= routing.ask:
        # Money carries the contract multiplier: an option's spread cost is per share x 100.
        multiplier = intent.instrument.multiplier
        assert record.estimated_cost == intent.qty * (routing.ask - routing.bid) * multiplier
    else:
        assert record.estimated_cost is None


# -- OrderIntent qty canonicalisation --------------------------------------------------------


def spellings_of(value: Decimal) -> list[object]:
    """The same number written as Decimal, plain/scientific/padded strings, float and int."""
    plain = format(value, "f")
    forms: list[object] = [
        value,
        str(value),
        plain,
        plain + ("000" if "." in plain else ".000"),
        format(value, "E"),
        value.quantize(Decimal("1E-10")),
        str(value.normalize()),
        float(value),  # every value here has at most 15 significant digits: the float repr is exact
    ]
    if value == value.to_integral_value():
        forms += [int(value), str(int(value))]
    return forms


@PROPERTY_SETTINGS
@given(
    value=st.one_of(
        st.decimals(min_value=Decimal("0.00000001"), max_value=Decimal("999999.99999999"), places=8),
        st.integers(1, 10**9).map(Decimal),
    ),
    symbol=symbols,
    side=sides,
)
def test_intent_qty_spellings_of_one_number_share_one_idempotency_key(
    value: Decimal, symbol: str, side: Side
) -> None:
    value = tradable(symbol, value)
    intents = [make_intent(symbol, side, qty) for qty in spellings_of(value)]

    assert {intent.qty for intent in intents} == {value}
    assert {str(intent.qty) for intent in intents} == {str(intents[0].qty)}
    keys = {intent.resolved_idempotency_key() for intent in intents}
    assert len(keys) == 1
    # ...while a different quantity is a different intent.
    bounds = instrument_for(symbol).qty_bounds
    other = make_intent(symbol, side, bounds.minimum if value != bounds.minimum else bounds.minimum * 2)
    assert other.resolved_idempotency_key() not in keys
