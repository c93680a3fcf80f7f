"""Alpaca through the official alpaca-py SDK: the broker, market data, HTTP hardening, settings.

``AlpacaBroker`` is importable from here (and from ``backend.execution.engine``, as the seed does)
without loading alpaca-py, which is heavy: the SDK is imported when a broker is constructed.
"""

from __future__ import annotations

from typing import Any

from backend.execution.ports import Broker


class AlpacaBroker(Broker):
    """Orders through Alpaca. ``AlpacaBroker()`` builds the adapter of ``backend.adapters.alpaca.broker``
    (a subclass of this class, so ``isinstance`` holds), taking its keys from the environment
    (``APCA_API_KEY_ID``, ``APCA_API_SECRET_KEY``; see ``AlpacaSettings``); without keys it raises
    ``ConfigurationError`` naming them."""

    name = "alpaca"

    def __new__(cls, *args: Any, **kwargs: Any) -> AlpacaBroker:
        if cls is AlpacaBroker:
            from backend.adapters.alpaca.broker import AlpacaBroker as adapter

            # An instance of a subclass: Python then runs the adapter's __init__, once, with the arguments.
            return super().__new__(adapter)
        return super().__new__(cls)
