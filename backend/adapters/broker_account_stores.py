"""The broker-account registry on each store (``BrokerAccountRegistry``), beside the execution store.

Firestore: ``tenants/{t}/broker_accounts/{account_id}`` (venue, mode, the Secret Manager reference
of the keys, is_default; never a key). SQLite: a ``broker_accounts`` table keyed by the same path.
Setting a default clears the tenant's other defaults in the same transaction: a tenant has one
default at most.
"""

from __future__ import annotations

import contextlib
from typing import Any

import orjson

from backend.core.broker_accounts import BrokerAccount, with_default
from backend.core.paths import broker_account_path, tenant_collection_path
from backend.execution.ports import BrokerAccountRegistry

_FIELDS = ("tenant_id", "account_id", "venue", "mode", "credentials_ref", "is_default")

_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS broker_accounts (
    path TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    account_id TEXT NOT NULL,
    document TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS broker_accounts_by_tenant ON broker_accounts (tenant_id, account_id);
"""


def _document(account: BrokerAccount) -> dict[str, Any]:
    return account.model_dump(mode="json", include=set(_FIELDS))


def _account(data: dict[str, Any]) -> BrokerAccount:
    return BrokerAccount.model_validate({k: data.get(k) for k in _FIELDS if k in data})


def _registry_after(existing: list[BrokerAccount], account: BrokerAccount) -> list[BrokerAccount]:
    """The tenant's accounts after ``account`` is put: replaced by id; the only default if marked so."""
    others = [a for a in existing if a.account_id != account.account_id]
    accounts = sorted([*others, account], key=lambda a: a.account_id)
    return with_default(accounts, account.account_id) if account.is_default else accounts


class SQLiteBrokerAccounts:
    def __init__(self, store: Any) -> None:  # SQLiteExecutionStore: its connection and write lock
        self._store = store
        with store._write() as conn:
            for statement in filter(str.strip, _SQLITE_SCHEMA.split(";")):
                conn.execute(statement)

    def broker_accounts(self, tenant_id: str) -> list[BrokerAccount]:
        with self._store._lock:
            rows = self._store._conn.execute(
                "SELECT document FROM broker_accounts WHERE tenant_id = ? ORDER BY account_id", (tenant_id,)
            ).fetchall()
        return [_account(orjson.loads(row[0])) for row in rows]

    def broker_account(self, tenant_id: str, account_id: str) -> BrokerAccount | None:
        return next((a for a in self.broker_accounts(tenant_id) if a.account_id == account_id), None)

    def all_broker_accounts(self) -> list[BrokerAccount]:
        with self._store._lock:
            rows = self._store._conn.execute("SELECT document FROM broker_accounts ORDER BY path").fetchall()
        return [_account(orjson.loads(row[0])) for row in rows]

    def _write_all(self, conn: Any, accounts: list[BrokerAccount]) -> None:
        for account in accounts:
            conn.execute(
                "INSERT INTO broker_accounts (path, tenant_id, account_id, document) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (path) DO UPDATE SET document = excluded.document",
                (
                    broker_account_path(account.tenant_id, account.account_id),
                    account.tenant_id,
                    account.account_id,
                    orjson.dumps(_document(account)).decode(),
                ),
            )

    @staticmethod
    def _tenant_rows(conn: Any, tenant_id: str) -> list[BrokerAccount]:
        rows = conn.execute("SELECT document FROM broker_accounts WHERE tenant_id = ?", (tenant_id,))
        return [_account(orjson.loads(row[0])) for row in rows.fetchall()]

    def put_broker_account(self, account: BrokerAccount) -> None:
        with self._store._write() as conn:
            self._write_all(conn, _registry_after(self._tenant_rows(conn, account.tenant_id), account))

    def set_default_broker_account(self, tenant_id: str, account_id: str) -> None:
        with self._store._write() as conn:
            self._write_all(conn, with_default(self._tenant_rows(conn, tenant_id), account_id))


class FirestoreBrokerAccounts:
    def __init__(self, client: Any) -> None:  # google.cloud.firestore.Client
        self._db = client

    def _collection(self, tenant_id: str) -> Any:
        return self._db.collection(tenant_collection_path(tenant_id, "broker_accounts"))

    def broker_accounts(self, tenant_id: str) -> list[BrokerAccount]:
        snapshots = self._collection(tenant_id).stream()
        return sorted((_account(s.to_dict()) for s in snapshots), key=lambda a: a.account_id)

    def broker_account(self, tenant_id: str, account_id: str) -> BrokerAccount | None:
        snapshot = self._db.document(broker_account_path(tenant_id, account_id)).get()
        return _account(snapshot.to_dict()) if snapshot.exists else None

    def all_broker_accounts(self) -> list[BrokerAccount]:
        accounts = (_account(s.to_dict()) for s in self._db.collection_group("broker_accounts").stream())
        return sorted(accounts, key=lambda a: (a.tenant_id, a.account_id))

    def _replace_all(self, tenant_id: str, change: Any) -> None:
        """Read the tenant's accounts and write ``change(accounts)`` in one transaction."""
        from google.cloud import firestore

        @firestore.transactional  # type: ignore[misc]
        def run(transaction: Any) -> None:
            existing = [
                _account(s.to_dict()) for s in self._collection(tenant_id).stream(transaction=transaction)
            ]
            for account in change(existing):
                ref = self._db.document(broker_account_path(account.tenant_id, account.account_id))
                transaction.set(ref, {**_document(account), "updated_at": firestore.SERVER_TIMESTAMP})

        run(self._db.transaction())

    def put_broker_account(self, account: BrokerAccount) -> None:
        self._replace_all(account.tenant_id, lambda existing: _registry_after(existing, account))

    def set_default_broker_account(self, tenant_id: str, account_id: str) -> None:
        self._replace_all(tenant_id, lambda existing: with_default(existing, account_id))


class NoBrokerAccounts:
    """A store without a registry (a test double of the execution store): every tenant is in the
    single-firm install."""

    def broker_accounts(self, tenant_id: str) -> list[BrokerAccount]:
        return []

    def broker_account(self, tenant_id: str, account_id: str) -> BrokerAccount | None:
        return None

    def all_broker_accounts(self) -> list[BrokerAccount]:
        return []

    def put_broker_account(self, account: BrokerAccount) -> None:
        raise ValueError("this store keeps no broker-account registry")

    def set_default_broker_account(self, tenant_id: str, account_id: str) -> None:
        raise ValueError("this store keeps no broker-account registry")


def registry_for(store: Any) -> BrokerAccountRegistry:
    """The registry that lives beside ``store``, built once per store object."""
    existing = getattr(store, "_broker_account_registry", None)
    if existing is not None:
        return existing  # type: ignore[no-any-return]
    registry: BrokerAccountRegistry
    from backend.adapters.sqlite_store import SQLiteExecutionStore

    if isinstance(store, SQLiteExecutionStore):
        registry = SQLiteBrokerAccounts(store)
    else:
        from backend.adapters.firestore_store import FirestoreExecutionStore

        registry = (
            FirestoreBrokerAccounts(store._db)
            if isinstance(store, FirestoreExecutionStore)
            else NoBrokerAccounts()
        )
    with contextlib.suppress(AttributeError):  # a store with __slots__: built again next time
        store._broker_account_registry = registry
    return registry
