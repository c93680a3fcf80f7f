"""End to end under the real Firebase CLI's emulator suite (``firebase emulators:start``), as a
Firebase user runs the project: the CLI discovers ``main.py`` through the ``venv`` link, serves
every function, and delivers the events itself.

A manual scheduler tick at the ``-0`` URL publishes a real Pub/Sub message; the CLI delivers it to
``run_strategy``, which places orders through alpaca-py at the local Alpaca server and writes the
ledger to the CLI's Firestore emulator; the CLI delivers each new ledger document to
``fan_out_ledger_trade`` (its own Firestore trigger), which writes the portfolio history. Then
``execute`` takes an order at the CLI's URL with an ID token from the CLI's Auth emulator.

Secrets come from a local Secret Manager (``devtools/secret_manager.py``), which the CLI asks per
function for the secrets that function declares, as deployed (a ``.secret.local`` would hand every
secret to every function). The CLI's readiness probes reach every function and must run nothing.

Skipped when the pinned CLI is not installed (``npm ci`` in ``scripts/firebase-cli``), no Java ≥ 21
or no gcloud emulators are found; ``MSR_REQUIRE_FIREBASE_CLI=1`` makes those a failure.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any, TypeVar

import pytest
import requests

from devtools.alpaca_simulator import FakeAlpaca, running
from devtools.firebase_cli import CLI_BIN, ROOT, EmulatorSuite, SetupError, cli_environment
from devtools.secret_manager import secret_manager

PROJECT = "demo-msr-e2e"
TENANT, STRATEGY = "acme_corp", "equity_builder"
SCHEDULE_TIME = "2026-03-02T15:30:00Z"
SECRETS = {"APCA_API_KEY_ID": "cli-key", "APCA_API_SECRET_KEY": "cli-secret"}
REQUIRE_ENV = "MSR_REQUIRE_FIREBASE_CLI"
# Asynchronous deliveries (Pub/Sub, Firestore triggers) land within this; a cold Python runtime
# per function is most of it.
DELIVERY_WAIT_S = 120.0

T = TypeVar("T")


def _missing() -> str | None:
    if not CLI_BIN.exists():
        return "the pinned Firebase CLI is not installed (npm ci in scripts/firebase-cli)"
    try:
        cli_environment(os.environ)
    except SetupError as problem:
        return str(problem)
    return None


def eventually(read: Callable[[], T], done: Callable[[T], bool], what: str) -> T:
    """``read()`` once ``done`` holds for it: the deliveries are asynchronous."""
    deadline = time.monotonic() + DELIVERY_WAIT_S
    while True:
        value = read()
        if done(value):
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: still {value!r} after {DELIVERY_WAIT_S:.0f} s")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def fake() -> FakeAlpaca:
    fake = FakeAlpaca()
    fake.set_quote("AAPL", "189.99", "190.01")
    fake.set_quote("MSFT", "409.95", "410.05")
    fake.set_quote("SPY", "499.99", "500.01")
    return fake


@pytest.fixture(scope="module")
def suite(fake: FakeAlpaca) -> Iterator[tuple[EmulatorSuite, list[str]]]:
    reason = _missing()
    if (ROOT / ".secret.local").exists():
        reason = "a .secret.local in the repository root would hand every secret to every function"
    if reason is not None:
        if os.environ.get(REQUIRE_ENV, "") not in ("", "0"):
            pytest.fail(f"{REQUIRE_ENV}=1 but {reason}")
        pytest.skip(reason)
    with running(fake) as alpaca_url, secret_manager(SECRETS) as (secrets_url, asked):
        plain = {"EXEC_DRY_RUN": "0", "APCA_API_BASE_URL": alpaca_url, "APCA_API_DATA_URL": alpaca_url}
        suite = EmulatorSuite(PROJECT, plain, {"CLOUD_SECRET_MANAGER_URL": secrets_url})
        started = time.monotonic()
        suite.start()
        print(f"\nFirebase emulators ready in {time.monotonic() - started:.1f} s")
        try:
            yield suite, asked
        finally:
            suite.stop()


@pytest.fixture(scope="module")
def firestore(suite: tuple[EmulatorSuite, list[str]]) -> Iterator[Any]:
    from google.cloud import firestore as firestore_client

    emulators, _ = suite
    previous = os.environ.get("FIRESTORE_EMULATOR_HOST")
    os.environ["FIRESTORE_EMULATOR_HOST"] = emulators.host("firestore")
    client = firestore_client.Client(project=PROJECT)
    try:
        yield client
    finally:
        client.close()
        if previous is None:
            os.environ.pop("FIRESTORE_EMULATOR_HOST", None)
        else:
            os.environ["FIRESTORE_EMULATOR_HOST"] = previous


def auth_emulator_token(emulators: EmulatorSuite, claims: dict[str, str]) -> str:
    """A user of the CLI's Auth emulator with custom claims, signed in: its ID token."""
    base = f"http://{emulators.host('auth')}/identitytoolkit.googleapis.com/v1"
    owner = {"Authorization": "Bearer owner"}
    credentials = {
        "email": "trader@example.com",
        "password": "local-only-password",
        "returnSecureToken": True,
    }
    uid = requests.post(f"{base}/accounts:signUp?key=local", json=credentials, timeout=30).json()["localId"]
    update = {"localId": uid, "customAttributes": json.dumps(claims)}
    answer = requests.post(
        f"{base}/projects/{PROJECT}/accounts:update", json=update, headers=owner, timeout=30
    )
    assert answer.status_code == 200, answer.text
    signed_in = requests.post(f"{base}/accounts:signInWithPassword?key=local", json=credentials, timeout=30)
    return str(signed_in.json()["idToken"])


def test_tick_run_ledger_and_history_under_the_cli(
    suite: tuple[EmulatorSuite, list[str]], firestore: Any, fake: FakeAlpaca
) -> None:
    emulators, asked = suite
    firestore.document(f"tenants/{TENANT}/strategies/{STRATEGY}").set(
        {"enabled": True, "strategy": "cost_aware_equity", "symbols": ["AAPL", "MSFT"],
         "broker_account_id": "alpaca_main", "uid": "u1", "config": {"target_qty": 5}, "qty": {"EQUITY": "5"}}
    )  # fmt: skip

    # The CLI's own health probe reaches the function too; the name without -0 is not it.
    assert (
        requests.get(f"{emulators.url('schedule_strategy_runs-0')}/__/health", timeout=60).status_code == 200
    )
    assert requests.post(emulators.url("schedule_strategy_runs"), timeout=60).status_code == 404
    tick = requests.post(
        emulators.url("schedule_strategy_runs-0"), headers={"X-CloudScheduler-ScheduleTime": SCHEDULE_TIME},
        timeout=120,
    )  # fmt: skip
    assert tick.status_code == 200, tick.text

    ledger = eventually(
        lambda: list(firestore.collection(f"tenants/{TENANT}/ledger_trades").stream()),
        lambda rows: len(rows) >= 2, "ledger rows from the run the CLI delivered",
    )  # fmt: skip
    assert sorted(row.get("symbol") for row in ledger) == ["AAPL", "MSFT"]
    assert all(Decimal(row.get("qty")) == 5 for row in ledger)
    assert fake.requests_to("POST", "/v2/orders") == 2

    history = eventually(
        lambda: list(firestore.collection("users/u1/portfolio/history/trades").stream()),
        lambda entries: len(entries) >= 2, "history entries from the CLI's Firestore trigger",
    )  # fmt: skip
    assert sorted(entry.id for entry in history) == sorted(row.id for row in ledger)
    assert all(entry.get("tax")["lot_method"] == "FIFO" for entry in history)

    # Only the tick ran a strategy (a probe that ran one would have recorded a run of its own).
    runs = [run.id for run in firestore.collection(f"tenants/{TENANT}/strategy_runs").stream()]
    assert runs == [f"{STRATEGY}~20260302T1530Z"]
    assert set(asked) == set(SECRETS)  # the broker keys came from Secret Manager, by declaration


def test_execute_at_the_cli_url_with_an_auth_emulator_token(
    suite: tuple[EmulatorSuite, list[str]], fake: FakeAlpaca
) -> None:
    emulators, _ = suite
    token = auth_emulator_token(emulators, {"tenant_id": TENANT, "role": "trader"})
    url = emulators.url("execute")
    assert requests.get(f"{url}/__/health", timeout=60).text == "ok"
    intent = {"strategy_id": "manual", "broker_account_id": "alpaca_main", "symbol": "SPY", "side": "buy",
              "qty": "2", "idempotency_key": "cli-first-order"}  # fmt: skip
    before = fake.requests_to("POST", "/v2/orders")
    answer = requests.post(url, json=intent, headers={"Authorization": f"Bearer {token}"}, timeout=120)
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "placed"
    assert fake.requests_to("POST", "/v2/orders") == before + 1
    refused = requests.post(url, json=intent, timeout=60)
    assert refused.status_code == 401
