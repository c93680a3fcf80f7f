"""What alpaca-py leaves to its users: an HTTP timeout, and retries that are safe.

alpaca-py has no timeout (a hung server blocks forever) and retries 429 and 504 three times with a
fixed 3 s sleep on every request, order submission included. Here every client gets a timeout and
no SDK retries; reads are retried by ``with_read_retries`` with backoff (honouring a 429's reset
header); order submission is never retried blindly (see ``AlpacaBroker``).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

import requests
from alpaca.common.exceptions import APIError
from alpaca.common.rest import RESTClient

from backend.execution.deadlines import request_time_left

T = TypeVar("T")

TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})
NETWORK_ERRORS = (requests.Timeout, requests.ConnectionError)


# The monotonic time by which the current broker call must be done (None: no budget). Every HTTP
# timeout and every pause is cut to what is left of it, and of the request's deadline
# (``backend.execution.deadlines``). A wait for the account's pace is cut by the request's deadline
# only: a sweep with no request behind it waits for the pace rather than fail.
_DEADLINE: ContextVar[float | None] = ContextVar("alpaca_call_deadline", default=None)


class BudgetExhausted(Exception):
    """The broker call's time budget is spent: nothing more is sent or waited for. Raised before a
    request goes out (so that request was not sent) or instead of a pause."""


@contextmanager
def time_budget(seconds: float) -> Iterator[None]:
    """Bound a broker call (with its retries, lookups and pauses) to ``seconds``, nested budgets
    keeping the earlier deadline: what does not finish in it is the lifecycle's to settle."""
    deadline = time.monotonic() + seconds
    outer = _DEADLINE.get()
    token = _DEADLINE.set(deadline if outer is None else min(outer, deadline))
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def time_left() -> float | None:
    """What is left of the call's budget and the request's deadline, whichever ends first."""
    deadline = _DEADLINE.get()
    lefts = [
        t
        for t in (request_time_left(), None if deadline is None else deadline - time.monotonic())
        if t is not None
    ]
    return min(lefts) if lefts else None


def pause(
    seconds: float,
    sleep: Callable[[float], None] = time.sleep,
    budget: Callable[[], float | None] = time_left,
) -> None:
    """``sleep``, unless the budget would run out first."""
    left = budget()
    if left is not None and seconds >= left:
        raise BudgetExhausted(f"a {seconds:.2f}s pause does not fit in the {max(left, 0):.2f}s left")
    sleep(seconds)


class RequestPacer:
    """At most ``per_minute`` requests in any 60 seconds (a sliding window): a request that would
    exceed it waits until the oldest one in the window is a minute old. Alpaca allows 200 trading
    requests per minute per account; one pacer per account and process (``pacer_for``) spaces a
    sweep's or a run's requests instead of letting the broker answer 429."""

    def __init__(
        self,
        per_minute: int,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.per_minute = per_minute
        self._clock, self._sleep = clock, sleep
        self._sent: deque[float] = deque()
        self._lock = threading.Lock()
        self.waited_s = 0.0  # how long requests have waited in all: for reports and tests

    def acquire(self) -> None:
        if self.per_minute <= 0:
            return
        with self._lock:  # requests queue up in order; one waits at a time
            now = self._clock()
            while self._sent and now - self._sent[0] >= 60:
                self._sent.popleft()
            if len(self._sent) >= self.per_minute:
                wait = 60 - (now - self._sent[0])
                pause(wait, self._sleep, request_time_left)  # past the request's deadline: not sent
                self.waited_s += wait
                now = self._clock()
                self._sent.popleft()
            self._sent.append(now)


_PACERS: dict[tuple[str, int], RequestPacer] = {}
_PACERS_LOCK = threading.Lock()


def pacer_for(account: str, per_minute: int) -> RequestPacer:
    """The one pacer of an account's trading requests in this process."""
    with _PACERS_LOCK:
        return _PACERS.setdefault((account, per_minute), RequestPacer(per_minute))


class TimeoutSession(requests.Session):
    def __init__(self, timeout_s: float, pacer: RequestPacer | None = None) -> None:
        super().__init__()
        self.timeout_s = timeout_s
        self.pacer = pacer

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        if self.pacer is not None:
            self.pacer.acquire()
        timeout = kwargs.get("timeout") or self.timeout_s
        left = time_left()
        if left is not None:
            if left <= 0:
                raise BudgetExhausted(f"no time left to send {method!r} {url!r}")
            timeout = min(timeout, left)
        kwargs["timeout"] = timeout
        return super().request(method, url, *args, **kwargs)


def harden(client: RESTClient, timeout_s: float, pacer: RequestPacer | None = None) -> RESTClient:
    """Give an alpaca-py client a timeout (and a pace), and take away its own retries."""
    client._session = TimeoutSession(timeout_s, pacer)
    client._retry = 0
    return client


def message_of(error: APIError) -> str:
    """The broker's message, even when the body is not JSON (``APIError.message`` raises then)."""
    try:
        return str(error.message)
    except (ValueError, KeyError, TypeError):
        return str(error)[:500]


def retry_after_s(error: APIError, now: float, cap_s: float) -> float | None:
    """How long a 429 asks us to wait (``X-RateLimit-Reset`` is a Unix time), capped."""
    response = error.response
    if response is None:
        return None
    reset = response.headers.get("X-RateLimit-Reset")
    if reset is None:
        return None
    try:
        return max(0.0, min(float(reset) - now, cap_s))
    except ValueError:
        return None


def with_read_retries(
    call: Callable[[], T],
    attempts: int,
    backoff_s: float,
    cap_s: float,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run an idempotent read, retrying network errors, 5xx and 429 with exponential backoff."""
    for attempt in range(attempts):
        try:
            return call()
        except APIError as error:
            status = error.status_code
            if status not in TRANSIENT_STATUSES or attempt == attempts - 1:
                raise
            wait = retry_after_s(error, time.time(), cap_s) if status == 429 else None
            sleep(wait if wait is not None else min(backoff_s * 2**attempt, cap_s))
        except NETWORK_ERRORS:
            if attempt == attempts - 1:
                raise
            sleep(min(backoff_s * 2**attempt, cap_s))
    raise AssertionError("unreachable")  # pragma: no cover
