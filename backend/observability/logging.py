"""Structured JSON logs, one line each, in the shape Cloud Logging reads from stdout.

``severity`` and ``message`` are the fields Cloud Logging lifts out of the line; ``event`` names
what happened (``exec.smart_routing``...). Fields that look like secrets are masked before writing.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from decimal import Decimal
from enum import Enum
from typing import Any, TextIO

_SEVERITY = {
    logging.DEBUG: "DEBUG",
    logging.INFO: "INFO",
    logging.WARNING: "WARNING",
    logging.ERROR: "ERROR",
    logging.CRITICAL: "CRITICAL",
}
_SECRET_NAMES = ("secret", "password", "token", "authorization", "api_key", "apikey", "credential")
REDACTED = "[REDACTED]"


def _is_secret(name: str) -> bool:
    lowered = name.lower()
    return any(marker in lowered for marker in _SECRET_NAMES)


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    return str(value)


class CloudLoggingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "severity": _SEVERITY.get(record.levelno, record.levelname),
            "message": record.getMessage(),
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)
        if fields:
            for name, value in fields.items():
                payload[name] = REDACTED if _is_secret(name) else value
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=_json_default, separators=(",", ":"))


def log_event(
    logger: logging.Logger, event: str, message: str, severity: int = logging.INFO, **fields: Any
) -> None:
    """Log one event. Costs one level check when the level is off."""
    if logger.isEnabledFor(severity):
        logger.log(severity, message, extra={"fields": {"event": event, **fields}})


def configure_logging(level: int | str = logging.INFO, stream: TextIO | None = None) -> None:
    """Send the project's loggers to ``stream`` (stdout by default) as JSON lines."""
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(CloudLoggingFormatter())
    root = logging.getLogger("msr")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
