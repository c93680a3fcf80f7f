"""firestore.rules, for real, in the emulator's rules engine: who x path x operation, every cell.

Requests go through the emulator's REST API as end users, with unsigned ID tokens (``alg: none``)
carrying ``sub``/``user_id`` and the ``tenant_id`` custom claim. Seeding uses the admin client,
which the emulator treats as the owner and exempts from rules, like the backend's service account.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.emulators import PROJECT, FirestoreEmulator
from devtools.tokens import unsigned_token

RULES = Path(__file__).resolve().parents[1] / "firestore.rules"

PATHS = {
    "ledger": "tenants/t1/ledger_trades/tr_1",
    "decision": "tenants/t1/decisions/dc_1",
    "broker account": "tenants/t1/broker_accounts/a-main",
    "slot": "tenants/t1/daily_trade_slots/2026-03-02~0000",
    "position": "tenants/t1/positions/acct~AAPL",
    "strategy": "tenants/t1/strategies/s1",
    "history": "users/u1/portfolio/history/trades/tr_1",
    "lots": "users/u1/portfolio/tax/lots/acct~AAPL",
    "open lot": "users/u1/portfolio/tax/lots/acct~AAPL/open/tr_1",
    "settings": "users/u1/portfolio/settings",
    "profile": "users/u1",
    "sweep state": "ops/settlement_sweep",
    "elsewhere": "misc/anything",
    "tenant controls": "tenants/t1/controls/current",
    "control audit": "tenants/t1/control_audit/20260302T153000000000Z-v000001",
    "rate slot": "tenants/t1/rate_slots/20260302T1530Z~03",
    "global controls": "controls/global",
    "global control audit": "control_audit/20260302T153000000000Z-v000001",
}

USERS: dict[str, dict[str, Any] | None] = {
    "owner (u1, member of t1)": {"uid": "u1", "tenant_id": "t1"},
    "tenant colleague (u3, member of t1)": {"uid": "u3", "tenant_id": "t1"},
    "tenant admin (u5, admin of t1)": {"uid": "u5", "tenant_id": "t1", "role": "admin"},
    "other tenant's admin (u6, admin of t2)": {"uid": "u6", "tenant_id": "t2", "role": "admin"},
    "other tenant's user (u2, t2)": {"uid": "u2", "tenant_id": "t2"},
    "signed in, no tenant (u4)": {"uid": "u4"},
    "anonymous": None,
    "trader of t1 (u7)": {"uid": "u7", "tenant_id": "t1", "role": "trader"},
}

# The only allowed cells: reads. Every write by every client is denied.
READABLE = {
    "owner (u1, member of t1)": {"ledger", "decision", "history", "lots", "open lot", "settings"},
    "tenant colleague (u3, member of t1)": {"ledger", "decision"},
    # Runtime controls, their audit records and the broker accounts: the tenant's admins only.
    "tenant admin (u5, admin of t1)": {
        "ledger",
        "decision",
        "broker account",
        "tenant controls",
        "control audit",
    },
    "other tenant's admin (u6, admin of t2)": set(),
    "other tenant's user (u2, t2)": set(),
    "signed in, no tenant (u4)": set(),
    "anonymous": set(),
    "trader of t1 (u7)": {"ledger", "decision"},
}

OPERATIONS = ("get", "list", "create", "update", "delete")


@pytest.fixture(scope="module")
def rules_emulator(firestore_emulator: FirestoreEmulator) -> Iterator[FirestoreEmulator]:
    assert firestore_emulator.rules == RULES, "the session emulator must run with firestore.rules"
    from google.cloud import firestore

    firestore_emulator.wipe()
    client = firestore.Client(project=PROJECT)
    for path in PATHS.values():
        client.document(path).set({"seeded": True})
    yield firestore_emulator
    client.close()
    firestore_emulator.wipe()


def request(emulator: FirestoreEmulator, user: dict[str, Any] | None, operation: str, path: str) -> int:
    base = f"http://{emulator.host}/v1/projects/{PROJECT}/databases/(default)/documents"
    parent, _, doc_id = path.rpartition("/")
    body = json.dumps({"fields": {"written_by_client": {"booleanValue": True}}}).encode()
    method, url, data = {
        "get": ("GET", f"{base}/{path}", None),
        "list": ("GET", f"{base}/{parent}", None),
        "create": ("POST", f"{base}/{parent}?documentId={doc_id}-new", body),
        "update": ("PATCH", f"{base}/{path}", body),
        "delete": ("DELETE", f"{base}/{path}", None),
    }[operation]
    headers = {"Content-Type": "application/json"}
    if user is not None:
        headers["Authorization"] = f"Bearer {unsigned_token(user)}"
    call = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(call, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("path_name", list(PATHS))
@pytest.mark.parametrize("user_name", list(USERS))
def test_rules_matrix(
    rules_emulator: FirestoreEmulator, user_name: str, path_name: str, operation: str
) -> None:
    status = request(rules_emulator, USERS[user_name], operation, PATHS[path_name])
    allowed = operation in ("get", "list") and path_name in READABLE[user_name]
    if allowed:
        assert status == 200, f"{user_name} should {operation} {PATHS[path_name]}, got {status}"
    else:
        assert status == 403, f"{user_name} must not {operation} {PATHS[path_name]}, got {status}"
