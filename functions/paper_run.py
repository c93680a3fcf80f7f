"""The main job, locally: replay real quote tapes through a strategy and the engine on a paper venue.

    python -m functions.paper_run                      # all tapes, mean reversion, 0.1 % threshold
    python -m functions.paper_run --max-spread FOREX=0.0003 --strategy multi_asset

Writes ``decisions.csv``, ``summary.json`` and the embedded ledger into ``--out`` and prints the
seed's four metrics per asset class and in total.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO

from backend.adapters.market_data import TapeMarketData, default_tapes
from backend.adapters.paper_broker import PaperBroker
from backend.adapters.sqlite_store import SQLiteExecutionStore
from backend.core.instruments import AssetClass
from backend.core.metrics import ExecutionMetrics, GroupMetrics, compute_metrics
from backend.core.orders import ExecutionStatus
from backend.core.quotes import to_decimal
from backend.core.risk import RiskLimits
from backend.core.routing import RoutingPolicy
from backend.execution.engine import ExecutionEngine, RiskManager, SmartRouter
from backend.execution.ports import ManualClock
from backend.execution.settings import ExecSettings
from backend.observability.logging import configure_logging
from functions.runner import RunContext, Sizing, evaluate_and_execute
from functions.strategies import STRATEGIES

# Paper-run position limits: big enough for a few of the default order sizes per class.
PAPER_POSITION_LIMITS: Mapping[AssetClass, Decimal] = {
    AssetClass.EQUITY: Decimal(1000),
    AssetClass.FOREX: Decimal(100000),
    AssetClass.CRYPTO: Decimal(10),
    AssetClass.OPTIONS: Decimal(100),
}

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

DECISION_COLUMNS = (
    "decided_at",
    "symbol",
    "asset_class",
    "side",
    "qty",
    "status",
    "reason_code",
    "reason",
    "spread_pct",
    "estimated_slippage",
    "threshold_pct",
    "mid_price",
    "notional",
    "estimated_cost",
    "estimated_fees",
    "quote_currency",
    "trade_id",
    "idempotency_key",
)


@dataclass(frozen=True)
class PaperRunConfig:
    tapes: Sequence[Path] = field(default_factory=default_tapes)
    symbols: Sequence[str] | None = None
    strategy: str = "mean_reversion"
    strategy_config: Mapping[str, Any] = field(default_factory=dict)
    policy: RoutingPolicy = field(default_factory=RoutingPolicy)
    limits: RiskLimits = field(
        default_factory=lambda: RiskLimits(
            max_position_qty_by_asset_class=PAPER_POSITION_LIMITS, max_daily_trades=1000
        )
    )
    sizing: Sizing = field(default_factory=Sizing)
    out_dir: Path = Path("paper_run_output")
    keep_ledger: bool = False
    tenant_id: str = "paper"
    uid: str = "paper-trader"
    broker_account_id: str = "paper"


@dataclass(frozen=True)
class PaperRunReport:
    config: PaperRunConfig
    quotes: int
    signals: dict[str, int]
    intents: int
    new_orders: int
    replayed: int
    ledger_rows: int
    metrics: ExecutionMetrics
    wall_seconds: float
    files: dict[str, str]


class Progress:
    """A one-line progress bar on a terminal; a line per quarter otherwise (logs, CI)."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total = max(total, 1)
        self.stream = stream
        self.tty = stream.isatty()
        self._last_quarter = -1
        self._last_draw = 0.0

    def update(self, done: int) -> None:
        if self.tty:
            now = time.monotonic()
            if now - self._last_draw >= 0.1 or done == self.total:
                filled = 30 * done // self.total
                self.stream.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {done}/{self.total} quotes")
                self.stream.flush()
                self._last_draw = now
            return
        quarter = 4 * done // self.total
        if quarter > self._last_quarter:
            self._last_quarter = quarter
            self.stream.write(f"progress: {25 * quarter}% ({done}/{self.total} quotes)\n")

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")


def run_paper(config: PaperRunConfig, progress_stream: TextIO | None = None) -> PaperRunReport:
    started = time.perf_counter()
    # Everything that can refuse the input runs before the old ledger is touched.
    strategy = STRATEGIES[config.strategy](dict(config.strategy_config))
    clock = ManualClock(_EPOCH)
    market = TapeMarketData(config.tapes, clock)
    total_quotes = market.count(config.symbols)
    config.out_dir.mkdir(parents=True, exist_ok=True)
    ledger_path = config.out_dir / "ledger.sqlite3"
    if not config.keep_ledger:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{ledger_path}{suffix}").unlink(missing_ok=True)
    store = SQLiteExecutionStore(ledger_path)
    settings = ExecSettings(dry_run=False, tenant_id=config.tenant_id, uid=config.uid)
    engine = ExecutionEngine(
        broker=PaperBroker(market, clock),
        router=SmartRouter(policy=config.policy, market_data=market, clock=clock),
        risk=RiskManager(config.limits),
        dry_run=False,
        store=store,
        clock=clock,
        settings=settings,
        portfolio=store,
    )
    # The replayed account starts flat; positions follow every placed result, replayed ones too,
    # so a rerun over a kept ledger sees the same state and asks for the same intents.
    positions: dict[str, Decimal] = {}
    signals: Counter[str] = Counter()
    intents = new_orders = replayed = 0
    base_context = RunContext(
        strategy_id=config.strategy,
        broker_account_id=config.broker_account_id,
        tenant_id=config.tenant_id,
        uid=config.uid,
        run_id="",
        sizing=config.sizing,
    )
    progress = Progress(total_quotes, progress_stream) if progress_stream else None
    for index, quote in enumerate(market.replay(config.symbols), start=1):
        if strategy.supports(quote.asset_class):
            context = replace(base_context, run_id=quote.timestamp.isoformat())
            signal, result = evaluate_and_execute(strategy, quote, positions, engine, context)
            signals[signal.signal_type.value] += 1
            if result is not None:
                intents += 1
                order = result.broker_order
                replayed += result.replayed
                if result.status is ExecutionStatus.PLACED and order is not None:
                    new_orders += not result.replayed
                    change = order.side.sign * order.filled_qty
                    positions[quote.symbol] = positions.get(quote.symbol, Decimal(0)) + change
        if progress:
            progress.update(index)
    if progress:
        progress.close()

    decisions = list(store.iter_decisions(config.tenant_id))
    metrics = compute_metrics(decisions)
    ledger_rows = sum(1 for _ in store.iter_ledger_trades(config.tenant_id))
    store.close()
    files = {
        "decisions": str(config.out_dir / "decisions.csv"),
        "summary": str(config.out_dir / "summary.json"),
        "ledger": str(ledger_path),
    }
    _write_decisions_csv(Path(files["decisions"]), decisions)
    report = PaperRunReport(
        config=config,
        quotes=total_quotes,
        signals=dict(sorted(signals.items())),
        intents=intents,
        new_orders=new_orders,
        replayed=replayed,
        ledger_rows=ledger_rows,
        metrics=metrics,
        wall_seconds=time.perf_counter() - started,
        files=files,
    )
    Path(files["summary"]).write_text(json.dumps(summary_dict(report), indent=2, default=str) + "\n")
    return report


def _write_decisions_csv(path: Path, decisions: Sequence[Any]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(DECISION_COLUMNS)
        for record in decisions:
            row = asdict(record)
            writer.writerow([_csv_cell(row[column]) for column in DECISION_COLUMNS])


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    return getattr(value, "value", value)


def _group_dict(metrics: GroupMetrics) -> dict[str, Any]:
    return asdict(metrics)


def summary_dict(report: PaperRunReport) -> dict[str, Any]:
    metrics = report.metrics
    return {
        "strategy": report.config.strategy,
        "tapes": [str(tape) for tape in report.config.tapes],
        "thresholds": {
            "default_max_spread_pct": str(report.config.policy.max_spread_pct),
            "by_asset_class": {
                k.value: str(v) for k, v in report.config.policy.max_spread_pct_by_asset_class.items()
            },
        },
        "quotes": report.quotes,
        "signals": report.signals,
        "intents": report.intents,
        "new_orders": report.new_orders,
        "replayed": report.replayed,
        "ledger_rows": report.ledger_rows,
        "wall_seconds": round(report.wall_seconds, 4),
        "metrics": {
            "total": _group_dict(metrics.total),
            "by_asset_class": {k.value: _group_dict(v) for k, v in metrics.by_asset_class.items()},
            "asset_class_distribution": {k.value: v for k, v in metrics.distribution.items()},
        },
        "files": report.files,
    }


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.4%}"


def _money(amounts: Mapping[str, Decimal]) -> str:
    return ", ".join(f"{currency} {amount:,.2f}" for currency, amount in amounts.items()) or "-"


def render_report(report: PaperRunReport) -> str:
    metrics = report.metrics
    policy = report.config.policy
    overrides = ", ".join(
        f"{k.value} {v * 100:.4f}%" for k, v in policy.max_spread_pct_by_asset_class.items()
    )
    lines = [
        f"Paper run: {report.quotes:,} quotes from {len(report.config.tapes)} tape(s), "
        f"strategy {report.config.strategy}",
        f"Cost gate: max spread {policy.max_spread_pct * 100:.4f}% of mid"
        + (f" ({overrides})" if overrides else "")
        + f", quotes older than {policy.max_quote_age.total_seconds():g}s refused",
        "Signals: " + ", ".join(f"{k} {v:,}" for k, v in report.signals.items()),
        "",
        f"{'':8} {'intents':>8} {'executed':>9} {'downgr.':>8} {'rejected':>8} {'downgr.rate':>11} "
        f"{'avg slip exec':>13} {'avg slip all':>12} {'share exec':>10}  cost savings (avoided)",
    ]
    rows = [(k.value, v, metrics.distribution.get(k)) for k, v in metrics.by_asset_class.items()]
    rows.append(("TOTAL", metrics.total, 1.0 if metrics.total.executed else None))
    for label, group, share in rows:
        lines.append(
            f"{label:8} {group.intents:>8,} {group.executed:>9,} {group.downgraded:>8,} "
            f"{group.rejected + group.failed:>8,} {group.downgrade_rate:>11.2%} "
            f"{_pct(group.avg_estimated_slippage_executed):>13} {_pct(group.avg_estimated_slippage_all):>12} "
            f"{'-' if share is None else f'{share:.1%}':>10}  {_money(group.cost_savings)}"
        )
    refusals = {code: count for code, count in metrics.total.reason_codes.items() if code not in ("OK",)}
    lines += [
        "",
        "Reason codes: " + (", ".join(f"{k} {v:,}" for k, v in refusals.items()) or "none"),
        f"Orders placed this run: {report.new_orders:,} (replayed from the ledger: {report.replayed:,}); "
        f"ledger rows: {report.ledger_rows:,}",
        f"Executed notional: {_money(metrics.total.executed_notional)}",
        f"Wall time: {report.wall_seconds:.2f}s",
        f"Files: {report.files['decisions']}, {report.files['summary']}, {report.files['ledger']}",
    ]
    return "\n".join(lines)


def _class_values(pairs: Sequence[str], option: str) -> dict[AssetClass, Decimal]:
    values: dict[AssetClass, Decimal] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"{option} takes CLASS=VALUE, got {pair!r}")
        try:
            values[AssetClass.parse(name)] = to_decimal(raw, option)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{option}: {exc}") from None
    return values


DESCRIPTION = "Replay real quote tapes through a strategy, the SmartRouter, risk and a paper broker."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m functions.paper_run", description=DESCRIPTION)
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The paper run's options, on its own parser or on the ``msr paper-run`` subcommand."""
    parser.add_argument(
        "--tape", action="append", type=Path, help="tape CSV (repeatable; default: all in data/quotes)"
    )
    parser.add_argument("--symbol", action="append", help="only these symbols (repeatable)")
    parser.add_argument("--strategy", choices=sorted(STRATEGIES), default="mean_reversion")
    parser.add_argument("--window", type=int, help="mean_reversion: rolling window in quotes (default 100)")
    parser.add_argument("--entry-z", type=float, help="mean_reversion: entry threshold in sd (default 2)")
    parser.add_argument(
        "--max-spread-pct", default="0.001", help="default max spread, fraction of mid (0.001 = 0.1%%)"
    )
    parser.add_argument(
        "--max-spread",
        action="append",
        default=[],
        metavar="CLASS=PCT",
        help="per-class max spread, e.g. FOREX=0.0003",
    )
    parser.add_argument("--max-quote-age", type=float, default=5.0, help="seconds before a quote is stale")
    parser.add_argument(
        "--qty",
        action="append",
        default=[],
        metavar="CLASS=QTY",
        help="order size per class, e.g. CRYPTO=0.5",
    )
    parser.add_argument("--max-daily-trades", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("paper_run_output"), help="output folder")
    parser.add_argument(
        "--keep-ledger",
        action="store_true",
        help="reuse the ledger in --out: a rerun then places nothing twice",
    )
    parser.add_argument(
        "--log-level", default="WARNING", help="JSON log level on stderr (INFO shows every decision)"
    )
    parser.add_argument("--no-progress", action="store_true")


def config_from_args(args: argparse.Namespace) -> PaperRunConfig:
    strategy_config: dict[str, Any] = {}
    if args.window is not None:
        strategy_config["window"] = args.window
    if args.entry_z is not None:
        strategy_config["entry_z"] = args.entry_z
    return PaperRunConfig(
        tapes=args.tape or default_tapes(),
        symbols=args.symbol,
        strategy=args.strategy,
        strategy_config=strategy_config,
        policy=RoutingPolicy.build(
            max_spread_pct=args.max_spread_pct,
            max_spread_pct_by_asset_class=_class_values(args.max_spread, "--max-spread"),
            max_quote_age=timedelta(seconds=args.max_quote_age),
        ),
        limits=RiskLimits(
            max_position_qty_by_asset_class=PAPER_POSITION_LIMITS, max_daily_trades=args.max_daily_trades
        ),
        sizing=Sizing.with_overrides(_class_values(args.qty, "--qty")),
        out_dir=args.out,
        keep_ledger=args.keep_ledger,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    return run(parser.parse_args(argv), parser)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run the parsed options; input the run refuses is reported through ``parser`` (exit 2)."""
    configure_logging(args.log_level.upper(), stream=sys.stderr)
    try:
        config = config_from_args(args)
        report = run_paper(config, progress_stream=None if args.no_progress else sys.stderr)
    except (ValueError, argparse.ArgumentTypeError, FileNotFoundError) as exc:
        parser.error(str(exc))
    print(render_report(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
