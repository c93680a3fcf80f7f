"""Document paths and ids, built in one place.

The logical paths are Firestore's (``tenants/{tenant_id}/ledger_trades/{trade_id}``); the embedded
store keys its rows by the same strings, so a row can be found by the path a user reads in the docs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from functools import lru_cache
from urllib.parse import quote

_MAX_CLIENT_ORDER_ID = 128  # Alpaca's limit on client_order_id
# Every order this product sends carries it: an order at the broker without it was placed elsewhere.
CLIENT_ORDER_ID_PREFIX = "msr-"


@lru_cache(maxsize=4096)
def _digest(tenant_id: str, idempotency_key: str) -> str:
    return hashlib.sha256(f"{tenant_id}\x1f{idempotency_key}".encode()).hexdigest()


def trade_id_for(tenant_id: str, idempotency_key: str) -> str:
    """A document id that is safe in any path (no '/'), stable for one intent of one tenant."""
    return "tr_" + _digest(tenant_id, idempotency_key)[:40]


def decision_id_for(tenant_id: str, idempotency_key: str) -> str:
    """The decision document of a keyed intent: one per key, which is what makes retries idempotent."""
    return "dc_" + _digest(tenant_id, idempotency_key)[:40]


def client_order_id_for(tenant_id: str, idempotency_key: str) -> str:
    """The broker's client order id: the same intent can only ever be one order at the broker."""
    client_order_id = CLIENT_ORDER_ID_PREFIX + _digest(tenant_id, idempotency_key)[:40]
    assert len(client_order_id) <= _MAX_CLIENT_ORDER_ID
    return client_order_id


def _segment(value: str, name: str) -> str:
    if not value or "/" in value:
        raise ValueError(f"{name} must be a non-empty path segment without '/', got {value!r}")
    return value


def is_document_id(value: object, max_length: int = 128) -> bool:
    """Whether ``value`` can name a document (a tenant, a user) in every path built here: a string
    Firestore accepts as one segment (no '/', not '.' or '..', not a reserved ``__x__`` name, no
    control characters) and at most ``max_length`` characters (Firebase uids are at most 128)."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= max_length
        and "/" not in value
        and value not in (".", "..")
        and not (value.startswith("__") and value.endswith("__"))
        and value.isprintable()
    )


def tenant_collection_path(tenant_id: str, collection: str) -> str:
    """``tenants/{tenant_id}/{collection}``: ledger_trades, decisions, positions, daily_trade_counts."""
    return f"tenants/{_segment(tenant_id, 'tenant_id')}/{_segment(collection, 'collection')}"


def ledger_trade_path(tenant_id: str, trade_id: str) -> str:
    return f"tenants/{_segment(tenant_id, 'tenant_id')}/ledger_trades/{_segment(trade_id, 'trade_id')}"


def decision_path(tenant_id: str, decision_id: str) -> str:
    return f"tenants/{_segment(tenant_id, 'tenant_id')}/decisions/{_segment(decision_id, 'decision_id')}"


def portfolio_trade_path(uid: str, history_id: str) -> str:
    return f"{portfolio_history_collection(uid)}/{_segment(history_id, 'history_id')}"


def _key_id(*parts: str) -> str:
    """A document id made of several values: joined with '~', '/' and '~' percent-encoded."""
    return "~".join(quote(part, safe="") for part in parts)


def position_path(tenant_id: str, broker_account_id: str, symbol: str) -> str:
    return f"tenants/{_segment(tenant_id, 'tenant_id')}/positions/{_key_id(broker_account_id, symbol)}"


def daily_trade_count_path(tenant_id: str, trading_day: str) -> str:
    return f"tenants/{_segment(tenant_id, 'tenant_id')}/daily_trade_counts/{_segment(trading_day, 'day')}"


def portfolio_history_collection(uid: str) -> str:
    return f"users/{_segment(uid, 'uid')}/portfolio/history/trades"


def portfolio_lots_path(uid: str, broker_account_id: str, symbol: str) -> str:
    """One lots document per account and symbol; '/' in a symbol (BTC/USD) is percent-encoded."""
    return f"users/{_segment(uid, 'uid')}/portfolio/tax/lots/{_key_id(broker_account_id, symbol)}"


def portfolio_open_lot_path(uid: str, broker_account_id: str, symbol: str, lot_id: str) -> str:
    """One document per open lot, under its symbol's summary document."""
    return f"{portfolio_lots_path(uid, broker_account_id, symbol)}/open/{_segment(lot_id, 'lot_id')}"


def portfolio_open_lots_collection(uid: str, broker_account_id: str, symbol: str) -> str:
    return f"{portfolio_lots_path(uid, broker_account_id, symbol)}/open"


def portfolio_settings_path(uid: str) -> str:
    """Where a user's preferences live, such as the tax-lot method (``lot_method``)."""
    return f"users/{_segment(uid, 'uid')}/portfolio/settings"


def daily_slot_id(trading_day: str, slot: int) -> str:
    """Slot ``slot`` of a tenant's daily trade limit: ``{day}~{slot:04d}``, written once per trade."""
    return f"{_segment(trading_day, 'day')}~{slot:04d}"


def daily_slot_path(tenant_id: str, slot_id: str) -> str:
    return f"tenants/{_segment(tenant_id, 'tenant_id')}/daily_trade_slots/{_segment(slot_id, 'slot_id')}"


def slot_probe_order(tenant_id: str, idempotency_key: str, daily_limit: int) -> Iterator[int]:
    """The order in which a claim tries the day's slots: from a start spread by the key, so that
    concurrent claims rarely try the same slot first (no slot is a hot document). Lazy: a claim
    stops at the first free slot, whatever the limit."""
    if daily_limit <= 0:
        return
    start = int(_digest(tenant_id, idempotency_key)[:8], 16) % daily_limit
    for offset in range(daily_limit):
        yield (start + offset) % daily_limit


def ops_state_path(name: str) -> str:
    """Where a scheduled job keeps its state between runs (a cursor, a watermark): ``ops/{name}``."""
    return f"ops/{_segment(name, 'name')}"


# -- runtime controls (backend/core/controls.py) -------------------------------------------------

GLOBAL_CONTROLS_PATH = "controls/global"


def tenant_controls_path(tenant_id: str) -> str:
    """A tenant's kill switch and limit overrides: one small document, read through a cache."""
    return f"tenants/{_segment(tenant_id, 'tenant_id')}/controls/current"


def controls_path(tenant_id: str | None) -> str:
    """The controls document of a tenant, or the global one (``tenant_id`` None)."""
    return GLOBAL_CONTROLS_PATH if tenant_id is None else tenant_controls_path(tenant_id)


def control_audit_path(tenant_id: str | None, audit_id: str) -> str:
    """One flip's audit record: ``tenants/{t}/control_audit/{id}``, or ``control_audit/{id}`` for
    a global flip. Created once, never changed."""
    collection = "control_audit" if tenant_id is None else tenant_collection_path(tenant_id, "control_audit")
    return f"{collection}/{_segment(audit_id, 'audit_id')}"


def rate_slot_path(tenant_id: str, minute: str, shard: int) -> str:
    """Shard ``shard`` of a tenant's order count in one UTC minute: ``{minute}~{shard:02d}``."""
    return f"tenants/{_segment(tenant_id, 'tenant_id')}/rate_slots/{_segment(minute, 'minute')}~{shard:02d}"


def broker_account_path(tenant_id: str, account_id: str) -> str:
    """``tenants/{tenant_id}/broker_accounts/{account_id}``: one of the tenant's broker accounts."""
    return f"{tenant_collection_path(tenant_id, 'broker_accounts')}/{_segment(account_id, 'account_id')}"
