"""Scheduled functions run their work for Cloud Scheduler's requests only: a health probe (the
Firebase CLI sends ``GET /__/health`` to every function) or a request without Cloud Scheduler's
headers is answered 200 and does nothing. The HTTPS functions answer the probe without a refusal.

In process, each decorated function of ``main.py`` is called as functions-framework calls it (a
Flask request), its work replaced by a recorder; ``tests/test_e2e_functions.py`` proves the same
through the served ``schedule_strategy_runs`` with the emulators (no message published).
"""

from __future__ import annotations

import importlib
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import flask
import pytest

from backend.observability.logging import CloudLoggingFormatter
from functions.scheduled import not_from_scheduler

SCHEDULED = {  # function in main.py -> its work in functions.cloud
    "schedule_strategy_runs": "schedule_tick",
    "redrive_portfolio": "redrive_portfolio",
    "settle_orders": "settle_orders",
    "check_positions": "check_positions",
}
FROM_SCHEDULER = (
    {"X-CloudScheduler": "true", "X-CloudScheduler-JobName": "firebase-schedule-x-us-central1"},
    {"X-CloudScheduler-ScheduleTime": "2026-03-02T15:30:00Z"},
    {"X-CloudScheduler-JobName": "firebase-schedule-x-us-central1"},
    {"X-CloudScheduler": "true"},
)
NOT_FROM_SCHEDULER = (
    ("GET", "/__/health", {}),
    ("GET", "/__/health", {"X-CloudScheduler": "true"}),  # a probe never runs the work
    ("HEAD", "/__/health/", {}),
    ("POST", "/", {}),
    ("GET", "/", {}),
    ("POST", "/", {"X-CloudScheduler": "false"}),
    ("POST", "/", {"X-CloudScheduler-JobName": " ", "X-CloudScheduler-ScheduleTime": ""}),
)


@pytest.fixture(scope="module")
def main_module() -> Any:
    return importlib.import_module("main")


@pytest.fixture
def ran(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The works that ran, by function name (``functions.cloud``'s functions replaced)."""
    from functions import cloud

    calls: list[str] = []
    for name, work in SCHEDULED.items():
        monkeypatch.setattr(cloud, work, lambda *args, _name=name: calls.append(_name))
    return calls


@pytest.fixture
def logged() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(CloudLoggingFormatter())
    root = logging.getLogger("msr")
    saved = root.handlers[:], root.level, root.propagate
    root.handlers[:], root.propagate = [handler], False
    root.setLevel(logging.INFO)
    yield stream
    root.handlers[:], root.level, root.propagate = saved


def call(function: Any, method: str, path: str, headers: dict[str, str]) -> Any:
    app = flask.Flask("scheduled-test")
    with app.test_request_context(path, method=method, headers=headers):
        return function(flask.request)


@pytest.mark.parametrize("headers", FROM_SCHEDULER)
def test_cloud_scheduler_calls_run_the_work(
    main_module: Any, ran: list[str], headers: dict[str, str]
) -> None:
    for name in SCHEDULED:
        answer = call(getattr(main_module, name), "POST", "/", headers)
        assert answer.status_code == 200
    assert ran == list(SCHEDULED)


@pytest.mark.parametrize(("method", "path", "headers"), NOT_FROM_SCHEDULER)
def test_probes_and_stray_requests_run_no_work(
    main_module: Any, ran: list[str], logged: io.StringIO, method: str, path: str, headers: dict[str, str]
) -> None:
    for name in SCHEDULED:
        answer = call(getattr(main_module, name), method, path, headers)
        assert answer.status_code == 200  # nothing for the caller to retry
    assert ran == []
    events = [json.loads(line) for line in logged.getvalue().splitlines()]
    if path.startswith("/__/health"):
        assert events == []  # probed on every start: silent
    else:
        assert [e["event"] for e in events] == ["schedule.not_from_scheduler"] * len(SCHEDULED)
        assert sorted(e["function"] for e in events) == sorted(SCHEDULED)


def test_the_reason_names_the_headers() -> None:
    assert not_from_scheduler("POST", "/", {}) == (
        "no Cloud Scheduler header (X-CloudScheduler, X-CloudScheduler-JobName"
        " or X-CloudScheduler-ScheduleTime)"
    )
    assert not_from_scheduler("GET", "/__/health", {}) == "a health probe"
    assert not_from_scheduler("POST", "/", {"X-CloudScheduler": "TRUE"}) is None


@pytest.mark.parametrize("name", ["execute", "orders"])
def test_https_functions_answer_the_health_probe_without_a_refusal(
    main_module: Any, logged: io.StringIO, name: str
) -> None:
    answer = call(getattr(main_module, name), "GET", "/__/health", {})
    assert (answer.status_code, answer.get_data(as_text=True)) == (200, "ok")
    assert logged.getvalue() == ""  # no 405, no 401: a probe is not a refused caller
    refused = call(getattr(main_module, name), "GET", "/__/healthz", {})
    assert refused.status_code in (401, 404, 405)  # any other path still meets the checks
