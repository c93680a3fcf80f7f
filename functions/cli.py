"""``msr``: the product's one command-line program. Every local run and operation is a subcommand
of it, so new operations (reports, reconciliation, onboarding, runtime controls) do not add entry
points. Like the Cloud Functions, it only parses, wires adapters from configuration and calls the
engine's services.

    msr paper-run --max-spread FOREX=0.0002    # replay the recorded quote tapes through the engine
    msr fees settle --day 2026-03-02 --json    # book the crypto fees Alpaca took in the asset
    msr orders show --key K --tenant T         # one order, as the broker knows it now
    msr orders cancel --key K --tenant T       # cancel a resting order through the broker
    msr orders sweep --max-orders 200          # settle open orders from the broker (all tenants)
    msr positions check --json                 # Alpaca's positions against the ledger's: the drift
    msr controls kill --tenant T --by B --reason R   # stop a tenant without a redeploy (msr controls)

Human output goes to stdout, JSON log lines to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, replace
from datetime import UTC, date, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from backend.adapters.market_data_selection import alpaca_settings
from backend.adapters.stores import build_stores, store_kind
from backend.core.position_reconciliation import DriftReport
from backend.execution.fee_settlement import DayNotSettled, FeeSettlementReport, settle_asset_fees
from backend.execution.order_queries import OrderNotFound, OrderRef
from backend.execution.position_check import DEFAULT_WINDOW, check_positions, report_fields
from backend.execution.settings import ConfigurationError, load_settings
from backend.observability.logging import configure_logging
from functions import paper_run
from functions.app import Services, configured_services
from functions.cli_controls import add_controls

EXIT_OK = 0
# Nothing was done and the message says why: argparse's code for a bad option, reused for every
# refusal that the operator fixes by changing the command or the configuration, or by waiting.
EXIT_REFUSED = 2
# The command ran and found something to look at (positions check: drift).
EXIT_DRIFT = 3

EXIT_CODES = """exit codes:
  0  done (positions check: no drift)
  1  an unexpected error (its traceback is on stderr)
  2  nothing done: a bad option or input, a configuration error (EXEC_*, APCA_*),
     a day the broker has not finished posting (fees settle), an order the tenant
     does not have (orders), a cancel with nothing to cancel (orders cancel), or the
     broker's positions could not be read (positions check: nothing compared),
     a control flip refused (controls: a widening limit, no --by or --reason)
  3  something to look at: drift found (positions check: one line per finding, with
     its reason code), an order that could not be settled (orders sweep), or a
     resting order a kill switch could not cancel (controls kill)"""

Command = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = _parser(
        argparse.ArgumentParser,
        prog="msr",
        description="Multi-asset smart routing: local runs and operations. "
        "msr COMMAND --help describes each command.",
    )
    commands = parser.add_subparsers(title="commands", dest="command", required=True)
    _add_paper_run(commands)
    _add_fees(commands)
    _add_orders(commands)
    _add_positions(commands)
    add_controls(commands, _parser)
    return parser


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The exit-code table laid out as written; a wider column for the option names."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)


def _parser(
    factory: Callable[..., argparse.ArgumentParser], description: str, **kwargs: str
) -> argparse.ArgumentParser:
    """Every level of ``msr`` ends its help with the exit codes."""
    return factory(
        **kwargs,
        description=textwrap.fill(description, width=88),
        epilog=EXIT_CODES,
        formatter_class=_HelpFormatter,
    )


def _add_paper_run(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    summary = "replay the recorded quote tapes through a strategy and the engine on a paper venue"
    command = _parser(
        commands.add_parser,
        name="paper-run",
        help=summary,
        description=f"{paper_run.DESCRIPTION} Prints the seed's four metrics per asset class; writes "
        "decisions.csv, summary.json and the embedded ledger to --out. "
        "The same run as ./scripts/paper_run.sh and python -m functions.paper_run.",
    )
    paper_run.add_arguments(command)
    command.set_defaults(run=partial(paper_run.run, parser=command))


def _add_fees(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fees = _parser(
        commands.add_parser,
        name="fees",
        help="fees the broker charged, settled against the ledger",
        description="Fees the broker charged, settled against what the ledger booked.",
    )
    actions = fees.add_subparsers(title="commands", dest="fees_command", required=True)
    settle = _parser(
        actions.add_parser,
        name="settle",
        help="book the difference between the crypto fees Alpaca took in the asset and the ledger's",
        description="Read the crypto fees Alpaca took in the asset received (its CFEE activities) on "
        "one UTC day and book each difference from what the ledger estimated as a fee adjustment "
        "(ledger entry + position, fanned out to the users' histories where the fan-out runs inline). "
        "Each adjustment is recorded once: running the same day again books nothing. The store comes "
        "from EXEC_STORE (and EXEC_SQLITE_PATH), Alpaca's keys from APCA_API_KEY_ID and "
        "APCA_API_SECRET_KEY. Alpaca posts a day's fees after its end; a day is settled from 06:00 "
        "UTC the next day.",
    )
    settle.add_argument(
        "--day", type=_day, help="the UTC day to settle, YYYY-MM-DD (default: the day before --now)"
    )
    settle.add_argument(
        "--now",
        type=_timestamp,
        help="the time the day's readiness is judged at, ISO 8601 with a timezone "
        "(default: the system clock). A time ahead of the clock settles a day the broker may not "
        "have finished posting: for tests against the simulator",
    )
    settle.add_argument("--json", action="store_true", help="print the report as one JSON object")
    settle.add_argument(
        "--log-level", default="INFO", help="JSON log level on stderr (INFO: one line per adjustment booked)"
    )
    settle.set_defaults(run=_settle_fees)


def _add_positions(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    positions = _parser(
        commands.add_parser,
        name="positions",
        help="the broker's positions compared with the ledger's",
        description="The broker's positions compared with the ledger's, per canonical instrument.",
    )
    actions = positions.add_subparsers(title="commands", dest="positions_command", required=True)
    check = _parser(
        actions.add_parser,
        name="check",
        help="report the drift between Alpaca's positions and the ledger's, with a reason code each",
        description="Compare the positions Alpaca holds with the ledger's positions routed to it "
        "(summed over tenants and account labels), per canonical instrument, and report each "
        "difference with a reason code: MISSING_FILL, UNKNOWN_ORDER, EXTERNAL_ORDER, "
        "FEE_ADJUSTMENT_PENDING, POSITION_MISMATCH, BROKER_POSITION_UNCONFIRMED, "
        "POSITIONS_UNAVAILABLE. It reports and never writes the ledger. The store comes from "
        "EXEC_STORE (and EXEC_SQLITE_PATH), Alpaca's keys from APCA_API_KEY_ID and APCA_API_SECRET_KEY.",
    )
    check.add_argument(
        "--window-hours",
        type=_hours,
        default=DEFAULT_WINDOW.total_seconds() / 3600,
        help="how far back the broker's orders and the unsettled asset fees are read "
        f"(default: {DEFAULT_WINDOW.total_seconds() / 3600:g})",
    )
    check.add_argument("--json", action="store_true", help="print the report as one JSON object")
    check.add_argument(
        "--log-level",
        default="INFO",
        help="JSON log level on stderr (INFO: one line per finding and a summary)",
    )
    check.set_defaults(run=_check_positions)


def _hours(text: str) -> float:
    try:
        hours = float(text)
    except ValueError:
        hours = -1
    if not 0 < hours < float("inf"):
        raise argparse.ArgumentTypeError(f"not a positive number of hours: {text!r}")
    return hours


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a day (YYYY-MM-DD): {text!r}") from None


def _timestamp(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 timestamp: {text!r}") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no timezone (e.g. 2026-03-03T07:00:00Z)")
    return moment.astimezone(UTC)


def _settle_fees(args: argparse.Namespace) -> int:
    configure_logging(args.log_level.upper(), stream=sys.stderr)
    now: datetime = args.now or datetime.now(UTC)
    day: date = args.day or (now - timedelta(days=1)).date()
    try:
        broker_name, report = _settle_with_configured_adapters(day, now)
    except (ConfigurationError, DayNotSettled) as exc:
        print(f"msr fees settle: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    if args.json:
        print(json.dumps({"broker": broker_name, **asdict(report), "day": report.day.isoformat()}))
    else:
        print(
            f"Asset fees of {report.day} at {broker_name}: {report.adjustments} adjustment(s) booked, "
            f"{report.already_recorded} already recorded ({report.fills} fill(s) paying their fee in "
            f"the asset, {report.activities} fee activit{'y' if report.activities == 1 else 'ies'})"
        )
    return EXIT_OK


def _settle_with_configured_adapters(day: date, now: datetime) -> tuple[str, FeeSettlementReport]:
    """The broker is built before the store, so missing keys never create an empty ledger file."""
    from backend.adapters.alpaca.broker import AlpacaBroker  # alpaca-py loads for this command only

    settings = load_settings()
    source = AlpacaBroker(alpaca_settings())
    store, portfolio = build_stores(settings)
    try:
        return source.name, settle_asset_fees(store, source, day, now, portfolio=portfolio)
    finally:
        close = getattr(store, "close", None)  # the SQLite store holds a connection; Firestore none
        if close is not None:
            close()


def _add_orders(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    orders = _parser(
        commands.add_parser,
        name="orders",
        help="orders: show or cancel one of a tenant's, sweep the open ones",
        description="One order of a tenant, named by its idempotency key or its client order id: show "
        "it as the broker knows it now, or cancel it through the broker. --json prints the document "
        "the orders HTTPS function answers. The store, the broker and the engine are built from the "
        "configuration as the functions build them: EXEC_STORE (and EXEC_SQLITE_PATH, which must name "
        "an existing ledger), EXEC_VENUES, APCA_API_KEY_ID and APCA_API_SECRET_KEY.",
    )
    actions = orders.add_subparsers(title="commands", dest="orders_command", required=True)
    show = _parser(
        actions.add_parser,
        name="show",
        help="the order's state, fills, ledger rows and decision",
        description="The order's state, fills, ledger rows and the decision on its intent. An order "
        "that is not final is brought up to date from the broker first (one lookup by client order "
        "id, bounded by the adapter's timeouts): new fills are recorded on the way.",
    )
    cancel = _parser(
        actions.add_parser,
        name="cancel",
        help="cancel a resting order through the broker",
        description="Ask the broker to cancel a resting order; the order's state then comes from the "
        "broker's next report (it may have filled meanwhile). An order that is final already, or "
        "not at the broker yet, is not canceled: exit 2, with the reason.",
    )
    for command, action in ((show, Services.show_order), (cancel, Services.cancel_order)):
        named = command.add_mutually_exclusive_group(required=True)
        named.add_argument("--key", help="the intent's idempotency key")
        named.add_argument("--client-order-id", help="the order's client order id at the broker (msr-...)")
        command.add_argument("--tenant", required=True, help="the tenant whose order it is")
        command.add_argument("--json", action="store_true", help="print the document as one JSON object")
        command.add_argument("--log-level", default="INFO", help="JSON log level on stderr")
        command.set_defaults(run=partial(_order_command, action=action))
    sweep = _parser(
        actions.add_parser,
        name="sweep",
        help="settle the open orders no delivery came back for, from the broker (every tenant)",
        description="What the scheduled settle_orders function does, once: every order not in a final "
        "state whose last change is older than --older-than seconds, across tenants, oldest first, is "
        "asked of the broker by client order id and settled (fills to the ledger, cancels, "
        "expirations, releases). Bounded by --max-orders and --max-seconds; the next run continues "
        "from where this one stopped (the cursor in ops/settlement_sweep). Safe to run beside the "
        "functions and beside itself. Defaults come from EXEC_SWEEP_*. Exit 3 when an order could "
        "not be settled (its sweep.error event is on stderr; the next run retries it).",
    )
    sweep.add_argument("--older-than", type=float, metavar="SECONDS", help="EXEC_SWEEP_AFTER_SECONDS")
    sweep.add_argument("--max-orders", type=int, metavar="N", help="EXEC_SWEEP_MAX_ORDERS")
    sweep.add_argument("--max-seconds", type=float, metavar="SECONDS", help="EXEC_SWEEP_MAX_SECONDS")
    sweep.add_argument("--json", action="store_true", help="print the report as one JSON object")
    sweep.add_argument("--log-level", default="INFO", help="JSON log level on stderr")
    sweep.set_defaults(run=_sweep_command)


def _sweep_command(args: argparse.Namespace) -> int:
    from backend.execution.settlement_sweep import sweep_open_orders

    configure_logging(args.log_level.upper(), stream=sys.stderr)
    for option, value in (("--older-than", args.older_than), ("--max-orders", args.max_orders),
                          ("--max-seconds", args.max_seconds)):  # fmt: skip
        if value is not None and value < 0:
            print(f"msr orders sweep: {option} must not be negative", file=sys.stderr)
            return EXIT_REFUSED

    def sweep(services: Services) -> dict[str, Any]:
        limits = services.settings.sweep_limits()
        limits = replace(
            limits,
            older_than=limits.older_than if args.older_than is None else timedelta(seconds=args.older_than),
            max_orders=limits.max_orders if args.max_orders is None else args.max_orders,
            max_seconds=limits.max_seconds if args.max_seconds is None else args.max_seconds,
        )
        report = sweep_open_orders(services.engine, limits, datetime.now(UTC))
        return {**asdict(report), "states": dict(report.states)}

    try:
        report = _on_configured_services(sweep)
    except ConfigurationError as exc:
        print(f"msr orders sweep: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    if args.json:
        print(orjson.dumps(report).decode())
    else:
        states = ", ".join(f"{n} {state}" for state, n in sorted(report["states"].items())) or "none"
        stopped = f"; stopped at its {report['exhausted']} bound" if report["exhausted"] else ""
        print(
            f"Swept {report['examined']} open order(s) in {report['seconds']:.1f}s: {report['settled']} "
            f"settled, {report['changed']} moved on, {report['unchanged']} unchanged, {report['skipped']} "
            f"skipped, {report['errors']} error(s){stopped}. Now: {states}"
        )
    return EXIT_DRIFT if report["errors"] else EXIT_OK


OrderAction = Callable[[Services, str, OrderRef], dict[str, Any]]


def _order_command(args: argparse.Namespace, action: OrderAction) -> int:
    configure_logging(args.log_level.upper(), stream=sys.stderr)
    name = f"msr orders {args.orders_command}"
    try:
        ref = OrderRef(idempotency_key=args.key, client_order_id=args.client_order_id)
        document = _on_configured_services(lambda services: action(services, args.tenant, ref))
    except ValidationError as exc:
        print(f"{name}: {exc.errors()[0]['msg']}", file=sys.stderr)
        return EXIT_REFUSED
    except (ConfigurationError, OrderNotFound) as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    print(orjson.dumps(document).decode() if args.json else "\n".join(_order_lines(document)))
    return EXIT_REFUSED if document.get("requested") is False else EXIT_OK


def _on_configured_services(act: Callable[[Services], dict[str, Any]]) -> dict[str, Any]:
    """A ledger file is never created by reading or canceling: a path that names none is a
    configuration error (a typo would otherwise look like an unknown order)."""
    settings = load_settings()
    if store_kind(settings) == "sqlite" and not Path(settings.sqlite_path).is_file():
        raise ConfigurationError(f"EXEC_SQLITE_PATH: no ledger at {settings.sqlite_path}")
    services = configured_services(settings)
    try:
        return act(services)
    finally:
        close = getattr(services.store, "close", None)  # the SQLite store holds a connection
        if close is not None:
            close()


def _check_positions(args: argparse.Namespace) -> int:
    configure_logging(args.log_level.upper(), stream=sys.stderr)
    try:
        report = _check_with_configured_adapters(timedelta(hours=args.window_hours))
    except ConfigurationError as exc:
        print(f"msr positions check: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    if args.json:
        print(json.dumps(report_fields(report)))
    else:
        for finding in report.findings:
            print(f"{finding.code.value}: {finding.message}")
        counts = ", ".join(f"{n} {code.value}" for code, n in sorted(report.counts().items())) or "no drift"
        print(
            f"Positions at {report.broker_account}: {len(report.positions)} instrument(s) compared; {counts}"
        )
    if not report.available:
        return EXIT_REFUSED
    return EXIT_DRIFT if report.drift else EXIT_OK


def _check_with_configured_adapters(window: timedelta) -> DriftReport:
    """The broker is built before the store, so missing keys never create an empty ledger file."""
    from backend.adapters.alpaca.broker import AlpacaBroker  # alpaca-py loads for this command only

    settings = load_settings()
    broker = AlpacaBroker(alpaca_settings())
    store, _ = build_stores(settings)
    try:
        return check_positions(store, broker, settings, datetime.now(UTC), window)
    finally:
        close = getattr(store, "close", None)
        if close is not None:
            close()


def _order_lines(document: Mapping[str, Any]) -> list[str]:
    lines = []
    if "requested" in document:
        verdict = "Cancel requested" if document["requested"] else f"Not canceled ({document['reason_code']})"
        lines.append(f"{verdict}: {document['reason']}")
    result, order = document["result"], document["order"]
    decision = "no decision recorded"
    if result:
        decision = f"{result['status']} {result['reason_code']}: {result['reason']}"
    if order is None:
        lines.append(f"Intent {document['idempotency_key']!r} never reached the broker: {decision}")
        return lines
    symbol = result["intent"]["symbol"] if result else "?"
    lease = f", leased until {order['lease_expires_at'].isoformat()}" if order["lease_expires_at"] else ""
    lines += [
        f"Order {order['client_order_id']} (idempotency key {document['idempotency_key']!r}): "
        f"{order['state']}",
        f"  {order['side']} {order['qty']} {symbol}: filled {order['filled_qty']}, leaves "
        f"{order['leaves_qty']}, average price {order['avg_fill_price'] or '-'}",
        f"  broker {order['broker'] or '-'} order {order['broker_order_id'] or '-'}, "
        f"{order['attempts']} submission(s){lease}",
        f"  decision: {decision}",
    ]
    lines += [
        f"  fill {fill['qty']} @ {fill['price']} at {fill['at'].isoformat()} (ledger row {fill['trade_id']})"
        for fill in order["fills"]
    ]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """The console script ``msr``. Returns the exit code; argparse exits 2 itself on a bad option."""
    args = build_parser().parse_args(argv)
    command: Command = args.run
    return command(args)


if __name__ == "__main__":
    raise SystemExit(main())
