"""A local HTTP server that speaks the part of Alpaca's REST API this project uses, so the tests,
the benchmarks and the local stack drive the *real* alpaca-py SDK over a real socket on 127.0.0.1.

Trading: ``POST /v2/orders``, ``GET /v2/orders/{id}``, ``GET /v2/orders:by_client_order_id``,
``GET /v2/positions``, ``GET /v2/account/activities/CFEE`` (crypto fees taken in the asset
received, as Alpaca posts them: one per fill, symbol spelled ``BTCUSD``, negative qty).
Market data: ``GET /v2/stocks/quotes/latest``, ``GET /v1beta3/crypto/us/latest/quotes``,
``GET /v1beta1/options/quotes/latest``. Faults are scripted per request: a status with a body, a
hang, a malformed body, an injected latency. Every request is logged for the tests to count.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

ALPACA_CLASS = {"EQUITY": "us_equity", "CRYPTO": "crypto", "OPTIONS": "us_option"}


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


@dataclass
class Fault:
    """What to do instead of (or before) answering one matching request."""

    method: str
    path: str  # a prefix of the request path
    status: int | None = None  # answer with this status and ``body``
    body: str = ""
    hang_s: float = 0.0  # sleep this long first (longer than the client's timeout: a hang)
    then_process: bool = False  # after the hang, process the request anyway (it "went through")
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class FakeAlpaca:
    latency_s: float = 0.0
    fill: str = "filled"  # filled | new (fills after ``polls_to_fill`` GETs) | partial | rejected
    polls_to_fill: int = 2
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)
    by_client_id: dict[str, str] = field(default_factory=dict)
    polls: dict[str, int] = field(default_factory=dict)
    quotes: dict[str, dict[str, Any]] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    log: list[tuple[str, str, str]] = field(default_factory=list)  # (method, path, query)
    # Crypto fee rate (bps of the notional), taken in the asset received; the account's tier.
    crypto_fee_bps: Decimal = Decimal(25)
    # What the account holds, by Alpaca's position spelling (BTCUSD): fills net of asset fees.
    holdings: dict[str, Decimal] = field(default_factory=dict)
    activities: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def set_quote(self, symbol: str, bid: str, ask: str, timestamp: str | None = None) -> None:
        """Without a timestamp the quote is live: stamped with the time of each answer."""
        self.quotes[symbol] = {
            "t": timestamp,
            "bp": float(bid),
            "bs": 100.0,
            "ap": float(ask),
            "as": 100.0,
        }

    def requests_to(self, method: str, path: str) -> int:
        with self.lock:
            return sum(1 for m, p, _ in self.log if m == method and p == path)

    def take_fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for index, fault in enumerate(self.faults):
                if fault.method == method and path.startswith(fault.path):
                    return self.faults.pop(index)
        return None

    # -- trading ------------------------------------------------------------------------

    def create_order(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        client_order_id = body.get("client_order_id") or str(uuid.uuid4())
        with self.lock:
            if client_order_id in self.by_client_id:
                return 422, {"code": 40010001, "message": "client_order_id must be unique"}
            symbol = body["symbol"]
            quote = self.quotes.get(symbol, {"bp": 99.99, "ap": 100.01})
            price = quote["ap"] if body["side"] == "buy" else quote["bp"]
            qty = Decimal(str(body["qty"]))
            order = {
                "id": str(uuid.uuid4()),
                "client_order_id": client_order_id,
                "created_at": _now(),
                "updated_at": _now(),
                "submitted_at": _now(),
                "filled_at": None,
                "symbol": symbol,
                "asset_class": "crypto"
                if "/" in symbol
                else "us_option"
                if len(symbol) > 15
                else "us_equity",
                "qty": str(qty),
                "filled_qty": "0",
                "filled_avg_price": None,
                "order_class": "simple",
                "order_type": body.get("type", "market"),
                "type": body.get("type", "market"),
                "side": body["side"],
                "time_in_force": body["time_in_force"],
                "limit_price": body.get("limit_price"),
                "status": "accepted",
                "extended_hours": False,
                "_fill_price": str(price),
            }
            if self.fill == "filled":
                self._fill(order, qty)
            elif self.fill == "partial":
                self._fill(order, qty / 2, status="partially_filled")
            elif self.fill == "rejected":
                order["status"] = "rejected"
            self.orders[order["id"]] = order
            self.by_client_id[client_order_id] = order["id"]
            return 200, self._public(order)

    def _fill(self, order: dict[str, Any], qty: Decimal, status: str = "filled") -> None:
        """Fill ``order`` up to ``qty`` in all; the account's holdings follow, net of a crypto fee
        taken in the asset received (posted as a CFEE activity)."""
        delta = qty - Decimal(order["filled_qty"])
        order["filled_qty"] = str(qty)
        order["filled_avg_price"] = order["_fill_price"]
        order["filled_at"] = _now()
        order["status"] = status
        position = order["symbol"].replace("/", "")
        received = delta if order["side"] == "buy" else -delta
        if order["asset_class"] == "crypto" and order["side"] == "buy":
            fee = delta * self.crypto_fee_bps / Decimal(10000)
            received -= fee
            self.activities.append(
                {
                    "id": f"{datetime.now(UTC):%Y%m%d%H%M%S%f}::{uuid.uuid4()}",
                    "activity_type": "CFEE",
                    "date": datetime.now(UTC).date().isoformat(),
                    "net_amount": "0",
                    "description": "Coin Pair Transaction Fee (Non USD)",
                    "symbol": position,
                    "qty": str(-fee),
                    "price": order["_fill_price"],
                    "status": "executed",
                }
            )
        self.holdings[position] = self.holdings.get(position, Decimal(0)) + received

    @staticmethod
    def _public(order: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in order.items() if not k.startswith("_")}

    def get_order(self, order_id: str) -> tuple[int, dict[str, Any]]:
        with self.lock:
            order = self.orders.get(order_id)
            if order is None:
                return 404, {"code": 40410000, "message": "order not found"}
            self.polls[order_id] = self.polls.get(order_id, 0) + 1
            if (
                order["status"] == "accepted"
                and self.fill == "new"
                and self.polls[order_id] >= self.polls_to_fill
            ):
                self._fill(order, Decimal(order["qty"]))
            return 200, self._public(order)

    def get_by_client_id(self, client_order_id: str) -> tuple[int, dict[str, Any]]:
        with self.lock:
            order_id = self.by_client_id.get(client_order_id)
        if order_id is None:
            return 404, {"code": 40410000, "message": "order not found"}
        with self.lock:
            return 200, self._public(self.orders[order_id])

    def positions(self) -> tuple[int, list[dict[str, Any]]]:
        with self.lock:
            return 200, [{"symbol": s, "qty": str(q)} for s, q in sorted(self.holdings.items()) if q]

    def fee_activities(self, query: dict[str, list[str]]) -> tuple[int, list[dict[str, Any]]]:
        day = query.get("date", [""])[0]
        after = query.get("page_token", [""])[0]
        size = int(query.get("page_size", ["100"])[0])
        with self.lock:
            chosen = [a for a in self.activities if not day or a["date"] == day]
        if after:
            chosen = [a for a in chosen if a["id"] > after]
        return 200, chosen[:size]

    # -- market data ----------------------------------------------------------------------

    def latest_quotes(self, symbols: str) -> tuple[int, dict[str, Any]]:
        wanted = [s for s in symbols.split(",") if s]
        with self.lock:
            quotes = {s: dict(self.quotes[s]) for s in wanted if s in self.quotes}
        for quote in quotes.values():
            quote["t"] = quote["t"] or _now()
        return 200, {"quotes": quotes}


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    def _send(self, status: int, body: str | Any, headers: dict[str, str] | None = None) -> None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, method: str) -> None:
        fake = self.server.fake
        url = urlparse(self.path)
        with fake.lock:
            fake.log.append((method, url.path, url.query))
        body: dict[str, Any] = {}
        if method == "POST":
            length = int(self.headers.get("Content-Length", 0))
            body = json.loads(self.rfile.read(length) or b"{}")
        if fake.latency_s:
            time.sleep(fake.latency_s)
        fault = fake.take_fault(method, url.path)
        if fault is not None:
            if fault.hang_s:
                time.sleep(fault.hang_s)
            if fault.then_process and fault.status is None:
                self._route(method, url.path, parse_qs(url.query), body)  # it went through
                return
            if fault.then_process:
                self._process_silently(method, url.path, body)  # went through, then the answer broke
            if fault.status is not None:
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self._send(fault.status, fault.body, fault.headers)
                return
        self._route(method, url.path, parse_qs(url.query), body)

    def _process_silently(self, method: str, path: str, body: dict[str, Any]) -> None:
        if method == "POST" and path == "/v2/orders":
            self.server.fake.create_order(body)

    def _route(self, method: str, path: str, query: dict[str, list[str]], body: dict[str, Any]) -> None:
        fake = self.server.fake
        if method == "POST" and path == "/v2/orders":
            status, answer = fake.create_order(body)
        elif method == "GET" and path == "/v2/orders:by_client_order_id":
            status, answer = fake.get_by_client_id(query.get("client_order_id", [""])[0])
        elif method == "GET" and path.startswith("/v2/orders/"):
            status, answer = fake.get_order(path.rsplit("/", 1)[1])
        elif method == "GET" and path == "/v2/positions":
            status, answer = fake.positions()
        elif method == "GET" and path == "/v2/account/activities/CFEE":
            status, answer = fake.fee_activities(query)
        elif method == "GET" and path in (
            "/v2/stocks/quotes/latest",
            "/v1beta3/crypto/us/latest/quotes",
            "/v1beta1/options/quotes/latest",
        ):
            status, answer = fake.latest_quotes(query.get("symbols", [""])[0])
        else:
            status, answer = 404, {"code": 40400000, "message": f"no route {method} {path}"}
        # A client that gave up (timeout) finds the order placed anyway, as at the real broker.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self._send(status, answer)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeAlpaca


@contextmanager
def running(fake: FakeAlpaca) -> Iterator[str]:
    """Serve ``fake`` on a free 127.0.0.1 port; yields the base URL."""
    server = _Server(("127.0.0.1", 0), _Handler)
    server.fake = fake
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
