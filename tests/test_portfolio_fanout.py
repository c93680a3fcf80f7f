"""Ledger -> portfolio history: duplicates, out-of-order deliveries, lot methods, the re-drive."""

from __future__ import annotations

import io
import json
import random
from dataclasses import fields, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from backend.adapters.market_data import StaticMarketData
from backend.adapters.sqlite_store import SQLiteExecutionStore
from backend.core.fees import FeeSchedule
from backend.core.intents import OrderIntent
from backend.core.ledger import LedgerTrade
from backend.core.portfolio import PortfolioTrade
from backend.core.risk import RiskLimits
from backend.core.tax_lots import HoldingPeriod, LotMethod
from backend.execution.engine import ExecutionEngine, ExecutionStatus, RiskManager, SmartRouter
from backend.execution.fanout import fan_out_ledger_trade, redrive, scheduled_redrive
from backend.execution.ports import ManualClock
from backend.execution.settings import ExecSettings
from backend.observability.logging import configure_logging
from tests.conftest import CountingBroker

UID = "user_12345"
NO_FEES = FeeSchedule.from_overrides(
    {f.name: 0 for f in fields(FeeSchedule) if f.name not in ("source", "as_of")}
)


@pytest.fixture
def store(contract_store: Any) -> Any:
    """Every test here runs against both stores (SQLite file, Firestore emulator)."""
    return contract_store


def engine_for(
    store: SQLiteExecutionStore, market: StaticMarketData, clock: ManualClock, fan_out: bool
) -> ExecutionEngine:
    return ExecutionEngine(
        broker=CountingBroker(market, clock),
        router=SmartRouter(market_data=market, clock=clock),
        risk=RiskManager(RiskLimits(max_position_qty=Decimal(1000), max_daily_trades=1000)),
        dry_run=False,
        store=store,
        clock=clock,
        settings=ExecSettings(tenant_id="acme_corp", uid=UID),
        portfolio=store if fan_out else None,
        fee_schedule=NO_FEES,  # the known answers below are worked out without fees
    )


def trade_script(
    store: SQLiteExecutionStore, market: StaticMarketData, clock: ManualClock, fan_out: bool
) -> list[LedgerTrade]:
    """Buy 10 @ ~100, buy 10 @ ~110, sell 15 @ ~120 (fills at the ask / bid of tight quotes),
    then 400 days later sell the last 5: real ledger rows from the real engine."""
    engine = engine_for(store, market, clock, fan_out)
    steps = [
        ("buy", 10, "99.99", "100.00"),
        ("buy", 10, "109.99", "110.00"),
        ("sell", 15, "120.00", "120.01"),
    ]
    for index, (side, qty, bid, ask) in enumerate(steps):
        clock.advance(timedelta(days=1))
        market.set_quote("AAPL", bid, ask)
        intent = OrderIntent(
            strategy_id="s1", broker_account_id="acct", symbol="AAPL", side=side, qty=qty,
            idempotency_key=f"step-{index}",
        )  # fmt: skip
        assert engine.execute_intent(intent).status is ExecutionStatus.PLACED
    clock.advance(timedelta(days=400))
    market.set_quote("AAPL", "130.00", "130.01")
    final = OrderIntent(
        strategy_id="s1", broker_account_id="acct", symbol="AAPL", side="sell", qty=5, idempotency_key="late"
    )
    assert engine.execute_intent(final).status is ExecutionStatus.PLACED
    return list(store.iter_ledger_trades("acme_corp"))


def tax_view(entries: list[PortfolioTrade]) -> dict[str, tuple[object, ...]]:
    return {
        e.history_id: (
            e.side.value,
            e.tax.cost_basis if e.tax else None,
            e.tax.realized_pnl if e.tax else None,
            e.tax.holding_period if e.tax else None,
        )
        for e in entries
    }


def test_engine_fans_out_right_after_the_ledger_write(
    store: SQLiteExecutionStore, market: StaticMarketData, clock: ManualClock
) -> None:
    trades = trade_script(store, market, clock, fan_out=True)
    history = store.history(UID)
    assert [e.history_id for e in history] == [
        t.trade_id for t in sorted(trades, key=lambda t: t.executed_at)
    ]
    buy1, _buy2, sell15, sell5 = history
    assert buy1.ledger_path == f"tenants/acme_corp/ledger_trades/{buy1.history_id}"
    assert buy1.path == f"users/{UID}/portfolio/history/trades/{buy1.history_id}"
    assert (buy1.price, buy1.notional, buy1.fees) == (Decimal("100.00"), Decimal("1000.00"), Decimal(0))
    assert buy1.tax is not None
    assert buy1.tax.cost_basis == Decimal("1000.00")
    assert buy1.execution.client_order_id.startswith("msr-")
    # FIFO: sell 15 @ 120.00 closes 10 @ 100.00 and 5 @ 110.00: 1800 - 1550 = 250, short term.
    assert sell15.tax is not None
    assert (sell15.tax.proceeds, sell15.tax.cost_basis, sell15.tax.realized_pnl) == (
        Decimal("1800.00"),
        Decimal("1550.00"),
        Decimal("250.00"),
    )
    assert sell15.tax.holding_period is HoldingPeriod.SHORT_TERM
    assert sell15.tax.lot_method is LotMethod.FIFO
    # 400 days later the last 5 @ 130.00 (bought at 110.00) are long term: +100.
    assert sell5.tax is not None
    assert (sell5.tax.realized_pnl, sell5.tax.holding_period) == (Decimal("100.00"), HoldingPeriod.LONG_TERM)
    assert sell5.trading_date == sell5.executed_at.date().isoformat()
    assert sell5.tax_year == sell5.executed_at.year
    lots = store.lots(UID, "default", "AAPL")
    assert lots is not None
    assert (lots.position, lots.open_lots, lots.trades) == (Decimal(0), (), 4)


def test_duplicate_delivery_writes_one_entry(
    store: SQLiteExecutionStore, market: StaticMarketData, clock: ManualClock
) -> None:
    trades = trade_script(store, market, clock, fan_out=True)
    again = fan_out_ledger_trade(trades[0], store)
    assert not again.created
    assert again.updated == 0
    assert len(store.history(UID)) == 4


def test_out_of_order_deliveries_end_as_in_order(
    store: SQLiteExecutionStore, market: StaticMarketData, clock: ManualClock
) -> None:
    trades = trade_script(store, market, clock, fan_out=False)

    def as_user(uid: str, trade: LedgerTrade) -> LedgerTrade:
        return replace(trade, uid=uid)

    for trade in sorted(trades, key=lambda t: t.executed_at):
        fan_out_ledger_trade(as_user("in-order", trade), store)
    expected = tax_view(store.history("in-order"))
    expected_lots = store.lots("in-order", "default", "AAPL")
    assert expected_lots is not None
    for seed in range(6):
        uid = f"shuffled-{seed}"
        deliveries = trades + trades[: seed % 3]  # some delivered twice as well
        random.Random(seed).shuffle(deliveries)
        for trade in deliveries:
            fan_out_ledger_trade(as_user(uid, trade), store)
        assert tax_view(store.history(uid)) == expected, f"seed {seed}"
        lots = store.lots(uid, "default", "AAPL")
        assert lots is not None
        assert (lots.position, lots.open_lots, lots.trades) == (
            expected_lots.position,
            expected_lots.open_lots,
            expected_lots.trades,
        )
    # The sell that arrived before its buys was rewritten once the buys came in.
    assert expected[trades[2].trade_id][2] == Decimal("250.00")


def test_lot_method_per_user_and_per_call(
    store: SQLiteExecutionStore, market: StaticMarketData, clock: ManualClock
) -> None:
    store.set_lot_method(UID, LotMethod.LIFO)
    trades = trade_script(store, market, clock, fan_out=True)
    sell15 = next(e for e in store.history(UID) if e.history_id == trades[2].trade_id)
    assert sell15.tax is not None
    assert (sell15.tax.lot_method, sell15.tax.realized_pnl) == (LotMethod.LIFO, Decimal("200.00"))
    result = fan_out_ledger_trade(trades[0], store, LotMethod.HIFO)
    assert result.updated == 0  # a redelivery under another method rewrites nothing
    assert all(e.tax is not None and e.tax.lot_method is LotMethod.LIFO for e in store.history(UID))


def test_a_method_change_never_rewrites_booked_sales(
    store: SQLiteExecutionStore, market: StaticMarketData, clock: ManualClock
) -> None:
    """FIFO books the first sale; the user switches to LIFO; a late buy (dated before every sale)
    then re-books the sales it affects, each under the method it recorded."""
    trades = trade_script(store, market, clock, fan_out=True)
    before = {e.history_id: e.tax for e in store.history(UID)}
    store.set_lot_method(UID, LotMethod.LIFO)
    assert {e.history_id: e.tax for e in store.history(UID)} == before  # nothing rewritten
    late = replace(
        trades[0], trade_id="late-buy", idempotency_key="late-buy", executed_at=trades[0].executed_at
        + timedelta(hours=1), price=Decimal("90.00"), notional=Decimal("900.00"),
    )  # fmt: skip
    result = fan_out_ledger_trade(late, store)
    history = {e.history_id: e.tax for e in store.history(UID)}
    assert history["late-buy"] is not None
    assert history["late-buy"].lot_method is LotMethod.LIFO
    sales = [t for t in trades if t.side.value == "sell"]
    assert all(history[t.trade_id].lot_method is LotMethod.FIFO for t in sales)
    # FIFO: the 15 sold take 10 @ 100 and 5 @ 90 (the late lot, older than the 110 lot)
    assert [c.lot_id for c in history[sales[0].trade_id].closings] == [trades[0].trade_id, "late-buy"]
    assert result.updated >= 2
    lots = store.lots(UID, "default", "AAPL")
    assert lots is not None
    assert lots.lots_in_documents
    assert lots.open_lot_count == len(lots.open_lots) == 1


def test_old_single_document_lots_are_read_and_migrated_on_the_next_write(
    store: SQLiteExecutionStore, market: StaticMarketData, clock: ManualClock
) -> None:
    from backend.core.lot_documents import with_lots

    trades = trade_script(store, market, clock, fan_out=False)
    for trade in trades[:2]:
        fan_out_ledger_trade(trade, store)
    current = store.lots(UID, "default", "AAPL")
    assert current is not None
    assert len(current.open_lots) == 2
    legacy = replace(current, lots_in_documents=False, open_lot_count=0)
    _put_legacy_summary(store, legacy)
    assert store.lots(UID, "default", "AAPL") == legacy  # read as it is
    assert with_lots(legacy, ()) is legacy
    for trade in trades[2:]:
        fan_out_ledger_trade(trade, store)
    migrated = store.lots(UID, "default", "AAPL")
    assert migrated is not None
    assert migrated.lots_in_documents
    assert (migrated.position, len(migrated.open_lots)) == (Decimal(0), 0)
    assert tax_view(store.history(UID))[trades[2].trade_id][2] == Decimal("250.00")


def _put_legacy_summary(store: Any, legacy: Any) -> None:
    """Write a summary in the single-document form (lots inline, no lot documents)."""
    from backend.adapters.documents import LOTS_SNAPSHOTS, to_document, to_json

    if isinstance(store, SQLiteExecutionStore):
        with store._write() as conn:
            conn.execute("DELETE FROM portfolio_open_lots")
            conn.execute(
                "UPDATE portfolio_lots SET document = ? WHERE path = ?",
                (to_json(LOTS_SNAPSHOTS, legacy), legacy.path),
            )
        return
    for lot in store._db.collection(f"{legacy.path}/open").stream():
        lot.reference.delete()
    store._db.document(legacy.path).set(to_document(LOTS_SNAPSHOTS, legacy))


def test_redrive_fans_out_what_was_missed_once(
    store: SQLiteExecutionStore, market: StaticMarketData, clock: ManualClock
) -> None:
    written_from = datetime.now(UTC) - timedelta(seconds=5)  # entries are stamped with write time
    trade_script(store, market, clock, fan_out=False)
    assert store.history(UID) == []
    first = redrive(store, store, written_from, tenant_id="acme_corp")
    assert (first.scanned, first.fanned_out) == (4, 4)
    assert len(store.history(UID)) == 4
    assert redrive(store, store, written_from).fanned_out == 0
    assert redrive(store, store, datetime.now(UTC) + timedelta(minutes=1)).scanned == 0  # an indexed window
    assert redrive(store, store, written_from, tenant_id="someone_else").scanned == 0


def test_scheduled_redrive_starts_from_its_watermark(
    store: SQLiteExecutionStore, market: StaticMarketData, clock: ManualClock
) -> None:
    trade_script(store, market, clock, fan_out=False)
    now = datetime.now(UTC)
    first = scheduled_redrive(store, store, now)
    assert (first.since, first.fanned_out) == (now - timedelta(hours=48), 4)
    later = now + timedelta(hours=1)
    second = scheduled_redrive(store, store, later)
    assert second.since == now - timedelta(minutes=10)  # the previous run's start, with an overlap
    assert second.scanned == 4  # written within the overlap: looked at again, already fanned out
    assert second.fanned_out == 0
    assert scheduled_redrive(store, store, later + timedelta(hours=1)).scanned == 0


def test_failed_fan_out_keeps_the_trade_and_is_logged(
    store: SQLiteExecutionStore, market: StaticMarketData, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = io.StringIO()
    configure_logging("INFO", stream)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("firestore unavailable")

    monkeypatch.setattr(store, "apply_history_entry", broken)
    engine = engine_for(store, market, clock, fan_out=True)
    market.set_quote("AAPL", "99.99", "100.00")
    result = engine.execute_intent(
        OrderIntent(strategy_id="s", broker_account_id="acct", symbol="AAPL", side="buy", qty=1)
    )
    assert result.status is ExecutionStatus.PLACED
    assert len(list(store.iter_ledger_trades())) == 1
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    failure = next(e for e in events if e["event"] == "portfolio.fanout_failed")
    assert failure["severity"] == "ERROR"
    assert "firestore unavailable" in failure["exception"]
    monkeypatch.undo()
    assert redrive(store, store, datetime.now(UTC) - timedelta(minutes=1)).fanned_out == 1


def test_trigger_entry_point_takes_the_ledger_document_as_firestore_delivers_it(
    store: SQLiteExecutionStore, market: StaticMarketData, clock: ManualClock
) -> None:
    from datetime import UTC, datetime

    from pydantic import TypeAdapter

    from backend.adapters.documents import to_document
    from backend.execution.fanout import fan_out_ledger_document

    trades = trade_script(store, market, clock, fan_out=False)
    document = {**to_document(TypeAdapter(LedgerTrade), trades[0]), "written_at": datetime.now(UTC)}
    result = fan_out_ledger_document(document, store)
    assert result.created
    assert store.has_history(UID, trades[0].trade_id)
    with pytest.raises(ValueError, match="not a ledger trade document"):
        fan_out_ledger_document({"symbol": "AAPL"}, store)


@pytest.mark.parametrize("method", list(LotMethod))
def test_a_sale_across_pages_of_lots_matches_a_replay(store: Any, method: LotMethod) -> None:
    """40 open lots at varied costs, one sale of 35.5 (more than two pages of lot documents read in
    the method's order): the same closings and the same remaining lots as one replay."""
    from backend.core.lot_documents import replay
    from tests.test_tax_lots import entry_for, trade

    buys = [entry_for(trade(f"b{i:02d}", "buy", "1", str(100 + (i * 7) % 13), days=i)) for i in range(40)]
    sale = entry_for(trade("s1", "sell", "35.5", "150", days=50))
    for entry in [*buys, sale]:
        store.apply_history_entry(entry, method)
    expected = replay([*buys, sale], [], method)
    booked = {e.history_id: e.tax for e in store.history("u")}
    assert booked == {e.history_id: e.tax for e in expected.changed}
    lots = store.lots("u", "acct", "AAPL")
    assert lots is not None
    assert lots.open_lots == tuple(sorted((u.tax_lot() for u in expected.upserts), key=lambda x: x.opened_at))
    assert (lots.position, lots.open_lot_count) == (Decimal("4.5"), 5)
