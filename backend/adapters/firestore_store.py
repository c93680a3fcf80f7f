"""The Firestore store: the same ``ExecutionStore`` and ``PortfolioStore`` contracts as the embedded
store, on google-cloud-firestore.

Documents (readable in the console; money as exact decimal strings, times as timestamps):

- ``tenants/{t}/decisions/{decision_id}``: every decision; for a keyed intent the id derives from the
  idempotency key, so the document is also the idempotency record (``status: pending`` while the
  broker is being called, the full ``result`` afterwards).
- ``tenants/{t}/ledger_trades/{trade_id}``: created once with ``create()``; ``written_at`` is server time.
- ``tenants/{t}/daily_trade_counts/{YYYY-MM-DD}`` and ``tenants/{t}/positions/{account~symbol}``:
  read and written inside the claim's transaction, so the risk check and the reservation are atomic.
- ``users/{uid}/portfolio/history/trades/{trade_id}``, ``users/{uid}/portfolio/tax/lots/{account~symbol}``,
  ``users/{uid}/portfolio/settings``.

Commits per executed trade: two transactions (the claim before the broker, the record after).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from decimal import Decimal
from typing import Any, TypeVar

from google.api_core.exceptions import AlreadyExists
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from backend.adapters.documents import (
    HISTORY_ENTRIES,
    LEDGER_ENTRIES,
    LOTS_SNAPSHOTS,
    RESULTS,
    DocumentCodec,
    from_document,
    to_document,
    without_server_fields,
)
from backend.core.intents import canonical_decimal
from backend.core.ledger import (
    DecisionRecord,
    LedgerEntry,
    LedgerFeeAdjustment,
    LedgerTrade,
    build_decision_record,
    new_decision_id,
)
from backend.core.orders import BrokerOrderStatus, ExecutionResult, ExecutionStatus
from backend.core.paths import (
    daily_trade_count_path,
    decision_id_for,
    decision_path,
    ledger_trade_path,
    portfolio_history_collection,
    portfolio_lots_path,
    portfolio_settings_path,
    portfolio_trade_path,
    position_path,
    tenant_collection_path,
)
from backend.core.portfolio import FanOutResult, LotsSnapshot, PortfolioTrade, plan_fan_out, recompute_tax
from backend.core.risk import Exposure
from backend.core.tax_lots import LotMethod
from backend.execution.ports import Claim, ClaimOutcome, LedgerIntegrityError, RiskCheck

_PENDING = ExecutionStatus.PENDING.value
T = TypeVar("T")

DEFAULT_PROJECT = "demo-local"  # a demo- project never reaches Google's servers


def firestore_client(project: str | None = None) -> firestore.Client:
    """A client for ``project``, else ``GOOGLE_CLOUD_PROJECT``; the emulator when
    ``FIRESTORE_EMULATOR_HOST`` is set (no credentials needed there)."""
    project = project or os.environ.get("GOOGLE_CLOUD_PROJECT") or os.environ.get("GCLOUD_PROJECT")
    return firestore.Client(project=project or DEFAULT_PROJECT)


def _position_exposure(snapshot: firestore.DocumentSnapshot) -> Exposure:
    position = snapshot.to_dict() if snapshot.exists else {}
    return Exposure(
        position_qty=Decimal(position.get("qty", "0")),
        pending_qty=Decimal(position.get("pending_qty", "0")),
    )


def _model(codec: DocumentCodec[T], snapshot: firestore.DocumentSnapshot) -> T:
    return from_document(codec, without_server_fields(snapshot.to_dict() or {}))


def _position_key(result: ExecutionResult) -> tuple[str, str, str]:
    intent = result.intent
    return result.tenant_id, intent.broker_account_id, intent.symbol


class FirestoreExecutionStore:
    def __init__(self, client: firestore.Client) -> None:
        self._db = client

    # -- documents ------------------------------------------------------------------------

    def _decision_ref(self, tenant_id: str, key: str) -> firestore.DocumentReference:
        return self._db.document(decision_path(tenant_id, decision_id_for(tenant_id, key)))

    @staticmethod
    def _decision_data(result: ExecutionResult) -> dict[str, Any]:
        pending = result.status is ExecutionStatus.PENDING
        intent = result.intent
        return {
            "tenant_id": result.tenant_id,
            "idempotency_key": result.idempotency_key,
            "status": result.status.value,
            "reason_code": result.reason_code.value,
            "symbol": intent.symbol,
            "asset_class": intent.asset_class.value,
            "dry_run": result.status is ExecutionStatus.DRY_RUN,
            "decided_at": result.decided_at,
            "recorded_at": firestore.SERVER_TIMESTAMP,
            "result": None if pending else to_document(RESULTS, result),
        }

    @staticmethod
    def _final_result(snapshot: firestore.DocumentSnapshot) -> ExecutionResult | None:
        if not snapshot.exists:
            return None
        data = snapshot.to_dict() or {}
        if data.get("status") == _PENDING or data.get("result") is None:
            return None
        return from_document(RESULTS, data["result"])

    def _exposure_in(
        self, transaction: firestore.Transaction | None, tenant_id: str, account: str, symbol: str, day: str
    ) -> Exposure:
        position_ref = self._db.document(position_path(tenant_id, account, symbol))
        count_ref = self._db.document(daily_trade_count_path(tenant_id, day))
        snapshots = {
            s.reference.path: s for s in self._db.get_all([position_ref, count_ref], transaction=transaction)
        }
        count = snapshots[count_ref.path].to_dict() if snapshots[count_ref.path].exists else {}
        return replace(
            _position_exposure(snapshots[position_ref.path]), trades_today=int(count.get("trades", 0))
        )

    def _position_ref(self, result: ExecutionResult) -> firestore.DocumentReference:
        return self._db.document(position_path(*_position_key(result)))

    @staticmethod
    def _position_data(
        key: tuple[str, str, str], current: Exposure, filled: Decimal, pending: Decimal
    ) -> dict[str, Any]:
        tenant_id, broker_account_id, symbol = key
        return {
            "tenant_id": tenant_id,
            "broker_account_id": broker_account_id,
            "symbol": symbol,
            "qty": canonical_decimal(current.position_qty + filled),
            "pending_qty": canonical_decimal(current.pending_qty + pending),
            "updated_at": firestore.SERVER_TIMESTAMP,
        }

    # -- reads --------------------------------------------------------------------------------

    def get_execution(self, tenant_id: str, idempotency_key: str) -> ExecutionResult | None:
        return self._final_result(self._decision_ref(tenant_id, idempotency_key).get())

    def get_exposure(self, tenant_id: str, broker_account_id: str, symbol: str, trading_day: str) -> Exposure:
        return self._exposure_in(None, tenant_id, broker_account_id, symbol, trading_day)

    def positions(self, tenant_id: str) -> dict[str, Decimal]:
        totals: dict[str, Decimal] = {}
        for snapshot in self._db.collection(tenant_collection_path(tenant_id, "positions")).stream():
            data = snapshot.to_dict() or {}
            totals[data["symbol"]] = totals.get(data["symbol"], Decimal(0)) + Decimal(data["qty"])
        return totals

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
            result = self._final_result(snapshot)
            if result is not None:
                yield build_decision_record(result, snapshot.id)

    # -- writes ------------------------------------------------------------------------------

    def record_outcome(self, result: ExecutionResult) -> ExecutionResult | None:
        decision_id = new_decision_id(result)
        ref = self._db.document(decision_path(result.tenant_id, decision_id))
        try:
            ref.create(self._decision_data(result))
        except AlreadyExists:
            if result.status is ExecutionStatus.DRY_RUN:  # a fresh random id collided: try once more
                return self.record_outcome(result)
            return self._final_result(ref.get())
        return result

    def claim(self, result: ExecutionResult, trading_day: str, check: RiskCheck) -> Claim:
        intent = result.intent
        decision_ref = self._decision_ref(result.tenant_id, result.idempotency_key)
        count_ref = self._db.document(daily_trade_count_path(result.tenant_id, trading_day))
        position_ref = self._db.document(
            position_path(result.tenant_id, intent.broker_account_id, intent.symbol)
        )

        @firestore.transactional
        def claim_in(transaction: firestore.Transaction) -> Claim:
            existing = decision_ref.get(transaction=transaction)
            exposure = self._exposure_in(
                transaction, result.tenant_id, intent.broker_account_id, intent.symbol, trading_day
            )
            if existing.exists:
                return Claim(ClaimOutcome.DUPLICATE, existing=self._final_result(existing))
            decision = check(exposure)
            if not decision.approved:
                return Claim(ClaimOutcome.REFUSED, risk=decision)
            transaction.set(
                count_ref,
                {
                    "tenant_id": result.tenant_id,
                    "trading_day": trading_day,
                    "trades": exposure.trades_today + 1,
                    "updated_at": firestore.SERVER_TIMESTAMP,
                },
            )
            pending = intent.side.sign * intent.qty
            transaction.set(
                position_ref, self._position_data(_position_key(result), exposure, Decimal(0), pending)
            )
            transaction.create(decision_ref, self._decision_data(result))
            return Claim(ClaimOutcome.CLAIMED, risk=decision)

        return claim_in(self._db.transaction())

    def record_trade(self, result: ExecutionResult, trade: LedgerTrade) -> ExecutionResult:
        """Ledger row (create-only), position and final decision in one transaction."""
        intent = result.intent
        ledger_ref = self._db.document(trade.path)
        decision_ref = self._decision_ref(result.tenant_id, result.idempotency_key)
        released = (
            trade.broker.filled_qty
            if trade.broker.status is BrokerOrderStatus.PARTIALLY_FILLED
            else intent.qty
        )

        @firestore.transactional
        def record_in(transaction: firestore.Transaction) -> None:
            # The position only: reading the tenant's daily counter here would contend with claims.
            exposure = _position_exposure(self._position_ref(result).get(transaction=transaction))
            sign = trade.side.sign
            transaction.create(
                ledger_ref, {**to_document(LEDGER_ENTRIES, trade), "written_at": firestore.SERVER_TIMESTAMP}
            )
            transaction.set(
                self._position_ref(result),
                self._position_data(_position_key(result), exposure, sign * trade.qty, -sign * released),
            )
            transaction.set(decision_ref, self._decision_data(result))

        try:
            record_in(self._db.transaction())
        except AlreadyExists as exc:
            raise LedgerIntegrityError(f"ledger row {trade.path} already exists") from exc
        return result

    def record_fee_adjustment(self, adjustment: LedgerFeeAdjustment) -> bool:
        """The adjustment's ledger row (create-only) and its change to the position, in one
        transaction; False when it had been recorded before."""
        ledger_ref = self._db.document(adjustment.path)
        key = (adjustment.tenant_id, adjustment.broker_account_id, adjustment.symbol)
        position_ref = self._db.document(position_path(*key))
        document = {**to_document(LEDGER_ENTRIES, adjustment), "written_at": firestore.SERVER_TIMESTAMP}

        @firestore.transactional
        def record_in(transaction: firestore.Transaction) -> bool:
            if ledger_ref.get(transaction=transaction).exists:
                return False
            exposure = _position_exposure(position_ref.get(transaction=transaction))
            transaction.create(ledger_ref, document)
            delta = adjustment.side.sign * adjustment.qty
            transaction.set(position_ref, self._position_data(key, exposure, delta, Decimal(0)))
            return True

        return bool(record_in(self._db.transaction()))

    def settle_claim(self, result: ExecutionResult, trading_day: str) -> ExecutionResult:
        intent = result.intent
        decision_ref = self._decision_ref(result.tenant_id, result.idempotency_key)

        @firestore.transactional
        def settle_in(transaction: firestore.Transaction) -> None:
            if result.status is ExecutionStatus.FAILED:
                exposure = self._exposure_in(
                    transaction, result.tenant_id, intent.broker_account_id, intent.symbol, trading_day
                )
                transaction.set(
                    self._db.document(daily_trade_count_path(result.tenant_id, trading_day)),
                    {"trades": max(exposure.trades_today - 1, 0), "updated_at": firestore.SERVER_TIMESTAMP},
                    merge=True,
                )
                transaction.set(
                    self._position_ref(result),
                    self._position_data(
                        _position_key(result), exposure, Decimal(0), -intent.side.sign * intent.qty
                    ),
                )
            transaction.set(decision_ref, self._decision_data(result))

        settle_in(self._db.transaction())
        return result

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

        @firestore.transactional
        def apply_in(transaction: firestore.Transaction) -> FanOutResult:
            created = not entry_ref.get(transaction=transaction).exists
            chosen = method
            if chosen is None:
                settings = settings_ref.get(transaction=transaction)
                stored = (settings.to_dict() or {}).get("lot_method") if settings.exists else None
                chosen = LotMethod(stored) if stored else LotMethod.FIFO
            lots_snapshot = lots_ref.get(transaction=transaction)
            snapshot = _model(LOTS_SNAPSHOTS, lots_snapshot) if lots_snapshot.exists else None
            recomputed = plan_fan_out(entry, created, snapshot, chosen)
            if recomputed is None:
                entries = [_model(HISTORY_ENTRIES, s) for s in same_symbol.stream(transaction=transaction)]
                if created:
                    entries.append(entry)
                recomputed = recompute_tax(entries, chosen)
            if not created and not recomputed.changed:
                return FanOutResult(entry.path, created, 0, recomputed.lots)
            for changed in recomputed.changed:
                ref = self._db.document(changed.path)
                document = to_document(HISTORY_ENTRIES, changed)
                if changed.history_id == entry.history_id and created:
                    transaction.create(ref, {**document, "recorded_at": firestore.SERVER_TIMESTAMP})
                else:
                    transaction.update(ref, {"tax": document["tax"]})
            transaction.set(
                self._db.document(recomputed.lots.path),
                {**to_document(LOTS_SNAPSHOTS, recomputed.lots), "updated_at": firestore.SERVER_TIMESTAMP},
            )
            return FanOutResult(entry.path, created, len(recomputed.changed), recomputed.lots)

        return apply_in(self._db.transaction())

    def has_history(self, uid: str, history_id: str) -> bool:
        return bool(self._db.document(portfolio_trade_path(uid, history_id)).get().exists)

    def history(self, uid: str) -> list[PortfolioTrade]:
        collection = self._db.collection(portfolio_history_collection(uid))
        entries = [_model(HISTORY_ENTRIES, s) for s in collection.stream()]
        return sorted(entries, key=lambda e: (e.executed_at, e.history_id))

    def lots(self, uid: str, broker_account_id: str, symbol: str) -> LotsSnapshot | None:
        snapshot = self._db.document(portfolio_lots_path(uid, broker_account_id, symbol)).get()
        return _model(LOTS_SNAPSHOTS, snapshot) if snapshot.exists else None

    def set_lot_method(self, uid: str, method: LotMethod) -> None:
        self._db.document(portfolio_settings_path(uid)).set(
            {"lot_method": method.value, "updated_at": firestore.SERVER_TIMESTAMP}, merge=True
        )
