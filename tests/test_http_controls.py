"""The served ``execute`` function honours a kill switch flipped at runtime, with no redeploy: the
function as deployed (functions-framework, its manifest's secrets and env, the real alpaca-py SDK at
the local Alpaca server), the flip made in its store as ``msr controls`` makes it."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from backend.adapters.controls_store import SQLiteControlsStore
from backend.core.controls import ControlAction
from backend.execution.runtime_controls import flip_controls
from devtools.alpaca_simulator import FakeAlpaca
from tests.test_http_execute import INTENT, alpaca_url, fake, post, served

__all__ = ["alpaca_url", "fake"]  # fixtures used here


def flip(path: Path, action: ControlAction) -> None:
    store = SQLiteControlsStore(path)
    try:
        flip_controls(store, "acme_corp", action, "ops@firm", "http test", datetime.now(UTC))
    finally:
        store.close()


def test_a_kill_flipped_at_runtime_stops_the_served_function_and_a_resume_restarts_it(
    fake: FakeAlpaca, alpaca_url: str, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.sqlite3"
    # A cache of 0 s: every request reads the controls (the 5 s default is shown on an injected clock).
    env = {"EXEC_STORE": "sqlite", "EXEC_SQLITE_PATH": str(ledger), "EXEC_CONTROLS_CACHE_S": "0"}
    with served("execute", alpaca_url, env) as url:
        assert post(url, {**INTENT, "idempotency_key": "ctl-1"}).json()["status"] == "placed"
        flip(ledger, ControlAction.KILL)
        sent = fake.requests_to("POST", "/v2/orders")
        response = post(url, {**INTENT, "idempotency_key": "ctl-2"})
        assert response.status_code == 200
        assert (response.json()["status"], response.json()["reason_code"]) == ("rejected", "KILL_SWITCH")
        assert "http test" in response.json()["reason"]
        assert fake.requests_to("POST", "/v2/orders") == sent  # nothing reached the broker
        flip(ledger, ControlAction.RESUME)
        assert post(url, {**INTENT, "idempotency_key": "ctl-3"}).json()["status"] == "placed"
