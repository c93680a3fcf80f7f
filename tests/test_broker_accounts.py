"""Broker accounts per tenant, and limits on the real exposure.

Two tenants, each with its own account at the local Alpaca server (two API key pairs behind one
server): each tenant's orders reach only its own account, lookups and cancels use the order's own
account, and a tenant naming the other's account is refused with nothing written. The single-firm
install (no registry entries) keys limits on its one implicit account, so labels cannot split a
limit; in-flight buys and sells count against it in the worst direction.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from backend.adapters.alpaca.market_data import AlpacaMarketData
from backend.adapters.alpaca.settings import AlpacaSettings
from backend.adapters.broker_account_stores import registry_for
from backend.adapters.broker_credentials import (
    AccountBrokers,
    LocalFileCredentials,
    SecretManagerCredentials,
    alpaca_for_keys,
    parse_keys,
)
from backend.adapters.paper_broker import PaperBroker
from backend.core.broker_accounts import (
    IMPLICIT_ACCOUNT_ID,
    AccountMode,
    AccountRefusal,
    AccountVenue,
    BrokerAccount,
    BrokerAccountRefused,
    resolve_account,
    with_default,
)
from backend.core.intents import OrderIntent
from backend.core.reasons import ReasonCode
from backend.core.risk import Exposure, RiskLimits, check_risk
from backend.execution.engine import ExecutionEngine, ExecutionStatus, RiskManager, SmartRouter
from backend.execution.ports import ManualClock
from backend.execution.settings import ConfigurationError, ExecSettings
from devtools.alpaca_simulator import FakeAlpaca, running
from tests.conftest import T0

ORDERS = "/v2/orders"
REF_A = "projects/demo-test/secrets/alpaca-tenant-a/versions/1"
REF_B = "projects/demo-test/secrets/alpaca-tenant-b/versions/latest"
ACCOUNT_A = BrokerAccount(tenant_id="tenant_a", account_id="a-main", venue="alpaca", credentials_ref=REF_A)
ACCOUNT_B = BrokerAccount(tenant_id="tenant_b", account_id="b-main", venue="alpaca", credentials_ref=REF_B)


def intent(tenant: str, account: str, key: str, qty: str = "10", side: str = "buy") -> OrderIntent:
    return OrderIntent(
        strategy_id="s",
        broker_account_id=account,
        symbol="AAPL",
        side=side,
        qty=qty,
        idempotency_key=key,
        metadata={"tenant_id": tenant, "uid": f"{tenant}-user"},
    )


# -- the pure model ---------------------------------------------------------------------------


class TestResolution:
    def test_a_tenant_without_registry_entries_trades_through_the_implicit_account(self) -> None:
        resolved = resolve_account("t1", "any-label", [])
        assert isinstance(resolved, BrokerAccount)
        assert (resolved.account_id, resolved.implicit, resolved.credentials_ref) == (
            IMPLICIT_ACCOUNT_ID,
            True,
            None,
        )

    def test_a_named_account_of_the_tenant_is_used(self) -> None:
        second = ACCOUNT_A.model_copy(update={"account_id": "a-second"})
        assert resolve_account("tenant_a", "a-second", [ACCOUNT_A, second]) == second

    @pytest.mark.parametrize("requested", ["", "default"])
    def test_no_name_gets_the_tenant_default(self, requested: str) -> None:
        default = ACCOUNT_A.model_copy(update={"account_id": "a-default", "is_default": True})
        assert resolve_account("tenant_a", requested, [ACCOUNT_A, default]) == default

    def test_another_tenants_account_is_refused_like_an_unknown_one(self) -> None:
        other = resolve_account("tenant_a", "b-main", [ACCOUNT_A, ACCOUNT_B])
        unknown = resolve_account("tenant_a", "nope", [ACCOUNT_A])
        assert isinstance(other, AccountRefusal)
        assert isinstance(unknown, AccountRefusal)
        assert other.code is unknown.code is ReasonCode.BROKER_ACCOUNT_NOT_ALLOWED
        assert "b-main" in other.reason

    def test_another_tenants_entries_never_make_a_registry(self) -> None:
        """Entries of tenant_b passed by mistake: tenant_a has none, so it is single-firm."""
        resolved = resolve_account("tenant_a", "b-main", [ACCOUNT_B])
        assert isinstance(resolved, BrokerAccount)
        assert resolved.implicit

    def test_no_single_default_is_refused_when_none_is_named(self) -> None:
        second = ACCOUNT_A.model_copy(update={"account_id": "a-second"})
        assert isinstance(resolve_account("tenant_a", "default", [ACCOUNT_A, second]), AccountRefusal)

    def test_set_default_leaves_exactly_one(self) -> None:
        second = ACCOUNT_A.model_copy(update={"account_id": "a-second", "is_default": True})
        after = with_default([ACCOUNT_A, second], "a-main")
        assert [a.is_default for a in after] == [True, False]
        with pytest.raises(ValueError, match="no broker account"):
            with_default(after, "b-main")

    @pytest.mark.parametrize(
        "ref",
        [
            '{"api_key_id": "AK", "secret_key": "SK"}',
            "projects/p/secrets/s",
            "projects/p/secrets/s/versions/0",
            "AKXXXXXXXXXXXXXXXX",
        ],
    )
    def test_credentials_are_a_secret_manager_reference_never_the_secret(self, ref: str) -> None:
        with pytest.raises(ValidationError, match="Secret Manager version name"):
            BrokerAccount(tenant_id="t", account_id="a", venue="alpaca", credentials_ref=ref)

    def test_an_alpaca_account_needs_a_reference_and_paper_has_no_live_mode(self) -> None:
        with pytest.raises(ValidationError, match="needs credentials_ref"):
            BrokerAccount(tenant_id="t", account_id="a", venue="alpaca")
        with pytest.raises(ValidationError, match="no live mode"):
            BrokerAccount(tenant_id="t", account_id="a", venue="paper", mode="live")


class TestWorstCaseExposure:
    """In-flight buys and sells each count against the limit in the worst direction."""

    LIMITS = RiskLimits(max_position_qty=Decimal(100))

    def decide(self, side: str, qty: str, **exposure: Decimal) -> bool:
        return check_risk(intent("t", "a", "k", qty, side), Exposure(**exposure), self.LIMITS).approved

    def test_a_pending_sell_lends_no_headroom_to_a_buy(self) -> None:
        held = {"position_qty": Decimal(100), "pending_sell_qty": Decimal(60)}
        assert not self.decide("buy", "10", **held)

    def test_pending_buys_count_against_a_buy(self) -> None:
        assert not self.decide("buy", "50", pending_buy_qty=Decimal(60))
        assert self.decide("buy", "40", pending_buy_qty=Decimal(60))

    def test_pending_sells_count_against_a_sell(self) -> None:
        assert not self.decide("sell", "50", pending_sell_qty=Decimal(60))

    def test_a_pending_buy_lends_no_headroom_to_a_short_sell(self) -> None:
        assert not self.decide("sell", "110", pending_buy_qty=Decimal(60))


# -- the registry on both stores ---------------------------------------------------------------


@pytest.fixture
def registry(contract_store: Any) -> Any:
    return registry_for(contract_store)


class TestRegistryContract:
    def test_accounts_are_per_tenant_and_one_default(self, registry: Any) -> None:
        registry.put_broker_account(ACCOUNT_A.model_copy(update={"is_default": True}))
        registry.put_broker_account(ACCOUNT_A.model_copy(update={"account_id": "a-2", "is_default": True}))
        registry.put_broker_account(ACCOUNT_B)
        accounts = registry.broker_accounts("tenant_a")
        assert [(a.account_id, a.is_default) for a in accounts] == [("a-2", True), ("a-main", False)]
        assert [a.account_id for a in registry.broker_accounts("tenant_b")] == ["b-main"]
        assert registry.broker_account("tenant_a", "b-main") is None
        registry.set_default_broker_account("tenant_a", "a-main")
        assert registry.broker_account("tenant_a", "a-main").is_default
        assert not registry.broker_account("tenant_a", "a-2").is_default
        with pytest.raises(ValueError, match="no broker account"):
            registry.set_default_broker_account("tenant_a", "b-main")

    def test_a_stored_account_reads_back_equal(self, registry: Any) -> None:
        live = ACCOUNT_B.model_copy(update={"mode": AccountMode.LIVE, "is_default": True})
        registry.put_broker_account(live)
        assert registry.broker_account("tenant_b", "b-main") == live


# -- credentials ---------------------------------------------------------------------------------


def credentials_file(tmp_path: Path) -> Path:
    path = tmp_path / "broker-credentials.json"
    path.write_text(
        json.dumps(
            {
                REF_A: {"api_key_id": "key-a", "secret_key": "secret-a"},
                REF_B: {"api_key_id": "key-b", "secret_key": "secret-b"},
            }
        )
    )
    return path


class TestCredentials:
    def test_local_file_maps_references_to_keys(self, tmp_path: Path) -> None:
        keys = LocalFileCredentials(credentials_file(tmp_path), environ={}).keys(REF_B)
        assert (keys.api_key_id, keys.secret_key.get_secret_value()) == ("key-b", "secret-b")
        assert "secret-b" not in repr(keys)

    def test_local_file_is_refused_when_deployed(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigurationError, match="local runs only"):
            LocalFileCredentials(credentials_file(tmp_path), environ={"K_SERVICE": "execute"})

    def test_an_unreadable_payload_names_the_reference_not_the_content(self) -> None:
        with pytest.raises(ConfigurationError, match=REF_A) as raised:
            parse_keys('{"api_key_id": "leaky", "secret": "x"}', REF_A)
        assert "leaky" not in str(raised.value)

    def test_secret_manager_version_is_read_over_its_rest_api(self) -> None:
        import base64

        seen: list[str] = []

        class Answer:
            status_code = 200

            def json(self) -> dict[str, Any]:
                payload = json.dumps({"api_key_id": "key-a", "secret_key": "secret-a"}).encode()
                return {"name": REF_A, "payload": {"data": base64.b64encode(payload).decode()}}

        class Session:
            def get(self, url: str, timeout: float) -> Answer:
                seen.append(url)
                return Answer()

        keys = SecretManagerCredentials(Session(), base_url="http://secrets.local/v1").keys(REF_A)
        assert seen == [f"http://secrets.local/v1/{REF_A}:access"]
        assert keys.api_key_id == "key-a"


# -- two tenants at the local Alpaca server ------------------------------------------------------


@pytest.fixture
def accounts() -> dict[str, FakeAlpaca]:
    """Two accounts behind one server, keyed by API key id; the deployment's own key is unknown to
    it (a request with it would get 401)."""
    made = {"key-a": FakeAlpaca(), "key-b": FakeAlpaca()}
    for fake in made.values():
        fake.set_quote("AAPL", "189.99", "190.01")
    return made


@pytest.fixture
def alpaca_url(accounts: dict[str, FakeAlpaca]) -> Iterator[str]:
    server = FakeAlpaca(accounts_by_key=accounts)
    server.set_quote("AAPL", "189.99", "190.01")
    with running(server) as url:
        yield url


def deployment_settings(url: str) -> AlpacaSettings:
    return AlpacaSettings(
        trading_requests_per_minute=0,
        api_key_id="key-of-the-deployment",
        secret_key="deployment-secret",
        trading_url=url,
        data_url=url,
        timeout_s=2,
        read_attempts=2,
        backoff_s=0.01,
        fill_polls=1,
        fill_poll_s=0.01,
        lookup_grace_s=0.1,
        quote_ttl_s=60,
    )


@pytest.fixture
def two_tenants(contract_store: Any, alpaca_url: str, tmp_path: Path) -> ExecutionEngine:
    registry = registry_for(contract_store)
    registry.put_broker_account(ACCOUNT_A)
    registry.put_broker_account(ACCOUNT_B)
    settings = deployment_settings(alpaca_url)
    market_data = AlpacaMarketData(settings)
    clock = ManualClock(T0)
    from backend.adapters.alpaca.broker import AlpacaBroker

    return ExecutionEngine(
        broker=AlpacaBroker(settings),
        router=SmartRouter(market_data=market_data),
        risk=RiskManager(RiskLimits(max_position_qty=Decimal(1000))),
        dry_run=False,
        store=contract_store,
        clock=clock,
        settings=ExecSettings(tenant_id="unused", uid="unused"),
        brokers=AccountBrokers(
            LocalFileCredentials(credentials_file(tmp_path), environ={}),
            alpaca_for_keys(settings),
            lambda: PaperBroker(market_data, clock),
            ExecSettings().venue_table(),
        ),
    )


def placed(fake: FakeAlpaca) -> list[str]:
    return [order["client_order_id"] for order in fake.orders_snapshot()]


class TestTwoTenants:
    def test_each_tenants_orders_reach_only_its_own_account(
        self, two_tenants: ExecutionEngine, accounts: dict[str, FakeAlpaca]
    ) -> None:
        a = two_tenants.execute_intent(intent("tenant_a", "a-main", "a-1"))
        b = two_tenants.execute_intent(intent("tenant_b", "default", "b-1"))  # its only account
        assert (a.status, b.status) == (ExecutionStatus.PLACED, ExecutionStatus.PLACED)
        assert placed(accounts["key-a"]) == [a.broker_order.client_order_id]  # type: ignore[union-attr]
        assert placed(accounts["key-b"]) == [b.broker_order.client_order_id]  # type: ignore[union-attr]
        assert b.intent.broker_account_id == "b-main"
        [trade_b] = two_tenants.store.iter_ledger_trades("tenant_b")
        assert trade_b.broker_account_id == "b-main"
        assert (
            two_tenants.store.get_exposure(
                "tenant_a", "a-main", "AAPL", T0.date().isoformat(), 50
            ).position_qty
            == 10
        )

    def test_a_tenant_naming_the_others_account_is_refused_with_nothing_written(
        self, two_tenants: ExecutionEngine, accounts: dict[str, FakeAlpaca]
    ) -> None:
        with pytest.raises(BrokerAccountRefused) as refused:
            two_tenants.execute_intent(intent("tenant_a", "b-main", "a-steal"))
        assert refused.value.code is ReasonCode.BROKER_ACCOUNT_NOT_ALLOWED
        assert list(two_tenants.store.iter_decisions()) == []
        assert list(two_tenants.store.iter_orders()) == []
        assert all(fake.requests_to("POST", ORDERS) == 0 for fake in accounts.values())

    def test_lookups_and_cancels_use_the_orders_own_account(
        self, two_tenants: ExecutionEngine, accounts: dict[str, FakeAlpaca]
    ) -> None:
        accounts["key-b"].fill = "new"
        accounts["key-b"].polls_to_fill = 1000  # rests
        resting = two_tenants.execute_intent(intent("tenant_b", "b-main", "b-rest"))
        stored = two_tenants.store.get_execution("tenant_b", resting.idempotency_key)
        outcome = two_tenants.cancel(stored)
        assert outcome.requested, outcome.reason
        assert accounts["key-b"].orders_snapshot()[0]["status"] == "canceled"
        assert [m for m, *_ in accounts["key-a"].log] == []  # tenant_a's account was never asked

    def test_an_account_whose_keys_cannot_be_had_is_refused_before_anything_is_written(
        self, two_tenants: ExecutionEngine
    ) -> None:
        missing = ACCOUNT_A.model_copy(
            update={"account_id": "a-lost", "credentials_ref": "projects/demo-test/secrets/gone/versions/1"}
        )
        registry_for(two_tenants.store).put_broker_account(missing)
        with pytest.raises(BrokerAccountRefused) as refused:
            two_tenants.execute_intent(intent("tenant_a", "a-lost", "a-lost-1"))
        assert refused.value.code is ReasonCode.BROKER_ACCOUNT_UNAVAILABLE
        assert list(two_tenants.store.iter_decisions()) == []

    def test_a_registered_account_without_a_broker_provider_is_refused(self, contract_store: Any) -> None:
        registry_for(contract_store).put_broker_account(
            BrokerAccount(tenant_id="tenant_p", account_id="p", venue=AccountVenue.PAPER)
        )
        engine = ExecutionEngine(
            broker=PaperBroker(None, ManualClock(T0)),  # type: ignore[arg-type]
            router=SmartRouter(),
            risk=RiskManager(RiskLimits()),
            store=contract_store,
            settings=ExecSettings(),
        )
        with pytest.raises(BrokerAccountRefused, match="no broker provider"):
            engine.execute_intent(intent("tenant_p", "p", "p-1"))


# -- the single-firm install: labels cannot split a limit ----------------------------------------


class TestSingleFirmInstall:
    def test_four_labels_cannot_split_one_position_limit(
        self, contract_store: Any, market: Any, clock: Any
    ) -> None:
        from tests.conftest import CountingBroker

        broker = CountingBroker(market, clock)
        engine = ExecutionEngine(
            broker=broker,
            router=SmartRouter(market_data=market, clock=clock),
            risk=RiskManager(RiskLimits(max_position_qty=Decimal(100))),
            dry_run=False,
            store=contract_store,
            clock=clock,
            settings=ExecSettings(tenant_id="solo", uid="u"),
        )
        results = [
            engine.execute_intent(intent("solo", f"label-{n}", f"four-{n}", qty="100")) for n in range(4)
        ]
        assert [r.status for r in results].count(ExecutionStatus.PLACED) == 1
        assert [r.reason_code for r in results[1:]] == [ReasonCode.POSITION_LIMIT] * 3
        assert len(broker.calls) == 1
        assert {r.intent.broker_account_id for r in results} == {IMPLICIT_ACCOUNT_ID}

    def test_a_retry_of_an_order_stored_under_its_label_is_the_same_trade(
        self, contract_store: Any, market: Any, clock: Any
    ) -> None:
        """An order claimed before accounts were resolved was stored under the caller's label; the
        same intent sent again replays it (no 409, no second order)."""
        from tests.conftest import CountingBroker

        broker = CountingBroker(market, clock)
        labelled = BrokerAccount(tenant_id="solo", account_id="alpaca_main", venue=AccountVenue.PAPER)

        class LabelAsAccount:  # what the engine did before: the label is the key
            def broker_accounts(self, tenant_id: str) -> list[BrokerAccount]:
                return [labelled]

            def broker_account(self, tenant_id: str, account_id: str) -> BrokerAccount | None:
                return labelled if account_id == "alpaca_main" else None

        class SameBroker:
            def broker_for(self, account: BrokerAccount) -> Any:
                return broker

        def engine(**extra: Any) -> ExecutionEngine:
            return ExecutionEngine(
                broker=broker,
                router=SmartRouter(market_data=market, clock=clock),
                risk=RiskManager(RiskLimits()),
                dry_run=False,
                store=contract_store,
                clock=clock,
                settings=ExecSettings(tenant_id="solo", uid="u"),
                **extra,
            )

        before = engine(accounts=LabelAsAccount(), brokers=SameBroker())
        first = before.execute_intent(intent("solo", "alpaca_main", "old-1", qty="3"))
        assert first.intent.broker_account_id == "alpaca_main"
        again = engine().execute_intent(intent("solo", "alpaca_main", "old-1", qty="3"))
        assert again.replayed
        assert len(broker.calls) == 1
        with pytest.raises(ValueError, match="qty"):  # a different trade under the key is still a conflict
            engine().execute_intent(intent("solo", "alpaca_main", "old-1", qty="4"))


# -- msr accounts: the admin path, on both stores --------------------------------------------------


@pytest.fixture
def msr_on(contract_store: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``msr`` configured for the same store as ``contract_store``."""
    from backend.adapters.sqlite_store import SQLiteExecutionStore
    from devtools.emulators import PROJECT
    from functions.cli import main

    if isinstance(contract_store, SQLiteExecutionStore):
        monkeypatch.setenv("EXEC_STORE", "sqlite")
        monkeypatch.setenv("EXEC_SQLITE_PATH", contract_store.path)
    else:
        monkeypatch.setenv("EXEC_STORE", "firestore")
        monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", PROJECT)
    yield main
    import logging

    logging.getLogger("msr").handlers[:] = []


def test_msr_accounts_add_list_and_set_default(
    msr_on: Any, contract_store: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    add = ["accounts", "add", "--tenant", "tenant_a", "--venue", "alpaca"]
    assert msr_on([*add, "--account", "a-main", "--credentials-ref", REF_A]) == 0
    assert (
        msr_on([*add, "--account", "a-live", "--mode", "live", "--credentials-ref", REF_B, "--default"]) == 0
    )
    capsys.readouterr()
    assert msr_on(["accounts", "list", "--tenant", "tenant_a", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(a["account_id"], a["mode"], a["is_default"]) for a in listed] == [
        ("a-live", "live", True),
        ("a-main", "paper", False),
    ]
    assert msr_on(["accounts", "set-default", "--tenant", "tenant_a", "--account", "a-main"]) == 0
    assert registry_for(contract_store).broker_account("tenant_a", "a-main").is_default
    assert not registry_for(contract_store).broker_account("tenant_a", "a-live").is_default


def test_msr_accounts_refuses_a_secret_in_place_of_a_reference_and_another_tenants_account(
    msr_on: Any, contract_store: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    leaked = '{"api_key_id": "AK", "secret_key": "do-not-store"}'
    add = ["accounts", "add", "--tenant", "tenant_a", "--account", "a-main", "--venue", "alpaca"]
    assert msr_on([*add, "--credentials-ref", leaked]) == 2
    assert "Secret Manager version name" in capsys.readouterr().err
    assert registry_for(contract_store).broker_accounts("tenant_a") == []
    assert msr_on(["accounts", "add", "--tenant", "tenant_b", "--account", "b-main", "--venue", "paper"]) == 0
    assert msr_on(["accounts", "set-default", "--tenant", "tenant_a", "--account", "b-main"]) == 2
    assert "no broker account 'b-main'" in capsys.readouterr().err
    assert registry_for(contract_store).broker_accounts("tenant_a") == []


# -- through the served execute function -----------------------------------------------------------


@pytest.fixture(params=["sqlite", "firestore"])
def served_two_tenants(
    request: pytest.FixtureRequest, alpaca_url: str, tmp_path: Path
) -> Iterator[tuple[str, Any]]:
    """``execute`` as deployed (its manifest's secrets: the deployment's own keys, unknown to the
    server), two tenants registered, their keys read through the local-only credentials file."""
    from backend.adapters.broker_account_stores import FirestoreBrokerAccounts
    from backend.adapters.sqlite_store import SQLiteExecutionStore
    from tests.test_http_execute import served

    if request.param == "sqlite":
        path = tmp_path / "served.sqlite3"
        store: Any = SQLiteExecutionStore(path)
        registry: Any = registry_for(store)
        store_env = {"EXEC_STORE": "sqlite", "EXEC_SQLITE_PATH": str(path)}
    else:
        from backend.adapters.firestore_store import FirestoreExecutionStore

        client = request.getfixturevalue("firestore_client")
        store = FirestoreExecutionStore(client)
        registry = FirestoreBrokerAccounts(client)
        store_env = {
            "EXEC_STORE": "firestore",
            "FIRESTORE_EMULATOR_HOST": request.getfixturevalue("firestore_emulator").host,
        }
    registry.put_broker_account(ACCOUNT_A)
    registry.put_broker_account(ACCOUNT_B)
    env = {
        **store_env,
        "EXEC_BROKER_CREDENTIALS": "local_file",
        "EXEC_BROKER_CREDENTIALS_FILE": str(credentials_file(tmp_path)),
    }
    with served("execute", alpaca_url, env) as url:
        yield url, store


def test_served_execute_trades_each_tenant_through_its_own_account_and_refuses_the_others(
    served_two_tenants: tuple[str, Any], accounts: dict[str, FakeAlpaca]
) -> None:
    from tests.test_http_execute import post

    url, store = served_two_tenants
    body = {"strategy_id": "manual", "symbol": "AAPL", "side": "buy", "qty": 2}
    trader_a = {"uid": "ua", "tenant_id": "tenant_a", "role": "trader"}
    trader_b = {"uid": "ub", "tenant_id": "tenant_b", "role": "trader"}

    stolen = post(url, {**body, "broker_account_id": "b-main"}, token_claims=trader_a)
    assert stolen.status_code == 403, stolen.text
    assert (stolen.json()["error"], stolen.json()["reason_code"]) == (
        "broker_account_refused",
        "BROKER_ACCOUNT_NOT_ALLOWED",
    )
    assert list(store.iter_decisions()) == []
    assert all(fake.requests_to("POST", ORDERS) == 0 for fake in accounts.values())

    a = post(url, {**body, "broker_account_id": "a-main"}, token_claims=trader_a)
    b = post(url, {**body, "broker_account_id": "default"}, token_claims=trader_b)
    assert (a.status_code, b.status_code) == (200, 200), (a.text, b.text)
    assert placed(accounts["key-a"]) == [a.json()["broker_order"]["client_order_id"]]
    assert placed(accounts["key-b"]) == [b.json()["broker_order"]["client_order_id"]]
    assert b.json()["intent"]["broker_account_id"] == "b-main"


# -- the position check: each account through its own keys -----------------------------------------


def test_registered_positions_are_not_the_deployment_accounts() -> None:
    from backend.execution.position_check import ledger_positions, registered_alpaca_accounts

    venues = ExecSettings().venue_table()
    positions = {
        ("tenant_a", "a-main", "AAPL"): (Decimal(10), Decimal(0), Decimal(0)),
        ("solo", "default", "AAPL"): (Decimal(3), Decimal(0), Decimal(0)),
    }
    registered = registered_alpaca_accounts([ACCOUNT_A, ACCOUNT_B])
    assert ledger_positions("alpaca", positions, venues, registered)["AAPL"].qty == 3
    assert ledger_positions("tenant_a/a-main", positions, venues, registered)["AAPL"].qty == 10


def test_the_position_check_reads_each_registered_account_through_its_own_keys(
    two_tenants: ExecutionEngine, accounts: dict[str, FakeAlpaca], alpaca_url: str, tmp_path: Path
) -> None:
    from datetime import UTC, datetime

    from backend.execution.position_check import check_registered_accounts
    from functions.app import account_position_source

    two_tenants.execute_intent(intent("tenant_a", "a-main", "a-1", qty="10"))
    two_tenants.execute_intent(intent("tenant_b", "b-main", "b-1", qty="4"))
    registry = registry_for(two_tenants.store)
    source_for = account_position_source(
        deployment_settings(alpaca_url), LocalFileCredentials(credentials_file(tmp_path), environ={})
    )

    reports = check_registered_accounts(
        two_tenants.store, registry.all_broker_accounts(), source_for, ExecSettings(), datetime.now(UTC)
    )

    assert [r.broker_account for r in reports] == ["tenant_a/a-main", "tenant_b/b-main"]
    assert [(r.available, r.drift) for r in reports] == [(True, False), (True, False)]
    assert [[(p.symbol, p.ledger.qty, p.broker_qty) for p in r.positions] for r in reports] == [
        [("AAPL", 10, 10)],
        [("AAPL", 4, 4)],
    ]


# -- the strategy runner refuses too ------------------------------------------------------------


def test_a_strategy_naming_another_tenants_account_is_refused_before_the_run_writes_anything(
    two_tenants: ExecutionEngine, firestore_client: Any, accounts: dict[str, FakeAlpaca]
) -> None:
    from types import SimpleNamespace

    from functions.strategy_runs import MalformedRun, RunMessage, run_strategy

    firestore_client.document("tenants/tenant_a/strategies/s1").set(
        {"strategy": "cost_aware_equity", "symbols": ["AAPL"], "broker_account_id": "b-main", "uid": "ua"}
    )
    message = RunMessage(tenant_id="tenant_a", strategy_id="s1", run_id="20260302T1530Z")
    services = SimpleNamespace(engine=two_tenants, store=two_tenants.store)

    with pytest.raises(MalformedRun, match="'b-main' is not one of tenant tenant_a's accounts"):
        run_strategy(message, "m-1", firestore_client, lambda: services)

    assert not firestore_client.document("tenants/tenant_a/strategy_runs/s1~20260302T1530Z").get().exists
    assert list(two_tenants.store.iter_decisions()) == []
    assert all(fake.requests_to("POST", ORDERS) == 0 for fake in accounts.values())


# -- the registry is read with a short cache -------------------------------------------------------


def test_the_registry_is_read_once_per_ttl_and_again_for_a_name_not_found(
    two_tenants: ExecutionEngine, accounts: dict[str, FakeAlpaca]
) -> None:
    from backend.execution.engine import _RegistryCache

    reads: list[str] = []

    class Counting:
        def broker_accounts(self, tenant_id: str) -> list[BrokerAccount]:
            reads.append(tenant_id)
            return [ACCOUNT_A]

    now = [0.0]
    cache = _RegistryCache(Counting(), ttl_s=30, monotonic=lambda: now[0])  # type: ignore[arg-type]
    cache.accounts("tenant_a")
    now[0] = 29.9
    cache.accounts("tenant_a")
    assert reads == ["tenant_a"]
    now[0] = 30.0
    cache.accounts("tenant_a")
    assert reads == ["tenant_a", "tenant_a"]

    # Through the engine: an account added after the tenant's registry was cached trades at once.
    two_tenants.execute_intent(intent("tenant_a", "a-main", "a-1"))
    registry_for(two_tenants.store).put_broker_account(ACCOUNT_A.model_copy(update={"account_id": "a-new"}))
    added = two_tenants.execute_intent(intent("tenant_a", "a-new", "a-2"))
    assert added.status is ExecutionStatus.PLACED
    assert len(placed(accounts["key-a"])) == 2


def test_default_is_not_a_registrable_account_name() -> None:
    with pytest.raises(ValidationError, match="reserved"):
        BrokerAccount(tenant_id="t", account_id="default", venue="paper")


def test_the_simulator_serves_each_key_its_own_account_and_refuses_an_unknown_key(
    alpaca_url: str, accounts: dict[str, FakeAlpaca]
) -> None:
    import requests

    def orders(key: str) -> Any:
        headers = {"APCA-API-KEY-ID": key, "APCA-API-SECRET-KEY": "x"}
        return requests.get(f"{alpaca_url}/v2/orders", headers=headers, timeout=5)

    assert orders("key-of-the-deployment").status_code == 401
    assert (orders("key-a").status_code, orders("key-b").status_code) == (200, 200)
    assert accounts["key-a"].requests_to("GET", ORDERS) == accounts["key-b"].requests_to("GET", ORDERS) == 1
    quotes = requests.get(
        f"{alpaca_url}/v2/stocks/quotes/latest", params={"symbols": "AAPL"}, headers={}, timeout=5
    )
    assert quotes.status_code == 200  # market data is the server's, whatever the key
