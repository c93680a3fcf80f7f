"""Tax lots: known answers worked out by hand, and invariants over random trade sets."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.core.intents import Side
from backend.core.tax_lots import (
    HoldingPeriod,
    LotMethod,
    LotTrade,
    compute_lots,
    holding_period,
)

T0 = datetime(2024, 1, 2, 15, 0, tzinfo=UTC)
D = Decimal


def trade(trade_id: str, side: str, qty: str, price: str, fees: str = "0", days: float = 0) -> LotTrade:
    return LotTrade(trade_id, Side(side), D(qty), D(price), D(fees), T0 + timedelta(days=days))


TEN_AT_100_TEN_AT_110_SELL_15_AT_120 = [
    trade("b1", "buy", "10", "100", days=0),
    trade("b2", "buy", "10", "110", days=1),
    trade("s1", "sell", "15", "120", days=2),
]


class TestKnownAnswers:
    @pytest.mark.parametrize(
        ("method", "realized", "basis", "open_lot", "open_qty", "open_basis"),
        [
            (LotMethod.FIFO, D(250), D(1550), "b2", D(5), D(550)),
            (LotMethod.LIFO, D(200), D(1600), "b1", D(5), D(500)),
            (LotMethod.HIFO, D(200), D(1600), "b1", D(5), D(500)),
        ],
    )
    def test_issue_example(
        self,
        method: LotMethod,
        realized: Decimal,
        basis: Decimal,
        open_lot: str,
        open_qty: Decimal,
        open_basis: Decimal,
    ) -> None:
        book = compute_lots(TEN_AT_100_TEN_AT_110_SELL_15_AT_120, method)
        sell = book.outcomes["s1"]
        assert sell.realized_pnl == realized
        assert sell.cost_basis == basis
        assert sell.proceeds == D(1800)
        assert [(lot.lot_id, lot.qty, lot.amount) for lot in book.open_lots] == [
            (open_lot, open_qty, open_basis)
        ]
        assert book.position == 5

    def test_fees_are_in_basis_and_proceeds(self) -> None:
        # Buy 10 @ 100 + 1 fee -> basis 1001; buy 10 @ 110 + 1 -> 1101; sell 15 @ 120 - 3 -> 1797.
        # FIFO: 1001 + 1101 x 5/10 = 1551.5 basis -> realized 245.5; open 5 of b2 with basis 550.5.
        trades = [
            trade("b1", "buy", "10", "100", "1", days=0),
            trade("b2", "buy", "10", "110", "1", days=1),
            trade("s1", "sell", "15", "120", "3", days=2),
        ]
        book = compute_lots(trades, LotMethod.FIFO)
        sell = book.outcomes["s1"]
        assert (sell.cost_basis, sell.proceeds, sell.realized_pnl) == (D("1551.5"), D(1797), D("245.5"))
        assert book.open_cost_basis == D("550.5")
        # LIFO: 1101 + 1001 x 5/10 = 1601.5 -> realized 195.5.
        assert compute_lots(trades, LotMethod.LIFO).outcomes["s1"].realized_pnl == D("195.5")

    def test_hifo_differs_from_lifo_when_the_newest_lot_is_not_the_dearest(self) -> None:
        # b1 10 @ 120, b2 10 @ 100, b3 10 @ 110; sell 10 @ 115.
        # FIFO takes b1 (-50), LIFO b3 (+50), HIFO the dearest b1 (-50).
        trades = [
            trade("b1", "buy", "10", "120", days=0),
            trade("b2", "buy", "10", "100", days=1),
            trade("b3", "buy", "10", "110", days=2),
            trade("s1", "sell", "10", "115", days=3),
        ]
        realized = {m: compute_lots(trades, m).outcomes["s1"].realized_pnl for m in LotMethod}
        assert realized == {LotMethod.FIFO: D(-50), LotMethod.LIFO: D(50), LotMethod.HIFO: D(-50)}

    def test_partial_lot_consumption_splits_basis_exactly(self) -> None:
        # 3 @ 10 with a 1 fee: basis 31, not divisible by 3. Selling 1, 1, 1 must use up exactly 31.
        # Each sale takes its share of what is left: 31/3 -> 10.33333333; 20.66666667/2 =
        # 10.333333335 -> 10.33333334 (half to even); the last unit takes the rest, 10.33333333.
        trades = [trade("b1", "buy", "3", "10", "1")]
        trades += [trade(f"s{i}", "sell", "1", "12", days=i) for i in (1, 2, 3)]
        book = compute_lots(trades)
        bases = [book.outcomes[f"s{i}"].cost_basis for i in (1, 2, 3)]
        assert bases == [D("10.33333333"), D("10.33333334"), D("10.33333333")]
        assert sum(bases) == D(31)
        assert book.open_lots == ()

    def test_selling_beyond_the_position_opens_a_short_lot(self) -> None:
        # Long 10 @ 100; sell 15 @ 110: closes 10 (+100) and opens a short of 5 with proceeds 550.
        # Cover 5 @ 90: cost 450 -> realized +100 on the short, short term.
        trades = [
            trade("b1", "buy", "10", "100"),
            trade("s1", "sell", "15", "110", days=1),
            trade("b2", "buy", "5", "90", days=2),
        ]
        book = compute_lots(trades)
        sell = book.outcomes["s1"]
        assert sell.short_sale
        assert sell.realized_pnl == D(100)
        assert (sell.opened_qty, sell.opened_amount, sell.proceeds) == (D(5), D(550), D(1650))
        cover = book.outcomes["b2"]
        assert not cover.short_sale
        assert cover.realized_pnl == D(100)
        assert cover.holding_period is HoldingPeriod.SHORT_TERM
        assert cover.closings[0].short_sale
        assert book.open_lots == ()

    def test_holding_period_is_long_only_after_more_than_a_year(self) -> None:
        bought = datetime(2023, 3, 15, 20, tzinfo=UTC)
        assert holding_period(bought, datetime(2024, 3, 15, 14, tzinfo=UTC)) is HoldingPeriod.SHORT_TERM
        assert holding_period(bought, datetime(2024, 3, 16, 14, tzinfo=UTC)) is HoldingPeriod.LONG_TERM
        leap = datetime(2024, 2, 29, tzinfo=UTC)
        assert holding_period(leap, datetime(2025, 2, 28, tzinfo=UTC)) is HoldingPeriod.SHORT_TERM
        assert holding_period(leap, datetime(2025, 3, 1, tzinfo=UTC)) is HoldingPeriod.LONG_TERM

    def test_a_sell_over_lots_of_both_terms_is_mixed(self) -> None:
        trades = [
            trade("b1", "buy", "1", "100", days=0),
            trade("b2", "buy", "1", "100", days=300),
            trade("s1", "sell", "2", "150", days=400),
        ]
        outcome = compute_lots(trades).outcomes["s1"]
        assert [c.holding_period for c in outcome.closings] == [
            HoldingPeriod.LONG_TERM,
            HoldingPeriod.SHORT_TERM,
        ]
        assert outcome.holding_period is HoldingPeriod.MIXED

    def test_non_positive_quantity_is_refused(self) -> None:
        with pytest.raises(ValueError, match="qty must be > 0"):
            compute_lots([trade("b1", "buy", "0", "1")])


trade_sets = st.lists(
    st.tuples(
        st.sampled_from(["buy", "sell"]),
        st.decimals(min_value=D("0.001"), max_value=D(500), places=3),
        st.decimals(min_value=D("0.01"), max_value=D(10_000), places=2),
        st.decimals(min_value=D(0), max_value=D(5), places=2),
        st.integers(0, 800),
    ),
    min_size=1,
    max_size=25,
)


def build(raw: list[tuple[str, Decimal, Decimal, Decimal, int]]) -> list[LotTrade]:
    return [
        LotTrade(f"t{i:03d}", Side(side), qty, price, fees, T0 + timedelta(days=day))
        for i, (side, qty, price, fees, day) in enumerate(raw)
    ]


@settings(max_examples=200, deadline=None)
@given(raw=trade_sets, method=st.sampled_from(list(LotMethod)), seed=st.integers(0, 2**32))
def test_arrival_order_does_not_change_the_book(
    raw: list[tuple[str, Decimal, Decimal, Decimal, int]], method: LotMethod, seed: int
) -> None:
    trades = build(raw)
    shuffled = trades[:]
    random.Random(seed).shuffle(shuffled)
    assert compute_lots(shuffled, method) == compute_lots(trades, method)


@settings(max_examples=200, deadline=None)
@given(raw=trade_sets, method=st.sampled_from(list(LotMethod)))
def test_lots_sum_to_the_position_and_money_is_conserved(
    raw: list[tuple[str, Decimal, Decimal, Decimal, int]], method: LotMethod
) -> None:
    trades = build(raw)
    book = compute_lots(trades, method)
    net = sum((t.qty if t.side is Side.BUY else -t.qty for t in trades), D(0))
    assert book.position == net
    assert all(lot.qty > 0 for lot in book.open_lots)
    # Every unit of money a trade moved is either realized or still sits in an open lot.
    paid = sum((t.net_amount for t in trades if t.side is Side.BUY), D(0))
    received = sum((t.net_amount for t in trades if t.side is Side.SELL), D(0))
    realized = sum((o.realized_pnl or D(0) for o in book.outcomes.values()), D(0))
    open_long = sum((lot.amount for lot in book.open_lots if lot.side is Side.BUY), D(0))
    open_short = sum((lot.amount for lot in book.open_lots if lot.side is Side.SELL), D(0))
    assert received - paid == realized - open_long + open_short


def entry_for(lot_trade: LotTrade) -> Any:
    from backend.core.instruments import AssetClass
    from backend.core.portfolio import ExecutionLink, PortfolioTrade

    return PortfolioTrade(
        schema_version=2,
        path=f"users/u/portfolio/history/trades/{lot_trade.trade_id}",
        history_id=lot_trade.trade_id,
        uid="u",
        tenant_id="t",
        ledger_path=f"tenants/t/ledger_trades/{lot_trade.trade_id}",
        strategy_id="s",
        broker_account_id="acct",
        asset_class=AssetClass.EQUITY,
        symbol="AAPL",
        quote_currency="USD",
        side=lot_trade.side,
        qty=lot_trade.qty,
        price=lot_trade.price,
        notional=lot_trade.gross,
        fees=lot_trade.fees,
        estimated_slippage=None,
        spread_pct=None,
        executed_at=lot_trade.executed_at,
        trading_date=lot_trade.executed_at.date().isoformat(),
        tax_year=lot_trade.executed_at.year,
        execution=ExecutionLink("paper", "o", "c", "filled", "k"),
        multiplier=lot_trade.multiplier,
        filled_qty=lot_trade.qty,
        fee_currency="USD",
        fee_amount=lot_trade.fees,
    )


class MemoryLots:
    """The stores' booking loop over dicts: the window is found by sorting the lot documents on
    their order keys, as the stores' queries do, so a wrong key shows up as a wrong book."""

    def __init__(self) -> None:
        self.entries: dict[str, Any] = {}
        self.lots: dict[str, Any] = {}  # path -> OpenLot
        self.summary: Any = None
        self.window_sizes: list[int] = []

    def deliver(self, entry: Any, method: LotMethod) -> Any:
        from backend.core.lot_documents import BookingKind, book_entry, order_field, plan_booking, replay

        created = entry.history_id not in self.entries
        if created:
            self.entries[entry.history_id] = entry
        plan = plan_booking(entry, created, self.summary)
        if plan.kind is BookingKind.DUPLICATE:
            return plan
        if plan.kind is BookingKind.INCREMENTAL:
            field, descending = order_field(method)
            ordered = sorted(self.lots.values(), key=lambda lot: getattr(lot, field), reverse=descending)
            window = [lot.tax_lot() for lot in ordered if lot.lot_id in plan.named]
            covered = D(0)
            for lot in ordered:
                if covered >= plan.consume:
                    break
                window.append(lot.tax_lot())
                covered += lot.qty
            self.window_sizes.append(len(window))
            booking = book_entry(entry, self.summary, window, method)
        else:
            booking = replay(self.entries.values(), [lot.tax_lot() for lot in self.lots.values()], method)
        for changed in booking.changed:
            self.entries[changed.history_id] = changed
        for path in booking.deletes:
            del self.lots[path]
        self.lots.update({lot.path: lot for lot in booking.upserts})
        self.summary = booking.summary
        return plan


@settings(max_examples=150, deadline=None)
@given(raw=trade_sets, method=st.sampled_from(list(LotMethod)), seed=st.integers(0, 2**32))
def test_incremental_fan_out_equals_a_full_recompute(
    raw: list[tuple[str, Decimal, Decimal, Decimal, int]], method: LotMethod, seed: int
) -> None:
    """Whatever mix of in-order (incremental), late (incremental or replayed) deliveries, with
    repeats, the stored entries, lot documents and summary end where one replay puts them."""
    from backend.core.lot_documents import replay

    entries = [entry_for(t) for t in build(raw)]
    deliveries = entries + entries[: seed % 4]
    random.Random(seed).shuffle(deliveries)
    memory = MemoryLots()
    for entry in deliveries:
        memory.deliver(entry, method)
    expected = replay(entries, [], method)
    assert memory.summary == expected.summary
    assert sorted(memory.lots.values(), key=lambda lot: lot.path) == sorted(
        expected.upserts, key=lambda lot: lot.path
    )
    assert {k: v.tax for k, v in memory.entries.items()} == {e.history_id: e.tax for e in expected.changed}


def test_a_sale_reads_only_the_lots_it_consumes() -> None:
    """200 buys, then a FIFO sale of 2.5 lots: three lots read, not 200; the HIFO and LIFO sales
    that follow read theirs by key as well."""
    memory = MemoryLots()
    for i in range(200):
        memory.deliver(
            entry_for(trade(f"b{i:03d}", "buy", "1", str(100 + (i * 37) % 50), days=i)), LotMethod.FIFO
        )
    memory.deliver(entry_for(trade("s1", "sell", "2.5", "200", days=300)), LotMethod.FIFO)
    memory.deliver(entry_for(trade("s2", "sell", "1", "200", days=301)), LotMethod.HIFO)
    memory.deliver(entry_for(trade("s3", "sell", "1", "200", days=302)), LotMethod.LIFO)
    assert memory.window_sizes[-3:] == [3, 1, 1]
    sales = {k: v.tax for k, v in memory.entries.items() if k.startswith("s")}
    assert [c.lot_id for c in sales["s1"].closings] == ["b000", "b001", "b002"]
    assert [c.lot_id for c in sales["s2"].closings] == ["b027"]  # 100 + (27 * 37) % 50 = 149: the highest
    assert [c.lot_id for c in sales["s3"].closings] == ["b199"]
    assert memory.summary.open_lot_count == 200 - 3 - 2 + 1  # b002 stays open, half sold


def test_which_late_entries_replay() -> None:
    """A late buy among buys is booked alone; a late buy before a booked sale, and a late sale,
    replay the symbol's history (under FIFO the late buy changes what the sale consumed)."""
    from backend.core.lot_documents import BookingKind

    memory = MemoryLots()
    memory.deliver(entry_for(trade("b1", "buy", "10", "100", days=0)), LotMethod.FIFO)
    memory.deliver(entry_for(trade("s1", "sell", "5", "120", days=10)), LotMethod.FIFO)
    memory.deliver(entry_for(trade("b3", "buy", "10", "110", days=20)), LotMethod.FIFO)
    late_buy_after_sales = memory.deliver(entry_for(trade("b2", "buy", "1", "90", days=15)), LotMethod.FIFO)
    assert late_buy_after_sales.kind is BookingKind.INCREMENTAL
    late_buy_before_a_sale = memory.deliver(entry_for(trade("b0", "buy", "1", "90", days=-1)), LotMethod.FIFO)
    assert late_buy_before_a_sale.kind is BookingKind.REPLAY
    assert [c.lot_id for c in memory.entries["s1"].tax.closings] == ["b0", "b1"]
    late_sale = memory.deliver(entry_for(trade("s0", "sell", "1", "95", days=16)), LotMethod.FIFO)
    assert late_sale.kind is BookingKind.REPLAY


def test_a_method_change_applies_from_the_next_sale_and_survives_a_replay() -> None:
    memory = MemoryLots()
    memory.deliver(entry_for(trade("b1", "buy", "10", "100", days=0)), LotMethod.FIFO)
    memory.deliver(entry_for(trade("b2", "buy", "10", "110", days=1)), LotMethod.FIFO)
    memory.deliver(entry_for(trade("s1", "sell", "5", "120", days=2)), LotMethod.FIFO)
    memory.deliver(entry_for(trade("s2", "sell", "5", "120", days=3)), LotMethod.LIFO)  # the user switched
    booked = {
        k: (v.tax.lot_method, v.tax.realized_pnl) for k, v in memory.entries.items() if k.startswith("s")
    }
    assert booked == {"s1": (LotMethod.FIFO, D(100)), "s2": (LotMethod.LIFO, D(50))}
    # A late buy before both sales: each is re-booked under its own method (LIFO now takes b0).
    memory.deliver(entry_for(trade("b0", "buy", "5", "90", days=1.5)), LotMethod.HIFO)
    rebooked = {
        k: (v.tax.lot_method, v.tax.realized_pnl) for k, v in memory.entries.items() if k.startswith("s")
    }
    assert rebooked == {"s1": (LotMethod.FIFO, D(100)), "s2": (LotMethod.LIFO, D(150))}
    assert memory.entries["b0"].tax.lot_method is LotMethod.HIFO


@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(
        st.decimals(allow_nan=False, allow_infinity=False, min_value=D("-1e12"), max_value=D("1e12")),
        min_size=2,
        max_size=12,
    )
)
def test_ordered_decimal_sorts_as_the_numbers_do(values: list[Decimal]) -> None:
    from backend.core.lot_documents import ordered_decimal

    by_string = sorted(values, key=ordered_decimal)
    assert all(a <= b for a, b in itertools.pairwise(by_string))
    assert all((ordered_decimal(a) == ordered_decimal(b)) == (a == b) for a in values for b in values)
