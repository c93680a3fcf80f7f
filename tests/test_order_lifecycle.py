"""The order state machine, pure: legal paths, refusals, fills derived from snapshots, and
property tests over random event sequences (an illegal transition is never applied; filled never
exceeds the order's quantity; what an order holds is given back exactly once)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from backend.core.intents import Side
from backend.core.order_lifecycle import (
    BrokerReport,
    Lease,
    LeaseTaken,
    OrderRecord,
    OrderState,
    Refusal,
    Released,
    SubmitRefused,
    SubmitSent,
    SubmitUnknown,
    apply,
    claimed_order,
    reserved_qty,
    transition_effects,
)
from backend.core.paths import trade_id_for

T0 = datetime(2026, 3, 2, 15, 30, tzinfo=UTC)
D = Decimal


def claimed(qty: str = "10") -> OrderRecord:
    return claimed_order(
        "msr-1", "t", "k", Side.BUY, D(qty), T0, Lease("w1", T0 + timedelta(seconds=60)), "day~0001"
    )


def report(state: OrderState, filled: str, price: str | None = "100", order_id: str = "o1") -> BrokerReport:
    return BrokerReport(T0, "paper", order_id, state, D(filled), D(price) if price else None)


def run(order: OrderRecord, *events: object) -> OrderRecord:
    for event in events:
        step = apply(order, event)  # type: ignore[arg-type]
        assert not isinstance(step, Refusal), step
        order = step
    return order


def test_a_market_order_filled_at_once() -> None:
    order = run(claimed(), SubmitSent(T0), report(OrderState.FILLED, "10", "101.5"))
    assert (order.state, order.filled_qty, order.leaves_qty, order.attempts) == (OrderState.FILLED, 10, 0, 1)
    [fill] = order.fills
    assert (fill.qty, fill.price, fill.cum_qty) == (D(10), D("101.5"), D(10))
    assert fill.trade_id == trade_id_for("t", "k")  # the first fill keeps the order's historic row id
    assert order.lease is None
    assert order.slot == "day~0001"  # it was placed: the slot stays taken


def test_fills_from_successive_snapshots_are_priced_by_what_filled_between_them() -> None:
    # 4 @ 100, then cumulative 10 @ 101.2 average: the 6 in between cost (1012 - 400) / 6 = 102.
    order = run(claimed(), SubmitSent(T0), report(OrderState.PARTIALLY_FILLED, "4", "100"))
    order = run(order, report(OrderState.FILLED, "10", "101.2"))
    assert [(f.qty, f.price) for f in order.fills] == [(D(4), D(100)), (D(6), D(102))]
    assert sum((f.qty * f.price for f in order.fills), D(0)) == D(10) * D("101.2")
    assert len({f.trade_id for f in order.fills}) == 2


def test_evidence_is_not_authority() -> None:
    partial = run(claimed(), SubmitSent(T0), report(OrderState.PARTIALLY_FILLED, "4"))
    stale = apply(partial, report(OrderState.ACCEPTED, "0", None))
    assert isinstance(stale, Refusal)
    assert "stale" in stale.reason
    assert isinstance(apply(partial, report(OrderState.FILLED, "11")), Refusal)  # overfill
    assert isinstance(apply(partial, report(OrderState.FILLED, "10", order_id="other")), Refusal)
    assert apply(partial, report(OrderState.PARTIALLY_FILLED, "4")) == partial  # nothing new
    filled = run(partial, report(OrderState.FILLED, "10"))
    assert apply(filled, report(OrderState.FILLED, "10")) == filled  # a repeat of what settled it
    assert isinstance(apply(filled, Released(T0, "late")), Refusal)


def test_unknown_is_settled_only_by_a_report_or_a_release() -> None:
    unknown = run(claimed(), SubmitSent(T0), SubmitUnknown(T0, "read timed out"))
    assert unknown.state is OrderState.UNKNOWN
    assert unknown.slot == "day~0001"
    assert reserved_qty(unknown) == 10  # it may exist: the quantity stays in flight
    retaken = run(unknown, LeaseTaken(T0, Lease("w2", T0 + timedelta(seconds=60))))
    assert (retaken.state, retaken.lease.holder) == (OrderState.CLAIMED, "w2")  # type: ignore[union-attr]
    resent = run(retaken, SubmitSent(T0), report(OrderState.ACCEPTED, "0", None))
    assert (resent.state, resent.attempts) == (OrderState.ACCEPTED, 2)
    released = run(unknown, Released(T0, "not at the broker after 60s"))
    effects = transition_effects(unknown, released)
    assert (released.state, released.slot, effects.release_in_flight) == (OrderState.FAILED, None, D(10))
    assert effects.release_slot == "day~0001"


def test_a_refused_submit_gives_everything_back() -> None:
    before = run(claimed(), SubmitSent(T0))
    refused = run(before, SubmitRefused(T0, "insufficient buying power"))
    effects = transition_effects(before, refused)
    assert (refused.state, effects.release_in_flight, effects.release_slot) == (
        OrderState.REJECTED,
        10,
        "day~0001",
    )


def test_canceled_after_a_partial_fill_releases_the_rest() -> None:
    partial = run(claimed(), SubmitSent(T0), report(OrderState.PARTIALLY_FILLED, "4"))
    canceled = run(partial, report(OrderState.CANCELED, "4"))
    effects = transition_effects(partial, canceled)
    assert (canceled.state, effects.release_in_flight, effects.release_slot) == (OrderState.CANCELED, 6, None)


# -- properties -----------------------------------------------------------------------------------

states = st.sampled_from(sorted(OrderState, key=str))
quantities = st.integers(0, 12).map(D)
prices = st.sampled_from([None, D("99.5"), D(100), D("100.25")])


@st.composite
def events(draw: st.DrawFn) -> object:
    at = T0 + timedelta(seconds=draw(st.integers(0, 600)))
    kind = draw(st.sampled_from(["sent", "report", "unknown", "refused", "lease", "released"]))
    if kind == "sent":
        return SubmitSent(at)
    if kind == "unknown":
        return SubmitUnknown(at, "lost")
    if kind == "refused":
        return SubmitRefused(at, "no")
    if kind == "lease":
        return LeaseTaken(at, Lease("w", at + timedelta(seconds=60)))
    if kind == "released":
        return Released(at, "absent")
    order_id = draw(st.sampled_from(["o1", "o1", "o2"]))
    return BrokerReport(at, "paper", order_id, draw(states), draw(quantities), draw(prices))


@settings(max_examples=400, deadline=None)
@given(st.lists(events(), max_size=25))
def test_random_event_sequences_never_break_the_order(sequence: list[object]) -> None:
    order = claimed("10")
    given_back = D(0)
    slots_given_back = 0
    for event in sequence:
        step = apply(order, event)  # type: ignore[arg-type]
        if isinstance(step, Refusal):
            continue  # refused: the order is unchanged
        effects = transition_effects(order, step)
        assert step.version >= order.version
        if step != order:
            assert step.version == order.version + 1
        assert 0 <= step.filled_qty <= step.qty
        assert step.filled_qty >= order.filled_qty  # a fill is never undone
        assert sum((f.qty for f in step.fills), D(0)) == step.filled_qty
        assert all(f.qty > 0 and f.price > 0 for f in step.fills)
        if order.state.terminal:
            assert step == order  # nothing moves a final order
        if step.state in (OrderState.REJECTED, OrderState.FAILED):
            assert step.filled_qty == 0
        given_back += effects.release_in_flight
        slots_given_back += effects.release_slot is not None
        assert effects.release_in_flight >= 0
        order = step
    # Every unit reserved at the claim is still held in flight, or was given back once (by filling
    # or by ending): the in-flight counter can neither leak nor go negative.
    assert given_back + reserved_qty(order) == D(10)
    assert slots_given_back <= 1
    assert (order.slot is None) == (slots_given_back == 1)
