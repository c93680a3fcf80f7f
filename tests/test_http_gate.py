"""The cost gate cannot be bypassed from the public ``execute`` function: whatever the body says
(a zero ``estimated_slippage``, another asset class), the live quote is fetched and checked, and an
unusable one (wide, stale, crossed, zero, missing) places no order. Served from main.py with its
manifest's secrets, the real alpaca-py SDK talking to the local Alpaca server; on the Alpaca venue
and on the paper venue (whose own fill check must not be what stops it)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from devtools.alpaca_simulator import FakeAlpaca, running
from tests.test_http_execute import post, served

AN_HOUR_AGO = (datetime.now(UTC) - timedelta(hours=1)).isoformat().replace("+00:00", "Z")
# symbol -> (bid, ask, timestamp); MISSING has no quote at all.
QUOTES = {
    "WIDE": ("99.50", "100.50", None),  # 1 % wide, the threshold is 0.1 %
    "STALE": ("100.00", "100.01", AN_HOUR_AGO),
    "CROSS": ("100.02", "100.00", None),
    "ZERO": ("0", "0", None),
    "GOOD": ("100.00", "100.01", None),  # 0.01 %
}
UNUSABLE = {
    "WIDE": "SPREAD_TOO_WIDE",
    "STALE": "QUOTE_STALE",
    "CROSS": "QUOTE_CROSSED",
    "ZERO": "QUOTE_NON_POSITIVE",
    "MISSING": "QUOTE_MISSING",
}
# What a caller might try to talk the gate out of its verdict with.
BODIES: dict[str, dict[str, Any]] = {
    "plain": {},
    "zero slippage": {"estimated_slippage": 0},
    "zero slippage as text": {"estimated_slippage": "0"},
    "tiny slippage": {"estimated_slippage": "1e-12"},
    "declared equity": {"asset_class": "equity", "estimated_slippage": 0},
}


@pytest.fixture(scope="module")
def fake() -> FakeAlpaca:
    fake = FakeAlpaca()
    for symbol, (bid, ask, timestamp) in QUOTES.items():
        fake.set_quote(symbol, bid, ask, timestamp)
    return fake


@pytest.fixture(scope="module")
def alpaca_url(fake: FakeAlpaca) -> Iterator[str]:
    with running(fake) as url:
        yield url


@pytest.fixture(scope="module", params=["alpaca", "paper"])
def venue_url(
    request: pytest.FixtureRequest, alpaca_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    path: Path = tmp_path_factory.mktemp(f"gate-{request.param}") / "ledger.sqlite3"
    store_env = {
        "EXEC_STORE": "sqlite",
        "EXEC_SQLITE_PATH": str(path),
        "EXEC_VENUES": json.dumps({"EQUITY": request.param}),
    }
    with served("execute", alpaca_url, store_env) as url:
        yield url


def intent(symbol: str, **extra: Any) -> dict[str, Any]:
    return {
        "strategy_id": "manual",
        "broker_account_id": "alpaca_main",
        "symbol": symbol,
        "side": "buy",
        "qty": 1,
        "idempotency_key": uuid.uuid4().hex,
        **extra,
    }


@pytest.mark.parametrize("body", list(BODIES), ids=list(BODIES))
@pytest.mark.parametrize("symbol", list(UNUSABLE))
def test_an_unusable_quote_places_nothing_whatever_the_body_says(
    venue_url: str, fake: FakeAlpaca, symbol: str, body: str
) -> None:
    orders_before = len(fake.orders_snapshot())
    response = post(venue_url, intent(symbol, **BODIES[body]))
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["status"] in {"downgraded", "rejected"}, answer
    assert answer["reason_code"] == UNUSABLE[symbol], answer
    assert len(fake.orders_snapshot()) == orders_before


def test_the_callers_figure_can_only_make_the_estimate_worse(venue_url: str, fake: FakeAlpaca) -> None:
    orders_before = len(fake.orders_snapshot())
    # A caller who expects more slippage than the quote shows is believed: WAIT.
    worse = post(venue_url, intent("GOOD", estimated_slippage="0.005")).json()
    assert (worse["status"], worse["reason_code"]) == ("downgraded", "SLIPPAGE_TOO_HIGH")
    assert "Estimated slippage 0.50% exceeds threshold 0.10%" in worse["reason"]
    assert len(fake.orders_snapshot()) == orders_before
    # One who claims less is not: the quote's own spread is what the gate judges (it passes here).
    better = post(venue_url, intent("GOOD", estimated_slippage=0)).json()
    assert better["status"] == "placed", better
    assert better["routing"]["spread_pct"] == pytest.approx(0.0001, rel=1e-3)
    at_alpaca = better["broker_order"]["broker"] == "alpaca"
    assert len(fake.orders_snapshot()) == orders_before + at_alpaca


def test_a_declared_asset_class_that_contradicts_the_symbol_is_refused(venue_url: str) -> None:
    for symbol, declared in (("BTC/USD", "equity"), ("SPY251219P00450000", "crypto"), ("EUR/USD", "crypto")):
        response = post(venue_url, intent(symbol, asset_class=declared))
        assert response.status_code == 422, (symbol, declared, response.text)
        assert f"not {declared.upper()}" in response.text
    # A plain ticker could be anything listed as equity: it stays EQUITY, declared or not.
    assert post(venue_url, intent("GOOD", asset_class="equity")).status_code == 200
