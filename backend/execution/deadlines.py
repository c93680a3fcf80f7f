"""The deadline of the request being served, for adapters to honour.

A deployed HTTPS function has 60 s in all; a request must be answered before then whatever a
dependency does. The function sets the deadline once (``request_deadline``); an adapter that would
wait (the broker's request pace, a retry's pause) or send (an HTTP call's timeout) asks
``request_time_left`` and stops short: what is not done by then is the order lifecycle's to settle.
Work with no request behind it (the settlement sweeper, a CLI run) has no deadline.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_REQUEST_DEADLINE: ContextVar[float | None] = ContextVar("request_deadline", default=None)


@contextmanager
def request_deadline(seconds: float) -> Iterator[None]:
    token = _REQUEST_DEADLINE.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        _REQUEST_DEADLINE.reset(token)


def request_time_left() -> float | None:
    """Seconds left before the current request's deadline; None outside a request."""
    deadline = _REQUEST_DEADLINE.get()
    return None if deadline is None else deadline - time.monotonic()
