"""The deploy manifest, built offline the way the Firebase CLI discovers main.py."""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Any

import pytest

from devtools.served_functions import ServedFunction, deploy_manifest, manifest_secrets

ROOT = Path(__file__).resolve().parents[1]
BROKER_KEYS = frozenset({"APCA_API_KEY_ID", "APCA_API_SECRET_KEY"})


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    return deploy_manifest()


def test_every_function_and_its_trigger(manifest: dict[str, Any]) -> None:
    endpoints = manifest["endpoints"]
    assert set(endpoints) == {
        "execute",
        "orders",
        "schedule_strategy_runs",
        "run_strategy",
        "fan_out_ledger_trade",
        "redrive_portfolio",
        "settle_orders",
        "check_positions",
    }
    for public in ("execute", "orders"):  # no invoker: reachable by anyone, authenticated in code
        assert endpoints[public]["httpsTrigger"] == {}
        assert endpoints[public]["timeoutSeconds"] == 60
    run = endpoints["run_strategy"]["eventTrigger"]
    assert run["eventType"] == "google.cloud.pubsub.topic.v1.messagePublished"
    assert run["eventFilters"] == {"topic": "strategy-runs"}
    assert run["retry"] is True
    fan_out = endpoints["fan_out_ledger_trade"]["eventTrigger"]
    assert fan_out["eventType"] == "google.cloud.firestore.document.v1.created"
    assert fan_out["eventFilterPathPatterns"] == {"document": "tenants/{tenant_id}/ledger_trades/{trade_id}"}
    assert fan_out["eventFilters"] == {"database": "(default)", "namespace": "(default)"}
    assert endpoints["schedule_strategy_runs"]["scheduleTrigger"]["schedule"] == "every 5 minutes"
    assert endpoints["schedule_strategy_runs"]["scheduleTrigger"]["timeZone"] == "UTC"
    assert endpoints["redrive_portfolio"]["scheduleTrigger"]["schedule"] == "every 30 minutes"
    sweep = endpoints["settle_orders"]["scheduleTrigger"]
    assert (sweep["schedule"], sweep["timeZone"]) == ("every 5 minutes", "UTC")
    assert endpoints["settle_orders"]["timeoutSeconds"] == 300
    check = endpoints["check_positions"]
    assert (check["scheduleTrigger"]["schedule"], check["scheduleTrigger"]["timeZone"]) == (
        "every 60 minutes",
        "UTC",
    )
    assert check["timeoutSeconds"] == 300


def test_broker_keys_are_secrets_of_the_functions_that_ask_the_broker(manifest: dict[str, Any]) -> None:
    # The position check reads the broker's positions and orders: the keys, and nothing else.
    for name in ("execute", "orders", "run_strategy", "settle_orders", "check_positions"):
        assert {s["key"] for s in manifest["endpoints"][name]["secretEnvironmentVariables"]} == BROKER_KEYS
    for name in ("fan_out_ledger_trade", "schedule_strategy_runs", "redrive_portfolio"):
        assert manifest["endpoints"][name]["secretEnvironmentVariables"] == []
    assert {p["name"]: p["type"] for p in manifest["params"]} == dict.fromkeys(BROKER_KEYS, "secret")


def test_a_served_function_gets_only_the_secrets_its_manifest_declares(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Set in the test process too: an inherited secret must not reach a function either.
    for key in BROKER_KEYS:
        monkeypatch.setenv(key, "from-the-test-process")
    given = {key: f"given-{key}" for key in BROKER_KEYS}
    assert set(manifest_secrets()) == {
        "execute", "orders", "schedule_strategy_runs", "run_strategy", "fan_out_ledger_trade",
        "redrive_portfolio", "settle_orders", "check_positions",
    }  # fmt: skip
    for name, declared in manifest_secrets().items():
        environment = ServedFunction.for_manifest(name, {"EXEC_DRY_RUN": "0"}, given).environment()
        assert BROKER_KEYS & environment.keys() == declared
        assert all(environment[key] == given[key] for key in declared)
        assert environment["EXEC_DRY_RUN"] == "0"
    assert manifest_secrets()["fan_out_ledger_trade"] == manifest_secrets()["redrive_portfolio"] == set()


def test_a_secret_is_never_plain_env_and_a_declared_one_must_be_given() -> None:
    with pytest.raises(ValueError, match="pass them as secrets"):
        ServedFunction.for_manifest("fan_out_ledger_trade", {"APCA_API_KEY_ID": "k"}, {})
    with pytest.raises(ValueError, match="declares the secrets"):
        ServedFunction.for_manifest("execute", {}, {"APCA_API_KEY_ID": "k"})


NEVER_SHIPPED_OR_COMMITTED = (
    ".secret.local",
    ".env.local",
    "node_modules/firebase-tools/package.json",
    "scripts/firebase-cli/node_modules/firebase-tools/package.json",
    "venv",
    "venv/bin/python",
    ".msr/firebase-emulators/cloud-firestore-emulator-launcher.jar",
    "multi_asset_smart_routing.egg-info/PKG-INFO",
    ".msr/ledger.sqlite3",
    "ledger.sqlite3",
    "ledger.sqlite3-wal",
    "ledger.sqlite3-shm",
    "paper_run_output/summary.json",
    "firebase-debug.log",
    "firestore-debug.log",
    "pubsub-debug.log",
    "ui-debug.log",
)


def _ignored(path: str, patterns: list[str]) -> bool:
    """Whether a slash-free pattern matches a component of ``path``: how both the Firebase CLI
    (minimatch with ``matchBase`` and ``dot``, tried on every folder it descends into) and git read
    such patterns. A trailing slash (git: folders only) is dropped."""
    names = [p.rstrip("/") for p in patterns if p and not p.startswith("#") and "/" not in p.rstrip("/")]
    return any(fnmatch.fnmatchcase(part, name) for part in Path(path).parts for name in names)


def test_firebase_json_deploys_this_folder_on_python_311() -> None:
    config = json.loads((ROOT / "firebase.json").read_text())
    [functions] = config["functions"]
    assert (functions["source"], functions["runtime"]) == (".", "python311")
    assert (ROOT / functions["source"] / "main.py").exists()
    assert (ROOT / functions["source"] / "requirements.txt").exists()
    assert "firebase-functions==" in (ROOT / "requirements.txt").read_text()
    for needed in ("main.py", "requirements.txt", ".env", "backend/core/routing.py", "functions/app.py"):
        assert not _ignored(needed, functions["ignore"]), needed
    for never in NEVER_SHIPPED_OR_COMMITTED:
        assert _ignored(never, functions["ignore"]), f"firebase deploy would upload {never}"
    assert config["firestore"] == {"rules": "firestore.rules", "indexes": "firestore.indexes.json"}
    assert not (ROOT / "functions.yaml").exists(), "a functions.yaml would override discovery"


def test_gitignore_keeps_secrets_stores_and_logs_out_of_the_repository() -> None:
    patterns = (ROOT / ".gitignore").read_text().splitlines()
    for never in NEVER_SHIPPED_OR_COMMITTED:
        assert _ignored(never, patterns), f"git would offer to commit {never}"
    assert not _ignored("main.py", patterns)
