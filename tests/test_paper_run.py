"""The paper-run CLI end to end, on the real quote tapes in data/quotes."""

from __future__ import annotations

import csv
import json
import logging
import sqlite3
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from functions.paper_run import DECISION_COLUMNS, main

THRESHOLDS: dict[str, Decimal] = {"FOREX": Decimal("0.0002"), "CRYPTO": Decimal("0.0001")}
THRESHOLD_ARGS: list[str] = ["--max-spread", "FOREX=0.0002", "--max-spread", "CRYPTO=0.0001"]
TAPE_SYMBOLS = ("BTC/USDT", "EUR/USD", "USD/JPY")


@dataclass
class CliRun:
    code: int
    stdout: str
    summary: dict[str, Any]
    header: list[str]
    rows: list[dict[str, str]]


@pytest.fixture(autouse=True)
def restore_msr_logging() -> Iterator[None]:
    """main() points the 'msr' logger at the (captured) stderr; put it back for the other tests."""
    logger = logging.getLogger("msr")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate


def run_cli(out: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> CliRun:
    code = main(["--out", str(out), "--no-progress", *THRESHOLD_ARGS, *extra])
    stdout = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    with (out / "decisions.csv").open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        rows = [dict(zip(header, row, strict=True)) for row in reader]
    return CliRun(code, stdout, summary, header, rows)


def table_rows(stdout: str) -> dict[str, list[str]]:
    """The per-class metrics table: label -> its cells."""
    rows: dict[str, list[str]] = {}
    for line in stdout.splitlines():
        cells = line.split()
        if cells and cells[0] in ("EQUITY", "FOREX", "CRYPTO", "OPTIONS", "TOTAL"):
            rows[cells[0]] = cells
    return rows


def count(cell: str) -> int:
    return int(cell.replace(",", ""))


def test_paper_run_on_real_tapes_exits_0_prints_the_per_class_table_and_writes_both_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = run_cli(tmp_path, capsys)

    assert run.code == 0
    summary = run.summary
    assert summary["quotes"] == 451 + 9_500 + 1_000  # every row of the three tapes
    assert summary["thresholds"]["by_asset_class"] == {"FOREX": "0.0002", "CRYPTO": "0.0001"}
    assert summary["intents"] > 0

    # The table: one row per class that had intents, and a total that adds up.
    table = table_rows(run.stdout)
    assert set(table) == {"FOREX", "CRYPTO", "TOTAL"}
    assert count(table["FOREX"][1]) + count(table["CRYPTO"][1]) == count(table["TOTAL"][1])
    assert count(table["TOTAL"][1]) == summary["intents"]
    assert count(table["TOTAL"][3]) == summary["metrics"]["total"]["downgraded"]
    by_class = summary["metrics"]["by_asset_class"]
    for label in ("FOREX", "CRYPTO"):
        assert count(table[label][1]) == by_class[label]["intents"]
        assert count(table[label][2]) == by_class[label]["executed"]

    # decisions.csv: the header, then one row per decision (= per intent).
    assert tuple(run.header) == DECISION_COLUMNS
    assert len(run.rows) == summary["intents"]
    assert len({row["idempotency_key"] for row in run.rows}) == len(run.rows)
    assert {row["asset_class"] for row in run.rows} == {"FOREX", "CRYPTO"}
    placed = [row for row in run.rows if row["status"] == "placed"]
    assert len(placed) == summary["new_orders"] == summary["ledger_rows"]
    assert summary["replayed"] == 0
    for name in ("decisions", "summary", "ledger"):
        assert Path(summary["files"][name]).is_file()


def test_tight_thresholds_downgrade_intents_and_every_downgrade_is_above_its_class_threshold(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = run_cli(tmp_path, capsys)

    downgraded = [row for row in run.rows if row["status"] == "downgraded"]
    assert run.summary["metrics"]["total"]["downgraded"] > 0
    assert len(downgraded) == run.summary["metrics"]["total"]["downgraded"]
    for row in downgraded:
        assert row["reason_code"] == "SPREAD_TOO_WIDE"
        assert Decimal(row["threshold_pct"]) == THRESHOLDS[row["asset_class"]]
        assert float(row["spread_pct"]) > float(row["threshold_pct"]), row
    # ...and nothing that was placed was wider than its threshold.
    for row in run.rows:
        if row["status"] == "placed":
            assert Decimal(row["threshold_pct"]) == THRESHOLDS[row["asset_class"]]
            assert float(row["spread_pct"]) <= float(row["threshold_pct"]), row
    # Both classes hit the gate on these tapes at these thresholds.
    assert Counter(row["asset_class"] for row in downgraded).keys() == {"FOREX", "CRYPTO"}


def test_second_run_with_keep_ledger_places_no_new_orders_and_keeps_the_ledger_row_count(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = run_cli(tmp_path, capsys)
    assert first.summary["new_orders"] > 0

    second = run_cli(tmp_path, capsys, "--keep-ledger")

    assert second.code == 0
    assert second.summary["new_orders"] == 0
    assert second.summary["ledger_rows"] == first.summary["ledger_rows"]
    assert second.summary["intents"] == first.summary["intents"]
    assert second.summary["replayed"] == first.summary["intents"]
    assert len(second.rows) == len(first.rows)
    assert "Orders placed this run: 0 " in second.stdout
    with closing(sqlite3.connect(tmp_path / "ledger.sqlite3")) as conn:
        assert (
            conn.execute("SELECT COUNT(*) FROM ledger_trades").fetchone()[0] == first.summary["ledger_rows"]
        )

    # Without --keep-ledger the ledger starts over and the same orders are placed again.
    third = run_cli(tmp_path, capsys)
    assert third.summary["new_orders"] == first.summary["new_orders"]
    assert third.summary["replayed"] == 0


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("FOREX", "--max-spread takes CLASS=VALUE, got 'FOREX'"),
        ("FOREX=abc", "must be a number"),
        ("BOGUS=0.1", "unknown asset class 'BOGUS'"),
    ],
)
def test_malformed_max_spread_is_an_argparse_error_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str, message: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path), "--no-progress", "--max-spread", value])

    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert "error:" in captured.err
    assert message in captured.err
    assert captured.out == ""
    assert not (tmp_path / "summary.json").exists()


def test_unknown_symbol_exits_2_naming_the_tapes_symbols(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path), "--no-progress", "--symbol", "NOPE"])

    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "NOPE" in err
    for symbol in TAPE_SYMBOLS:
        assert symbol in err
    assert not (tmp_path / "summary.json").exists()


def test_refused_input_leaves_the_previous_ledger_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--out", str(tmp_path), "--no-progress", "--symbol", "BTC/USDT"]) == 0
    ledger = tmp_path / "ledger.sqlite3"
    before = ledger.stat().st_size
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--no-progress", "--symbol", "NOPE"])
    assert ledger.exists()
    assert ledger.stat().st_size == before
    capsys.readouterr()
