"""The auth matrix through the served functions: ``execute`` (and ``orders``) served by
functions-framework from main.py as deployed (``K_SERVICE`` set), verifying RS256 tokens signed by a
local key against a local certificate server and looking users up at a local ``accounts:lookup``,
with the real alpaca-py SDK at the local Alpaca server and the embedded store on disk.

Every cell is answered with its status and a reason within the spec's bound (10 s), and a refused
request writes nothing and sends nothing to the broker. The certificate endpoint refusing
connections, never answering, or answering garbage is a 503 (a token that can never verify stays a
401); so is a user lookup that never answers, and emulator token mode in a deployed function.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests

from devtools.alpaca_simulator import FakeAlpaca, running
from devtools.auth_servers import CertificateServer, Mode, User, UsersServer
from devtools.emulators import PROJECT
from devtools.served_functions import ServedFunction
from devtools.tokens import SigningKey, signed_token, unsigned_token

BOUND_S = 10.0  # the spec: every refusal within 10 s (the timeouts used here are 3 s)
KEY = SigningKey.generate("key-1")  # the one the certificate server publishes
STRANGER = SigningKey.generate("key-2")  # a key Google never published
TRADER = {"uid": "u1", "tenant_id": "acme_corp", "role": "trader"}
INTENT = {
    "strategy_id": "manual",
    "broker_account_id": "alpaca_main",
    "symbol": "AAPL",
    "side": "buy",
    "qty": 1,
}
ORDERS = "/v2/orders"


@pytest.fixture(scope="module")
def fake() -> FakeAlpaca:
    fake = FakeAlpaca()
    fake.set_quote("AAPL", "189.99", "190.01")
    return fake


@pytest.fixture(scope="module")
def alpaca_url(fake: FakeAlpaca) -> Iterator[str]:
    with running(fake) as url:
        yield url


@pytest.fixture(scope="module")
def certificates() -> Iterator[CertificateServer]:
    with CertificateServer([KEY]) as server:
        yield server  # type: ignore[misc]


@pytest.fixture(scope="module")
def users() -> Iterator[UsersServer]:
    with UsersServer(PROJECT) as server:
        server.users.update({"u1": User(), "viewer": User()})
        yield server  # type: ignore[misc]


@contextmanager
def serve(target: str, alpaca_url: str, env: dict[str, str]) -> Iterator[ServedFunction]:
    """``target`` as deployed (``K_SERVICE`` set, the broker secrets its manifest declares), in
    production token mode unless ``env`` says otherwise."""
    function = ServedFunction.for_manifest(
        target,
        {
            "GOOGLE_CLOUD_PROJECT": PROJECT,
            "K_SERVICE": target,
            "FIREBASE_AUTH_EMULATOR_HOST": "",
            "FUNCTIONS_EMULATOR": "",
            "EXEC_DRY_RUN": "0",
            "APCA_API_BASE_URL": alpaca_url,
            "APCA_API_DATA_URL": alpaca_url,
            "EXEC_ALPACA_TIMEOUT_S": "2",
            **env,
        },
        secrets={"APCA_API_KEY_ID": "test-key", "APCA_API_SECRET_KEY": "test-secret"},
    )
    function.start()
    try:
        yield function
    finally:
        function.stop()


def store_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    path = tmp_path_factory.mktemp("auth") / "ledger.sqlite3"
    return {"EXEC_STORE": "sqlite", "EXEC_SQLITE_PATH": str(path)}


@pytest.fixture(scope="module")
def execute(
    alpaca_url: str,
    certificates: CertificateServer,
    users: UsersServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServedFunction]:
    env = {"EXEC_AUTH_CERTS_URL": certificates.url, "EXEC_AUTH_USERS_URL": users.url}
    with serve("execute", alpaca_url, env | store_env(tmp_path_factory)) as function:
        yield function


def now() -> int:
    return int(time.time())


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def signed(claims: dict[str, Any] = TRADER, **overrides: Any) -> dict[str, str]:
    return bearer(signed_token(claims, KEY, **overrides))


def writes(function: ServedFunction, fake: FakeAlpaca) -> tuple[int, int]:
    """(decisions in the function's store, orders the broker received)."""
    path = Path(function.env["EXEC_SQLITE_PATH"])
    if not path.exists():
        return 0, fake.requests_to("POST", ORDERS)
    with closing(sqlite3.connect(path)) as conn:
        decisions = int(conn.execute("SELECT COUNT(*) FROM decisions").fetchone()[0])
    return decisions, fake.requests_to("POST", ORDERS)


def timed(method: str, url: str, **kwargs: Any) -> tuple[requests.Response, float]:
    started = time.monotonic()
    response = requests.request(method, url, timeout=30, **kwargs)
    return response, time.monotonic() - started


def refused_within_bound(
    function: ServedFunction, fake: FakeAlpaca, headers: dict[str, str], status: int, reason: str
) -> dict[str, Any]:
    """POST the intent with ``headers``: answered ``status`` naming ``reason``, within the bound,
    nothing written, nothing sent."""
    before = writes(function, fake)
    response, elapsed = timed("POST", function.url, json=INTENT, headers=headers)
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert reason in body["reason"], body
    assert elapsed < BOUND_S
    assert writes(function, fake) == before
    return body


Headers = Callable[[], dict[str, str]]

# (name, headers, status, reason): each built at call time (tokens carry the time)
PRODUCTION_CELLS: list[tuple[str, Headers, int, str]] = [
    ("no header", lambda: {}, 401, "Authorization: Bearer"),
    ("bad scheme", lambda: {"Authorization": "Basic dTE6cGFzc3dvcmQ="}, 401, "Authorization: Bearer"),
    ("garbage token", lambda: bearer("not-a-jwt"), 401, "not a JWT"),
    ("garbage parts", lambda: bearer("a.b.c"), 401, "not base64url"),
    ("alg none", lambda: bearer(unsigned_token(TRADER)), 401, "not signed with RS256"),
    ("alg HS256", lambda: signed(header={"alg": "HS256"}), 401, "not signed with RS256"),
    ("no kid", lambda: signed(header={"kid": None}), 401, "names no key id"),
    ("unknown kid", lambda: bearer(signed_token(TRADER, STRANGER)), 401, "not Google's current"),
    (
        "forged signature",
        lambda: bearer(signed_token(TRADER, STRANGER, header={"kid": KEY.kid})),
        401,
        "signature does not match",
    ),
    ("wrong audience", lambda: signed(payload={"aud": "someone-else"}), 401, "audience"),
    ("wrong issuer", lambda: signed(payload={"iss": "https://securetoken.google.com/x"}), 401, "issuer"),
    ("expired", lambda: signed(expires_in_s=-60), 401, "expired"),
    ("future iat", lambda: signed(payload={"iat": now() + 3600}), 401, "issued in the future"),
    (
        "future auth_time",
        lambda: signed(payload={"auth_time": now() + 3600}),
        401,
        "authenticated in the future",
    ),
    ("exp string", lambda: signed(payload={"exp": str(now() + 3600)}), 401, "exp claim is not a number"),
    ("exp boolean", lambda: signed(payload={"exp": True}), 401, "exp claim is not a number"),
    ("no auth_time", lambda: signed(payload={"auth_time": None}), 401, "auth_time claim"),
    ("subject too long", lambda: signed({**TRADER, "uid": "u" * 129}), 401, "subject"),
    ("subject a number", lambda: signed(payload={"sub": 7}), 401, "subject"),
    ("role list", lambda: signed({**TRADER, "role": ["trader"]}), 403, "role claim is not a string"),
    ("role object", lambda: signed({**TRADER, "role": {"trader": True}}), 403, "role claim is not a string"),
    ("tenant_id int", lambda: signed({**TRADER, "tenant_id": 7}), 403, "tenant_id claim is not a string"),
    ("tenant_id list", lambda: signed({**TRADER, "tenant_id": ["acme_corp"]}), 403, "not a string"),
    ("no tenant", lambda: signed({"uid": "u1", "role": "trader"}), 403, "no tenant_id claim"),
    ("viewer", lambda: signed({**TRADER, "uid": "viewer", "role": "viewer"}), 403, "may not execute"),
    ("deleted user", lambda: signed({**TRADER, "uid": "ghost"}), 401, "no longer exists"),
]


@pytest.mark.parametrize(
    ("headers", "status", "reason"),
    [cell[1:] for cell in PRODUCTION_CELLS],
    ids=[cell[0] for cell in PRODUCTION_CELLS],
)
def test_production_refusals(
    execute: ServedFunction, fake: FakeAlpaca, headers: Headers, status: int, reason: str
) -> None:
    refused_within_bound(execute, fake, headers(), status, reason)


def test_a_valid_signed_token_trades(execute: ServedFunction, fake: FakeAlpaca) -> None:
    before = writes(execute, fake)
    response, elapsed = timed("POST", execute.url, json=INTENT, headers=signed())
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "placed"
    assert elapsed < BOUND_S
    assert writes(execute, fake) == (before[0] + 1, before[1] + 1)


def test_revoked_and_disabled_users_are_refused(
    execute: ServedFunction, fake: FakeAlpaca, users: UsersServer
) -> None:
    users.users["revoked"] = User(valid_since=now() - 60)
    users.users["disabled"] = User(disabled=True)
    before_revocation = {"auth_time": now() - 120, "iat": now() - 10}  # a refreshed token of an old session
    revoked = signed({**TRADER, "uid": "revoked"}, payload=before_revocation)
    refused_within_bound(execute, fake, revoked, 401, "revoked")
    refused_within_bound(execute, fake, signed({**TRADER, "uid": "disabled"}), 401, "the user is disabled")
    # A session begun after the revocation (signed in again) trades.
    response = requests.post(
        execute.url, json={**INTENT, "qty": 2}, headers=signed({**TRADER, "uid": "revoked"}), timeout=30
    )
    assert response.status_code == 200, response.text


def test_users_are_looked_up_with_the_emulator_token_never_google_credentials(
    execute: ServedFunction, users: UsersServer
) -> None:
    requests.post(execute.url, json=INTENT, headers=signed({**TRADER, "uid": "lookup-probe"}), timeout=30)
    assert users.requests
    assert {authorization for _, _, authorization in users.requests} == {"Bearer owner"}
    assert {path for _, path, _ in users.requests} == {f"/v1/projects/{PROJECT}/accounts:lookup"}


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        (Mode.HANG, "did not answer within 3 s"),
        (Mode.GARBAGE, "no user record"),
        (Mode.ERROR, "answered 503"),
        (Mode.REFUSE, "unreachable"),
    ],
)
def test_a_user_lookup_that_fails_is_503(
    execute: ServedFunction, fake: FakeAlpaca, users: UsersServer, mode: Mode, reason: str
) -> None:
    uid = f"lookup-{uuid.uuid4().hex[:8]}"  # not in the function's user cache
    users.users[uid] = User()
    users.set_mode(mode)
    try:
        body = refused_within_bound(execute, fake, signed({**TRADER, "uid": uid}), 503, reason)
    finally:
        users.set_mode(Mode.OK)
    assert body["error"] == "auth_unavailable"


def test_no_credentials_for_the_user_lookup_is_503(
    alpaca_url: str,
    certificates: CertificateServer,
    fake: FakeAlpaca,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Deployed without credentials to read users (Google's users URL, no service account):
    every request a 503 naming it, not a 500."""
    env = {
        "EXEC_AUTH_CERTS_URL": certificates.url,
        "EXEC_AUTH_USERS_URL": "",  # Google's
        "GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path_factory.mktemp("adc") / "missing.json"),
    }
    with serve("execute", alpaca_url, env | store_env(tmp_path_factory)) as function:
        refused_within_bound(function, fake, signed(), 503, "no usable credentials (DefaultCredentialsError)")


@pytest.fixture(scope="module")
def broken_certificates() -> Iterator[CertificateServer]:
    with CertificateServer([KEY]) as server:
        yield server  # type: ignore[misc]


@pytest.fixture(scope="module")
def execute_without_certificates(
    alpaca_url: str,
    broken_certificates: CertificateServer,
    users: UsersServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServedFunction]:
    """A function that has never fetched the certificates: the endpoint misbehaves from the start."""
    broken_certificates.set_mode(Mode.REFUSE)
    env = {"EXEC_AUTH_CERTS_URL": broken_certificates.url, "EXEC_AUTH_USERS_URL": users.url}
    with serve("execute", alpaca_url, env | store_env(tmp_path_factory)) as function:
        yield function


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        (Mode.REFUSE, "certificate endpoint is unreachable"),
        (Mode.HANG, "certificate endpoint did not answer within 3 s"),
        (Mode.GARBAGE, "answered no certificates"),
        (Mode.ERROR, "certificate endpoint answered 503"),
    ],
)
def test_certificate_endpoint_failing_is_503(
    execute_without_certificates: ServedFunction,
    broken_certificates: CertificateServer,
    fake: FakeAlpaca,
    mode: Mode,
    reason: str,
) -> None:
    broken_certificates.set_mode(mode)
    response = refused_within_bound(execute_without_certificates, fake, signed(), 503, reason)
    assert response["error"] == "auth_unavailable"


def test_concurrent_requests_share_one_failed_certificate_fetch(
    execute_without_certificates: ServedFunction, broken_certificates: CertificateServer, fake: FakeAlpaca
) -> None:
    """Eight requests at once while the endpoint never answers: every one a 503 within the bound
    (those that waited for the one fetch fail with it instead of queueing their own)."""
    broken_certificates.set_mode(Mode.HANG)
    fetches_before, before = len(broken_certificates.requests), writes(execute_without_certificates, fake)
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda _: timed("POST", execute_without_certificates.url, json=INTENT,
                                                headers=signed()), range(8)))  # fmt: skip
    assert [response.status_code for response, _ in answers] == [503] * 8
    assert max(elapsed for _, elapsed in answers) < BOUND_S
    assert len(broken_certificates.requests) - fetches_before == 1  # all arrived during the first
    assert writes(execute_without_certificates, fake) == before


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        (lambda: signed(expires_in_s=-60), "expired"),
        (lambda: bearer(unsigned_token(TRADER)), "not signed with RS256"),
        (lambda: signed(payload={"aud": "someone-else"}), "audience"),
    ],
)
def test_a_token_that_can_never_verify_is_401_even_without_certificates(
    execute_without_certificates: ServedFunction,
    broken_certificates: CertificateServer,
    fake: FakeAlpaca,
    headers: Headers,
    reason: str,
) -> None:
    broken_certificates.set_mode(Mode.HANG)
    refused_within_bound(execute_without_certificates, fake, headers(), 401, reason)


def test_emulator_mode_in_a_deployed_function_refuses_every_request(
    alpaca_url: str, fake: FakeAlpaca, tmp_path_factory: pytest.TempPathFactory
) -> None:
    env = {"FIREBASE_AUTH_EMULATOR_HOST": "127.0.0.1:9099"} | store_env(tmp_path_factory)
    with serve("execute", alpaca_url, env) as function:
        for headers in (bearer(unsigned_token(TRADER)), {}, signed()):
            body = refused_within_bound(function, fake, headers, 503, "FIREBASE_AUTH_EMULATOR_HOST is set")
            assert body["error"] == "auth_unavailable"
        response, _ = timed("GET", function.url)
        assert response.status_code == 503
        logged = [json.loads(line) for line in function.log.read_text().splitlines() if line.startswith("{")]
    events = [entry for entry in logged if entry.get("event") == "auth.misconfigured"]
    assert len(events) == 1, logged
    assert "unsigned" in events[0]["message"]


def test_emulator_mode_under_the_firebase_cli_emulator_keeps_working(
    alpaca_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    env = {"FIREBASE_AUTH_EMULATOR_HOST": "127.0.0.1:9099", "FUNCTIONS_EMULATOR": "true"}
    with serve("execute", alpaca_url, env | store_env(tmp_path_factory)) as function:
        response = requests.post(
            function.url, json=INTENT, headers=bearer(unsigned_token(TRADER)), timeout=30
        )
    assert response.status_code == 200, response.text


@pytest.fixture(scope="module")
def orders(
    alpaca_url: str,
    certificates: CertificateServer,
    users: UsersServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServedFunction]:
    env = {"EXEC_AUTH_CERTS_URL": certificates.url, "EXEC_AUTH_USERS_URL": users.url}
    with serve("orders", alpaca_url, env | store_env(tmp_path_factory)) as function:
        yield function


ORDERS_CELLS: list[tuple[str, Headers, int, str]] = [
    ("no header", lambda: {}, 401, "Authorization: Bearer"),
    ("alg none", lambda: bearer(unsigned_token(TRADER)), 401, "not signed with RS256"),
    (
        "forged signature",
        lambda: bearer(signed_token(TRADER, STRANGER, header={"kid": KEY.kid})),
        401,
        "signature does not match",
    ),
    ("role list", lambda: signed({**TRADER, "role": ["viewer"]}), 403, "role claim is not a string"),
    ("tenant_id int", lambda: signed({**TRADER, "tenant_id": 7}), 403, "tenant_id claim is not a string"),
    ("valid token, no such order", lambda: signed(), 404, "has no execution"),
]


@pytest.mark.parametrize(
    ("headers", "status", "reason"),
    [cell[1:] for cell in ORDERS_CELLS],
    ids=[cell[0] for cell in ORDERS_CELLS],
)
def test_orders_matrix(orders: ServedFunction, headers: Headers, status: int, reason: str) -> None:
    response, elapsed = timed("GET", f"{orders.url}/orders?idempotency_key=nothing-here", headers=headers())
    assert response.status_code == status, response.text
    assert reason in response.json()["reason"]
    assert elapsed < BOUND_S
