"""The embedded store: SQLite in WAL mode, one file, no server. The local default.

Rows are keyed by the same logical paths Firestore uses (``tenants/{tenant_id}/ledger_trades/...``).
Documents are stored as JSON with money as decimal strings. The ledger table is append-only:
triggers abort any UPDATE or DELETE. Writers take ``BEGIN IMMEDIATE``, so the idempotency claim,
the daily-trade slots and every order transition (a compare-and-set on the order's version) stay
correct across threads *and* processes sharing the file.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from backend.adapters.documents import (
    HISTORY_ENTRIES,
    LEDGER_ENTRIES,
    LOTS_SNAPSHOTS,
    OPEN_LOTS,
    ORDERS,
    RESULTS,
    from_json,
    to_json,
)
from backend.core.instruments import instrument_for
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
    decision_id_for,
    decision_path,
    ledger_trade_path,
    ops_state_path,
    portfolio_history_collection,
    portfolio_lots_path,
    portfolio_open_lot_path,
    portfolio_settings_path,
    portfolio_trade_path,
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
    StoredExecution,
)

_PENDING = ExecutionStatus.PENDING.value
_ZERO = Decimal(0)

SCHEMA = """
-- One row per decision, keyed by its logical path. A keyed intent's decision id derives from its
-- idempotency key, so this table is also the idempotency record. An intent that reached the claim
-- has its order here too (order_doc), changed only over its version (compare-and-set); open marks
-- an order not in a final state. Dry runs get fresh ids and never block a real execution.
CREATE TABLE IF NOT EXISTS decisions (
    path TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    status TEXT NOT NULL,
    decided_at TEXT NOT NULL,
    result TEXT NOT NULL,
    order_doc TEXT,
    version INTEGER NOT NULL DEFAULT 0,
    open INTEGER NOT NULL DEFAULT 0,
    updated_at TEXT,
    client_order_id TEXT
);

CREATE TABLE IF NOT EXISTS ledger_trades (
    path TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    trade_id TEXT NOT NULL,
    executed_at TEXT NOT NULL,
    written_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    document TEXT NOT NULL
);

CREATE TRIGGER IF NOT EXISTS ledger_trades_append_only_update
BEFORE UPDATE ON ledger_trades BEGIN SELECT RAISE(ABORT, 'ledger_trades is append-only'); END;
CREATE TRIGGER IF NOT EXISTS ledger_trades_append_only_delete
BEFORE DELETE ON ledger_trades BEGIN SELECT RAISE(ABORT, 'ledger_trades is append-only'); END;

-- One row per trade slot taken today: a daily limit of N is N possible rows, each written once
-- by a claim and deleted only when the order never reached the broker.
CREATE TABLE IF NOT EXISTS daily_trade_slots (
    tenant_id TEXT NOT NULL,
    trading_day TEXT NOT NULL,
    slot INTEGER NOT NULL,
    slot_id TEXT NOT NULL,
    client_order_id TEXT NOT NULL,
    PRIMARY KEY (tenant_id, trading_day, slot)
) WITHOUT ROWID;

-- Portfolio history: one row per ledger entry and user (facts written once, tax part rewritten
-- when a late trade changes the lots), the open lots per account and symbol, user settings.
CREATE TABLE IF NOT EXISTS portfolio_history (
    path TEXT PRIMARY KEY,
    uid TEXT NOT NULL,
    broker_account_id TEXT NOT NULL,
    symbol TEXT NOT NULL,
    document TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS portfolio_history_by_symbol
    ON portfolio_history (uid, broker_account_id, symbol);

CREATE TABLE IF NOT EXISTS portfolio_lots (
    path TEXT PRIMARY KEY,
    document TEXT NOT NULL
);

-- One row per open lot (parent: its symbol's summary path), found in a method's order by key.
CREATE TABLE IF NOT EXISTS portfolio_open_lots (
    path TEXT PRIMARY KEY,
    parent TEXT NOT NULL,
    fifo_key TEXT NOT NULL,
    hifo_key TEXT NOT NULL,
    document TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS portfolio_open_lots_fifo ON portfolio_open_lots (parent, fifo_key);
CREATE INDEX IF NOT EXISTS portfolio_open_lots_hifo ON portfolio_open_lots (parent, hifo_key);

-- What scheduled jobs keep between runs (a sweep's cursor, a re-drive's watermark): ops/{name}.
CREATE TABLE IF NOT EXISTS ops_state (
    path TEXT PRIMARY KEY,
    document TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS portfolio_settings (
    path TEXT PRIMARY KEY,
    lot_method TEXT NOT NULL
);

-- qty: filled and booked, signed. pending_buy_qty / pending_sell_qty: what claimed orders of each
-- side may still fill (see Exposure); never negative.
CREATE TABLE IF NOT EXISTS positions (
    tenant_id TEXT NOT NULL,
    broker_account_id TEXT NOT NULL,
    symbol TEXT NOT NULL,
    qty TEXT NOT NULL,
    pending_buy_qty TEXT NOT NULL DEFAULT '0',
    pending_sell_qty TEXT NOT NULL DEFAULT '0',
    PRIMARY KEY (tenant_id, broker_account_id, symbol)
) WITHOUT ROWID;
"""


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def _merge_position_spellings(conn: sqlite3.Connection) -> None:
    """Positions written before symbols were canonical (``BTCUSD`` beside ``BTC/USD``) become one."""
    columns = "pending_qty" if "pending_qty" in _columns(conn, "positions") else "'0'"
    rows = conn.execute(
        f"SELECT tenant_id, broker_account_id, symbol, qty, {columns} FROM positions"
    ).fetchall()
    merged: dict[tuple[str, str, str], tuple[Decimal, Decimal]] = {}
    legacy = []
    for tenant_id, account, symbol, qty, pending in rows:
        try:
            canonical = instrument_for(symbol).symbol
        except ValueError:
            canonical = symbol
        if canonical != symbol:
            legacy.append((tenant_id, account, symbol))
        key = (tenant_id, account, canonical)
        held, in_flight = merged.get(key, (_ZERO, _ZERO))
        merged[key] = (held + Decimal(qty), in_flight + Decimal(pending))
    if not legacy:
        return
    conn.executemany(
        "DELETE FROM positions WHERE tenant_id = ? AND broker_account_id = ? AND symbol = ?", legacy
    )
    for key, (held, in_flight) in merged.items():
        conn.execute(
            "INSERT INTO positions (tenant_id, broker_account_id, symbol, qty) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (tenant_id, broker_account_id, symbol) DO UPDATE SET qty = excluded.qty",
            (*key, canonical_decimal(held)),
        )
        if columns == "pending_qty":
            conn.execute(
                "UPDATE positions SET pending_qty = ? WHERE tenant_id = ? AND broker_account_id = ? "
                "AND symbol = ?",
                (canonical_decimal(in_flight), *key),
            )


def _orders_and_sides(conn: sqlite3.Connection) -> None:
    """Orders stored with their decisions, in-flight quantity per side, daily-trade slots (the
    schema above); a signed legacy ``pending_qty`` becomes the in-flight quantity of its side."""
    decisions = _columns(conn, "decisions")
    for column, kind in (("order_doc", "TEXT"), ("version", "INTEGER NOT NULL DEFAULT 0"),
                         ("open", "INTEGER NOT NULL DEFAULT 0"), ("updated_at", "TEXT"),
                         ("client_order_id", "TEXT")):  # fmt: skip
        if column not in decisions:
            conn.execute(f"ALTER TABLE decisions ADD COLUMN {column} {kind}")
    positions = _columns(conn, "positions")
    for column in ("pending_buy_qty", "pending_sell_qty"):
        if column not in positions:
            conn.execute(f"ALTER TABLE positions ADD COLUMN {column} TEXT NOT NULL DEFAULT '0'")
    if "pending_qty" in positions:
        for tenant_id, account, symbol, pending in conn.execute(
            "SELECT tenant_id, broker_account_id, symbol, pending_qty FROM positions"
        ).fetchall():
            signed = Decimal(pending)
            conn.execute(
                "UPDATE positions SET pending_buy_qty = ?, pending_sell_qty = ?, pending_qty = '0' "
                "WHERE tenant_id = ? AND broker_account_id = ? AND symbol = ?",
                (canonical_decimal(max(signed, _ZERO)), canonical_decimal(max(-signed, _ZERO)),
                 tenant_id, account, symbol),
            )  # fmt: skip
    conn.execute("CREATE INDEX IF NOT EXISTS decisions_open ON decisions (open, updated_at, path)")
    conn.execute("CREATE INDEX IF NOT EXISTS decisions_by_client_order_id ON decisions (client_order_id)")
    conn.execute("CREATE INDEX IF NOT EXISTS ledger_by_written_at ON ledger_trades (written_at, path)")


def _slots_taken(conn: sqlite3.Connection, tenant_id: str, trading_day: str) -> int:
    return int(
        conn.execute(
            "SELECT COUNT(*) FROM daily_trade_slots WHERE tenant_id = ? AND trading_day = ?",
            (tenant_id, trading_day),
        ).fetchone()[0]
    )


def _free_slot(
    conn: sqlite3.Connection, tenant_id: str, trading_day: str, limit: int
) -> tuple[int | None, int | None]:
    """(the lowest free slot below ``limit``, how many are taken when that was counted). Slots are
    taken in order, so the next one after the highest is free unless it reaches the limit; only
    then are the taken ones counted and a hole left by a released slot looked for."""
    key = (tenant_id, trading_day)
    highest = conn.execute(
        "SELECT MAX(slot) FROM daily_trade_slots WHERE tenant_id = ? AND trading_day = ?", key
    ).fetchone()[0]
    following = 0 if highest is None else highest + 1
    if following < limit:
        return following, None
    taken = _slots_taken(conn, tenant_id, trading_day)
    if taken >= limit:
        return None, taken
    hole = conn.execute(
        "SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM daily_trade_slots WHERE tenant_id = ?1 AND "
        "trading_day = ?2 AND slot = 0) THEN 0 ELSE (SELECT MIN(s.slot + 1) FROM daily_trade_slots s "
        "WHERE s.tenant_id = ?1 AND s.trading_day = ?2 AND NOT EXISTS (SELECT 1 FROM daily_trade_slots t "
        "WHERE t.tenant_id = ?1 AND t.trading_day = ?2 AND t.slot = s.slot + 1)) END",
        key,
    ).fetchone()[0]
    return (int(hole) if int(hole) < limit else None), taken


def _sortable(moment: datetime) -> str:
    """UTC, fixed width: text order is time order (what the open-orders index sorts by)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _position_key(result: ExecutionResult) -> tuple[str, str, str]:
    intent = result.intent
    return result.tenant_id, intent.broker_account_id, intent.symbol


def _prefix_range(prefix: str) -> tuple[str, str]:
    """Bounds that select every path under ``prefix`` through the primary key ('/' + 1 is '0')."""
    return prefix, prefix[:-1] + "0"


_BUSY_TIMEOUT_S = 30.0


def _retry_while_locked(statement: Callable[[], object]) -> None:
    deadline = time.monotonic() + _BUSY_TIMEOUT_S
    delay = 0.001
    while True:
        try:
            statement()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.05)


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error), holding the store's lock."""

    __slots__ = ("_conn", "_lock")

    def __init__(self, conn: sqlite3.Connection, lock: threading.RLock) -> None:
        self._conn = conn
        self._lock = lock

    def __enter__(self) -> sqlite3.Connection:
        self._lock.acquire()
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._lock.release()
            raise
        return self._conn

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        try:
            self._conn.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self._lock.release()


def _stored(status: str, result: str, order_doc: str | None) -> StoredExecution:
    order = from_json(ORDERS, order_doc) if order_doc else None
    if not result and status == _PENDING:
        return StoredExecution(None, order)  # a claim from before orders were recorded
    return StoredExecution(from_json(RESULTS, result), order)


class SQLiteExecutionStore:
    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=_BUSY_TIMEOUT_S
        )
        # Switching to WAL needs a moment of exclusive access and does not wait on the busy
        # timeout: workers opening a new file together retry it instead of failing.
        _retry_while_locked(lambda: self._conn.execute("PRAGMA journal_mode=WAL"))
        # NORMAL in WAL mode: a commit survives a process crash; a power cut may lose the last few,
        # never corrupts. The fsync happens at checkpoints: checkpointing every ~40 MB of WAL rather
        # than SQLite's default ~4 MB pays it ten times less often (the WAL is truncated after).
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA wal_autocheckpoint=10000")
        self._conn.execute("PRAGMA journal_size_limit=67108864")
        _retry_while_locked(lambda: self._conn.executescript(SCHEMA))
        self._migrate()

    def _migrate(self) -> None:
        """Bring an older file up to date, once (``PRAGMA user_version`` records how far it got)."""
        with self._write() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version < 1:
                _merge_position_spellings(conn)
            if version < 2:
                _orders_and_sides(conn)
            if version < 2:
                conn.execute("PRAGMA user_version = 2")

    def __enter__(self) -> SQLiteExecutionStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _write(self) -> _Transaction:
        return _Transaction(self._conn, self._lock)

    # -- reads -----------------------------------------------------------------------------

    @staticmethod
    def _read_row(
        conn: sqlite3.Connection, tenant_id: str, key: str
    ) -> tuple[str, str, str | None, int] | None:
        path = decision_path(tenant_id, decision_id_for(tenant_id, key))
        return conn.execute(  # type: ignore[no-any-return]
            "SELECT status, result, order_doc, version FROM decisions WHERE path = ?", (path,)
        ).fetchone()

    def get_execution(self, tenant_id: str, idempotency_key: str) -> StoredExecution | None:
        with self._lock:
            row = self._read_row(self._conn, tenant_id, idempotency_key)
        return _stored(*row[:3]) if row else None

    @staticmethod
    def _read_exposure(
        conn: sqlite3.Connection,
        tenant_id: str,
        broker_account_id: str,
        symbol: str,
        trading_day: str,
        daily_limit: int,
    ) -> Exposure:
        position = conn.execute(
            "SELECT qty, pending_buy_qty, pending_sell_qty FROM positions "
            "WHERE tenant_id = ? AND broker_account_id = ? AND symbol = ?",
            (tenant_id, broker_account_id, symbol),
        ).fetchone()
        free, taken = _free_slot(conn, tenant_id, trading_day, daily_limit)
        held, buys, sells = (Decimal(v) for v in position) if position else (_ZERO, _ZERO, _ZERO)
        return Exposure(held, buys, sells, daily_slot=free, trades_today=taken)

    def get_exposure(
        self, tenant_id: str, broker_account_id: str, symbol: str, trading_day: str, daily_limit: int
    ) -> Exposure:
        with self._lock:
            return self._read_exposure(
                self._conn, tenant_id, broker_account_id, symbol, trading_day, daily_limit
            )

    def positions(self, tenant_id: str) -> dict[str, Decimal]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT symbol, qty FROM positions WHERE tenant_id = ?", (tenant_id,)
            ).fetchall()
        totals: dict[str, Decimal] = {}
        for symbol, qty in rows:
            totals[symbol] = totals.get(symbol, _ZERO) + Decimal(qty)
        return totals

    def in_flight(self, tenant_id: str) -> dict[tuple[str, str], tuple[Decimal, Decimal]]:
        """(account, symbol) -> (pending buys, pending sells): for operators and invariant checks."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT broker_account_id, symbol, pending_buy_qty, pending_sell_qty FROM positions "
                "WHERE tenant_id = ?",
                (tenant_id,),
            ).fetchall()
        return {(account, symbol): (Decimal(b), Decimal(s)) for account, symbol, b, s in rows}

    def daily_slots_taken(self, tenant_id: str, trading_day: str) -> int:
        with self._lock:
            return _slots_taken(self._conn, tenant_id, trading_day)

    def get_ledger_trade(self, tenant_id: str, trade_id: str) -> LedgerEntry | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT document FROM ledger_trades WHERE path = ?",
                (ledger_trade_path(tenant_id, trade_id),),
            ).fetchone()
        return from_json(LEDGER_ENTRIES, row[0]) if row else None

    def _select_under(self, table: str, column: str, order: str, prefix: str | None) -> list[tuple[str, str]]:
        query = f"SELECT path, {column} FROM {table}"
        params: tuple[str, ...] = ()
        if prefix is not None:
            query += " WHERE path >= ? AND path < ?"
            params = _prefix_range(prefix)
        with self._lock:
            return self._conn.execute(f"{query} ORDER BY {order}, path", params).fetchall()

    def iter_ledger_trades(self, tenant_id: str | None = None) -> Iterator[LedgerEntry]:
        prefix = tenant_collection_path(tenant_id, "ledger_trades") + "/" if tenant_id else None
        for _, document in self._select_under("ledger_trades", "document", "executed_at", prefix):
            yield from_json(LEDGER_ENTRIES, document)

    def iter_decisions(self, tenant_id: str | None = None) -> Iterator[DecisionRecord]:
        prefix = tenant_collection_path(tenant_id, "decisions") + "/" if tenant_id else None
        for path, row in self._select_under("decisions", "status || '|' || result", "decided_at", prefix):
            status, _, result = row.partition("|")
            if result and status != _PENDING:  # a claim in flight is not a decision yet
                yield build_decision_record(from_json(RESULTS, result), path.rsplit("/", 1)[1])

    def iter_orders(self, tenant_id: str | None = None, open_only: bool = False) -> Iterator[StoredExecution]:
        query = "SELECT status, result, order_doc FROM decisions WHERE order_doc IS NOT NULL"
        params: tuple[str, ...] = ()
        if open_only:
            query += " AND open = 1"
        if tenant_id is not None:
            query += " AND path >= ? AND path < ?"
            params = _prefix_range(tenant_collection_path(tenant_id, "decisions") + "/")
        with self._lock:
            rows = self._conn.execute(query + " ORDER BY updated_at, path", params).fetchall()
        for status, result, order_doc in rows:
            yield _stored(status, result, order_doc)

    def find_order(self, tenant_id: str, client_order_id: str) -> StoredExecution | None:
        prefix = _prefix_range(tenant_collection_path(tenant_id, "decisions") + "/")
        with self._lock:
            row = self._conn.execute(
                "SELECT status, result, order_doc FROM decisions WHERE client_order_id = ? "
                "AND path >= ? AND path < ?",
                (client_order_id, *prefix),
            ).fetchone()
        return _stored(*row) if row else None

    def open_orders(
        self, updated_before: datetime, after: OrderCursor | None = None, limit: int = 100
    ) -> list[StoredExecution]:
        start = (_sortable(after.updated_at), after.path) if after else ("", "")
        with self._lock:
            rows = self._conn.execute(
                "SELECT status, result, order_doc FROM decisions WHERE open = 1 AND updated_at < ? "
                "AND (updated_at, path) > (?, ?) ORDER BY updated_at, path LIMIT ?",
                (_sortable(updated_before), *start, limit),
            ).fetchall()
        return [_stored(*row) for row in rows]

    def ledger_entries_since(self, written_since: datetime) -> Iterator[LedgerEntry]:
        # written_at is SQLite's own clock, 'YYYY-MM-DDTHH:MM:SS.SSSZ': text order is time order.
        since = written_since.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        with self._lock:
            rows = self._conn.execute(
                "SELECT document FROM ledger_trades WHERE written_at >= ? ORDER BY written_at, path", (since,)
            ).fetchall()
        for (document,) in rows:
            yield from_json(LEDGER_ENTRIES, document)

    def all_positions(self) -> dict[tuple[str, str, str], tuple[Decimal, Decimal, Decimal]]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT tenant_id, broker_account_id, symbol, qty, pending_buy_qty, pending_sell_qty "
                "FROM positions"
            ).fetchall()
        return {(t, a, s): (Decimal(q), Decimal(b), Decimal(p)) for t, a, s, q, b, p in rows}

    def get_ops_state(self, name: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT document FROM ops_state WHERE path = ?", (ops_state_path(name),)
            ).fetchone()
        return orjson.loads(row[0]) if row else None  # type: ignore[no-any-return]

    def put_ops_state(self, name: str, state: dict[str, Any]) -> None:
        document = orjson.dumps(state).decode()
        with self._write() as conn:
            conn.execute(
                "INSERT INTO ops_state (path, document) VALUES (?, ?) "
                "ON CONFLICT (path) DO UPDATE SET document = excluded.document",
                (ops_state_path(name), document),
            )

    # -- writes (each one atomic commit) ---------------------------------------------------

    @staticmethod
    def _decision_row(result: ExecutionResult) -> tuple[str, str, str, str, str]:
        """The row's values, serialized before the transaction: the lock is held for SQL only."""
        return (
            decision_path(result.tenant_id, new_decision_id(result)),
            result.tenant_id,
            result.status.value,
            result.decided_at.isoformat(),
            to_json(RESULTS, result),
        )

    def record_outcome(self, result: ExecutionResult) -> StoredExecution:
        """An outcome that never reached the broker. First writer wins: a later one gets what is
        stored (an earlier decision, or a claim in flight)."""
        row = self._decision_row(result)
        with self._write() as conn:
            inserted = conn.execute(
                "INSERT INTO decisions (path, tenant_id, status, decided_at, result) VALUES (?, ?, ?, ?, ?) "
                + ("ON CONFLICT (path) DO UPDATE SET status = excluded.status, result = excluded.result"
                   if result.status is ExecutionStatus.DRY_RUN else "ON CONFLICT (path) DO NOTHING"),
                row,
            ).rowcount  # fmt: skip
            if inserted:
                return StoredExecution(result)
            existing = self._read_row(conn, result.tenant_id, result.idempotency_key)
        assert existing is not None
        return _stored(*existing[:3])

    @staticmethod
    def _move_position(
        conn: sqlite3.Connection,
        key: tuple[str, str, str],
        filled: Decimal = _ZERO,
        pending_buy: Decimal = _ZERO,
        pending_sell: Decimal = _ZERO,
    ) -> None:
        """Add signed ``filled`` to the position (tenant, account, symbol) and the deltas to its
        in-flight quantities. An in-flight quantity never goes negative: that would mean an order
        gave back more than it held, which is refused (and the whole commit with it)."""
        row = conn.execute(
            "SELECT qty, pending_buy_qty, pending_sell_qty FROM positions "
            "WHERE tenant_id = ? AND broker_account_id = ? AND symbol = ?",
            key,
        ).fetchone()
        held, buys, sells = (Decimal(v) for v in row) if row else (_ZERO, _ZERO, _ZERO)
        buys, sells = buys + pending_buy, sells + pending_sell
        if buys < 0 or sells < 0:
            raise LedgerIntegrityError(
                f"in-flight quantity of {key} would go negative (buys {buys}, sells {sells})"
            )
        conn.execute(
            "INSERT INTO positions (tenant_id, broker_account_id, symbol, qty, pending_buy_qty, "
            "pending_sell_qty) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (tenant_id, broker_account_id, symbol) "
            "DO UPDATE SET qty = excluded.qty, pending_buy_qty = excluded.pending_buy_qty, "
            "pending_sell_qty = excluded.pending_sell_qty",
            (*key, canonical_decimal(held + filled), canonical_decimal(buys), canonical_decimal(sells)),
        )

    @staticmethod
    def _in_flight_delta(side: Side, qty: Decimal) -> dict[str, Decimal]:
        return {"pending_buy": qty} if side is Side.BUY else {"pending_sell": qty}

    def claim(
        self,
        result: ExecutionResult,
        order: OrderRecord,
        trading_day: str,
        daily_limit: int,
        check: RiskCheck,
    ) -> Claim:
        """Check and reserve in one commit: the key (with its order), a daily-trade slot and the
        order's quantity in flight on its side."""
        intent = result.intent
        key = _position_key(result)
        path = decision_path(result.tenant_id, decision_id_for(result.tenant_id, result.idempotency_key))
        with self._write() as conn:
            existing = self._read_row(conn, result.tenant_id, result.idempotency_key)
            if existing is not None:
                return Claim(ClaimOutcome.DUPLICATE, stored=_stored(*existing[:3]))
            exposure = self._read_exposure(conn, *key, trading_day, daily_limit)
            decision = check(exposure)
            if not decision.approved or exposure.daily_slot is None:
                return Claim(ClaimOutcome.REFUSED, risk=decision)
            result = replace(result, risk=decision)  # stored with the claim: whoever settles it needs it
            result_json = to_json(RESULTS, result)
            slot = daily_slot_id(trading_day, exposure.daily_slot)
            conn.execute(
                "INSERT INTO daily_trade_slots (tenant_id, trading_day, slot, slot_id, client_order_id) "
                "VALUES (?, ?, ?, ?, ?)",
                (result.tenant_id, trading_day, exposure.daily_slot, slot, order.client_order_id),
            )
            self._move_position(conn, key, **self._in_flight_delta(intent.side, intent.qty))
            claimed = replace(order, slot=slot)
            conn.execute(
                "INSERT INTO decisions (path, tenant_id, status, decided_at, result, order_doc, version, "
                "open, updated_at, client_order_id) VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?, ?)",
                (path, result.tenant_id, result.status.value, result.decided_at.isoformat(), result_json,
                 to_json(ORDERS, claimed), claimed.version, _sortable(claimed.updated_at),
                 claimed.client_order_id),
            )  # fmt: skip
        return Claim(ClaimOutcome.CLAIMED, stored=StoredExecution(result, claimed), risk=decision)

    def commit_order(self, update: OrderUpdate) -> OrderCommit:
        result, order = update.result, update.order
        path = decision_path(result.tenant_id, decision_id_for(result.tenant_id, result.idempotency_key))
        values = (result.status.value, to_json(RESULTS, result), to_json(ORDERS, order), order.version,
                  0 if order.state.terminal else 1, _sortable(order.updated_at), order.client_order_id,
                  path)  # fmt: skip
        rows = [(t.path, t.tenant_id, t.trade_id, t.executed_at.isoformat(), to_json(LEDGER_ENTRIES, t))
                for t in update.trades]  # fmt: skip
        key = _position_key(result)
        with self._write() as conn:
            current = conn.execute(
                "SELECT status, result, order_doc, version FROM decisions WHERE path = ?", (path,)
            ).fetchone()
            if current is None or current[3] != update.expected_version:
                return OrderCommit(False, _stored(*current[:3]) if current else StoredExecution(None))
            try:
                conn.executemany(
                    "INSERT INTO ledger_trades (path, tenant_id, trade_id, executed_at, document) "
                    "VALUES (?, ?, ?, ?, ?)",
                    rows,
                )
            except sqlite3.IntegrityError as exc:
                raise LedgerIntegrityError(
                    f"a ledger row of order {order.client_order_id} exists already"
                ) from exc
            release = self._in_flight_delta(order.side, -update.release_in_flight)
            if update.position_delta or update.release_in_flight:
                self._move_position(conn, key, update.position_delta, **release)
            if update.release_slot is not None:
                day, _, number = update.release_slot.rpartition("~")
                deleted = conn.execute(
                    "DELETE FROM daily_trade_slots WHERE tenant_id = ? AND trading_day = ? AND slot = ?",
                    (result.tenant_id, day, int(number)),
                ).rowcount
                if deleted != 1:
                    raise LedgerIntegrityError(f"daily slot {update.release_slot} is not held")
            conn.execute(
                "UPDATE decisions SET status = ?, result = ?, order_doc = ?, version = ?, open = ?, "
                "updated_at = ?, client_order_id = ? WHERE path = ?",
                values,
            )
        return OrderCommit(True, StoredExecution(result, order))

    def record_fee_adjustment(self, adjustment: LedgerFeeAdjustment) -> bool:
        """The adjustment's ledger row and its change to the position, in one commit; False when
        it had been recorded before (nothing changes)."""
        row = (adjustment.path, adjustment.tenant_id, adjustment.trade_id, adjustment.executed_at.isoformat(),
               to_json(LEDGER_ENTRIES, adjustment))  # fmt: skip
        key = (adjustment.tenant_id, adjustment.broker_account_id, adjustment.symbol)
        with self._write() as conn:
            inserted = conn.execute(
                "INSERT INTO ledger_trades (path, tenant_id, trade_id, executed_at, document) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (path) DO NOTHING",
                row,
            ).rowcount
            if inserted:
                self._move_position(conn, key, adjustment.side.sign * adjustment.qty)
        return inserted == 1

    # -- portfolio history and tax lots (PortfolioStore) -------------------------------------

    def apply_history_entry(self, entry: PortfolioTrade, method: LotMethod | None = None) -> FanOutResult:
        with self._write() as conn:
            created = (
                conn.execute(
                    "INSERT INTO portfolio_history (path, uid, broker_account_id, symbol, document) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (path) DO NOTHING",
                    (
                        entry.path,
                        entry.uid,
                        entry.broker_account_id,
                        entry.symbol,
                        to_json(HISTORY_ENTRIES, entry),
                    ),
                ).rowcount
                == 1
            )
            if method is None:
                row = conn.execute(
                    "SELECT lot_method FROM portfolio_settings WHERE path = ?",
                    (portfolio_settings_path(entry.uid),),
                ).fetchone()
                method = LotMethod(row[0]) if row else LotMethod.FIFO
            lots_path = portfolio_lots_path(entry.uid, entry.broker_account_id, entry.symbol)
            row = conn.execute("SELECT document FROM portfolio_lots WHERE path = ?", (lots_path,)).fetchone()
            summary = from_json(LOTS_SNAPSHOTS, row[0]) if row else None
            plan = plan_booking(entry, created, summary)
            if summary is not None and plan.kind is BookingKind.DUPLICATE:
                return FanOutResult(entry.path, created, 0, summary)
            if plan.kind is BookingKind.INCREMENTAL:
                booking = book_entry(entry, summary, _sqlite_window(conn, entry, plan, method), method)
            else:
                rows = conn.execute(
                    "SELECT document FROM portfolio_history "
                    "WHERE uid = ? AND broker_account_id = ? AND symbol = ?",
                    (entry.uid, entry.broker_account_id, entry.symbol),
                ).fetchall()
                stored = conn.execute(
                    "SELECT document FROM portfolio_open_lots WHERE parent = ?", (lots_path,)
                ).fetchall()
                booking = replay(
                    (from_json(HISTORY_ENTRIES, r[0]) for r in rows),
                    (from_json(OPEN_LOTS, r[0]).tax_lot() for r in stored),
                    method,
                )
            _sqlite_write_booking(conn, booking)
        return FanOutResult(entry.path, created, len(booking.changed), booking.summary)

    def has_history(self, uid: str, history_id: str) -> bool:
        path = portfolio_trade_path(uid, history_id)
        with self._lock:
            row = self._conn.execute("SELECT 1 FROM portfolio_history WHERE path = ?", (path,)).fetchone()
        return row is not None

    def history(self, uid: str) -> list[PortfolioTrade]:
        entries = [
            from_json(HISTORY_ENTRIES, document)
            for _, document in self._select_under(
                "portfolio_history", "document", "path", portfolio_history_collection(uid) + "/"
            )
        ]
        return sorted(entries, key=lambda e: (e.executed_at, e.history_id))

    def lots(self, uid: str, broker_account_id: str, symbol: str) -> LotsSnapshot | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT document FROM portfolio_lots WHERE path = ?",
                (portfolio_lots_path(uid, broker_account_id, symbol),),
            ).fetchone()
            if row is None:
                return None
            lots = self._conn.execute(
                "SELECT document FROM portfolio_open_lots WHERE parent = ?",
                (portfolio_lots_path(uid, broker_account_id, symbol),),
            ).fetchall()
        open_lots = (from_json(OPEN_LOTS, r[0]).tax_lot() for r in lots)
        return with_lots(from_json(LOTS_SNAPSHOTS, row[0]), open_lots)

    def set_lot_method(self, uid: str, method: LotMethod) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO portfolio_settings (path, lot_method) VALUES (?, ?) "
                "ON CONFLICT (path) DO UPDATE SET lot_method = excluded.lot_method",
                (portfolio_settings_path(uid), method.value),
            )


_WINDOW_PAGE = 16


def _sqlite_window(
    conn: sqlite3.Connection, entry: PortfolioTrade, plan: BookingPlan, method: LotMethod
) -> list[TaxLot]:
    """The open lots a booking needs: those a fee adjustment names, and the first ones in the
    method's order until they cover ``plan.consume`` (paged: never every lot)."""
    parent = portfolio_lots_path(entry.uid, entry.broker_account_id, entry.symbol)
    window: dict[str, TaxLot] = {}
    for lot_id in plan.named:
        path = portfolio_open_lot_path(entry.uid, entry.broker_account_id, entry.symbol, lot_id)
        row = conn.execute("SELECT document FROM portfolio_open_lots WHERE path = ?", (path,)).fetchone()
        if row:
            lot = from_json(OPEN_LOTS, row[0]).tax_lot()
            window[lot.lot_id] = lot
    field, descending = order_field(method)
    compare, direction = ("<", "DESC") if descending else (">", "ASC")
    covered, after = Decimal(0), None
    while covered < plan.consume:
        rows = conn.execute(
            f"SELECT {field}, document FROM portfolio_open_lots WHERE parent = ? "
            + (f"AND {field} {compare} ? " if after is not None else "")
            + f"ORDER BY {field} {direction} LIMIT ?",
            (parent, after, _WINDOW_PAGE) if after is not None else (parent, _WINDOW_PAGE),
        ).fetchall()
        for key, document in rows:
            lot = from_json(OPEN_LOTS, document).tax_lot()
            window[lot.lot_id] = lot
            covered += lot.qty
            after = key
            if covered >= plan.consume:
                break
        if len(rows) < _WINDOW_PAGE:
            break
    return list(window.values())


def _sqlite_write_booking(conn: sqlite3.Connection, booking: Booking) -> None:
    conn.executemany(
        "UPDATE portfolio_history SET document = ? WHERE path = ?",
        [(to_json(HISTORY_ENTRIES, e), e.path) for e in booking.changed],
    )
    conn.executemany("DELETE FROM portfolio_open_lots WHERE path = ?", [(path,) for path in booking.deletes])
    conn.executemany(
        "INSERT INTO portfolio_open_lots (path, parent, fifo_key, hifo_key, document) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (path) DO UPDATE SET document = excluded.document",
        [
            (lot.path, booking.summary.path, lot.fifo_key, lot.hifo_key, to_json(OPEN_LOTS, lot))
            for lot in booking.upserts
        ],
    )
    conn.execute(
        "INSERT INTO portfolio_lots (path, document) VALUES (?, ?) "
        "ON CONFLICT (path) DO UPDATE SET document = excluded.document",
        (booking.summary.path, to_json(LOTS_SNAPSHOTS, booking.summary)),
    )
