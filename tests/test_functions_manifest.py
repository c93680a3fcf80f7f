"""The deploy manifest, built offline the way the Firebase CLI discovers main.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

BUILD_MANIFEST = """
from firebase_functions.private.serving import functions_as_yaml, get_functions
print(functions_as_yaml(get_functions()))
"""


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    # A fresh interpreter in the source folder, as the CLI's discovery does (params are global).
    output = subprocess.run(
        [sys.executable, "-c", BUILD_MANIFEST],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return yaml.safe_load(output.stdout)  # type: ignore[no-any-return]


def test_every_function_and_its_trigger(manifest: dict[str, Any]) -> None:
    endpoints = manifest["endpoints"]
    assert set(endpoints) == {
        "execute",
        "schedule_strategy_runs",
        "run_strategy",
        "fan_out_ledger_trade",
        "redrive_portfolio",
    }
    assert endpoints["execute"]["httpsTrigger"] == {}
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


def test_broker_keys_are_secrets_of_the_functions_that_trade(manifest: dict[str, Any]) -> None:
    keys = {"APCA_API_KEY_ID", "APCA_API_SECRET_KEY"}
    for name in ("execute", "run_strategy"):
        assert {s["key"] for s in manifest["endpoints"][name]["secretEnvironmentVariables"]} == keys
    for name in ("fan_out_ledger_trade", "schedule_strategy_runs", "redrive_portfolio"):
        assert manifest["endpoints"][name]["secretEnvironmentVariables"] == []
    assert {p["name"]: p["type"] for p in manifest["params"]} == dict.fromkeys(keys, "secret")


def test_firebase_json_deploys_this_folder_on_python_311() -> None:
    config = json.loads((ROOT / "firebase.json").read_text())
    [functions] = config["functions"]
    assert (functions["source"], functions["runtime"]) == (".", "python311")
    assert (ROOT / functions["source"] / "main.py").exists()
    assert (ROOT / functions["source"] / "requirements.txt").exists()
    assert "firebase-functions==" in (ROOT / "requirements.txt").read_text()
    for needed in ("backend", "functions"):
        assert needed not in functions["ignore"]
    assert config["firestore"] == {"rules": "firestore.rules", "indexes": "firestore.indexes.json"}
    assert not (ROOT / "functions.yaml").exists(), "a functions.yaml would override discovery"
