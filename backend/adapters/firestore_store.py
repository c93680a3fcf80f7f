"""The Firestore store: the same ``ExecutionStore`` and ``PortfolioStore`` contracts as the embedded
store, on google-cloud-firestore.

Documents (readable in the console; money as exact decimal strings, times as timestamps):

- ``tenants/{t}/decisions/{decision_id}``: every decision; for a keyed intent the id derives from the
  idempotency key, so the document is also the idempotency record. An intent that reached the claim
  keeps its ``order`` here (state, fills, lease, the daily slot it holds) with a ``version`` every
  update must match (compare-and-set, inside a transaction); ``open`` marks an order not yet final.
- ``tenants/{t}/ledger_trades/{trade_id}``: created once with ``create()``; ``written_at`` is server time.
- ``tenants/{t}/daily_trade_slots/{day}~{n}``: one document per trade slot taken that day, created by
  the claim, deleted only when the order never reached the broker: a daily limit of N is N possible
  documents, none of them hot. ``tenants/{t}/positions/{account~symbol}``: the booked position and
  its in-flight quantity per side, read and written in the claim's and each update's transaction.
- ``users/{uid}/portfolio/history/trades/{trade_id}``, ``users/{uid}/portfolio/tax/lots/{account~symbol}``,
  ``users/{uid}/portfolio/settings``.

Commits per filled market order: two transactions (the claim before the broker, the update after).
"""

from __future__ import annotations

import os
import random
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

from google.api_core.exceptions import Aborted, AlreadyExists
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter
from google.cloud.firestore_v1.field_path import FieldPath

from backend.adapters.documents import (
    HISTORY_ENTRIES,
    LEDGER_ENTRIES,
    LOTS_SNAPSHOTS,
    OPEN_LOTS,
    ORDERS,
    RESULTS,
    DocumentCodec,
    from_document,
    to_document,
    without_server_fields,
)
from backend.core.intents import Side, canonical_decimal
from backend.core.ledger import (
    DecisionRecord,
    LedgerEntry,
    LedgerFeeAdjustment,
    build_decision_record,
    new_decision_id,
)
from backend.core.lot_documents import (
    Booking,
    BookingKind,
    BookingPlan,
    book_entry,
    order_field,
    plan_booking,
    replay,
    with_lots,
)
from backend.core.order_lifecycle import OrderRecord
from backend.core.orders import ExecutionResult, ExecutionStatus
from backend.core.paths import (
    daily_slot_id,
    daily_slot_path,
    decision_id_for,
    decision_path,
    ledger_trade_path,
    ops_state_path,
    portfolio_history_collection,
    portfolio_lots_path,
    portfolio_open_lot_path,
    portfolio_open_lots_collection,
    portfolio_settings_path,
    portfolio_trade_path,
    position_path,
    slot_probe_order,
    tenant_collection_path,
)
from backend.core.portfolio import FanOutResult, LotsSnapshot, PortfolioTrade
from backend.core.risk import Exposure
from backend.core.tax_lots import LotMethod, TaxLot
from backend.execution.ports import (
    Claim,
    ClaimOutcome,
    LedgerIntegrityError,
    OrderCommit,
    OrderCursor,
    OrderUpdate,
    RiskCheck,
    StoreBusy,
    StoredExecution,
)

_PENDING = ExecutionStatus.PENDING.value
_ZERO = Decimal(0)
T = TypeVar("T")

DEFAULT_PROJECT = "demo-local"  # a demo- project never reaches Google's servers
# A transaction the SDK gave up on for contention (its own attempts re-queue in place) is run again
# this many times, after a jittered pause, before the store reports StoreBusy.
CONTENTION_ROUNDS = 6


def _contended(exc: BaseException) -> bool:
    """The SDK's way of saying its attempts all aborted: a ValueError wrapping ``Aborted``."""
    return isinstance(exc, Aborted) or (isinstance(exc, ValueError) and isinstance(exc.__cause__, Aborted))


def _through_contention(run: Callable[[], T], settled: Callable[[], T | None], what: str) -> T:
    """``run`` a transaction; when contention defeats it, ask ``settled`` whether another writer
    already did what it was for (its answer is then the outcome), else pause and run it again."""
    for round_ in range(CONTENTION_ROUNDS):
        try:
            return run()
        except (ValueError, Aborted) as exc:
            if not _contended(exc):
                raise
        outcome = settled()
        if outcome is not None:
            return outcome
        time.sleep(random.uniform(0.02, 0.1) * (round_ + 1))  # jitter: the writers take turns
    raise StoreBusy(
        f"{what}: the store stayed contended through {CONTENTION_ROUNDS} rounds; nothing was written"
    )


def firestore_client(project: str | None = None) -> firestore.Client:
    """A client for ``project``, else ``GOOGLE_CLOUD_PROJECT``; the emulator when
    ``FIRESTORE_EMULATOR_HOST`` is set (no credentials needed there)."""
    project = project or os.environ.get("GOOGLE_CLOUD_PROJECT") or os.environ.get("GCLOUD_PROJECT")
    return firestore.Client(project=project or DEFAULT_PROJECT)


def _position_figures(snapshot: firestore.DocumentSnapshot) -> tuple[Decimal, Decimal, Decimal]:
    """(booked qty, in-flight buys, in-flight sells); a signed ``pending_qty`` written before the
    sides were kept apart is read as the in-flight quantity of its side."""
    position = snapshot.to_dict() if snapshot.exists else {}
    held = Decimal(position.get("qty", "0"))
    if "pending_buy_qty" in position or "pending_qty" not in position:
        return (
            held,
            Decimal(position.get("pending_buy_qty", "0")),
            Decimal(position.get("pending_sell_qty", "0")),
        )
    signed = Decimal(position["pending_qty"])
    return held, max(signed, _ZERO), max(-signed, _ZERO)


def _model(codec: DocumentCodec[T], snapshot: firestore.DocumentSnapshot) -> T:
    return from_document(codec, without_server_fields(snapshot.to_dict() or {}))


def _position_key(result: ExecutionResult) -> tuple[str, str, str]:
    intent = result.intent
    return result.tenant_id, intent.broker_account_id, intent.symbol


def _stored(snapshot: firestore.DocumentSnapshot) -> StoredExecution:
    data = snapshot.to_dict() or {}
    order = from_document(ORDERS, data["order"]) if data.get("order") else None
    if data.get("result") is None:
        return StoredExecution(None, order)  # a claim from before orders were recorded
    return StoredExecution(from_document(RESULTS, data["result"]), order)


def _position_data(key: tuple[str, str, str], held: Decimal, buys: Decimal, sells: Decimal) -> dict[str, Any]:
    if buys < 0 or sells < 0:
        raise LedgerIntegrityError(
            f"in-flight quantity of {key} would go negative (buys {buys}, sells {sells})"
        )
    tenant_id, broker_account_id, symbol = key
    return {
        "tenant_id": tenant_id,
        "broker_account_id": broker_account_id,
        "symbol": symbol,
        "qty": canonical_decimal(held),
        "pending_buy_qty": canonical_decimal(buys),
        "pending_sell_qty": canonical_decimal(sells),
        "updated_at": firestore.SERVER_TIMESTAMP,
    }


def _side_deltas(side: Side, qty: Decimal) -> tuple[Decimal, Decimal]:
    return (qty, _ZERO) if side is Side.BUY else (_ZERO, qty)


class _Turns:
    """Per-process turns on one position document. Firestore's server-side transactions lock
    pessimistically: eight deliveries of one intent reading the same documents at once deadlock
    each other until the store's lock waits abort them, round after round (an emulator run took
    over 30 s to settle eight). Writers in one process take turns instead; writers in other
    processes are still ordered by the transactions."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: weakref.WeakValueDictionary[tuple[str, ...], Any] = weakref.WeakValueDictionary()

    @contextmanager
    def on(self, key: tuple[str, ...]) -> Iterator[None]:
        with self._guard:
            lock = self._locks.get(key)
            if lock is None:
                lock = self._locks[key] = threading.RLock()
        with lock:  # the local name keeps the lock alive while it is held
            yield


_WINDOW_PAGE = 16  # open lots read per page while a sale looks for what it consumes


class FirestoreExecutionStore:
    def __init__(self, client: firestore.Client) -> None:
        self._db = client
        self._turns = _Turns()

    # -- documents ------------------------------------------------------------------------

    def _decision_ref(self, tenant_id: str, key: str) -> firestore.DocumentReference:
        return self._db.document(decision_path(tenant_id, decision_id_for(tenant_id, key)))

    @staticmethod
    def _decision_data(result: ExecutionResult, order: OrderRecord | None = None) -> dict[str, Any]:
        intent = result.intent
        data = {
            "tenant_id": result.tenant_id,
            "idempotency_key": result.idempotency_key,
            "status": result.status.value,
            "reason_code": result.reason_code.value,
            "symbol": intent.symbol,
            "asset_class": intent.asset_class.value,
            "dry_run": result.status is ExecutionStatus.DRY_RUN,
            "decided_at": result.decided_at,
            "recorded_at": firestore.SERVER_TIMESTAMP,
            "result": to_document(RESULTS, result),
            "order": None,
            "version": 0,
            "open": False,
        }
        if order is not None:
            data.update(
                order=to_document(ORDERS, order),
                version=order.version,
                open=not order.state.terminal,
                updated_at=order.updated_at,
            )
        return data

    def _position_ref(self, key: tuple[str, str, str]) -> firestore.DocumentReference:
        return self._db.document(position_path(*key))

    def _free_slot(
        self, transaction: firestore.Transaction | None, tenant_id: str, probe_key: str, day: str, limit: int
    ) -> tuple[int | None, int | None]:
        """(a free slot, how many are taken when that is known): the day's slots are probed from a
        start spread by ``probe_key``, so concurrent claims rarely read or write the same slot
        document. The count is known only when every slot is taken."""
        for slot in slot_probe_order(tenant_id, probe_key, limit):
            ref = self._db.document(daily_slot_path(tenant_id, daily_slot_id(day, slot)))
            if not ref.get(transaction=transaction).exists:
                return slot, None
        return None, limit

    def _exposure_in(
        self, transaction: firestore.Transaction | None, result: ExecutionResult, day: str, limit: int
    ) -> Exposure:
        held, buys, sells = _position_figures(
            self._position_ref(_position_key(result)).get(transaction=transaction)
        )
        slot, taken = self._free_slot(transaction, result.tenant_id, result.idempotency_key, day, limit)
        return Exposure(held, buys, sells, daily_slot=slot, trades_today=taken)

    # -- reads --------------------------------------------------------------------------------

    def get_execution(self, tenant_id: str, idempotency_key: str) -> StoredExecution | None:
        snapshot = self._decision_ref(tenant_id, idempotency_key).get()
        return _stored(snapshot) if snapshot.exists else None

    def get_exposure(
        self, tenant_id: str, broker_account_id: str, symbol: str, trading_day: str, daily_limit: int
    ) -> Exposure:
        held, buys, sells = _position_figures(
            self._position_ref((tenant_id, broker_account_id, symbol)).get()
        )
        probe_key = f"{broker_account_id}~{symbol}"
        slot, taken = self._free_slot(None, tenant_id, probe_key, trading_day, daily_limit)
        return Exposure(held, buys, sells, daily_slot=slot, trades_today=taken)

    def positions(self, tenant_id: str) -> dict[str, Decimal]:
        totals: dict[str, Decimal] = {}
        for snapshot in self._db.collection(tenant_collection_path(tenant_id, "positions")).stream():
            data = snapshot.to_dict() or {}
            totals[data["symbol"]] = totals.get(data["symbol"], _ZERO) + Decimal(data["qty"])
        return totals

    def in_flight(self, tenant_id: str) -> dict[tuple[str, str], tuple[Decimal, Decimal]]:
        """(account, symbol) -> (pending buys, pending sells): for operators and invariant checks."""
        figures = {}
        for snapshot in self._db.collection(tenant_collection_path(tenant_id, "positions")).stream():
            data = snapshot.to_dict() or {}
            _, buys, sells = _position_figures(snapshot)
            figures[(data["broker_account_id"], data["symbol"])] = (buys, sells)
        return figures

    def daily_slots_taken(self, tenant_id: str, trading_day: str) -> int:
        query = self._db.collection(tenant_collection_path(tenant_id, "daily_trade_slots")).where(
            filter=FieldFilter("trading_day", "==", trading_day)
        )
        return int(query.count().get()[0][0].value)

    def get_ledger_trade(self, tenant_id: str, trade_id: str) -> LedgerEntry | None:
        snapshot = self._db.document(ledger_trade_path(tenant_id, trade_id)).get()
        return _model(LEDGER_ENTRIES, snapshot) if snapshot.exists else None

    def _scan(self, collection: str, tenant_id: str | None, order_by: str) -> Iterator[Any]:
        """One tenant's collection, or every tenant's (a collection-group query), in order."""
        source = (
            self._db.collection(tenant_collection_path(tenant_id, collection))
            if tenant_id
            else self._db.collection_group(collection)
        )
        return source.order_by(order_by).stream()  # type: ignore[no-any-return]

    def iter_ledger_trades(self, tenant_id: str | None = None) -> Iterator[LedgerEntry]:
        for snapshot in self._scan("ledger_trades", tenant_id, "executed_at"):
            yield _model(LEDGER_ENTRIES, snapshot)

    def iter_decisions(self, tenant_id: str | None = None) -> Iterator[DecisionRecord]:
        for snapshot in self._scan("decisions", tenant_id, "decided_at"):
            data = snapshot.to_dict() or {}
            if data.get("status") != _PENDING and data.get("result") is not None:
                yield build_decision_record(from_document(RESULTS, data["result"]), snapshot.id)

    def iter_orders(self, tenant_id: str | None = None, open_only: bool = False) -> Iterator[StoredExecution]:
        source = (
            self._db.collection(tenant_collection_path(tenant_id, "decisions"))
            if tenant_id
            else self._db.collection_group("decisions")
        )
        if open_only:
            source = source.where(filter=FieldFilter("open", "==", True)).order_by("updated_at")
        for snapshot in source.stream():
            if (snapshot.to_dict() or {}).get("order"):
                yield _stored(snapshot)

    def find_order(self, tenant_id: str, client_order_id: str) -> StoredExecution | None:
        query = (
            self._db.collection(tenant_collection_path(tenant_id, "decisions"))
            .where(filter=FieldFilter("order.client_order_id", "==", client_order_id))
            .limit(1)
        )
        return next((_stored(snapshot) for snapshot in query.stream()), None)

    def open_orders(
        self, updated_before: datetime, after: OrderCursor | None = None, limit: int = 100
    ) -> list[StoredExecution]:
        """A collection-group query on (open, updated_at): the composite index in
        firestore.indexes.json."""
        query = (
            self._db.collection_group("decisions")
            .where(filter=FieldFilter("open", "==", True))
            .where(filter=FieldFilter("updated_at", "<", updated_before))
            .order_by("updated_at")
            .order_by(FieldPath.document_id())
        )
        if after is not None:
            query = query.start_after(
                {"updated_at": after.updated_at, FieldPath.document_id(): self._db.document(after.path)}
            )
        return [_stored(snapshot) for snapshot in query.limit(limit).stream()]

    def ledger_entries_since(self, written_since: datetime) -> Iterator[LedgerEntry]:
        query = (
            self._db.collection_group("ledger_trades")
            .where(filter=FieldFilter("written_at", ">=", written_since))
            .order_by("written_at")
        )
        for snapshot in query.stream():
            yield _model(LEDGER_ENTRIES, snapshot)

    def all_positions(self) -> dict[tuple[str, str, str], tuple[Decimal, Decimal, Decimal]]:
        positions = {}
        for snapshot in self._db.collection_group("positions").stream():
            data = snapshot.to_dict() or {}
            key = (data["tenant_id"], data["broker_account_id"], data["symbol"])
            positions[key] = _position_figures(snapshot)
        return positions

    def get_ops_state(self, name: str) -> dict[str, Any] | None:
        snapshot = self._db.document(ops_state_path(name)).get()
        return without_server_fields(snapshot.to_dict() or {}) if snapshot.exists else None

    def put_ops_state(self, name: str, state: dict[str, Any]) -> None:
        self._db.document(ops_state_path(name)).set({**state, "updated_at": firestore.SERVER_TIMESTAMP})

    # -- writes ------------------------------------------------------------------------------

    def record_outcome(self, result: ExecutionResult) -> StoredExecution:
        decision_id = new_decision_id(result)
        ref = self._db.document(decision_path(result.tenant_id, decision_id))
        try:
            ref.create(self._decision_data(result))
        except AlreadyExists:
            if result.status is ExecutionStatus.DRY_RUN:  # a fresh random id collided: try once more
                return self.record_outcome(result)
            return _stored(ref.get())
        return StoredExecution(result)

    def claim(
        self,
        result: ExecutionResult,
        order: OrderRecord,
        trading_day: str,
        daily_limit: int,
        check: RiskCheck,
    ) -> Claim:
        intent = result.intent
        key = _position_key(result)
        decision_ref = self._decision_ref(result.tenant_id, result.idempotency_key)

        @firestore.transactional
        def claim_in(transaction: firestore.Transaction) -> Claim:
            existing = decision_ref.get(transaction=transaction)
            if existing.exists:
                return Claim(ClaimOutcome.DUPLICATE, stored=_stored(existing))
            exposure = self._exposure_in(transaction, result, trading_day, daily_limit)
            decision = check(exposure)
            if not decision.approved or exposure.daily_slot is None:
                return Claim(ClaimOutcome.REFUSED, risk=decision)
            slot = daily_slot_id(trading_day, exposure.daily_slot)
            claimed = replace(order, slot=slot)
            approved = replace(result, risk=decision)  # stored with the claim: whoever settles it needs it
            transaction.create(
                self._db.document(daily_slot_path(result.tenant_id, slot)),
                {"tenant_id": result.tenant_id, "trading_day": trading_day, "slot": exposure.daily_slot,
                 "client_order_id": order.client_order_id, "taken_at": firestore.SERVER_TIMESTAMP},
            )  # fmt: skip
            buys, sells = _side_deltas(intent.side, intent.qty)
            figures = (
                exposure.position_qty,
                exposure.pending_buy_qty + buys,
                exposure.pending_sell_qty + sells,
            )
            transaction.set(self._position_ref(key), _position_data(key, *figures))
            transaction.create(decision_ref, self._decision_data(approved, claimed))
            return Claim(ClaimOutcome.CLAIMED, stored=StoredExecution(approved, claimed), risk=decision)

        def claimed_by_another() -> Claim | None:
            existing = decision_ref.get()
            return Claim(ClaimOutcome.DUPLICATE, stored=_stored(existing)) if existing.exists else None

        with self._turns.on(key):
            return _through_contention(
                lambda: claim_in(self._db.transaction()),
                claimed_by_another,
                f"claim {result.idempotency_key}",
            )

    def commit_order(self, update: OrderUpdate) -> OrderCommit:
        result, order = update.result, update.order
        decision_ref = self._decision_ref(result.tenant_id, result.idempotency_key)
        key = _position_key(result)
        stamp = {"written_at": firestore.SERVER_TIMESTAMP}
        trades = [
            (self._db.document(t.path), {**to_document(LEDGER_ENTRIES, t), **stamp}) for t in update.trades
        ]
        data = self._decision_data(result, order)
        slot_ref = (
            self._db.document(daily_slot_path(result.tenant_id, update.release_slot))
            if update.release_slot is not None
            else None
        )

        @firestore.transactional
        def commit_in(transaction: firestore.Transaction) -> OrderCommit:
            current = decision_ref.get(transaction=transaction)
            if not current.exists or (current.to_dict() or {}).get("version", 0) != update.expected_version:
                return OrderCommit(False, _stored(current) if current.exists else StoredExecution(None))
            moves_position = bool(update.position_delta or update.release_in_flight)
            position = self._position_ref(key).get(transaction=transaction) if moves_position else None
            if slot_ref is not None and not slot_ref.get(transaction=transaction).exists:
                raise LedgerIntegrityError(f"daily slot {update.release_slot} is not held")
            for ref, document in trades:
                transaction.create(ref, document)
            if position is not None:
                held, buys, sells = _position_figures(position)
                release_buys, release_sells = _side_deltas(order.side, update.release_in_flight)
                figures = (held + update.position_delta, buys - release_buys, sells - release_sells)
                transaction.set(self._position_ref(key), _position_data(key, *figures))
            if slot_ref is not None:
                transaction.delete(slot_ref)
            transaction.set(decision_ref, data)
            return OrderCommit(True, StoredExecution(result, order))

        def moved_by_another() -> OrderCommit | None:
            current = decision_ref.get()
            if current.exists and (current.to_dict() or {}).get("version", 0) == update.expected_version:
                return None  # still ours to write: run it again
            return OrderCommit(False, _stored(current) if current.exists else StoredExecution(None))

        try:
            with self._turns.on(key):
                return _through_contention(
                    lambda: commit_in(self._db.transaction()),
                    moved_by_another,
                    f"order {order.client_order_id}",
                )
        except AlreadyExists as exc:
            raise LedgerIntegrityError(
                f"a ledger row of order {order.client_order_id} exists already"
            ) from exc

    def record_fee_adjustment(self, adjustment: LedgerFeeAdjustment) -> bool:
        """The adjustment's ledger row (create-only) and its change to the position, in one
        transaction; False when it had been recorded before."""
        ledger_ref = self._db.document(adjustment.path)
        key = (adjustment.tenant_id, adjustment.broker_account_id, adjustment.symbol)
        position_ref = self._position_ref(key)
        document = {**to_document(LEDGER_ENTRIES, adjustment), "written_at": firestore.SERVER_TIMESTAMP}

        @firestore.transactional
        def record_in(transaction: firestore.Transaction) -> bool:
            if ledger_ref.get(transaction=transaction).exists:
                return False
            held, buys, sells = _position_figures(position_ref.get(transaction=transaction))
            transaction.create(ledger_ref, document)
            delta = adjustment.side.sign * adjustment.qty
            transaction.set(position_ref, _position_data(key, held + delta, buys, sells))
            return True

        with self._turns.on(key):
            return bool(record_in(self._db.transaction()))

    # -- portfolio history and tax lots (PortfolioStore) -------------------------------------

    def apply_history_entry(self, entry: PortfolioTrade, method: LotMethod | None = None) -> FanOutResult:
        entry_ref = self._db.document(entry.path)
        settings_ref = self._db.document(portfolio_settings_path(entry.uid))
        lots_ref = self._db.document(portfolio_lots_path(entry.uid, entry.broker_account_id, entry.symbol))
        same_symbol = (
            self._db.collection(portfolio_history_collection(entry.uid))
            .where(filter=FieldFilter("broker_account_id", "==", entry.broker_account_id))
            .where(filter=FieldFilter("symbol", "==", entry.symbol))
        )
        open_lots = self._db.collection(
            portfolio_open_lots_collection(entry.uid, entry.broker_account_id, entry.symbol)
        )

        @firestore.transactional
        def apply_in(transaction: firestore.Transaction) -> FanOutResult:
            created = not entry_ref.get(transaction=transaction).exists
            chosen = method
            if chosen is None:
                settings = settings_ref.get(transaction=transaction)
                stored = (settings.to_dict() or {}).get("lot_method") if settings.exists else None
                chosen = LotMethod(stored) if stored else LotMethod.FIFO
            lots_snapshot = lots_ref.get(transaction=transaction)
            summary = _model(LOTS_SNAPSHOTS, lots_snapshot) if lots_snapshot.exists else None
            plan = plan_booking(entry, created, summary)
            if summary is not None and plan.kind is BookingKind.DUPLICATE:
                return FanOutResult(entry.path, created, 0, summary)
            if plan.kind is BookingKind.INCREMENTAL:
                window = self._window(transaction, entry, plan, chosen)
                booking = book_entry(entry, summary, window, chosen)
            else:
                entries = [_model(HISTORY_ENTRIES, s) for s in same_symbol.stream(transaction=transaction)]
                if created:
                    entries.append(entry)
                stored_lots = open_lots.stream(transaction=transaction)
                booking = replay(entries, (_model(OPEN_LOTS, s).tax_lot() for s in stored_lots), chosen)
            self._write_booking(transaction, entry, created, booking)
            return FanOutResult(entry.path, created, len(booking.changed), booking.summary)

        return apply_in(self._db.transaction())

    def _window(
        self, transaction: firestore.Transaction, entry: PortfolioTrade, plan: BookingPlan, method: LotMethod
    ) -> list[TaxLot]:
        """The open lots a booking needs: those a fee adjustment names, and the first ones in the
        method's order until they cover ``plan.consume`` (paged: never every lot)."""
        window: dict[str, TaxLot] = {}
        for lot_id in plan.named:
            path = portfolio_open_lot_path(entry.uid, entry.broker_account_id, entry.symbol, lot_id)
            named = self._db.document(path).get(transaction=transaction)
            if named.exists:
                lot = _model(OPEN_LOTS, named).tax_lot()
                window[lot.lot_id] = lot
        field, descending = order_field(method)
        direction = firestore.Query.DESCENDING if descending else firestore.Query.ASCENDING
        in_order = self._db.collection(
            portfolio_open_lots_collection(entry.uid, entry.broker_account_id, entry.symbol)
        ).order_by(field, direction=direction)
        covered, last = Decimal(0), None
        while covered < plan.consume:
            page = in_order.start_after(last) if last is not None else in_order
            snapshots = list(page.limit(_WINDOW_PAGE).stream(transaction=transaction))
            for snapshot in snapshots:
                lot = _model(OPEN_LOTS, snapshot).tax_lot()
                window[lot.lot_id] = lot
                covered += lot.qty
                last = snapshot
                if covered >= plan.consume:
                    break
            if len(snapshots) < _WINDOW_PAGE:
                break
        return list(window.values())

    def _write_booking(
        self, transaction: firestore.Transaction, entry: PortfolioTrade, created: bool, booking: Booking
    ) -> None:
        for changed in booking.changed:
            ref = self._db.document(changed.path)
            document = to_document(HISTORY_ENTRIES, changed)
            if changed.history_id == entry.history_id and created:
                transaction.create(ref, {**document, "recorded_at": firestore.SERVER_TIMESTAMP})
            else:
                transaction.update(ref, {"tax": document["tax"]})
        for path in booking.deletes:
            transaction.delete(self._db.document(path))
        for lot in booking.upserts:
            transaction.set(self._db.document(lot.path), to_document(OPEN_LOTS, lot))
        transaction.set(
            self._db.document(booking.summary.path),
            {**to_document(LOTS_SNAPSHOTS, booking.summary), "updated_at": firestore.SERVER_TIMESTAMP},
        )

    def has_history(self, uid: str, history_id: str) -> bool:
        return bool(self._db.document(portfolio_trade_path(uid, history_id)).get().exists)

    def history(self, uid: str) -> list[PortfolioTrade]:
        collection = self._db.collection(portfolio_history_collection(uid))
        entries = [_model(HISTORY_ENTRIES, s) for s in collection.stream()]
        return sorted(entries, key=lambda e: (e.executed_at, e.history_id))

    def lots(self, uid: str, broker_account_id: str, symbol: str) -> LotsSnapshot | None:
        snapshot = self._db.document(portfolio_lots_path(uid, broker_account_id, symbol)).get()
        if not snapshot.exists:
            return None
        lots = self._db.collection(portfolio_open_lots_collection(uid, broker_account_id, symbol)).stream()
        return with_lots(_model(LOTS_SNAPSHOTS, snapshot), (_model(OPEN_LOTS, s).tax_lot() for s in lots))

    def set_lot_method(self, uid: str, method: LotMethod) -> None:
        self._db.document(portfolio_settings_path(uid)).set(
            {"lot_method": method.value, "updated_at": firestore.SERVER_TIMESTAMP}, merge=True
        )
