"""The runtime controls' two stores (``ControlsStore``): Firestore, and SQLite beside the embedded
ledger (the same file, its own tables). One document shape for both:

- ``controls/global``, ``tenants/{t}/controls/current``: ``kill_switch``, ``kill_reason``,
  ``limits`` (name -> exact decimal string), ``version``, ``updated_at``, ``updated_by``. Written
  only by a flip, a compare-and-set on ``version`` in the same commit as the flip's audit record.
- ``control_audit/{id}``, ``tenants/{t}/control_audit/{id}``: created once per flip (who, when,
  action, limit, before, after, why), never changed.
- ``tenants/{t}/rate_slots/{minute}~{shard}``: ``count`` of orders claimed in that UTC minute on
  that shard, never above the shard's capacity (``backend.core.controls.shard_capacity``).
  ``expires_at`` (the minute's end plus a day) is the field of the TTL policy in
  ``firestore.indexes.json`` that deletes old ones; the SQLite store deletes minutes older than a
  day as it goes.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import MappingProxyType
from typing import Any

import orjson

from backend.adapters.sqlite_store import _retry_while_locked
from backend.core.controls import (
    GLOBAL_SCOPE,
    RATE_SHARDS,
    ControlAction,
    ControlAudit,
    ControlLimit,
    ControlState,
    rate_probe_order,
    shard_capacity,
)
from backend.core.intents import canonical_decimal
from backend.core.paths import control_audit_path, controls_path, rate_slot_path
from backend.execution.runtime_controls import ControlsStore, FlipPlan
from backend.execution.settings import ExecSettings

_RATE_SLOT_RETENTION = timedelta(days=1)


# -- one document shape ------------------------------------------------------------------------


def _utc(value: Any) -> datetime | None:
    """A plain UTC datetime from RFC 3339 text (SQLite) or Firestore's own datetime subclass."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    moment = (value if value.tzinfo is not None else value.replace(tzinfo=UTC)).astimezone(UTC)
    return datetime(*moment.timetuple()[:6], moment.microsecond, tzinfo=UTC)


def state_document(state: ControlState, as_text: bool = False) -> dict[str, Any]:
    """Money and counts as exact decimal strings; times as datetimes (Firestore) or RFC 3339 text."""
    updated_at: Any = state.updated_at
    if as_text and updated_at is not None:
        updated_at = updated_at.isoformat()
    return {
        "kill_switch": state.kill_switch,
        "kill_reason": state.kill_reason,
        "limits": {name.value: canonical_decimal(value) for name, value in state.limits.items()},
        "version": state.version,
        "updated_at": updated_at,
        "updated_by": state.updated_by,
    }


def state_from(document: Mapping[str, Any] | None) -> ControlState:
    if not document:
        return ControlState()
    limits = {
        ControlLimit(name): Decimal(str(value)) for name, value in (document.get("limits") or {}).items()
    }
    return ControlState(
        kill_switch=bool(document.get("kill_switch", False)),
        kill_reason=str(document.get("kill_reason", "")),
        limits=MappingProxyType(dict(sorted(limits.items()))),
        version=int(document.get("version", 0)),
        updated_at=_utc(document.get("updated_at")),
        updated_by=str(document.get("updated_by", "")),
    )


def audit_document(audit: ControlAudit, as_text: bool = False) -> dict[str, Any]:
    return {
        "audit_id": audit.audit_id,
        "scope": audit.scope,
        "tenant_id": audit.tenant_id,
        "action": audit.action.value,
        "limit": audit.limit.value if audit.limit else None,
        "by": audit.by,
        "reason": audit.reason,
        "at": audit.at.isoformat() if as_text else audit.at,
        "before": state_document(audit.before, as_text),
        "after": state_document(audit.after, as_text),
    }


def audit_from(document: Mapping[str, Any]) -> ControlAudit:
    at = _utc(document["at"])
    assert at is not None
    return ControlAudit(
        audit_id=str(document["audit_id"]),
        scope=str(document["scope"]),
        action=ControlAction(document["action"]),
        by=str(document["by"]),
        reason=str(document["reason"]),
        at=at,
        before=state_from(document["before"]),
        after=state_from(document["after"]),
        limit=ControlLimit(document["limit"]) if document.get("limit") else None,
    )


def _checked(plan: FlipPlan, before: ControlState, scope: str) -> ControlAudit:
    audit = plan(before)
    if audit.scope != scope or audit.after.version != before.version + 1:
        raise ValueError(f"a flip of {scope} must take it from version {before.version} to the next")
    return audit


def _scope(tenant_id: str | None) -> str:
    return GLOBAL_SCOPE if tenant_id is None else tenant_id


# -- SQLite ------------------------------------------------------------------------------------

SCHEMA = """
CREATE TABLE IF NOT EXISTS runtime_controls (
    path TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    document TEXT NOT NULL
);
-- Append-only, like the ledger.
CREATE TABLE IF NOT EXISTS control_audit (
    path TEXT PRIMARY KEY,
    scope TEXT NOT NULL,
    at TEXT NOT NULL,
    document TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS control_audit_by_scope ON control_audit (scope, at);
CREATE TRIGGER IF NOT EXISTS control_audit_append_only_update
BEFORE UPDATE ON control_audit BEGIN SELECT RAISE(ABORT, 'control_audit is append-only'); END;
CREATE TRIGGER IF NOT EXISTS control_audit_append_only_delete
BEFORE DELETE ON control_audit BEGIN SELECT RAISE(ABORT, 'control_audit is append-only'); END;
CREATE TABLE IF NOT EXISTS rate_slots (
    path TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    minute TEXT NOT NULL,
    shard INTEGER NOT NULL,
    count INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS rate_slots_by_minute ON rate_slots (tenant_id, minute);
"""


class SQLiteControlsStore:
    """The controls in the embedded ledger's file (or any SQLite file), on a connection of their
    own. Writers take ``BEGIN IMMEDIATE``: correct across threads and processes sharing the file."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        # As the ledger's store opens the same file: switching to WAL does not wait on the busy timeout.
        _retry_while_locked(lambda: self._conn.execute("PRAGMA journal_mode=WAL"))
        self._conn.execute("PRAGMA synchronous=NORMAL")  # as the ledger's: durable across a crash
        _retry_while_locked(lambda: self._conn.executescript(SCHEMA))

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _write(self, work: Any) -> Any:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                outcome = work(self._conn)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            return outcome

    def read_controls(self, tenant_id: str | None) -> ControlState:
        with self._lock:
            row = self._conn.execute(
                "SELECT document FROM runtime_controls WHERE path = ?", (controls_path(tenant_id),)
            ).fetchone()
        return state_from(orjson.loads(row[0]) if row else None)

    def flip(self, tenant_id: str | None, plan: FlipPlan) -> ControlAudit:
        path = controls_path(tenant_id)

        def flip_in(conn: sqlite3.Connection) -> ControlAudit:
            row = conn.execute("SELECT document FROM runtime_controls WHERE path = ?", (path,)).fetchone()
            audit = _checked(plan, state_from(orjson.loads(row[0]) if row else None), _scope(tenant_id))
            document = orjson.dumps(state_document(audit.after, as_text=True)).decode()
            conn.execute(
                "INSERT INTO runtime_controls (path, version, document) VALUES (?, ?, ?) "
                "ON CONFLICT (path) DO UPDATE SET version = excluded.version, document = excluded.document",
                (path, audit.after.version, document),
            )
            conn.execute(
                "INSERT INTO control_audit (path, scope, at, document) VALUES (?, ?, ?, ?)",
                (control_audit_path(tenant_id, audit.audit_id), audit.scope, audit.at.isoformat(),
                 orjson.dumps(audit_document(audit, as_text=True)).decode()),
            )  # fmt: skip
            return audit

        return self._write(flip_in)  # type: ignore[no-any-return]

    def audit_records(self, tenant_id: str | None, limit: int = 50) -> list[ControlAudit]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT document FROM control_audit WHERE scope = ? ORDER BY at DESC, path DESC LIMIT ?",
                (_scope(tenant_id), limit),
            ).fetchall()
        return [audit_from(orjson.loads(row[0])) for row in rows]

    def take_rate_slot(self, tenant_id: str, minute: str, limit: int, probe_key: str) -> int | None:
        def take_in(conn: sqlite3.Connection) -> int | None:
            conn.execute("DELETE FROM rate_slots WHERE tenant_id = ? AND minute < ?",
                         (tenant_id, _retention_floor(minute)))  # fmt: skip
            for shard in rate_probe_order(tenant_id, probe_key):
                capacity = shard_capacity(limit, shard)
                path = rate_slot_path(tenant_id, minute, shard)
                row = conn.execute("SELECT count FROM rate_slots WHERE path = ?", (path,)).fetchone()
                count = row[0] if row else 0
                if count < capacity:
                    conn.execute(
                        "INSERT INTO rate_slots (path, tenant_id, minute, shard, count) "
                        "VALUES (?, ?, ?, ?, 1) "
                        "ON CONFLICT (path) DO UPDATE SET count = count + 1",
                        (path, tenant_id, minute, shard),
                    )
                    return shard
            return None

        return self._write(take_in)  # type: ignore[no-any-return]

    def rate_slots_taken(self, tenant_id: str, minute: str) -> int:
        with self._lock:
            row = self._conn.execute(
                "SELECT COALESCE(SUM(count), 0) FROM rate_slots WHERE tenant_id = ? AND minute = ?",
                (tenant_id, minute),
            ).fetchone()
        return int(row[0])


def _minute_start(minute: str) -> datetime:
    return datetime.strptime(minute, "%Y%m%dT%H%MZ").replace(tzinfo=UTC)


def _retention_floor(minute: str) -> str:
    return (_minute_start(minute) - _RATE_SLOT_RETENTION).strftime("%Y%m%dT%H%MZ")


# -- Firestore ---------------------------------------------------------------------------------


class FirestoreControlsStore:
    """The controls in Firestore. A flip is one transaction (the scope's document, compared on its
    version, and the audit record, created); a rate slot is one transaction over at most
    ``RATE_SHARDS`` small documents, read from a start spread by the intent's key."""

    def __init__(self, client: Any) -> None:
        self._db = client

    def read_controls(self, tenant_id: str | None) -> ControlState:
        snapshot = self._db.document(controls_path(tenant_id)).get()
        return state_from(snapshot.to_dict() if snapshot.exists else None)

    def flip(self, tenant_id: str | None, plan: FlipPlan) -> ControlAudit:
        from google.cloud import firestore

        from backend.adapters.firestore_store import _through_contention

        ref = self._db.document(controls_path(tenant_id))

        @firestore.transactional  # type: ignore[misc]
        def flip_in(transaction: Any) -> ControlAudit:
            snapshot = ref.get(transaction=transaction)
            audit = _checked(
                plan, state_from(snapshot.to_dict() if snapshot.exists else None), _scope(tenant_id)
            )
            transaction.set(ref, {**state_document(audit.after), "recorded_at": firestore.SERVER_TIMESTAMP})
            transaction.create(
                self._db.document(control_audit_path(tenant_id, audit.audit_id)),
                {**audit_document(audit), "recorded_at": firestore.SERVER_TIMESTAMP},
            )
            return audit

        return _through_contention(  # type: ignore[no-any-return]
            lambda: flip_in(self._db.transaction()), lambda: None, f"flip of {_scope(tenant_id)}"
        )

    def audit_records(self, tenant_id: str | None, limit: int = 50) -> list[ControlAudit]:
        from google.cloud import firestore

        collection = control_audit_path(tenant_id, "x").rpartition("/")[0]
        query = self._db.collection(collection).order_by("at", direction=firestore.Query.DESCENDING)
        return [audit_from(snapshot.to_dict() or {}) for snapshot in query.limit(limit).stream()]

    def take_rate_slot(self, tenant_id: str, minute: str, limit: int, probe_key: str) -> int | None:
        from google.cloud import firestore

        from backend.adapters.firestore_store import _through_contention

        expires_at = _minute_start(minute) + timedelta(minutes=1) + _RATE_SLOT_RETENTION

        @firestore.transactional  # type: ignore[misc]
        def take_in(transaction: Any) -> int | None:
            for shard in rate_probe_order(tenant_id, probe_key):
                capacity = shard_capacity(limit, shard)
                if capacity == 0:
                    continue
                ref = self._db.document(rate_slot_path(tenant_id, minute, shard))
                snapshot = ref.get(transaction=transaction)
                count = int((snapshot.to_dict() or {}).get("count", 0)) if snapshot.exists else 0
                if count < capacity:
                    transaction.set(ref, {"tenant_id": tenant_id, "minute": minute, "shard": shard,
                                          "count": count + 1, "expires_at": expires_at})  # fmt: skip
                    return shard
            return None

        return _through_contention(  # type: ignore[no-any-return]
            lambda: take_in(self._db.transaction()), lambda: None, f"rate slot of {tenant_id}"
        )

    def rate_slots_taken(self, tenant_id: str, minute: str) -> int:
        total = 0
        for shard in range(RATE_SHARDS):
            snapshot = self._db.document(rate_slot_path(tenant_id, minute, shard)).get()
            if snapshot.exists:
                total += int((snapshot.to_dict() or {}).get("count", 0))
        return total


def build_controls_store(settings: ExecSettings) -> ControlsStore:
    """The controls where the ledger is (``EXEC_STORE``): Firestore, or the SQLite ledger's file."""
    from backend.adapters.stores import store_kind

    if store_kind(settings) == "firestore":
        from backend.adapters.firestore_store import firestore_client

        return FirestoreControlsStore(firestore_client())
    return SQLiteControlsStore(settings.sqlite_path)
