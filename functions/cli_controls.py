"""``msr controls``: the runtime controls, flipped without a redeploy (see
``backend.execution.runtime_controls``).

    msr controls show --tenant T                                  # what is in force, recent flips
    msr controls kill --tenant T --by ops@firm --reason "..."     # stop T; cancel its resting orders
    msr controls kill --global --by ops@firm --reason "..."       # stop every tenant
    msr controls resume --tenant T --by ops@firm --reason "..."
    msr controls set-limit --tenant T --limit max_orders_per_minute --value 30 --by ... --reason ...

Every flip is recorded with who, when (UTC), what before and after, and why.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from backend.adapters.controls_store import audit_document, build_controls_store, state_document
from backend.adapters.stores import store_kind
from backend.core.controls import (
    GLOBAL_SCOPE,
    ControlAction,
    ControlAudit,
    ControlLimit,
    ControlRefused,
    ControlState,
    RuntimeControls,
    effective_limits,
    parse_limit_value,
)
from backend.execution.runtime_controls import CancelReport, cancel_resting_orders, flip_controls
from backend.execution.settings import ConfigurationError, ExecSettings, load_settings
from backend.observability.logging import configure_logging

EXIT_OK, EXIT_REFUSED, EXIT_LOOK = 0, 2, 3

Parser = Callable[..., argparse.ArgumentParser]


def add_controls(commands: argparse._SubParsersAction[argparse.ArgumentParser], parser: Parser) -> None:
    """``parser`` builds each level as ``msr`` builds its own (its help ends with the exit codes)."""
    controls = parser(
        commands.add_parser,
        name="controls",
        help="runtime controls: kill switches and tighter limits, without a redeploy",
        description="Kill switches (global or per tenant) and per-tenant limit overrides, stored "
        "where the ledger is (EXEC_STORE) and read by every function through a cache of "
        "EXEC_CONTROLS_CACHE_S seconds (default 5): a flip takes effect everywhere within that bound. "
        "Limits only tighten the deployment's EXEC_* limits. Every flip is recorded (who, when, what "
        "before and after, why) in the scope's control_audit.",
    )
    actions = controls.add_subparsers(title="commands", dest="controls_command", required=True)
    show = parser(
        actions.add_parser,
        name="show",
        help="the controls in force and the latest flips",
        description="The global controls, the tenant's (with --tenant) and the limits in force for it, "
        "and the scope's latest audit records.",
    )
    show.add_argument("--tenant", help="the tenant (default: the global controls only)")
    show.add_argument("--audit", type=int, default=10, metavar="N", help="audit records to show (default 10)")
    _common(show)
    show.set_defaults(run=_show)
    kill = parser(
        actions.add_parser,
        name="kill",
        help="engage a kill switch and cancel the resting orders it covers",
        description="Engage the kill switch of a tenant (or of every tenant: --global). Intents are "
        "refused with KILL_SWITCH once the functions' caches have expired (EXEC_CONTROLS_CACHE_S); "
        "orders not at the broker yet are never sent. Then every resting order it covers is asked to "
        "cancel through the broker (the orders' states come from the broker's reports). Exit 3 when a "
        "resting order could not be canceled (the switch stays engaged; the settlement sweeper "
        "cancels resting orders of killed tenants it meets).",
    )
    kill.add_argument("--no-cancel", action="store_true", help="engage only: leave resting orders alone")
    resume = parser(
        actions.add_parser,
        name="resume",
        help="release a kill switch",
        description="Release the kill switch of a tenant (or the global one). Another switch still "
        "engaged (the global one, the tenant's, EXEC_KILL_SWITCH) keeps trading stopped.",
    )
    set_limit = parser(
        actions.add_parser,
        name="set-limit",
        help="tighten a limit for a tenant (or every tenant); --value none removes the override",
        description="Override one limit for a tenant (or for every tenant: --global). A value above the "
        "deployment's EXEC_* limit is refused: runtime controls only tighten. Limits: "
        + ", ".join(limit.value for limit in ControlLimit)
        + ". Values are plain decimals (counts: whole numbers); max_order_notional and "
        "max_position_qty are in the instrument's quote currency and units.",
    )
    set_limit.add_argument("--limit", required=True, choices=[limit.value for limit in ControlLimit])
    set_limit.add_argument("--value", required=True, help="the new limit, or 'none' to remove the override")
    for command, run in ((kill, _kill), (resume, _resume), (set_limit, _set_limit)):
        scope = command.add_mutually_exclusive_group(required=True)
        scope.add_argument("--tenant", help="the tenant whose controls change")
        scope.add_argument("--global", dest="global_scope", action="store_true", help="every tenant")
        command.add_argument("--by", required=True, help="who makes the change (recorded)")
        command.add_argument("--reason", required=True, help="why (recorded)")
        _common(command)
        command.set_defaults(run=run)


def _common(command: argparse.ArgumentParser) -> None:
    command.add_argument("--json", action="store_true", help="print the outcome as one JSON object")
    command.add_argument("--log-level", default="INFO", help="JSON log level on stderr")


def _name(args: argparse.Namespace) -> str:
    return f"msr controls {args.controls_command}"


def _print_json(document: dict[str, Any]) -> None:
    print(orjson.dumps(document).decode())


def _describe(audit: ControlAudit) -> str:
    scope = "globally" if audit.scope == GLOBAL_SCOPE else f"for tenant {audit.scope}"
    limit = audit.limit
    before = audit.before.limits.get(limit) if limit else None
    after = audit.after.limits.get(limit) if limit else None
    what = {
        ControlAction.KILL: f"Kill switch engaged {scope}",
        ControlAction.RESUME: f"Kill switch released {scope}",
        ControlAction.SET_LIMIT: f"{limit} set to {after} {scope} (override before: {before})",
        ControlAction.CLEAR_LIMIT: f"{limit} override removed {scope} (was {before})",
    }[audit.action]
    return f"{what} by {audit.by} at {audit.at.isoformat()}: {audit.reason} (audit {audit.audit_id})"


def _flip(
    args: argparse.Namespace, action: ControlAction, **options: Any
) -> tuple[ExecSettings, ControlAudit]:
    settings = load_settings()
    store = build_controls_store(settings)
    try:
        audit = flip_controls(
            store, None if args.global_scope else args.tenant, action, args.by, args.reason,
            datetime.now(UTC), deployment=settings.risk_limits(), **options,
        )  # fmt: skip
    finally:
        close = getattr(store, "close", None)
        if close is not None:
            close()
    return settings, audit


def _refused(args: argparse.Namespace, exc: Exception) -> int:
    print(f"{_name(args)}: {exc}", file=sys.stderr)
    return EXIT_REFUSED


def _kill(args: argparse.Namespace) -> int:
    configure_logging(args.log_level.upper(), stream=sys.stderr)
    try:
        ledger_existed = _ledger_exists(load_settings())
        settings, audit = _flip(args, ControlAction.KILL)
    except (ConfigurationError, ControlRefused) as exc:
        return _refused(args, exc)
    report, problem = CancelReport(), None
    if not args.no_cancel and ledger_existed:
        try:
            report = _cancel_resting(settings, audit.tenant_id)
        except ConfigurationError as exc:
            problem = f"resting orders not canceled: {exc}"
    if args.json:
        _print_json(
            {"audit": audit_document(audit, as_text=True), "cancel": asdict(report), "problem": problem}
        )
    else:
        print(_describe(audit))
        print(
            f"Resting orders: {report.requested} of {report.examined} asked to cancel"
            + (f", {len(report.not_canceled)} not canceled" if report.not_canceled else "")
            + (f", {report.errors} error(s)" if report.errors else "")
            + (" (--no-cancel)" if args.no_cancel else "")
        )
        for order in report.not_canceled:
            print(f"  not canceled: {order['client_order_id']}: {order['reason']}")
        if problem:
            print(f"{_name(args)}: {problem}", file=sys.stderr)
    return EXIT_LOOK if problem or report.errors or report.not_canceled else EXIT_OK


def _ledger_exists(settings: ExecSettings) -> bool:
    """With the embedded store and no ledger yet there is nothing to cancel (and no broker to ask)."""
    return store_kind(settings) != "sqlite" or Path(settings.sqlite_path).is_file()


def _cancel_resting(settings: ExecSettings, tenant_id: str | None) -> CancelReport:
    from functions.app import configured_services

    services = configured_services(settings)
    try:
        return cancel_resting_orders(services.engine, tenant_id)
    finally:
        for holder in (services.store, getattr(services.engine.controls, "store", None)):
            close = getattr(holder, "close", None)
            if close is not None:
                close()


def _simple_flip(args: argparse.Namespace, action: ControlAction, **options: Any) -> int:
    configure_logging(args.log_level.upper(), stream=sys.stderr)
    try:
        _, audit = _flip(args, action, **options)
    except (ConfigurationError, ControlRefused) as exc:
        return _refused(args, exc)
    if args.json:
        _print_json({"audit": audit_document(audit, as_text=True)})
    else:
        print(_describe(audit))
    return EXIT_OK


def _resume(args: argparse.Namespace) -> int:
    return _simple_flip(args, ControlAction.RESUME)


def _set_limit(args: argparse.Namespace) -> int:
    limit = ControlLimit(args.limit)
    if args.value.strip().lower() == "none":
        return _simple_flip(args, ControlAction.CLEAR_LIMIT, limit=limit)
    try:
        value = parse_limit_value(limit, args.value)
    except ControlRefused as exc:
        return _refused(args, exc)
    return _simple_flip(args, ControlAction.SET_LIMIT, limit=limit, value=value)


def _state_line(label: str, state: ControlState) -> str:
    kill = f"KILLED ({state.kill_reason})" if state.kill_switch else "trading"
    limits = ", ".join(f"{name.value}={value}" for name, value in state.limits.items()) or "no overrides"
    changed = (
        f"; last flip by {state.updated_by} at {state.updated_at.isoformat()}" if state.updated_at else ""
    )
    return f"{label}: {kill}; {limits}{changed}"


def _show(args: argparse.Namespace) -> int:
    configure_logging(args.log_level.upper(), stream=sys.stderr)
    try:
        settings = load_settings()
        store = build_controls_store(settings)
    except ConfigurationError as exc:
        return _refused(args, exc)
    try:
        global_state = store.read_controls(None)
        tenant_state = store.read_controls(args.tenant) if args.tenant else None
        audits = store.audit_records(args.tenant, max(args.audit, 0))
    finally:
        close = getattr(store, "close", None)
        if close is not None:
            close()
    document: dict[str, Any] = {
        "global": state_document(global_state, as_text=True),
        "deployment_kill_switch": settings.kill_switch,
        "cache_seconds": settings.controls_cache_s,
        "audit": [audit_document(audit, as_text=True) for audit in audits],
    }
    if tenant_state is not None:
        runtime = RuntimeControls(args.tenant, global_state, tenant_state, settings.kill_switch)
        limits = effective_limits(runtime, settings.risk_limits())
        risk = limits.risk
        document["tenant"] = {"tenant_id": args.tenant, **state_document(tenant_state, as_text=True)}
        document["in_force"] = {
            "kill_switch": risk.kill_switch,
            "kill_reason": limits.kill_reason,
            "max_position_qty": str(risk.max_position_qty),
            "max_position_qty_by_asset_class": {
                k.value: str(v) for k, v in risk.max_position_qty_by_asset_class.items()
            },
            "max_daily_trades": risk.max_daily_trades,
            "max_order_notional": None if risk.max_order_notional is None else str(risk.max_order_notional),
            "max_orders_per_minute": limits.max_orders_per_minute,
        }
    if args.json:
        _print_json(document)
        return EXIT_OK
    print(_state_line("Global", global_state) + ("; EXEC_KILL_SWITCH is set" if settings.kill_switch else ""))
    if tenant_state is not None:
        print(_state_line(f"Tenant {args.tenant}", tenant_state))
        in_force = document["in_force"]
        print(
            "In force for " + args.tenant + ": "
            + ("KILLED: " + str(in_force["kill_reason"]) if in_force["kill_switch"] else "trading")
            + f"; max_position_qty {in_force['max_position_qty']}, max_daily_trades "
            f"{in_force['max_daily_trades']}, max_order_notional {in_force['max_order_notional'] or '-'}, "
            f"max_orders_per_minute {in_force['max_orders_per_minute'] or '-'}"
        )  # fmt: skip
    print(f"Flips are seen by every function within {settings.controls_cache_s:g}s (EXEC_CONTROLS_CACHE_S).")
    for audit in audits:
        print("  " + _describe(audit))
    return EXIT_OK
