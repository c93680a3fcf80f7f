"""Structured JSON logs, one line each, in the shape Cloud Logging reads from stdout.

``severity`` and ``message`` are the fields Cloud Logging lifts out of the line; ``event`` names
what happened (``exec.smart_routing``...). Fields that look like secrets are masked before writing.
"""

from __future__ import annotations

import logging
import sys
import time
from decimal import Decimal
from enum import Enum
from functools import lru_cache
from typing import Any, TextIO

import orjson

_SEVERITY = {
    logging.DEBUG: "DEBUG",
    logging.INFO: "INFO",
    logging.WARNING: "WARNING",
    logging.ERROR: "ERROR",
    logging.CRITICAL: "CRITICAL",
}
_SECRET_NAMES = ("secret", "password", "token", "authorization", "api_key", "apikey", "credential")
REDACTED = "[REDACTED]"


@lru_cache(maxsize=1024)
def _is_secret(name: str) -> bool:
    lowered = name.lower()
    return any(marker in lowered for marker in _SECRET_NAMES)


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    return str(value)


class _UtcSecondCache:
    """RFC 3339 timestamps: the seconds part formatted once per second, the milliseconds appended."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def format(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((created - second) * 1000):03d}Z"


class CloudLoggingFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self._clock = _UtcSecondCache()

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "severity": _SEVERITY.get(record.levelno, record.levelname),
            "message": record.getMessage(),
            "time": self._clock.format(record.created),
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)
        if fields:
            for name, value in fields.items():
                payload[name] = REDACTED if _is_secret(name) else value
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(payload, default=_json_default).decode()


def log_event(
    logger: logging.Logger,
    event: str,
    message: str,
    severity: int = logging.INFO,
    *,
    exc_info: bool = False,
    **fields: Any,
) -> None:
    """Log one event. Costs one level check when the level is off.

    The record is made directly (no caller lookup: the event name says where it comes from).
    ``exc_info`` attaches the exception being handled.
    """
    if logger.isEnabledFor(severity):
        extra = {"fields": {"event": event, **fields}}
        error = sys.exc_info() if exc_info else None
        logger.handle(logger.makeRecord(logger.name, severity, "", 0, message, (), error, extra=extra))


def configure_logging(level: int | str = logging.INFO, stream: TextIO | None = None) -> None:
    """Send the project's loggers to ``stream`` (stdout by default) as JSON lines."""
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(CloudLoggingFormatter())
    root = logging.getLogger("msr")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
