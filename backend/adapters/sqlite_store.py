"""The embedded store: SQLite in WAL mode, one file, no server. The local default.

Rows are keyed by the same logical paths Firestore uses (``tenants/{tenant_id}/ledger_trades/...``).
Documents are stored as JSON with money as decimal strings. The ledger table is append-only:
triggers abort any UPDATE or DELETE. Writers take ``BEGIN IMMEDIATE``, so the idempotency claim and
the daily-trade counter stay correct across threads *and* processes sharing the file.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

from backend.adapters.documents import (
    HISTORY_ENTRIES,
    LEDGER_ENTRIES,
    LOTS_SNAPSHOTS,
    RESULTS,
    from_json,
    to_json,
)
from backend.core.instruments import instrument_for
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
    decision_id_for,
    decision_path,
    ledger_trade_path,
    portfolio_history_collection,
    portfolio_lots_path,
    portfolio_settings_path,
    portfolio_trade_path,
    tenant_collection_path,
)
from backend.core.portfolio import FanOutResult, LotsSnapshot, PortfolioTrade, plan_fan_out, recompute_tax
from backend.core.risk import Exposure
from backend.core.tax_lots import LotMethod
from backend.execution.ports import Claim, ClaimOutcome, LedgerIntegrityError, RiskCheck

_PENDING = ExecutionStatus.PENDING.value

SCHEMA = """
-- One row per decision, keyed by its logical path. A keyed intent's decision id derives from its
-- idempotency key, so this table is also the idempotency record: pending while the broker is
-- being called, final afterwards. Dry runs get fresh ids and never block a real execution.
CREATE TABLE IF NOT EXISTS decisions (
    path TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    status TEXT NOT NULL,
    decided_at TEXT NOT NULL,
    result TEXT NOT NULL
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

CREATE TABLE IF NOT EXISTS daily_trade_counts (
    tenant_id TEXT NOT NULL,
    trading_day TEXT NOT NULL,
    trades INTEGER NOT NULL CHECK (trades >= 0),
    PRIMARY KEY (tenant_id, trading_day)
) WITHOUT ROWID;

-- Portfolio history: one row per ledger trade and user (facts written once, tax part rewritten
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

CREATE TABLE IF NOT EXISTS portfolio_settings (
    path TEXT PRIMARY KEY,
    lot_method TEXT NOT NULL
);

-- qty: filled, signed. pending_qty: signed quantity claimed but not yet filled (see Exposure).
CREATE TABLE IF NOT EXISTS positions (
    tenant_id TEXT NOT NULL,
    broker_account_id TEXT NOT NULL,
    symbol TEXT NOT NULL,
    qty TEXT NOT NULL,
    pending_qty TEXT NOT NULL DEFAULT '0',
    PRIMARY KEY (tenant_id, broker_account_id, symbol)
) WITHOUT ROWID;
"""


def _merge_position_spellings(conn: sqlite3.Connection) -> None:
    """Positions written before symbols were canonical (``BTCUSD`` beside ``BTC/USD``) become one."""
    rows = conn.execute(
        "SELECT tenant_id, broker_account_id, symbol, qty, pending_qty FROM positions"
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
        held, in_flight = merged.get(key, (Decimal(0), Decimal(0)))
        merged[key] = (held + Decimal(qty), in_flight + Decimal(pending))
    if not legacy:
        return
    conn.executemany(
        "DELETE FROM positions WHERE tenant_id = ? AND broker_account_id = ? AND symbol = ?", legacy
    )
    conn.executemany(
        "INSERT INTO positions (tenant_id, broker_account_id, symbol, qty, pending_qty) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (tenant_id, broker_account_id, symbol) "
        "DO UPDATE SET qty = excluded.qty, pending_qty = excluded.pending_qty",
        [(*key, canonical_decimal(q), canonical_decimal(p)) for key, (q, p) in merged.items()],
    )


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
            if conn.execute("PRAGMA user_version").fetchone()[0] < 1:
                _merge_position_spellings(conn)
                conn.execute("PRAGMA user_version = 1")

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

    def _read_row(self, conn: sqlite3.Connection, tenant_id: str, key: str) -> tuple[str, str] | None:
        path = decision_path(tenant_id, decision_id_for(tenant_id, key))
        return conn.execute("SELECT status, result FROM decisions WHERE path = ?", (path,)).fetchone()

    def get_execution(self, tenant_id: str, idempotency_key: str) -> ExecutionResult | None:
        """The stored outcome for a key; None when there is none yet (absent, or a claim in flight)."""
        with self._lock:
            row = self._read_row(self._conn, tenant_id, idempotency_key)
        return from_json(RESULTS, row[1]) if row and row[0] != _PENDING else None

    @staticmethod
    def _read_exposure(
        conn: sqlite3.Connection, tenant_id: str, broker_account_id: str, symbol: str, trading_day: str
    ) -> Exposure:
        position = conn.execute(
            "SELECT qty, pending_qty FROM positions "
            "WHERE tenant_id = ? AND broker_account_id = ? AND symbol = ?",
            (tenant_id, broker_account_id, symbol),
        ).fetchone()
        count = conn.execute(
            "SELECT trades FROM daily_trade_counts WHERE tenant_id = ? AND trading_day = ?",
            (tenant_id, trading_day),
        ).fetchone()
        return Exposure(
            position_qty=Decimal(position[0]) if position else Decimal(0),
            trades_today=count[0] if count else 0,
            pending_qty=Decimal(position[1]) if position else Decimal(0),
        )

    def get_exposure(self, tenant_id: str, broker_account_id: str, symbol: str, trading_day: str) -> Exposure:
        with self._lock:
            return self._read_exposure(self._conn, tenant_id, broker_account_id, symbol, trading_day)

    def positions(self, tenant_id: str) -> dict[str, Decimal]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT symbol, qty FROM positions WHERE tenant_id = ?", (tenant_id,)
            ).fetchall()
        totals: dict[str, Decimal] = {}
        for symbol, qty in rows:
            totals[symbol] = totals.get(symbol, Decimal(0)) + Decimal(qty)
        return totals

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
        for path, result in self._select_under("decisions", "result", "decided_at", prefix):
            if result:  # a pending claim is not a decision yet
                yield build_decision_record(from_json(RESULTS, result), path.rsplit("/", 1)[1])

    # -- writes (each one atomic commit) ---------------------------------------------------

    @staticmethod
    def _decision_row(result: ExecutionResult) -> tuple[str, str, str, str, str]:
        """The row's values, serialized before the transaction: the lock is held for SQL only."""
        return (
            decision_path(result.tenant_id, new_decision_id(result)),
            result.tenant_id,
            result.status.value,
            result.decided_at.isoformat(),
            "" if result.status is ExecutionStatus.PENDING else to_json(RESULTS, result),
        )

    @staticmethod
    def _put_decision(conn: sqlite3.Connection, row: tuple[str, ...], *, create_only: bool = False) -> bool:
        """Write a decision row; with ``create_only`` an existing row wins and False is returned."""
        cursor = conn.execute(
            "INSERT INTO decisions (path, tenant_id, status, decided_at, result) VALUES (?, ?, ?, ?, ?) "
            + (
                "ON CONFLICT (path) DO NOTHING"
                if create_only
                else "ON CONFLICT (path) DO UPDATE SET status = excluded.status, result = excluded.result"
            ),
            row,
        )
        return cursor.rowcount == 1

    def _existing(self, conn: sqlite3.Connection, result: ExecutionResult) -> ExecutionResult | None:
        row = self._read_row(conn, result.tenant_id, result.idempotency_key)
        return from_json(RESULTS, row[1]) if row and row[0] != _PENDING else None

    def record_outcome(self, result: ExecutionResult) -> ExecutionResult | None:
        """An outcome that never reached the broker. First writer wins: a later one gets the stored
        result, or None while another worker's claim on the key is in flight."""
        row = self._decision_row(result)
        with self._write() as conn:
            if self._put_decision(conn, row, create_only=result.status is not ExecutionStatus.DRY_RUN):
                return result
            return self._existing(conn, result)

    @staticmethod
    def _move_position(
        conn: sqlite3.Connection,
        key: tuple[str, str, str],
        filled: Decimal,
        pending: Decimal,
        current: Exposure | None = None,
    ) -> None:
        """Add signed ``filled`` to the position (tenant, account, symbol) and signed ``pending``
        to its in-flight quantity. ``current`` saves the read when the caller has just read the
        exposure in this transaction."""
        if current is None:
            row = conn.execute(
                "SELECT qty, pending_qty FROM positions WHERE tenant_id = ? AND broker_account_id = ? "
                "AND symbol = ?",
                key,
            ).fetchone()
            qty, pending_qty = (Decimal(row[0]), Decimal(row[1])) if row else (Decimal(0), Decimal(0))
        else:
            qty, pending_qty = current.position_qty, current.pending_qty
        conn.execute(
            "INSERT INTO positions (tenant_id, broker_account_id, symbol, qty, pending_qty) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (tenant_id, broker_account_id, symbol) "
            "DO UPDATE SET qty = excluded.qty, pending_qty = excluded.pending_qty",
            (*key, canonical_decimal(qty + filled), canonical_decimal(pending_qty + pending)),
        )

    def claim(self, result: ExecutionResult, trading_day: str, check: RiskCheck) -> Claim:
        """Check and reserve in one commit: the key, a daily-trade slot and the pending quantity."""
        intent = result.intent
        with self._write() as conn:
            if self._read_row(conn, result.tenant_id, result.idempotency_key) is not None:
                return Claim(ClaimOutcome.DUPLICATE, existing=self._existing(conn, result))
            exposure = self._read_exposure(
                conn, result.tenant_id, intent.broker_account_id, intent.symbol, trading_day
            )
            decision = check(exposure)
            if not decision.approved:
                return Claim(ClaimOutcome.REFUSED, risk=decision)
            conn.execute(
                "INSERT INTO daily_trade_counts (tenant_id, trading_day, trades) VALUES (?, ?, 1) "
                "ON CONFLICT (tenant_id, trading_day) DO UPDATE SET trades = trades + 1",
                (result.tenant_id, trading_day),
            )
            self._move_position(
                conn, _position_key(result), Decimal(0), intent.side.sign * intent.qty, exposure
            )
            self._put_decision(conn, self._decision_row(result), create_only=True)
        return Claim(ClaimOutcome.CLAIMED, risk=decision)

    def record_trade(self, result: ExecutionResult, trade: LedgerTrade) -> ExecutionResult:
        """The ledger row, the position and the final decision: one commit."""
        order = trade.broker
        # An order still open after a partial fill keeps its unfilled rest in flight.
        released = (
            order.filled_qty if order.status is BrokerOrderStatus.PARTIALLY_FILLED else result.intent.qty
        )
        ledger_row = (trade.path, trade.tenant_id, trade.trade_id, trade.executed_at.isoformat(),
                      to_json(LEDGER_ENTRIES, trade))  # fmt: skip
        decision_row = self._decision_row(result)
        with self._write() as conn:
            try:
                conn.execute(
                    "INSERT INTO ledger_trades (path, tenant_id, trade_id, executed_at, document) "
                    "VALUES (?, ?, ?, ?, ?)",
                    ledger_row,
                )
            except sqlite3.IntegrityError as exc:
                raise LedgerIntegrityError(f"ledger row {trade.path} already exists") from exc
            sign = trade.side.sign
            self._move_position(conn, _position_key(result), sign * trade.qty, -sign * released)
            self._put_decision(conn, decision_row)
        return result

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
                self._move_position(conn, key, adjustment.side.sign * adjustment.qty, Decimal(0))
        return inserted == 1

    def settle_claim(self, result: ExecutionResult, trading_day: str) -> ExecutionResult:
        decision_row = self._decision_row(result)
        with self._write() as conn:
            if result.status is ExecutionStatus.FAILED:
                conn.execute(
                    "UPDATE daily_trade_counts SET trades = trades - 1 "
                    "WHERE tenant_id = ? AND trading_day = ? AND trades > 0",
                    (result.tenant_id, trading_day),
                )
                intent = result.intent
                self._move_position(conn, _position_key(result), Decimal(0), -intent.side.sign * intent.qty)
            self._put_decision(conn, decision_row)
        return result

    # -- portfolio history and tax lots (PortfolioStore) -------------------------------------

    def apply_history_entry(self, entry: PortfolioTrade, method: LotMethod | None = None) -> FanOutResult:
        entry_json = to_json(HISTORY_ENTRIES, entry)
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
                        entry_json,
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
            snapshot = from_json(LOTS_SNAPSHOTS, row[0]) if row else None
            recomputed = plan_fan_out(entry, created, snapshot, method)
            if recomputed is None:
                rows = conn.execute(
                    "SELECT document FROM portfolio_history "
                    "WHERE uid = ? AND broker_account_id = ? AND symbol = ?",
                    (entry.uid, entry.broker_account_id, entry.symbol),
                ).fetchall()
                recomputed = recompute_tax((from_json(HISTORY_ENTRIES, r[0]) for r in rows), method)
            if not created and not recomputed.changed:
                return FanOutResult(entry.path, created, 0, recomputed.lots)
            conn.executemany(
                "UPDATE portfolio_history SET document = ? WHERE path = ?",
                [(to_json(HISTORY_ENTRIES, e), e.path) for e in recomputed.changed],
            )
            conn.execute(
                "INSERT INTO portfolio_lots (path, document) VALUES (?, ?) "
                "ON CONFLICT (path) DO UPDATE SET document = excluded.document",
                (recomputed.lots.path, to_json(LOTS_SNAPSHOTS, recomputed.lots)),
            )
        return FanOutResult(entry.path, created, len(recomputed.changed), recomputed.lots)

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
        return from_json(LOTS_SNAPSHOTS, row[0]) if row else None

    def set_lot_method(self, uid: str, method: LotMethod) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO portfolio_settings (path, lot_method) VALUES (?, ?) "
                "ON CONFLICT (path) DO UPDATE SET lot_method = excluded.lot_method",
                (portfolio_settings_path(uid), method.value),
            )
