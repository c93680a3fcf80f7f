"""The embedded store: SQLite in WAL mode, one file, no server. The local default.

Rows are keyed by the same logical paths Firestore uses (``tenants/{tenant_id}/ledger_trades/...``).
Documents are stored as JSON with money as decimal strings. The ledger table is append-only:
triggers abort any UPDATE or DELETE. Writers take ``BEGIN IMMEDIATE``, so the idempotency claim and
the daily-trade counter stay correct across threads *and* processes sharing the file.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

from pydantic import TypeAdapter

from backend.core.intents import canonical_decimal
from backend.core.ledger import DecisionRecord, LedgerTrade
from backend.core.orders import ExecutionResult, ExecutionStatus
from backend.core.paths import ledger_trade_path
from backend.core.risk import Exposure
from backend.execution.ports import Claim, ClaimOutcome

_RESULT = TypeAdapter(ExecutionResult)
_TRADE = TypeAdapter(LedgerTrade)
_DECISION = TypeAdapter(DecisionRecord)

SCHEMA = """
CREATE TABLE IF NOT EXISTS executions (
    tenant_id TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    status TEXT NOT NULL,
    result TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (tenant_id, idempotency_key)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS ledger_trades (
    path TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    trade_id TEXT NOT NULL,
    symbol TEXT NOT NULL,
    asset_class TEXT NOT NULL,
    side TEXT NOT NULL,
    qty TEXT NOT NULL,
    price TEXT NOT NULL,
    notional TEXT NOT NULL,
    executed_at TEXT NOT NULL,
    written_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    document TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ledger_trades_by_tenant ON ledger_trades (tenant_id, executed_at);

CREATE TRIGGER IF NOT EXISTS ledger_trades_append_only_update
BEFORE UPDATE ON ledger_trades BEGIN SELECT RAISE(ABORT, 'ledger_trades is append-only'); END;
CREATE TRIGGER IF NOT EXISTS ledger_trades_append_only_delete
BEFORE DELETE ON ledger_trades BEGIN SELECT RAISE(ABORT, 'ledger_trades is append-only'); END;

CREATE TABLE IF NOT EXISTS decisions (
    path TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    decided_at TEXT NOT NULL,
    status TEXT NOT NULL,
    reason_code TEXT NOT NULL,
    asset_class TEXT NOT NULL,
    document TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_by_tenant ON decisions (tenant_id, decided_at);

CREATE TABLE IF NOT EXISTS daily_trade_counts (
    tenant_id TEXT NOT NULL,
    trading_day TEXT NOT NULL,
    trades INTEGER NOT NULL CHECK (trades >= 0),
    PRIMARY KEY (tenant_id, trading_day)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS positions (
    tenant_id TEXT NOT NULL,
    broker_account_id TEXT NOT NULL,
    symbol TEXT NOT NULL,
    qty TEXT NOT NULL,
    PRIMARY KEY (tenant_id, broker_account_id, symbol)
) WITHOUT ROWID;
"""


class LedgerIntegrityError(RuntimeError):
    """A write that the ledger's invariants forbid (a second row for one trade id)."""


class SQLiteExecutionStore:
    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        self._conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a commit survives a process crash; a power cut may lose the last few.
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    # -- reads -----------------------------------------------------------------------------

    def get_execution(self, tenant_id: str, idempotency_key: str) -> ExecutionResult | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT result FROM executions WHERE tenant_id = ? AND idempotency_key = ?",
                (tenant_id, idempotency_key),
            ).fetchone()
        return _RESULT.validate_json(row[0]) if row else None

    def get_exposure(self, tenant_id: str, broker_account_id: str, symbol: str, trading_day: str) -> Exposure:
        with self._lock:
            position = self._conn.execute(
                "SELECT qty FROM positions WHERE tenant_id = ? AND broker_account_id = ? AND symbol = ?",
                (tenant_id, broker_account_id, symbol),
            ).fetchone()
            count = self._conn.execute(
                "SELECT trades FROM daily_trade_counts WHERE tenant_id = ? AND trading_day = ?",
                (tenant_id, trading_day),
            ).fetchone()
        return Exposure(
            position_qty=Decimal(position[0]) if position else Decimal(0),
            trades_today=count[0] if count else 0,
        )

    def positions(self, tenant_id: str) -> dict[str, Decimal]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT symbol, qty FROM positions WHERE tenant_id = ?", (tenant_id,)
            ).fetchall()
        totals: dict[str, Decimal] = {}
        for symbol, qty in rows:
            totals[symbol] = totals.get(symbol, Decimal(0)) + Decimal(qty)
        return totals

    def get_ledger_trade(self, tenant_id: str, trade_id: str) -> LedgerTrade | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT document FROM ledger_trades WHERE path = ?",
                (ledger_trade_path(tenant_id, trade_id),),
            ).fetchone()
        return _TRADE.validate_json(row[0]) if row else None

    def iter_ledger_trades(self, tenant_id: str | None = None) -> Iterator[LedgerTrade]:
        query = "SELECT document FROM ledger_trades"
        query += (
            " WHERE tenant_id = ? ORDER BY executed_at, path" if tenant_id else " ORDER BY executed_at, path"
        )
        with self._lock:
            rows = self._conn.execute(query, (tenant_id,) if tenant_id else ()).fetchall()
        for (document,) in rows:
            yield _TRADE.validate_json(document)

    def iter_decisions(self, tenant_id: str | None = None) -> Iterator[DecisionRecord]:
        query = "SELECT document FROM decisions"
        query += (
            " WHERE tenant_id = ? ORDER BY decided_at, rowid" if tenant_id else " ORDER BY decided_at, rowid"
        )
        with self._lock:
            rows = self._conn.execute(query, (tenant_id,) if tenant_id else ()).fetchall()
        for (document,) in rows:
            yield _DECISION.validate_json(document)

    # -- writes (each one atomic commit) ---------------------------------------------------

    def _existing(self, conn: sqlite3.Connection, result: ExecutionResult) -> ExecutionResult | None:
        row = conn.execute(
            "SELECT result FROM executions WHERE tenant_id = ? AND idempotency_key = ?",
            (result.tenant_id, result.idempotency_key),
        ).fetchone()
        return _RESULT.validate_json(row[0]) if row else None

    @staticmethod
    def _insert_decision(conn: sqlite3.Connection, decision: DecisionRecord) -> None:
        conn.execute(
            "INSERT OR IGNORE INTO decisions "
            "(path, tenant_id, decided_at, status, reason_code, asset_class, document) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                decision.path,
                decision.tenant_id,
                decision.decided_at.isoformat(),
                decision.status.value,
                decision.reason_code.value,
                decision.asset_class.value,
                _DECISION.dump_json(decision).decode(),
            ),
        )

    @staticmethod
    def _upsert_execution(conn: sqlite3.Connection, result: ExecutionResult) -> None:
        conn.execute(
            "INSERT INTO executions (tenant_id, idempotency_key, status, result, updated_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (tenant_id, idempotency_key) DO UPDATE SET "
            "status = excluded.status, result = excluded.result, updated_at = excluded.updated_at",
            (
                result.tenant_id,
                result.idempotency_key,
                result.status.value,
                _RESULT.dump_json(result).decode(),
                result.decided_at.isoformat(),
            ),
        )

    def record_outcome(self, result: ExecutionResult, decision: DecisionRecord) -> ExecutionResult:
        """An outcome that never reached the broker. First writer wins; later ones get its result."""
        with self._write() as conn:
            if result.status is not ExecutionStatus.DRY_RUN:
                existing = self._existing(conn, result)
                if existing is not None:
                    return existing
                self._upsert_execution(conn, result)
            self._insert_decision(conn, decision)
        return result

    def claim(self, result: ExecutionResult, trading_day: str, max_daily_trades: int) -> Claim:
        with self._write() as conn:
            existing = self._existing(conn, result)
            if existing is not None:
                return Claim(ClaimOutcome.DUPLICATE, existing=existing)
            row = conn.execute(
                "SELECT trades FROM daily_trade_counts WHERE tenant_id = ? AND trading_day = ?",
                (result.tenant_id, trading_day),
            ).fetchone()
            trades_today = row[0] if row else 0
            if trades_today >= max_daily_trades:
                return Claim(ClaimOutcome.DAILY_LIMIT, trades_today=trades_today)
            conn.execute(
                "INSERT INTO daily_trade_counts (tenant_id, trading_day, trades) VALUES (?, ?, 1) "
                "ON CONFLICT (tenant_id, trading_day) DO UPDATE SET trades = trades + 1",
                (result.tenant_id, trading_day),
            )
            self._upsert_execution(conn, result)
        return Claim(ClaimOutcome.CLAIMED, trades_today=trades_today + 1)

    def record_trade(
        self, result: ExecutionResult, trade: LedgerTrade, decision: DecisionRecord
    ) -> ExecutionResult:
        with self._write() as conn:
            try:
                conn.execute(
                    "INSERT INTO ledger_trades (path, tenant_id, trade_id, symbol, asset_class, "
                    "side, qty, price, notional, executed_at, document) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        trade.path,
                        trade.tenant_id,
                        trade.trade_id,
                        trade.symbol,
                        trade.asset_class.value,
                        trade.side.value,
                        str(trade.qty),
                        str(trade.price),
                        str(trade.notional),
                        trade.executed_at.isoformat(),
                        _TRADE.dump_json(trade).decode(),
                    ),
                )
            except sqlite3.IntegrityError as exc:
                raise LedgerIntegrityError(f"ledger row {trade.path} already exists") from exc
            row = conn.execute(
                "SELECT qty FROM positions WHERE tenant_id = ? AND broker_account_id = ? AND symbol = ?",
                (trade.tenant_id, trade.broker_account_id, trade.symbol),
            ).fetchone()
            current = Decimal(row[0]) if row else Decimal(0)
            conn.execute(
                "INSERT INTO positions (tenant_id, broker_account_id, symbol, qty) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (tenant_id, broker_account_id, symbol) "
                "DO UPDATE SET qty = excluded.qty",
                (
                    trade.tenant_id,
                    trade.broker_account_id,
                    trade.symbol,
                    canonical_decimal(current + trade.side.sign * trade.qty),
                ),
            )
            self._upsert_execution(conn, result)
            self._insert_decision(conn, decision)
        return result

    def settle_claim(
        self, result: ExecutionResult, decision: DecisionRecord, trading_day: str
    ) -> ExecutionResult:
        with self._write() as conn:
            if result.status is ExecutionStatus.FAILED:
                conn.execute(
                    "UPDATE daily_trade_counts SET trades = trades - 1 "
                    "WHERE tenant_id = ? AND trading_day = ? AND trades > 0",
                    (result.tenant_id, trading_day),
                )
            self._upsert_execution(conn, result)
            self._insert_decision(conn, decision)
        return result
