"""A scheduled function does its work only when Cloud Scheduler calls it.

``on_schedule`` functions are plain HTTP endpoints, and the Firebase SDK runs the handler for any
request that reaches one (a call without Cloud Scheduler's headers gets "now" as its schedule time).
So the Firebase CLI's readiness probe (``GET /__/health``) would run a real tick under the
emulators, and so would any stray request. Cloud Scheduler marks its calls with ``X-CloudScheduler:
true``, ``X-CloudScheduler-JobName`` and, for unix-cron schedules, ``X-CloudScheduler-ScheduleTime``;
a request with none of them (or a health probe) is answered 200 without running the work.

This is hygiene, not authentication: anyone allowed to invoke the function can send the headers.
Deployed, only the scheduler job's service account may invoke a scheduled function (IAM, OIDC).
This module imports only Flask (already loaded by the SDK): ``main.py`` stays cheap to import.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

HEALTH_PATH = "/__/health"
SCHEDULER_HEADER = "X-CloudScheduler"
JOB_NAME_HEADER = "X-CloudScheduler-JobName"
SCHEDULE_TIME_HEADER = "X-CloudScheduler-ScheduleTime"

Event = TypeVar("Event")


def is_health_probe(method: str, path: str) -> bool:
    """The Firebase CLI's readiness probe (and a load balancer's, by the same convention)."""
    return method in ("GET", "HEAD") and path.rstrip("/") == HEALTH_PATH


def health_answer() -> Any:
    """What a probe gets from an HTTPS function: 200, without authentication or a log line."""
    from flask import Response

    return Response("ok", status=200, mimetype="text/plain")


def not_from_scheduler(method: str, path: str, headers: Mapping[str, str]) -> str | None:
    """Why this request must not run a scheduled function's work, or None for a Cloud Scheduler call."""
    if is_health_probe(method, path):
        return "a health probe"
    if (headers.get(SCHEDULER_HEADER) or "").strip().lower() == "true":
        return None
    if (headers.get(JOB_NAME_HEADER) or "").strip() or (headers.get(SCHEDULE_TIME_HEADER) or "").strip():
        return None
    return f"no Cloud Scheduler header ({SCHEDULER_HEADER}, {JOB_NAME_HEADER} or {SCHEDULE_TIME_HEADER})"


def scheduler_only(work: Callable[[Event], None]) -> Callable[[Event], None]:
    """Wrap a scheduled function's body (below ``@on_schedule``) so that only Cloud Scheduler's calls
    run it. The request is Flask's current one: the SDK calls the body inside the request."""

    @functools.wraps(work)
    def guarded(event: Event) -> None:
        from flask import request

        reason = not_from_scheduler(request.method, request.path, request.headers)
        if reason is None:
            work(event)
            return
        if reason != "a health probe":  # the CLI probes every function: not worth a log line
            _log_skipped(work.__name__, reason, request)

    return guarded


def _log_skipped(name: str, reason: str, request: Any) -> None:
    from backend.observability.logging import configure_logging, log_event

    if not logging.getLogger("msr").handlers:  # the work, which configures logging, did not run
        configure_logging("INFO")
    log_event(logging.getLogger("msr.functions"), "schedule.not_from_scheduler",
              f"{name} did not run: {reason}", logging.WARNING, function=name,
              method=request.method, path=request.path)  # fmt: skip
