"""The wire: a request body read within a deadline, parsed as exact JSON.

Reading. A body is at most ``max_bytes``; a larger declared ``Content-Length`` is refused (413)
without reading a byte. What is read must arrive within a deadline in total
(``EXEC_BODY_READ_SECONDS``, 10 s): a client that declares more than it sends, or sends a byte now
and then, is answered 408 at the deadline instead of holding a worker thread (a socket timeout
alone bounds each ``recv``, not the sum, so at the deadline the socket's reading side is shut and
the blocked read returns). The functions framework reads the whole body again after every
response (``get_data`` in an after-request hook, unbounded): ``body_settled`` makes sure it finds
the body already read, whatever answered.

Parsing. JSON numbers never pass through a float: integers become ``int``, the rest ``Decimal``,
each checked on its length (``MAX_NUMBER_TEXT``) before it is constructed; ``NaN`` and
``Infinity`` are not JSON; a key twice in one object is ambiguous; nesting and the number of
values are bounded (checked before the recursive parser runs); strings must be valid Unicode (no
lone surrogates: they cannot be stored or written back as UTF-8). Range checks (``1E+100000000``,
``1e-400``) are the fields' own (``backend/core/numbers.bounded_decimal``), on numbers that were
never expanded.
"""

from __future__ import annotations

import io
import json
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from decimal import Decimal, InvalidOperation
from functools import cache
from typing import Any

from flask import Request
from werkzeug.exceptions import HTTPException

from backend.core.numbers import MAX_NUMBER_TEXT

MAX_JSON_DEPTH = 16
MAX_JSON_VALUES = 1024

_READ_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, HTTPException)
try:  # the server the functions framework runs: a malformed chunked body is its ParseException
    from gunicorn.http.errors import ParseException

    _READ_ERRORS = (*_READ_ERRORS, ParseException)
except ImportError:  # pragma: no cover - another WSGI server
    pass


class WireError(ValueError):
    """A body refused before any intent exists: ``status`` and ``error`` for the answer."""

    def __init__(self, status: int, error: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.error = error
        self.reason = reason


def _malformed(reason: str) -> WireError:
    return WireError(400, "bad_request", reason)


def _unacceptable(reason: str) -> WireError:
    return WireError(422, "invalid_body", reason)


class _ReadDeadline:
    """Shuts the socket's reading side at the deadline unless the read finished first (the lock
    makes "finished" and "expired" exclusive, so a completed read is never cut)."""

    def __init__(self, sock: socket.socket | None, seconds: float) -> None:
        self._sock = sock
        self._lock = threading.Lock()
        self._finished = False
        self.expired = False
        self._timer = threading.Timer(seconds, self._expire) if sock is not None else None

    def _expire(self) -> None:
        with self._lock:
            if self._finished:
                return
            self.expired = True
            with suppress(OSError):  # already closed by the client: the read ends on its own
                self._sock.shutdown(socket.SHUT_RD)  # type: ignore[union-attr]

    def __enter__(self) -> _ReadDeadline:
        if self._timer is not None:
            self._timer.daemon = True
            self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._finished = True
        if self._timer is not None:
            self._timer.cancel()


def _server_socket(request: Request) -> socket.socket | None:
    sock = request.environ.get("gunicorn.socket")
    return sock if isinstance(sock, socket.socket) else None


def _read_up_to(request: Request, limit: int) -> tuple[bytes, str | None]:
    """Up to ``limit`` bytes of the body, to its end (a stream may answer a read with less than
    asked); the name of the error that ended the read early, if one did."""
    chunks: list[bytes] = []
    total = 0
    try:
        while total < limit:
            chunk = request.stream.read(limit - total)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except _READ_ERRORS as exc:
        return b"".join(chunks), type(exc).__name__
    return b"".join(chunks), None


@cache
def body_read_seconds() -> float:
    """``EXEC_BODY_READ_SECONDS``, read once per instance."""
    from backend.execution.settings import load_settings

    return load_settings().body_read_seconds


def read_body(request: Request, max_bytes: int, seconds: float | None = None) -> bytes:
    """The body, at most ``max_bytes``, all of it within ``seconds`` (``EXEC_BODY_READ_SECONDS``);
    ``WireError`` otherwise. The bytes read stay the request's data (``get_data()`` answers them)."""
    seconds = body_read_seconds() if seconds is None else seconds
    declared = request.content_length
    if declared is not None and declared > max_bytes:
        raise WireError(
            413, "payload_too_large", f"the body is over {max_bytes} bytes (Content-Length {declared})"
        )
    with _ReadDeadline(_server_socket(request), seconds) as deadline:
        raw, failure = _read_up_to(request, max_bytes + 1)
    request.stream = io.BytesIO(raw)  # type: ignore[misc]  # the framework's later read: no socket
    if deadline.expired:
        raise WireError(408, "request_timeout", f"the body did not arrive within {seconds:g} s")
    if failure is not None:
        raise _malformed(f"the body could not be read ({failure}: the client ended it early?)")
    if len(raw) > max_bytes:
        raise WireError(413, "payload_too_large", f"the body is over {max_bytes} bytes")
    if declared is not None and len(raw) < declared:
        raise _malformed(f"the body ended after {len(raw)} of {declared} bytes")
    return raw


@contextmanager
def body_settled(request: Request) -> Iterator[None]:
    """Around a handler: a body the handler did not read (a refusal before it, a 413) is never
    read afterwards by the framework, which would wait for every declared byte. The server drains
    or drops what is left on the connection within its own bounds."""
    try:
        yield
    finally:
        if "stream" not in request.__dict__:
            request.stream = io.BytesIO(b"")  # type: ignore[misc]


# Read left to right: a whole JSON string (escapes included; the unrolled form never backtracks),
# a structural character, or the quote of a string that never ends.
_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{},]|"', re.DOTALL)


def _check_shape(text: str) -> None:
    """Depth and value count, read off the text outside its strings, before the (recursive) parser
    runs: a 16 KiB body of ``[`` would otherwise exhaust the parser's recursion. Linear: each
    string is passed once, and an unterminated one ends the scan (the parser then says where)."""
    depth = values = 0
    for match in _TOKENS.finditer(text):
        token = match.group()
        if token[0] == '"':
            if len(token) == 1:
                return
            continue
        if token in "[{":
            depth += 1
            values += 1
            if depth > MAX_JSON_DEPTH:
                raise _unacceptable(f"the body is nested deeper than {MAX_JSON_DEPTH} levels")
        elif token == ",":
            values += 1
        else:
            depth -= 1
        if values > MAX_JSON_VALUES:
            raise _unacceptable(f"the body holds more than {MAX_JSON_VALUES} values")


def _number_text(text: str) -> str:
    if len(text) > MAX_NUMBER_TEXT:
        raise _unacceptable(f"the body holds a number longer than {MAX_NUMBER_TEXT} characters")
    return text


def _int(text: str) -> int:
    return int(_number_text(text))


def _decimal(text: str) -> Decimal:
    try:
        return Decimal(_number_text(text))  # exact: no float, no expansion of the exponent
    except InvalidOperation:  # an exponent beyond what a Decimal can hold at all
        raise _unacceptable(f"the body holds a number out of range ({text})") from None


def _not_json(name: str) -> Any:
    raise _malformed(f"{name} is not a JSON number")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        duplicate = next(key for key, _ in pairs if key in seen or seen.add(key))  # type: ignore[func-returns-value]
        raise _malformed(f"the key {duplicate[:64]!r} appears twice in one object")
    return result


def _check_strings(value: Any) -> None:
    """Every string (keys included) is encodable as UTF-8: no lone surrogate from ``\\ud800``."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise _malformed("the body holds a string that is not valid Unicode (a lone surrogate)") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_strings(key)
            _check_strings(item)
    elif isinstance(value, list):
        for item in value:
            _check_strings(item)


def parse_json_object(raw: bytes, what: str) -> dict[str, Any]:
    """``raw`` as a JSON object with exact numbers (``what`` it should be, for the refusal: "an
    OrderIntent"); ``WireError`` with the reason otherwise."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _malformed(f"the body is not UTF-8 (byte {exc.start})") from None
    _check_shape(text)
    try:
        body = json.loads(
            text, parse_int=_int, parse_float=_decimal, parse_constant=_not_json, object_pairs_hook=_object
        )
    except json.JSONDecodeError as exc:
        raise _malformed(f"the body is not valid JSON ({exc.msg} at character {exc.pos})") from None
    except RecursionError:  # pragma: no cover - the shape check bounds the depth first
        raise _unacceptable("the body is nested too deeply") from None
    _check_strings(body)
    if not isinstance(body, dict):
        raise _malformed(f"the body must be a JSON object ({what})")
    return body
