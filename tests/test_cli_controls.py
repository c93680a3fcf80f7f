"""``msr controls``: a kill from the command line stops the tenant and cancels its resting orders at
the local Alpaca server; every flip is recorded; a widening limit or a flip without an author or a
reason is refused and writes nothing; the functions' engine reads the controls through the cache."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from backend.adapters.controls_store import SQLiteControlsStore
from backend.core.controls import ControlLimit
from backend.execution.runtime_controls import CachedControls
from backend.execution.settings import load_settings
from devtools.alpaca_simulator import FakeAlpaca
from functions.app import configured_services
from functions.cli import main
from tests.test_cli import exit_code_of, ledger_path, resting, restore_msr_logging, simulator

__all__ = ["ledger_path", "resting", "restore_msr_logging", "simulator"]  # fixtures used here

TENANT = "acme_corp"


def audits(path: Path, tenant: str | None = TENANT) -> list[Any]:
    store = SQLiteControlsStore(path)
    try:
        return store.audit_records(tenant)
    finally:
        store.close()


def test_kill_from_the_command_line_cancels_the_tenants_resting_orders_and_records_the_flip(
    resting: tuple[FakeAlpaca, dict[str, Any]], ledger_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake, results = resting
    argv = ["controls", "kill", "--tenant", TENANT, "--by", "ops@firm", "--reason", "runaway strategy"]

    assert main([*argv, "--json"]) == 0

    document = json.loads(capsys.readouterr().out)
    assert (document["cancel"]["examined"], document["cancel"]["requested"]) == (2, 2)
    for result in results.values():
        assert fake.order_for(result.client_order_id)["status"] == "canceled"  # type: ignore[index]
    audit = document["audit"]
    assert (audit["scope"], audit["action"], audit["by"], audit["reason"]) == (
        TENANT, "kill", "ops@firm", "runaway strategy",
    )  # fmt: skip
    assert (audit["before"]["kill_switch"], audit["after"]["kill_switch"]) == (False, True)
    assert audit["at"].endswith("+00:00")
    [recorded] = audits(ledger_path)
    assert recorded.audit_id == audit["audit_id"]

    assert main(["controls", "show", "--tenant", TENANT]) == 0
    out = capsys.readouterr().out
    assert f"Tenant {TENANT}: KILLED (runaway strategy)" in out
    assert "within 5s (EXEC_CONTROLS_CACHE_S)" in out

    assert main(["controls", "resume", "--tenant", TENANT, "--by", "ops@firm", "--reason", "fixed"]) == 0
    assert [a.action.value for a in audits(ledger_path)] == ["resume", "kill"]


def test_a_widening_limit_or_a_flip_without_author_or_reason_is_refused_and_writes_nothing(
    ledger_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXEC_MAX_DAILY_TRADES", "20")
    base = ["controls", "set-limit", "--tenant", TENANT, "--limit", "max_daily_trades"]
    assert main([*base, "--value", "21", "--by", "ops", "--reason", "more"]) == 2
    assert "would widen the deployment's limit 20" in capsys.readouterr().err
    assert main([*base, "--value", "1e1", "--by", "ops", "--reason", "x"]) == 2
    assert main([*base, "--value", "5", "--by", " ", "--reason", "x"]) == 2
    assert exit_code_of([*base, "--value", "5", "--by", "ops"]) == 2  # --reason is required
    assert exit_code_of(["controls", "kill", "--by", "ops", "--reason", "x"]) == 2  # a scope is required
    assert audits(ledger_path) == []

    assert main([*base, "--value", "5", "--by", "ops", "--reason", "calm down"]) == 0
    assert main(["controls", "set-limit", "--global", "--limit", "max_orders_per_minute", "--value", "30",
                 "--by", "ops", "--reason", "pace"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["controls", "show", "--tenant", TENANT, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["in_force"]["max_daily_trades"] == 5
    assert shown["in_force"]["max_orders_per_minute"] == 30
    assert shown["tenant"]["limits"] == {ControlLimit.MAX_DAILY_TRADES.value: "5"}
    assert main([*base, "--value", "none", "--by", "ops", "--reason", "back to normal"]) == 0
    assert [a.action.value for a in audits(ledger_path)] == ["clear_limit", "set_limit"]


def test_the_functions_engine_reads_the_controls_through_the_configured_cache(
    ledger_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXEC_CONTROLS_CACHE_S", "2.5")
    monkeypatch.setenv("EXEC_KILL_SWITCH", "1")
    services = configured_services(load_settings())
    try:
        controls = services.engine.controls
        assert isinstance(controls, CachedControls)
        assert (controls.ttl, controls.deployment_kill_switch) == (timedelta(seconds=2.5), True)
        assert isinstance(controls.store, SQLiteControlsStore)
        assert services.engine.halted(TENANT) is not None  # the deployment's floor
    finally:
        services.store.close()
        controls.store.close()
