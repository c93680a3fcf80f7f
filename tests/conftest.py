"""Shared fixtures: a manual clock, static quotes, a paper broker that counts, a real SQLite store."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from backend.adapters.market_data import StaticMarketData
from backend.adapters.paper_broker import PaperBroker
from backend.adapters.sqlite_store import SQLiteExecutionStore
from backend.core.instruments import AssetClass
from backend.core.orders import BrokerOrder, OrderRequest
from backend.core.risk import RiskLimits
from backend.execution.engine import ExecutionEngine, RiskManager, SmartRouter
from backend.execution.ports import ManualClock
from backend.execution.settings import ExecSettings
from devtools.emulators import PROJECT, REQUIRE_ENV, FirestoreEmulator, emulators_required, missing_reason

T0 = datetime(2026, 3, 2, 15, 30, tzinfo=UTC)
# FX quantities are units of the base currency: the default limit of 100 would be EUR 100.
FX_UNITS = {AssetClass.FOREX: Decimal(1_000_000)}


class CountingBroker(PaperBroker):
    """The paper broker, counting every submit call (dedupe or not) and remembering what it saw."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[OrderRequest] = []

    def submit_order(self, request: OrderRequest) -> BrokerOrder:
        self.calls.append(request)
        return super().submit_order(request)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def market(clock: ManualClock) -> StaticMarketData:
    market = StaticMarketData(clock=clock)
    market.set_quote("AAPL", "189.99", "190.01")  # ~1 bp: a large-cap equity
    market.set_quote("EUR/USD", "1.08500", "1.08510")  # ~0.9 bp
    market.set_quote("BTC/USD", "49950", "50050")  # 0.2 %: too wide at the default 0.1 %
    market.set_quote("SPY251219P00450000", "4.10", "4.30")  # ~4.8 %: a single option
    return market


@pytest.fixture
def broker(market: StaticMarketData, clock: ManualClock) -> CountingBroker:
    return CountingBroker(market, clock)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteExecutionStore]:
    store = SQLiteExecutionStore(tmp_path / "ledger.sqlite3")
    yield store
    store.close()


EngineFactory = Callable[..., ExecutionEngine]


@pytest.fixture
def make_engine(
    broker: CountingBroker, market: StaticMarketData, clock: ManualClock, store: SQLiteExecutionStore
) -> EngineFactory:
    def factory(
        limits: RiskLimits | None = None,
        dry_run: bool = False,
        enable_smart_routing: bool = True,
        **router_kwargs: Any,
    ) -> ExecutionEngine:
        router = SmartRouter(market_data=market, clock=clock, **router_kwargs)
        return ExecutionEngine(
            broker=broker,
            router=router,
            risk=RiskManager(limits or RiskLimits(max_position_qty_by_asset_class=FX_UNITS)),
            enable_smart_routing=enable_smart_routing,
            dry_run=dry_run,
            store=store,
            clock=clock,
            settings=ExecSettings(tenant_id="acme_corp", uid="user_12345"),
        )

    return factory


# -- the Firestore emulator and the store contract -------------------------------------------

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def firestore_emulator() -> Iterator[FirestoreEmulator]:
    reason = missing_reason()
    if reason is not None:
        if emulators_required():
            pytest.fail(f"{REQUIRE_ENV}=1 but {reason}")
        pytest.skip(reason)
    rules = ROOT / "firestore.rules"
    emulator = FirestoreEmulator(rules=rules if rules.exists() else None)
    emulator.start()
    previous = os.environ.get("FIRESTORE_EMULATOR_HOST")
    os.environ["FIRESTORE_EMULATOR_HOST"] = emulator.host
    try:
        yield emulator
    finally:
        emulator.stop()
        if previous is None:
            os.environ.pop("FIRESTORE_EMULATOR_HOST", None)
        else:
            os.environ["FIRESTORE_EMULATOR_HOST"] = previous


@pytest.fixture
def firestore_client(firestore_emulator: FirestoreEmulator) -> Iterator[Any]:
    from google.cloud import firestore

    firestore_emulator.wipe()
    client = firestore.Client(project=PROJECT)
    yield client
    client.close()


@pytest.fixture(params=["sqlite", "firestore"])
def contract_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """Each contract test runs against both adapters of the ExecutionStore/PortfolioStore ports."""
    if request.param == "sqlite":
        sqlite_store = SQLiteExecutionStore(tmp_path / "contract.sqlite3")
        yield sqlite_store
        sqlite_store.close()
        return
    from backend.adapters.firestore_store import FirestoreExecutionStore

    yield FirestoreExecutionStore(request.getfixturevalue("firestore_client"))


_CONTRACT_ADAPTER: dict[str, str] = {}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and "contract_store" in callspec.params:
            _CONTRACT_ADAPTER[item.nodeid] = callspec.params["contract_store"]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """How many store-contract tests ran against each adapter (CI must not count skips as runs)."""
    counts: dict[str, Counter[str]] = {}
    for outcome in ("passed", "failed", "skipped", "error"):
        for report in terminalreporter.stats.get(outcome, []):
            adapter = _CONTRACT_ADAPTER.get(getattr(report, "nodeid", ""))
            if adapter is not None and getattr(report, "when", "call") in ("call", "setup"):
                if outcome == "passed" and report.when != "call":
                    continue
                counts.setdefault(adapter, Counter())[outcome] += 1
    if counts:
        parts = [
            f"{adapter}: " + ", ".join(f"{n} {outcome}" for outcome, n in sorted(outcomes.items()))
            for adapter, outcomes in sorted(counts.items())
        ]
        terminalreporter.write_line("store contract tests: " + "; ".join(parts))
