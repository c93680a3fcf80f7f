"""The ``execute`` HTTPS function, served by functions-framework on 127.0.0.1 from main.py with the
secrets and environment its manifest declares, the real alpaca-py SDK talking to the local Alpaca
server, and the embedded store on disk (the replay also on the Firestore emulator)."""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests

from devtools.alpaca_simulator import FakeAlpaca, running
from devtools.emulators import PROJECT
from devtools.served_functions import ServedFunction
from devtools.tokens import unsigned_token

TRADER = {"uid": "u1", "tenant_id": "acme_corp", "role": "trader"}
INTENT = {
    "strategy_id": "manual",
    "broker_account_id": "alpaca_main",
    "symbol": "AAPL",
    "side": "buy",
    "qty": 3,
}


@pytest.fixture(scope="module")
def fake() -> FakeAlpaca:
    fake = FakeAlpaca()
    fake.set_quote("AAPL", "189.99", "190.01")
    return fake


@pytest.fixture(scope="module")
def ledger_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("http") / "ledger.sqlite3"


@pytest.fixture(scope="module")
def alpaca_url(fake: FakeAlpaca) -> Iterator[str]:
    with running(fake) as url:
        yield url


@contextmanager
def served(target: str, alpaca_url: str, store_env: dict[str, str]) -> Iterator[str]:
    """``target`` (a function that trades) as deployed: its two broker secrets, everything else
    plain env (``store_env`` may add to it)."""
    served = ServedFunction.for_manifest(
        target,
        {
            "GOOGLE_CLOUD_PROJECT": PROJECT,
            "FIREBASE_AUTH_EMULATOR_HOST": "127.0.0.1:9099",
            "EXEC_DRY_RUN": "0",
            "APCA_API_BASE_URL": alpaca_url,
            "APCA_API_DATA_URL": alpaca_url,
            "EXEC_ALPACA_TIMEOUT_S": "2",
            **store_env,
        },
        secrets={"APCA_API_KEY_ID": "test-key", "APCA_API_SECRET_KEY": "test-secret"},
    )
    served.start()
    try:
        yield served.url
    finally:
        served.stop()


@pytest.fixture(scope="module")
def execute_url(alpaca_url: str, ledger_path: Path) -> Iterator[str]:
    with served("execute", alpaca_url, {"EXEC_STORE": "sqlite", "EXEC_SQLITE_PATH": str(ledger_path)}) as url:
        yield url


@pytest.fixture(scope="module", params=["sqlite", "firestore"])
def execute_url_on_each_store(
    request: pytest.FixtureRequest, alpaca_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    if request.param == "sqlite":
        store_env = {
            "EXEC_STORE": "sqlite",
            "EXEC_SQLITE_PATH": str(tmp_path_factory.mktemp("replay") / "ledger.sqlite3"),
        }
    else:
        emulator = request.getfixturevalue("firestore_emulator")
        store_env = {"EXEC_STORE": "firestore", "FIRESTORE_EMULATOR_HOST": emulator.host}
    with served("execute", alpaca_url, store_env) as url:
        yield url


def post(url: str, body: Any = None, token_claims: dict[str, Any] | None = TRADER, **kwargs: Any) -> Any:
    headers = dict(kwargs.pop("headers", {}))
    if token_claims is not None:
        headers["Authorization"] = f"Bearer {unsigned_token(token_claims)}"
    data = kwargs.pop("data", None)
    return requests.post(
        url, json=body if data is None else None, data=data, headers=headers, timeout=30, **kwargs
    )


def decisions(ledger_path: Path) -> int:
    if not ledger_path.exists():
        return 0
    with closing(sqlite3.connect(ledger_path)) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM decisions").fetchone()[0])


class TestRefusals:
    def test_only_post(self, execute_url: str) -> None:
        response = requests.get(execute_url, timeout=30)
        assert response.status_code == 405
        assert response.headers["Allow"] == "POST"

    @pytest.mark.parametrize(
        ("headers", "reason"),
        [
            ({}, "Authorization: Bearer"),
            ({"Authorization": "Basic abc"}, "Authorization: Bearer"),
            ({"Authorization": "Bearer not-a-jwt"}, "not accepted"),
        ],
    )
    def test_no_or_bad_token_is_401(
        self, execute_url: str, ledger_path: Path, headers: dict[str, str], reason: str
    ) -> None:
        response = requests.post(execute_url, json=INTENT, headers=headers, timeout=30)
        assert response.status_code == 401
        assert reason in response.json()["reason"]

    def test_expired_or_foreign_project_token_is_401(self, execute_url: str) -> None:
        expired = unsigned_token(TRADER, expires_in_s=-60)
        foreign = unsigned_token(TRADER, project="someone-else")
        for token in (expired, foreign):
            response = requests.post(
                execute_url, json=INTENT, headers={"Authorization": f"Bearer {token}"}, timeout=30
            )
            assert response.status_code == 401

    @pytest.mark.parametrize(
        ("claims", "body_metadata", "reason"),
        [
            ({"uid": "u1", "role": "trader"}, {}, "no tenant_id claim"),
            ({"uid": "u1", "tenant_id": "acme_corp", "role": "viewer"}, {}, "may not execute"),
            ({"uid": "u1", "tenant_id": "acme_corp"}, {}, "may not execute"),
            (TRADER, {"tenant_id": "other_corp"}, "tenant_id is not the caller's"),
            (TRADER, {"uid": "someone_else"}, "uid is not the caller's"),
        ],
    )
    def test_wrong_tenant_or_role_is_403(
        self, execute_url: str, claims: dict[str, Any], body_metadata: dict[str, Any], reason: str
    ) -> None:
        response = post(execute_url, {**INTENT, "metadata": body_metadata}, claims)
        assert response.status_code == 403
        assert reason in response.json()["reason"]

    def test_oversized_body_is_413(self, execute_url: str) -> None:
        response = post(execute_url, {**INTENT, "metadata": {"note": "x" * 20_000}})
        assert response.status_code == 413

    @pytest.mark.parametrize("data", [b"{not json", b"[1, 2, 3]", b""])
    def test_malformed_body_is_400(self, execute_url: str, data: bytes) -> None:
        response = post(execute_url, data=data, headers={"Content-Type": "application/json"})
        assert response.status_code == 400

    def test_invalid_intent_is_422_with_the_field_errors(self, execute_url: str) -> None:
        response = post(execute_url, {**INTENT, "qty": -1, "side": "hold", "broker_account_id": ""})
        assert response.status_code == 422
        fields = {error["field"] for error in response.json()["errors"]}
        assert fields == {"qty", "side", "broker_account_id"}

    @pytest.mark.parametrize(
        ("metadata", "reason"),
        [
            (False, "metadata must be an object"),
            (0, "metadata must be an object"),
            ("", "metadata must be an object"),
            ([], "metadata must be an object"),
            ({"__name__": "x"}, "key '__name__' must match"),
            ({"a": [[1, 2]]}, "a list inside a list"),
            ({"a": "x" * 1500}, "longer than 1024"),
            (json.loads('{"a":' * 254 + "1" + "}" * 254), "nested deeper than 16"),
            ({"a": {"b": {"c": {"d": {"e": 1}}}}}, "nested deeper than 4"),
        ],
    )
    def test_metadata_that_could_not_be_stored_is_422_and_writes_nothing(
        self, execute_url: str, ledger_path: Path, fake: FakeAlpaca, metadata: Any, reason: str
    ) -> None:
        before, posts = decisions(ledger_path), fake.requests_to("POST", "/v2/orders")
        response = post(execute_url, {**INTENT, "metadata": metadata}, headers={"Idempotency-Key": "md"})
        assert response.status_code == 422, response.text
        assert reason in response.text
        assert decisions(ledger_path) == before
        assert fake.requests_to("POST", "/v2/orders") == posts

    def test_idempotency_key_header_and_body_must_agree(self, execute_url: str) -> None:
        response = post(execute_url, {**INTENT, "idempotency_key": "a"}, headers={"Idempotency-Key": "b"})
        assert response.status_code == 422

    def test_refused_requests_write_nothing(
        self, execute_url: str, ledger_path: Path, fake: FakeAlpaca
    ) -> None:
        before, posts = decisions(ledger_path), fake.requests_to("POST", "/v2/orders")
        post(execute_url, INTENT, {"uid": "u1", "tenant_id": "acme_corp", "role": "viewer"})
        post(execute_url, {**INTENT, "qty": 0})
        post(execute_url, {**INTENT, "metadata": {"tenant_id": "other_corp"}})
        assert decisions(ledger_path) == before
        assert fake.requests_to("POST", "/v2/orders") == posts


class TestExecution:
    def test_valid_request_is_executed_for_the_token_tenant(
        self, execute_url: str, ledger_path: Path, fake: FakeAlpaca
    ) -> None:
        response = post(execute_url, INTENT, headers={"Idempotency-Key": "http-1"})
        assert response.status_code == 200, response.text
        result = response.json()
        assert result["status"] == "placed"
        assert result["tenant_id"] == "acme_corp"
        assert result["uid"] == "u1"
        assert result["broker_order"]["order_id"] in fake.orders
        assert result["ledger_path"].startswith("tenants/acme_corp/ledger_trades/")
        with closing(sqlite3.connect(ledger_path)) as conn:
            rows = conn.execute("SELECT path FROM ledger_trades WHERE tenant_id = 'acme_corp'").fetchall()
        assert [row[0] for row in rows] == [result["ledger_path"]]

    def test_another_tenants_trader_cannot_read_or_replay_this_tenants_key(
        self, execute_url: str, fake: FakeAlpaca
    ) -> None:
        mine = post(execute_url, INTENT, headers={"Idempotency-Key": "shared-key"})
        theirs = post(
            execute_url,
            INTENT,
            {"uid": "u9", "tenant_id": "other_corp", "role": "trader"},
            headers={"Idempotency-Key": "shared-key"},
        )
        assert mine.status_code == theirs.status_code == 200
        assert theirs.json()["tenant_id"] == "other_corp"
        assert theirs.json()["replayed"] is False  # the key is per tenant: no answer leaks across
        assert (
            theirs.json()["broker_order"]["client_order_id"] != mine.json()["broker_order"]["client_order_id"]
        )

    def test_the_same_intent_twice_is_answered_from_the_store_on_each_store(
        self, execute_url_on_each_store: str, fake: FakeAlpaca
    ) -> None:
        key = f"replay-{uuid.uuid4().hex[:8]}"
        posts = fake.requests_to("POST", "/v2/orders")
        first = post(execute_url_on_each_store, INTENT, headers={"Idempotency-Key": key})
        assert first.status_code == 200, first.text
        assert (first.json()["status"], first.json()["replayed"]) == ("placed", False)
        again = post(execute_url_on_each_store, INTENT, headers={"Idempotency-Key": key})
        assert again.status_code == 200, again.text
        assert again.json()["replayed"] is True
        assert (
            again.json()["broker_order"]["client_order_id"] == first.json()["broker_order"]["client_order_id"]
        )
        assert again.json()["decided_at"] == first.json()["decided_at"]
        assert fake.requests_to("POST", "/v2/orders") == posts + 1
