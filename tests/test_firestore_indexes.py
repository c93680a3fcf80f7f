"""Every Firestore query the code makes is served by an index that ``firestore.indexes.json``
declares (or that Firestore builds by itself).

The emulator answers any query whatever the indexes, so only production would fail — at run time,
with ``FAILED_PRECONDITION: The query requires an index``. This test reads the query calls from the
source (``collection_group``, ``where``, ``order_by`` and the store's ``_scan`` helper, per
function, in ``backend/`` and ``functions/``) and compares them with the queries declared below;
each declared query is then checked against the index file with Firestore's rules:

- single-field indexes exist by default for every field, ascending and descending, in collection
  scope only; a ``fieldOverrides`` entry replaces them for its (collection group, field), and is
  the only way to get a collection-group-scope single-field index;
- equality filters alone are served by the single-field index of each field (merged);
- one field ordered (or ranged) with no equality filter by that field's single-field index;
- equality filters with an order or range on another field need a composite index: the equality
  fields first (any order), then the ordered fields with their directions.

A new or changed query fails here until it is declared, and then until its index is.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
QUERY_CALLS = frozenset({"collection_group", "where", "order_by", "_scan"})
EQUALITY_OPS = frozenset({"==", "in"})
RANGE_OPS = frozenset({"<", "<=", ">", ">=", "!=", "not-in"})
ASC, DESC = "ASCENDING", "DESCENDING"
DOCUMENT_ID = "__name__"


@dataclass(frozen=True)
class Query:
    scope: str  # COLLECTION (one parent's collection) or COLLECTION_GROUP (every one of that name)
    group: str  # the collection id
    filters: tuple[tuple[str, str], ...] = ()  # (field, operator)
    orders: tuple[tuple[str, str], ...] = ()  # (field, direction); DOCUMENT_ID for the document id


def coll(group: str, *filters: tuple[str, str], orders: tuple[tuple[str, str], ...] = ()) -> Query:
    return Query("COLLECTION", group, filters, orders)


def group(group: str, *filters: tuple[str, str], orders: tuple[tuple[str, str], ...] = ()) -> Query:
    return Query("COLLECTION_GROUP", group, filters, orders)


STORE = "backend/adapters/firestore_store.py::FirestoreExecutionStore"
# function -> (its query calls as the source spells them, the queries they make)
DECLARED: dict[str, tuple[list[str], list[Query]]] = {
    f"{STORE}.daily_slots_taken": (
        ["where(filter=FieldFilter('trading_day', '==', trading_day))"],
        [coll("daily_trade_slots", ("trading_day", "=="))],
    ),
    f"{STORE}._scan": (  # its queries are its callers'
        ["collection_group(collection)", "order_by(order_by)"],
        [],
    ),
    f"{STORE}.iter_ledger_trades": (
        ["_scan('ledger_trades', tenant_id, 'executed_at')"],
        [
            coll("ledger_trades", orders=(("executed_at", ASC),)),
            group("ledger_trades", orders=(("executed_at", ASC),)),
        ],
    ),
    f"{STORE}.iter_decisions": (
        ["_scan('decisions', tenant_id, 'decided_at')"],
        [coll("decisions", orders=(("decided_at", ASC),)), group("decisions", orders=(("decided_at", ASC),))],
    ),
    f"{STORE}.iter_orders": (
        [
            "collection_group('decisions')",
            "where(filter=FieldFilter('open', '==', True))",
            "order_by('updated_at')",
        ],
        [
            coll("decisions"),
            group("decisions"),
            coll("decisions", ("open", "=="), orders=(("updated_at", ASC),)),
            group("decisions", ("open", "=="), orders=(("updated_at", ASC),)),
        ],
    ),
    f"{STORE}.find_order": (
        ["where(filter=FieldFilter('order.client_order_id', '==', client_order_id))"],
        [coll("decisions", ("order.client_order_id", "=="))],
    ),
    f"{STORE}.open_orders": (
        [
            "collection_group('decisions')",
            "where(filter=FieldFilter('open', '==', True))",
            "where(filter=FieldFilter('updated_at', '<', updated_before))",
            "order_by('updated_at')",
            "order_by(FieldPath.document_id())",
        ],
        [
            group(
                "decisions",
                ("open", "=="),
                ("updated_at", "<"),
                orders=(("updated_at", ASC), (DOCUMENT_ID, ASC)),
            )
        ],
    ),
    f"{STORE}.ledger_entries_since": (
        [
            "collection_group('ledger_trades')",
            "where(filter=FieldFilter('written_at', '>=', written_since))",
            "order_by('written_at')",
        ],
        [group("ledger_trades", ("written_at", ">="), orders=(("written_at", ASC),))],
    ),
    f"{STORE}.all_positions": (["collection_group('positions')"], [group("positions")]),
    f"{STORE}.apply_history_entry": (
        [
            "where(filter=FieldFilter('broker_account_id', '==', entry.broker_account_id))",
            "where(filter=FieldFilter('symbol', '==', entry.symbol))",
        ],
        [coll("trades", ("broker_account_id", "=="), ("symbol", "=="))],
    ),
    f"{STORE}._window": (  # a sale's lots in its method's order: one symbol's open lots, one key
        ["order_by(field, direction=direction)"],
        [
            coll("open", orders=(("fifo_key", ASC),)),
            coll("open", orders=(("fifo_key", DESC),)),
            coll("open", orders=(("hifo_key", ASC),)),
        ],
    ),
    "backend/adapters/controls_store.py::FirestoreControlsStore.audit_records": (
        ["order_by('at', direction=firestore.Query.DESCENDING)"],
        [coll("control_audit", orders=(("at", DESC),))],  # a tenant's, or the global collection
    ),
    "backend/adapters/broker_account_stores.py::FirestoreBrokerAccounts.all_broker_accounts": (
        ["collection_group('broker_accounts')"],
        [group("broker_accounts")],  # every tenant's registered accounts: the position check
    ),
    "functions/strategy_runs.py::publish_runs": (
        ["collection_group('strategies')", "where(filter=FieldFilter('enabled', '==', True))"],
        [group("strategies", ("enabled", "=="))],
    ),
}


def _query_call(node: ast.AST) -> tuple[tuple[int, int], str] | None:
    """A query call as the source spells it (receiver left out), keyed by where its name ends."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
        return None
    if node.func.attr not in QUERY_CALLS:
        return None
    arguments = ", ".join(ast.unparse(a) for a in [*node.args, *node.keywords])
    return (node.func.end_lineno or 0, node.func.end_col_offset or 0), f"{node.func.attr}({arguments})"


def query_calls_in_source() -> dict[str, list[str]]:
    """Per function (``path::Class.function``), its query calls in source order."""
    found: dict[str, list[tuple[tuple[int, int], str]]] = {}

    def visit(node: ast.AST, path: str, scope: list[str]) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                visit(child, path, [*scope, child.name])
                continue
            call = _query_call(child)
            if call is not None:
                found.setdefault(f"{path}::{'.'.join(scope)}", []).append(call)
            visit(child, path, scope)

    for folder in ("backend", "functions"):
        for source in sorted((ROOT / folder).rglob("*.py")):
            visit(ast.parse(source.read_text()), source.relative_to(ROOT).as_posix(), [])
    return {function: [text for _, text in sorted(calls)] for function, calls in found.items()}


def _single_field(indexes: dict[str, Any], query: Query, field: str, direction: str | None) -> bool:
    """Whether a single-field index on ``field`` (in ``direction``; None: either) serves the query."""
    for override in indexes.get("fieldOverrides", []):
        if (override["collectionGroup"], override["fieldPath"]) == (query.group, field):
            return any(
                index.get("queryScope", "COLLECTION") == query.scope
                and "order" in index
                and direction in (None, index["order"])
                for index in override.get("indexes", [])
            )
    return query.scope == "COLLECTION"  # the automatic ones: collection scope only


def _composite(
    indexes: dict[str, Any], query: Query, equal: list[str], ordered: list[tuple[str, str]]
) -> bool:
    for index in indexes.get("indexes", []):
        if (index["collectionGroup"], index.get("queryScope", "COLLECTION")) != (query.group, query.scope):
            continue
        fields = [(f["fieldPath"], f.get("order")) for f in index["fields"]]
        if fields and fields[-1][0] == DOCUMENT_ID:  # an explicit trailing document id
            fields = fields[:-1]
        head, tail = fields[: len(equal)], fields[len(equal) :]
        if sorted(f for f, _ in head) == sorted(equal) and tail == ordered:
            return True
    return False


def index_problem(query: Query, indexes: dict[str, Any]) -> str | None:
    """Why ``indexes`` cannot serve ``query``, or None."""
    equal = sorted({field for field, op in query.filters if op in EQUALITY_OPS})
    ranged = sorted({field for field, op in query.filters if op in RANGE_OPS})
    unknown = [op for _, op in query.filters if op not in EQUALITY_OPS | RANGE_OPS]
    if unknown or len(ranged) > 1:
        return f"operators {unknown} or several ranged fields {ranged}: extend this check first"
    ordered = list(query.orders) or [(field, ASC) for field in ranged]
    if ranged and ordered[0][0] != ranged[0]:
        return f"the ranged field {ranged[0]} must be ordered first"
    # The document id closes every index in the last field's direction (ascending when alone).
    if ordered and ordered[-1][0] == DOCUMENT_ID:
        implicit = ordered[-2][1] if len(ordered) > 1 else ASC
        if ordered[-1][1] == implicit:
            ordered = ordered[:-1]
    if not ordered:
        missing = [field for field in equal if not _single_field(indexes, query, field, None)]
        return f"no {query.scope} single-field index on {query.group}.{missing}" if missing else None
    if not equal and len(ordered) == 1:
        field, direction = ordered[0]
        if _single_field(indexes, query, field, direction):
            return None
        return f"no {query.scope} single-field index on {query.group}.{field} {direction}"
    if _composite(indexes, query, equal, ordered):
        return None
    return f"no {query.scope} composite index on {query.group}: {equal} (equality) then {ordered}"


def load_indexes() -> dict[str, Any]:
    return json.loads((ROOT / "firestore.indexes.json").read_text())  # type: ignore[no-any-return]


def test_every_query_in_the_source_is_declared_here() -> None:
    in_source = query_calls_in_source()
    undeclared = {f: calls for f, calls in in_source.items() if DECLARED.get(f, (None,))[0] != calls}
    assert not undeclared, (
        f"new or changed Firestore queries {undeclared}: declare them in DECLARED (and their index "
        "in firestore.indexes.json)"
    )
    assert not DECLARED.keys() - in_source.keys(), "declared queries no longer in the source"


@pytest.mark.parametrize("query", [query for _, queries in DECLARED.values() for query in queries], ids=repr)
def test_every_query_is_served_by_the_declared_indexes(query: Query) -> None:
    assert index_problem(query, load_indexes()) is None


def test_the_strategy_tick_needs_its_collection_group_exemption() -> None:
    """The scheduled tick's query: without the override on strategies.enabled, no index serves it."""
    tick = group("strategies", ("enabled", "=="))
    indexes = load_indexes()
    assert index_problem(tick, indexes) is None
    without = {
        **indexes,
        "fieldOverrides": [o for o in indexes["fieldOverrides"] if o["collectionGroup"] != "strategies"],
    }
    assert index_problem(tick, without) == "no COLLECTION_GROUP single-field index on strategies.['enabled']"


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        (coll("decisions", ("open", "=="), orders=(("decided_at", DESC),)),
         "no COLLECTION composite index on decisions: ['open'] (equality) then "
         "[('decided_at', 'DESCENDING')]"),
        (group("decisions", orders=(("updated_at", ASC),)),
         "no COLLECTION_GROUP single-field index on decisions.updated_at ASCENDING"),
        (coll("ledger_trades", orders=(("executed_at", DESC), ("symbol", ASC))),
         "no COLLECTION composite index on ledger_trades: [] (equality) then "
         "[('executed_at', 'DESCENDING'), ('symbol', 'ASCENDING')]"),
        (group("decisions", ("open", "=="), ("updated_at", "<"), orders=(("decided_at", ASC),)),
         "the ranged field updated_at must be ordered first"),
    ],
)  # fmt: skip
def test_queries_without_their_index_are_found(query: Query, problem: str) -> None:
    assert index_problem(query, load_indexes()) == problem


def test_an_override_replaces_the_automatic_indexes_of_its_field() -> None:
    exempt = {"fieldOverrides": [{"collectionGroup": "decisions", "fieldPath": "open", "indexes": []}]}
    assert index_problem(coll("decisions", ("open", "==")), {}) is None
    assert index_problem(coll("decisions", ("open", "==")), exempt) is not None
