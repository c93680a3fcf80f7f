"""The position drift classification (pure): each reason code from hand-made evidence, explanations
combining within one instrument, and the invariant that the parts always add up to the difference."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from backend.core.fees import FeeSchedule
from backend.core.intents import Side
from backend.core.order_lifecycle import OrderState
from backend.core.orders import BrokerOrder, BrokerOrderStatus
from backend.core.paths import client_order_id_for
from backend.core.position_reconciliation import (
    BrokerView,
    DriftCode,
    DriftReport,
    KnownOrder,
    LedgerPosition,
    LedgerView,
    UnsettledAssetFee,
    positions_unavailable,
    reconcile_positions,
    symbols_to_confirm,
)

T0 = datetime(2026, 3, 2, 15, 30, tzinfo=UTC)
DAY = T0.date()
ACCOUNT = "alpaca"
D = Decimal
OURS = client_order_id_for("acme_corp", "k1")
LOST = client_order_id_for("acme_corp", "never-recorded")
SCHEDULE = FeeSchedule()  # crypto taker 25 bps, the rate the engine books at


def order(
    client_order_id: str,
    symbol: str = "AAPL",
    side: Side = Side.BUY,
    qty: str = "10",
    filled: str = "10",
    status: BrokerOrderStatus = BrokerOrderStatus.FILLED,
    price: str = "190.01",
) -> BrokerOrder:
    return BrokerOrder(
        "alpaca", f"id-{client_order_id}", client_order_id, status, symbol, side, D(qty), D(filled),
        D(price) if D(filled) else None, T0, T0 if D(filled) else None,
    )  # fmt: skip


def known(client_order_id: str, recorded: str, state: OrderState = OrderState.PARTIALLY_FILLED) -> KnownOrder:
    return KnownOrder(client_order_id, "acme_corp", D(recorded), state)


def check(
    ledger: dict[str, str | LedgerPosition],
    broker: dict[str, str],
    orders: tuple[BrokerOrder, ...] = (),
    recorded: tuple[KnownOrder, ...] = (),
    fees: tuple[UnsettledAssetFee, ...] = (),
    confirmed: dict[str, Decimal | None] | None = None,
) -> DriftReport:
    positions = {s: q if isinstance(q, LedgerPosition) else LedgerPosition(D(q)) for s, q in ledger.items()}
    view = LedgerView(positions, {k.client_order_id: k for k in recorded}, fees)
    held = BrokerView({s: D(q) for s, q in broker.items()}, orders, confirmed or {})
    return reconcile_positions(ACCOUNT, view, held, SCHEDULE, T0)


def codes(report: DriftReport) -> list[DriftCode]:
    return [finding.code for finding in report.findings]


class TestEachReason:
    def test_agreeing_positions_and_recorded_orders_are_no_drift(self) -> None:
        report = check(
            {"AAPL": "10"}, {"AAPL": "10"}, (order(OURS),), (known(OURS, "10", OrderState.FILLED),)
        )
        assert report.findings == ()
        assert not report.drift
        [compared] = report.positions
        assert (compared.symbol, compared.difference, compared.unexplained) == ("AAPL", 0, 0)

    def test_a_fill_the_ledger_has_not_recorded_is_a_missing_fill_of_exactly_that_quantity(self) -> None:
        report = check({"AAPL": "4"}, {"AAPL": "10"}, (order(OURS),), (known(OURS, "4"),))
        [finding] = report.findings
        assert finding.code is DriftCode.MISSING_FILL
        assert (finding.ledger_qty, finding.broker_qty, finding.difference, finding.explained_qty) == (
            4,
            10,
            6,
            6,
        )
        assert finding.order is not None
        assert (finding.order.broker_filled_qty, finding.order.recorded_filled_qty) == (10, 4)
        assert "filled 10 at the broker, the ledger recorded 4" in finding.message
        assert "6 unrecorded" in finding.message
        assert report.positions[0].unexplained == 0

    def test_a_missing_sell_fill_explains_a_smaller_broker_position(self) -> None:
        sell = order(OURS, side=Side.SELL, qty="3", filled="3")
        report = check({"AAPL": "10"}, {"AAPL": "7"}, (sell,), (known(OURS, "0", OrderState.ACCEPTED),))
        [finding] = report.findings
        assert (finding.code, finding.explained_qty, finding.difference) == (DriftCode.MISSING_FILL, -3, -3)

    def test_an_order_without_our_prefix_is_external_and_needs_no_attention(self) -> None:
        by_hand = order("7c9e6679-7425-40de-944b-e07fc1f90ae7", qty="3", filled="3")
        report = check({"AAPL": "10"}, {"AAPL": "13"}, (by_hand,))
        [finding] = report.findings
        assert (finding.code, finding.explained_qty) == (DriftCode.EXTERNAL_ORDER, 3)
        assert "was not placed by this product" in finding.message
        assert report.drift
        assert not report.needs_attention

    def test_an_external_order_done_without_a_fill_is_left_out_but_a_resting_one_is_reported(self) -> None:
        canceled = order("manual-1", qty="5", filled="0", status=BrokerOrderStatus.CANCELED)
        resting = order("manual-2", qty="5", filled="0", status=BrokerOrderStatus.ACCEPTED)
        report = check({"AAPL": "10"}, {"AAPL": "10"}, (canceled, resting))
        [finding] = report.findings
        assert (finding.code, finding.order.client_order_id, finding.explained_qty) == (  # type: ignore[union-attr]
            DriftCode.EXTERNAL_ORDER, "manual-2", 0,
        )  # fmt: skip

    def test_an_order_with_our_prefix_the_store_does_not_know_is_unknown_even_unfilled(self) -> None:
        lost = order(LOST, qty="2", filled="2")
        unfilled = order(
            client_order_id_for("t", "other"), qty="1", filled="0", status=BrokerOrderStatus.ACCEPTED
        )
        report = check({"AAPL": "10"}, {"AAPL": "12"}, (lost, unfilled))
        assert codes(report) == [DriftCode.UNKNOWN_ORDER, DriftCode.UNKNOWN_ORDER]
        assert [f.explained_qty for f in report.findings] == [2, 0]
        assert report.needs_attention
        assert "the store has no record of it" in report.findings[0].message

    def test_a_crypto_difference_within_the_unsettled_asset_fees_is_a_pending_fee_adjustment(self) -> None:
        # Two buys of 0.1 BTC booked at 25 bps (0.0005 BTC of fees); the broker took 22 bps.
        fees = (UnsettledAssetFee("BTC/USD", DAY, D("0.0005")),)
        report = check({"BTC/USD": "0.1995"}, {"BTC/USD": "0.19956"}, fees=fees)
        [finding] = report.findings
        assert finding.code is DriftCode.FEE_ADJUSTMENT_PENDING
        assert (finding.difference, finding.explained_qty, finding.pending_fee) == (
            D("0.00006"), D("0.00006"), D("0.0005"),
        )  # fmt: skip
        assert finding.fee_days == (DAY,)
        assert "0.00006 is within the 0.0005 in fees taken in the asset" in finding.message
        assert "on 2026-03-02" in finding.message
        assert not report.needs_attention

    def test_a_broker_that_took_no_fee_at_all_is_still_within_the_pending_fees(self) -> None:
        fees = (UnsettledAssetFee("BTC/USD", DAY, D("0.0005")),)
        report = check({"BTC/USD": "0.1995"}, {"BTC/USD": "0.2"}, fees=fees)  # a zero-fee volume tier
        assert codes(report) == [DriftCode.FEE_ADJUSTMENT_PENDING]

    def test_a_difference_beyond_the_unsettled_fees_is_a_mismatch_naming_them(self) -> None:
        fees = (UnsettledAssetFee("BTC/USD", DAY, D("0.0005")),)
        report = check({"BTC/USD": "0.1995"}, {"BTC/USD": "0.2995"}, fees=fees)
        [finding] = report.findings
        assert (finding.code, finding.explained_qty) == (DriftCode.POSITION_MISMATCH, D("0.1"))
        assert "asset fees pending 0.0005" in finding.message

    def test_without_fees_taken_in_the_asset_any_difference_is_a_mismatch(self) -> None:
        position = LedgerPosition(D(10), in_flight_buy=D(5))
        report = check({"AAPL": position}, {"AAPL": "10.5"})
        [finding] = report.findings
        assert (finding.code, finding.explained_qty) == (DriftCode.POSITION_MISMATCH, D("0.5"))
        assert finding.message == (
            "AAPL: broker 10.5, ledger 10 (difference 0.5): 0.5 unexplained (in flight: buy 5, sell 0)"
        )

    def test_a_position_only_the_broker_holds_is_compared_too(self) -> None:
        report = check({}, {"TSLA": "-3"})
        [finding] = report.findings
        assert (finding.code, finding.ledger_qty, finding.broker_qty) == (DriftCode.POSITION_MISMATCH, 0, -3)


class TestExplanationsCombine:
    def test_part_missing_fill_part_external_order_and_the_rest_a_mismatch(self) -> None:
        # ledger 10, broker 16: 3 filled but unrecorded, 2 bought by hand, 1 nobody explains.
        orders = (order(OURS, qty="8", filled="8"), order("by-hand", qty="2", filled="2"))
        report = check({"AAPL": "10"}, {"AAPL": "16"}, orders, (known(OURS, "5"),))
        assert codes(report) == [
            DriftCode.MISSING_FILL,
            DriftCode.EXTERNAL_ORDER,
            DriftCode.POSITION_MISMATCH,
        ]
        assert [f.explained_qty for f in report.findings] == [3, 2, 1]
        mismatch = report.findings[-1]
        assert "1 unexplained (EXTERNAL_ORDER 2; MISSING_FILL 3)" in mismatch.message
        [compared] = report.positions
        assert compared.explained == {DriftCode.MISSING_FILL: 3, DriftCode.EXTERNAL_ORDER: 2}
        assert compared.unexplained == 1

    def test_a_crypto_missing_fill_counts_as_booked_and_its_fee_is_pending(self) -> None:
        # 0.1 BTC filled, not recorded; the ledger will book 0.09975 (25 bps); the broker took
        # 22 bps and holds 0.09978: the last 0.00003 is the fee adjustment to come.
        fill = order(OURS, symbol="BTC/USD", qty="0.1", filled="0.1", price="50005")
        report = check({}, {"BTC/USD": "0.09978"}, (fill,), (known(OURS, "0", OrderState.UNKNOWN),))
        assert codes(report) == [DriftCode.MISSING_FILL, DriftCode.FEE_ADJUSTMENT_PENDING]
        assert [f.explained_qty for f in report.findings] == [D("0.09975"), D("0.00003")]
        assert report.findings[1].pending_fee == D("0.00025")

    def test_orders_that_cancel_out_leave_no_mismatch(self) -> None:
        orders = (
            order("hand-buy", qty="3", filled="3"),
            order("hand-sell", side=Side.SELL, qty="3", filled="3"),
        )
        report = check({"AAPL": "10"}, {"AAPL": "10"}, orders)
        assert codes(report) == [DriftCode.EXTERNAL_ORDER, DriftCode.EXTERNAL_ORDER]
        assert report.positions[0].unexplained == 0


class TestEvidenceIsNotProofOfFlat:
    def test_a_held_position_the_list_omits_needs_a_targeted_query(self) -> None:
        ledger = {
            "AAPL": LedgerPosition(D(10)),
            "MSFT": LedgerPosition(D(0)),
            "BTC/USD": LedgerPosition(D(1)),
        }
        assert symbols_to_confirm(ledger, {"BTC/USD": D(1)}) == ["AAPL"]

    def test_unconfirmed_while_the_query_did_not_answer(self) -> None:
        report = check({"AAPL": "10"}, {}, confirmed={"AAPL": None})
        [finding] = report.findings
        assert (finding.code, finding.ledger_qty, finding.broker_qty) == (
            DriftCode.BROKER_POSITION_UNCONFIRMED, 10, None,
        )  # fmt: skip
        assert "not taken as flat" in finding.message
        assert report.positions[0].broker_qty is None

    def test_without_any_query_the_omitted_position_is_unconfirmed_too(self) -> None:
        assert codes(check({"AAPL": "10"}, {})) == [DriftCode.BROKER_POSITION_UNCONFIRMED]

    def test_flat_once_confirmed_then_compared(self) -> None:
        report = check({"AAPL": "10"}, {}, confirmed={"AAPL": D(0)})
        [finding] = report.findings
        assert (finding.code, finding.broker_qty, finding.explained_qty) == (
            DriftCode.POSITION_MISMATCH,
            0,
            -10,
        )

    def test_a_position_the_single_query_finds_is_compared_with_its_quantity(self) -> None:
        assert check({"AAPL": "10"}, {}, confirmed={"AAPL": D(10)}).findings == ()

    def test_an_unreadable_position_list_compares_nothing(self) -> None:
        report = positions_unavailable(ACCOUNT, "APIError: 500", T0)
        assert (report.available, report.positions, codes(report)) == (
            False, (), [DriftCode.POSITIONS_UNAVAILABLE],
        )  # fmt: skip
        assert "no position is taken as flat" in report.findings[0].message


def test_only_explained_expected_drift_needs_no_attention() -> None:
    calm = {code for code in DriftCode if not code.needs_attention}
    assert calm == {DriftCode.EXTERNAL_ORDER, DriftCode.FEE_ADJUSTMENT_PENDING}


quantities = st.decimals(min_value=0, max_value=1000, places=4, allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(
    ledger=quantities,
    broker=st.one_of(st.none(), quantities),
    recorded=quantities,
    extra_fill=quantities,
    external=quantities,
    side=st.sampled_from(list(Side)),
    fee=st.decimals(min_value=0, max_value=1, places=6),
    symbol=st.sampled_from(["AAPL", "BTC/USD"]),
)
def test_the_parts_always_add_up_to_the_difference(
    ledger: Decimal,
    broker: Decimal | None,
    recorded: Decimal,
    extra_fill: Decimal,
    external: Decimal,
    side: Side,
    fee: Decimal,
    symbol: str,
) -> None:
    filled = recorded + extra_fill
    orders = (
        order(OURS, symbol=symbol, side=side, qty=str(filled), filled=str(filled)),
        order("by-hand", symbol=symbol, side=Side.BUY, qty=str(external), filled=str(external)),
    )
    report = check(
        {symbol: str(ledger)},
        {symbol: str(broker)} if broker is not None else {},
        orders,
        (known(OURS, str(recorded)),),
        (UnsettledAssetFee(symbol, DAY, fee),),
        confirmed={symbol: None},
    )
    [compared] = report.positions
    if compared.broker_qty is None:  # the list omitted a held position: nothing is concluded
        assert DriftCode.BROKER_POSITION_UNCONFIRMED in codes(report)
        assert DriftCode.POSITION_MISMATCH not in codes(report)
        return
    explained = sum((f.explained_qty for f in report.findings), Decimal(0))
    assert explained == compared.difference
    assert sum(compared.explained.values(), Decimal(0)) + compared.unexplained == compared.difference
    assert (DriftCode.POSITION_MISMATCH in codes(report)) == (compared.unexplained != 0)
    assert all(f.code is not DriftCode.FEE_ADJUSTMENT_PENDING or abs(f.explained_qty) <= (f.pending_fee or 0)
               for f in report.findings)  # fmt: skip
