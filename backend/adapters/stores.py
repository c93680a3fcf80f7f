"""Which store the engine uses, from configuration (``EXEC_STORE``, ``EXEC_FANOUT``)."""

from __future__ import annotations

import os
from collections.abc import Mapping

from backend.execution.ports import ExecutionStore, PortfolioStore
from backend.execution.settings import ExecSettings

CLOUD_PROJECT_VARIABLES = ("GOOGLE_CLOUD_PROJECT", "GCLOUD_PROJECT")


def store_kind(settings: ExecSettings, environ: Mapping[str, str] | None = None) -> str:
    """``sqlite`` or ``firestore``. ``auto`` picks Firestore where a user would expect it: under the
    emulator (``FIRESTORE_EMULATOR_HOST``) or with a Google Cloud project (as in Cloud Functions)."""
    if settings.store != "auto":
        return settings.store
    env = os.environ if environ is None else environ
    if env.get("FIRESTORE_EMULATOR_HOST") or any(env.get(name) for name in CLOUD_PROJECT_VARIABLES):
        return "firestore"
    return "sqlite"


def build_stores(
    settings: ExecSettings, environ: Mapping[str, str] | None = None
) -> tuple[ExecutionStore, PortfolioStore | None]:
    """The execution store, and the portfolio store when the fan-out runs inline (else None)."""
    kind = store_kind(settings, environ)
    store: ExecutionStore
    if kind == "firestore":
        from backend.adapters.firestore_store import FirestoreExecutionStore, firestore_client

        store = FirestoreExecutionStore(firestore_client())
    else:
        from backend.adapters.sqlite_store import SQLiteExecutionStore

        store = SQLiteExecutionStore(settings.sqlite_path)
    inline = settings.fanout == "inline" or (settings.fanout == "auto" and kind == "sqlite")
    return store, store if inline else None  # type: ignore[return-value]
