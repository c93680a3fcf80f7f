"""A local HTTP server that speaks the part of Alpaca's REST API this project uses, so the tests,
the benchmarks and the local stack drive the *real* alpaca-py SDK over a real socket on 127.0.0.1.

Trading: ``POST /v2/orders``, ``GET /v2/orders`` (list), ``GET /v2/orders/{id}``,
``DELETE /v2/orders/{id}`` (cancel), ``GET /v2/orders:by_client_order_id``, ``GET /v2/positions``
and ``GET /v2/positions/{symbol}`` (Alpaca's position objects, from the holdings and the fills; 404
for a symbol held flat), ``GET /v2/account/activities/CFEE`` (crypto fees taken in the asset
received, as Alpaca posts them: one per fill, symbol spelled ``BTCUSD``, negative qty).
Market data: ``GET /v2/stocks/quotes/latest``, ``GET /v1beta3/crypto/us/latest/quotes``,
``GET /v1beta1/options/quotes/latest``. Every request is logged for the tests to count.

Misbehaviour, three ways, all off by default (``FakeAlpaca()`` answers as it always did):
- scripted ``Fault``s, one per matching request: a status with a body, a hang, a malformed body;
- a seeded ``FaultPolicy`` (a chaos peer): timeouts, 5xx, 429, malformed bodies and connection
  resets at a given rate, each realistic about whether the order was created, all recorded;
- an enforced ``RateLimit`` (Alpaca: 200 requests per minute per account).
Orders follow a ``FillPlan`` when one is configured (resting, partial, canceled, expired fills, with
a ledger of fills), and the simulator's "now" is an injectable clock.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import socket
import struct
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from enum import StrEnum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

ALPACA_CLASS = {"EQUITY": "us_equity", "CRYPTO": "crypto", "OPTIONS": "us_option"}
MARKET_DATA_PATHS = frozenset(
    {"/v2/stocks/quotes/latest", "/v1beta3/crypto/us/latest/quotes", "/v1beta1/options/quotes/latest"}
)
# Statuses Alpaca lists under ``status=open`` and accepts a cancel for; every other one is final.
OPEN_STATUSES = frozenset(
    {"new", "accepted", "pending_new", "accepted_for_bidding", "partially_filled", "held", "calculated"}
)
QTY_STEP = Decimal("0.000000001")  # Alpaca takes quantities to 9 decimals
DEFAULT_QUOTE = {"bp": 99.99, "ap": 100.01}
NOT_FOUND = {"code": 40410000, "message": "order not found"}
NO_POSITION = {"code": 40410000, "message": "position does not exist"}
PRICE_STEP = Decimal("0.000000001")
RATIO_STEP = Decimal("0.0000000001")
# Alpaca's ``exchange`` of a position by asset class (values alpaca-py's ``AssetExchange`` knows).
POSITION_EXCHANGE = {"us_equity": "NASDAQ", "crypto": "CRYPTO", "us_option": ""}


def utc_now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _first(query: Mapping[str, list[str]], name: str) -> str:
    values = query.get(name)
    return values[0] if values else ""


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


@dataclass(frozen=True)
class Reply:
    """One HTTP answer. ``body``: JSON-able, or a str sent as is; None: no body (a 204)."""

    status: int
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


class Endpoint(StrEnum):
    SUBMIT = "submit"  # POST /v2/orders
    GET_ORDER = "get_order"  # GET /v2/orders/{id}
    GET_BY_CLIENT_ID = "get_by_client_id"  # GET /v2/orders:by_client_order_id
    LIST_ORDERS = "list_orders"  # GET /v2/orders
    CANCEL = "cancel"  # DELETE /v2/orders/{id}
    MARKET_DATA = "market_data"  # the three latest-quotes paths
    OTHER = "other"


ORDER_ENDPOINTS = frozenset({Endpoint.SUBMIT, Endpoint.GET_ORDER, Endpoint.GET_BY_CLIENT_ID})


def endpoint_of(method: str, path: str) -> Endpoint:
    if path == "/v2/orders":
        return {"POST": Endpoint.SUBMIT, "GET": Endpoint.LIST_ORDERS}.get(method, Endpoint.OTHER)
    if path == "/v2/orders:by_client_order_id" and method == "GET":
        return Endpoint.GET_BY_CLIENT_ID
    if path.startswith("/v2/orders/"):
        return {"GET": Endpoint.GET_ORDER, "DELETE": Endpoint.CANCEL}.get(method, Endpoint.OTHER)
    if path in MARKET_DATA_PATHS and method == "GET":
        return Endpoint.MARKET_DATA
    return Endpoint.OTHER


def subject_of(endpoint: Endpoint, path: str, query: Mapping[str, list[str]], body: Mapping[str, Any]) -> str:
    """The client order id or order id a request is about, so an injected fault names its order."""
    if endpoint is Endpoint.SUBMIT:
        return str(body.get("client_order_id") or "")
    if endpoint is Endpoint.GET_BY_CLIENT_ID:
        return _first(query, "client_order_id")
    if endpoint in (Endpoint.GET_ORDER, Endpoint.CANCEL):
        return path.rsplit("/", 1)[1]
    return ""


class FaultKind(StrEnum):
    TIMEOUT_AFTER_CREATE = "timeout_after_create"  # carried out, then answered after ``hang_s``
    ERROR_5XX_BEFORE = "error_5xx_before"  # 500/502/503/504, nothing carried out
    ERROR_5XX_AFTER = "error_5xx_after"  # carried out, then a 5xx
    RATE_LIMITED = "rate_limited"  # 429 with X-RateLimit-Reset, nothing carried out
    MALFORMED_BODY = "malformed_body"  # 200 with a body that is not an answer; before or after
    CONNECTION_RESET = "connection_reset"  # the socket reset without an answer; before or after


_ALWAYS_AFTER = frozenset({FaultKind.TIMEOUT_AFTER_CREATE, FaultKind.ERROR_5XX_AFTER})
_EITHER_WAY = frozenset({FaultKind.MALFORMED_BODY, FaultKind.CONNECTION_RESET})


class MalformedBody(StrEnum):
    TRUNCATED_JSON = "truncated_json"  # the answer cut in half: not JSON at all
    WRONG_SHAPE = "wrong_shape"  # a JSON object that is not the answer (fails the SDK's model)
    # JSON ``null``: alpaca-py's ``Order(**body)`` raises TypeError, not a ValueError. Opt-in.
    JSON_NULL = "json_null"


@dataclass(frozen=True)
class ChaosConfig:
    """How often the simulator misbehaves, where, and how; a run is reproduced from this and its seed.

    ``probability`` is per request that reaches the policy on one of ``endpoints``. With ``block``
    (the default) the requests are taken in blocks of that many and exactly
    ``round(probability * block)`` of each block, at seeded random places, get a fault: the share
    over a run is exact at every block boundary. ``block=None`` draws each request on its own (a
    share that wanders: about +-3 points over 200 calls at 25 %). ``weights`` share the faults
    among kinds. ``after_share`` is the share of malformed bodies and resets that
    happen after the request was carried out (an order created, a read counted)."""

    probability: float = 0.2
    seed: int = 0
    block: int | None = 100
    weights: Mapping[FaultKind, float] = field(default_factory=lambda: dict.fromkeys(FaultKind, 1.0))
    endpoints: frozenset[Endpoint] = ORDER_ENDPOINTS
    hang_s: float = 1.0  # timeout_after_create: longer than the client's timeout
    after_share: float = 0.5
    retry_after_s: float = 1.0  # rate_limited: the reset header lies this far ahead (whole seconds)
    server_errors: tuple[int, ...] = (500, 502, 503, 504)
    malformed: tuple[MalformedBody, ...] = (MalformedBody.TRUNCATED_JSON, MalformedBody.WRONG_SHAPE)
    max_faults: int | None = None  # stop injecting after this many ("one fault, then normal")

    def __post_init__(self) -> None:
        if not 0 <= self.probability <= 1 or not 0 <= self.after_share <= 1:
            raise ValueError("probability and after_share are fractions between 0 and 1")
        unknown = set(self.weights) - set(FaultKind)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(map(str, unknown))}")
        if any(w < 0 for w in self.weights.values()) or sum(self.weights.values()) <= 0:
            raise ValueError("fault weights must be non-negative with a positive sum")
        if self.block is not None and self.block < 1:
            raise ValueError("block must be a positive number of requests (or None)")
        if self.hang_s < 0 or self.retry_after_s < 0:
            raise ValueError("hang_s and retry_after_s cannot be negative")
        if not self.server_errors or not self.malformed:
            raise ValueError("server_errors and malformed need at least one choice each")


@dataclass(frozen=True)
class Injection:
    """One fault the policy injected. ``processed``: the request was carried out first;
    ``outcome``: the status it got inside the simulator then (200: an order created)."""

    seq: int
    kind: FaultKind
    endpoint: Endpoint
    method: str
    path: str
    subject: str  # the client order id or order id the request was about
    processed: bool
    status: int | None = None  # what the client is sent instead (None: the late answer, or nothing)
    variant: str = ""
    outcome: int | None = None


@dataclass(frozen=True)
class ChaosStats:
    """What a policy injected, for "faults in X % of N calls"."""

    requests: int
    faults: int
    by_kind: Mapping[FaultKind, int]
    by_endpoint: Mapping[Endpoint, int]
    requests_by_endpoint: Mapping[Endpoint, int]
    by_kind_and_endpoint: Mapping[tuple[FaultKind, Endpoint], int]
    after_processing: int
    orders_created: int  # submissions that created an order and then failed to say so

    @property
    def fault_share(self) -> float:
        return self.faults / self.requests if self.requests else 0.0

    def summary(self) -> str:
        kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(self.by_kind.items()))
        return (
            f"faults in {100 * self.fault_share:.1f} % of {self.requests} calls ({kinds}); "
            f"{self.after_processing} after the request was carried out, "
            f"{self.orders_created} of them orders created"
        )


class FaultPolicy:
    """Seeded random faults on the chosen endpoints, and a record of every one injected.

    Decisions are drawn from one ``random.Random(seed)`` under a lock, in arrival order: the same
    sequence of requests gets the same faults."""

    def __init__(self, config: ChaosConfig | None = None) -> None:
        self.config = config or ChaosConfig()
        self._rng = random.Random(self.config.seed)
        self._lock = threading.Lock()
        self._kinds = [kind for kind in FaultKind if self.config.weights.get(kind, 0) > 0]
        self._weights = [self.config.weights[kind] for kind in self._kinds]
        self._requests: Counter[Endpoint] = Counter()
        self._block_faults: set[int] = set()
        self.injections: list[Injection] = []

    def decide(self, method: str, path: str, subject: str = "") -> Injection | None:
        endpoint = endpoint_of(method, path)
        if endpoint not in self.config.endpoints:
            return None
        with self._lock:
            self._requests[endpoint] += 1
            limit = self.config.max_faults
            if limit is not None and len(self.injections) >= limit:
                return None
            if not self._faulted(sum(self._requests.values()) - 1):
                return None
            injection = self._draw(endpoint, method, path, subject)
            self.injections.append(injection)
            return injection

    def _faulted(self, index: int) -> bool:
        """Whether request number ``index`` (from 0, on the chosen endpoints) gets a fault."""
        block = self.config.block
        if block is None:
            return self._rng.random() < self.config.probability
        if index % block == 0:
            faults = round(self.config.probability * block)
            self._block_faults = set(self._rng.sample(range(block), faults))
        return index % block in self._block_faults

    def _draw(self, endpoint: Endpoint, method: str, path: str, subject: str) -> Injection:
        kind = self._rng.choices(self._kinds, self._weights)[0]
        processed = kind in _ALWAYS_AFTER or (
            kind in _EITHER_WAY and self._rng.random() < self.config.after_share
        )
        status: int | None = None
        variant = ""
        if kind in (FaultKind.ERROR_5XX_BEFORE, FaultKind.ERROR_5XX_AFTER):
            status = self._rng.choice(self.config.server_errors)
        elif kind is FaultKind.RATE_LIMITED:
            status = 429
        elif kind is FaultKind.MALFORMED_BODY:
            status, variant = 200, self._rng.choice(self.config.malformed)
        return Injection(
            len(self.injections), kind, endpoint, method, path, subject, processed, status, variant
        )

    def record_outcome(self, injection: Injection, status: int | None) -> None:
        with self._lock:
            self.injections[injection.seq] = replace(injection, outcome=status)

    def stats(self) -> ChaosStats:
        with self._lock:
            injections = list(self.injections)
            requests = dict(self._requests)
        return ChaosStats(
            requests=sum(requests.values()),
            faults=len(injections),
            by_kind=dict(Counter(i.kind for i in injections)),
            by_endpoint=dict(Counter(i.endpoint for i in injections)),
            requests_by_endpoint=requests,
            by_kind_and_endpoint=dict(Counter((i.kind, i.endpoint) for i in injections)),
            after_processing=sum(1 for i in injections if i.processed),
            orders_created=sum(
                1 for i in injections if i.endpoint is Endpoint.SUBMIT and i.processed and i.outcome == 200
            ),
        )


_SERVER_ERRORS = {
    500: ("application/json", '{"code": 50010000, "message": "internal server error occurred"}'),
    502: (
        "text/html",
        "<html><head><title>502 Bad Gateway</title></head><body>502 Bad Gateway</body></html>",
    ),
    503: ("text/plain", "upstream connect error or disconnect/reset before headers. reset reason: overflow"),
    504: ("text/html", "<html><head><title>504 Gateway Time-out</title></head><body>504</body></html>"),
}


def _server_error(status: int) -> Reply:
    content_type, body = _SERVER_ERRORS.get(status, ("text/plain", f"HTTP {status}"))
    return Reply(status, body, content_type=content_type)


def _rate_limited(limit: int, reset_at: float) -> Reply:
    """Alpaca's 429: the reset header is a Unix time in whole seconds."""
    headers = {
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": str(math.ceil(reset_at)),
    }
    return Reply(429, {"code": 42910000, "message": "rate limit exceeded"}, headers)


def _malformed(variant: str, real: Reply | None) -> Reply:
    if variant == MalformedBody.WRONG_SHAPE:
        return Reply(200, {"result": "ok", "request_id": str(uuid.uuid4())})
    if variant == MalformedBody.JSON_NULL:
        return Reply(200, "null")
    whole = json.dumps(real.body if real is not None and real.body is not None else {"id": str(uuid.uuid4())})
    return Reply(200, whole[: max(1, len(whole) // 2)])


def fault_reply(injection: Injection, real: Reply | None, config: ChaosConfig, now_ts: float) -> Reply | None:
    """What the client is sent for ``injection``; None: no answer at all (a reset)."""
    if injection.kind is FaultKind.CONNECTION_RESET:
        return None
    if injection.kind is FaultKind.TIMEOUT_AFTER_CREATE:
        return real
    if injection.kind is FaultKind.RATE_LIMITED:
        return _rate_limited(200, now_ts + config.retry_after_s)
    if injection.kind is FaultKind.MALFORMED_BODY:
        return _malformed(injection.variant, real)
    return _server_error(injection.status or 500)


@dataclass(frozen=True)
class RateLimit:
    """Alpaca's trading API allows 200 requests per minute per account (the API key), then answers
    429 until the reset. ``sliding``: a rolling window; otherwise fixed windows aligned to the epoch."""

    requests: int = 200
    window_s: float = 60.0
    sliding: bool = True


class StepAction(StrEnum):
    FILL = "fill"
    CANCEL = "cancel"  # the broker cancels what is left (an IOC remainder, a risk check)
    EXPIRE = "expire"  # time in force ran out
    REJECT = "reject"


@dataclass(frozen=True)
class FillStep:
    """One step of an order's life. A step is due once the order has been read ``after_polls`` times
    (``GET`` by id or by client order id) *and* ``after_s`` seconds have passed since it was created,
    on the simulator's clock; both count from creation, not from the step before."""

    action: StepAction = StepAction.FILL
    fraction: Decimal | None = None  # FILL: this share of the order's qty; None: all that remains
    price: Decimal | None = None  # FILL: None takes the quote's side at the time, moved by offset_bps
    offset_bps: Decimal = Decimal(0)
    after_polls: int = 0
    after_s: float = 0.0


@dataclass(frozen=True)
class FillPlan:
    """What happens to an order after it is accepted, step by step."""

    name: str
    steps: tuple[FillStep, ...]

    @classmethod
    def immediate(cls) -> FillPlan:
        return cls("immediate", (FillStep(),))

    @classmethod
    def after_polls(cls, polls: int) -> FillPlan:
        return cls(f"after_{polls}_polls", (FillStep(after_polls=polls),))

    @classmethod
    def after_seconds(cls, seconds: float) -> FillPlan:
        return cls(f"after_{seconds:g}_s", (FillStep(after_s=seconds),))

    @classmethod
    def partial_open(cls, fraction: Decimal) -> FillPlan:
        return cls("partial_open", (FillStep(fraction=fraction),))

    @classmethod
    def partial_then_cancel(cls, fraction: Decimal, after_polls: int = 1, after_s: float = 0.0) -> FillPlan:
        cancel = FillStep(StepAction.CANCEL, after_polls=after_polls, after_s=after_s)
        return cls("partial_then_cancel", (FillStep(fraction=fraction), cancel))

    @classmethod
    def expire(cls, after_s: float, partial: Decimal | None = None) -> FillPlan:
        fill = (FillStep(fraction=partial),) if partial else ()
        return cls(
            "partial_then_expire" if partial else "expire",
            (*fill, FillStep(StepAction.EXPIRE, after_s=after_s)),
        )

    @classmethod
    def in_slices(cls, slices: int, every_polls: int = 1, drift_bps: Decimal = Decimal(0)) -> FillPlan:
        """``slices`` fills, one every ``every_polls`` reads, each ``drift_bps`` further from the quote."""
        steps = tuple(
            FillStep(
                fraction=Decimal(1) / slices if i < slices - 1 else None,
                offset_bps=drift_bps * i,
                after_polls=i * every_polls,
            )
            for i in range(slices)
        )
        return cls(f"in_{slices}_slices", steps)

    @classmethod
    def rejected(cls) -> FillPlan:
        return cls("rejected", (FillStep(StepAction.REJECT),))


@dataclass(frozen=True)
class FillMix:
    """Which plan each new order gets: a weighted draw seeded by (seed, client order id), so an
    order's fate does not depend on the order in which requests arrive."""

    plans: tuple[tuple[float, FillPlan], ...]
    seed: int = 0

    def plan_for(self, client_order_id: str) -> FillPlan:
        rng = random.Random(f"{self.seed}/{client_order_id}")
        return rng.choices([plan for _, plan in self.plans], [weight for weight, _ in self.plans])[0]

    @classmethod
    def realistic(cls, seed: int = 0, rest_s: float = 0.05) -> FillMix:
        """Mostly immediate fills; orders that rest, fill in slices, fill partially, get canceled or
        expire. ``rest_s``: how long the time-driven ones wait."""
        return cls(
            (
                (0.45, FillPlan.immediate()),
                (0.12, FillPlan.after_polls(2)),
                (0.08, FillPlan.after_seconds(rest_s)),
                (0.10, FillPlan.in_slices(3, every_polls=1, drift_bps=Decimal(2))),
                (0.07, FillPlan.partial_open(Decimal("0.5"))),
                (0.07, FillPlan.partial_then_cancel(Decimal("0.4"), after_polls=2)),
                (0.05, FillPlan.expire(after_s=rest_s)),
                (0.04, FillPlan.expire(after_s=rest_s, partial=Decimal("0.3"))),
                (0.02, FillPlan.rejected()),
            ),
            seed,
        )


@dataclass(frozen=True)
class Fill:
    """One execution, as the broker's fill activity would list it."""

    fill_id: str
    order_id: str
    client_order_id: str
    symbol: str
    side: str
    qty: Decimal
    price: Decimal
    at: datetime
    fee_qty: Decimal  # taken in the asset received (crypto buys), 0 otherwise


def _average_price(fills: Sequence[Fill]) -> str:
    """The volume-weighted average; with one price, that price as it was sent."""
    if len({fill.price for fill in fills}) == 1:
        return str(fills[0].price)
    qty = sum((fill.qty for fill in fills), Decimal(0))
    notional = sum((fill.qty * fill.price for fill in fills), Decimal(0))
    return str(notional / qty)


def _lot(order: Mapping[str, Any], qty: Decimal) -> Decimal:
    """A partial fill in the order's own unit: whole shares or contracts when the order asked for a
    whole number of them, 9 decimals otherwise."""
    ordered = Decimal(order["qty"])
    qty = qty.quantize(QTY_STEP)  # a third of 3 is 1, not 0.999...
    if order["asset_class"] != "crypto" and ordered == ordered.to_integral_value():
        return qty.to_integral_value(ROUND_DOWN)
    lot = qty.normalize()  # "0.2", as Alpaca writes it, not "0.200000000"
    return lot if lot.as_tuple().exponent <= 0 else lot.quantize(Decimal(1))  # type: ignore[operator]


def _plain(value: Decimal) -> str:
    """A decimal as Alpaca writes one: plain notation, no exponent, no trailing zeros."""
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "") else text


def _parse_time(value: str) -> datetime:
    moment = datetime.fromisoformat(value.replace(" ", "+"))  # a "+" can arrive decoded as a space
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class OrderQuery:
    """``GET /v2/orders`` as alpaca-py's ``GetOrdersRequest`` sends it (``nested`` has nothing to
    roll up here: there are no multi-leg orders)."""

    status: str = "open"
    limit: int = 50
    after: datetime | None = None
    until: datetime | None = None
    direction: str = "desc"
    side: str = ""
    symbols: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, query: Mapping[str, list[str]]) -> OrderQuery:
        status = _first(query, "status") or "open"
        direction = _first(query, "direction") or "desc"
        if status not in ("open", "closed", "all") or direction not in ("asc", "desc"):
            raise ValueError(f"invalid status {status!r} or direction {direction!r}")
        limit = int(_first(query, "limit") or 50)
        if limit < 1:
            raise ValueError("limit must be positive")
        after, until = _first(query, "after"), _first(query, "until")
        symbols = _first(query, "symbols")
        return cls(
            status=status,
            limit=min(limit, 500),
            after=_parse_time(after) if after else None,
            until=_parse_time(until) if until else None,
            direction=direction,
            side=_first(query, "side"),
            symbols=frozenset(s for s in symbols.split(",") if s),
        )

    def matches(self, order: Mapping[str, Any]) -> bool:
        is_open = order["status"] in OPEN_STATUSES
        if (self.status == "open" and not is_open) or (self.status == "closed" and is_open):
            return False
        created: datetime = order["_created"]
        if (self.after and created <= self.after) or (self.until and created >= self.until):
            return False
        return (not self.side or order["side"] == self.side) and (
            not self.symbols or order["symbol"] in self.symbols
        )


@dataclass
class FakeAlpaca:
    """One Alpaca account in memory: orders, fills, holdings, fee activities, quotes. ``running``
    serves it; tests read its record directly (``orders_snapshot``, ``fills_of``, ``holdings``)."""

    latency_s: float = 0.0
    # Without a plan: filled | new (fills after ``polls_to_fill`` GETs) | partial | rejected
    fill: str = "filled"
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
    # Random faults (None: none); an enforced rate limit (None: unlimited).
    chaos: FaultPolicy | None = None
    rate_limit: RateLimit | None = None
    # Fill plans: per client order id first, then the mix; with neither, ``fill`` decides.
    plans_by_client_id: dict[str, FillPlan] = field(default_factory=dict)
    fill_mix: FillMix | None = None
    # The simulator's "now" (aware UTC), e.g. the engine's ``ManualClock(...).now``.
    clock: Callable[[], datetime] = field(default=utc_now)
    fills: dict[str, list[Fill]] = field(default_factory=dict)  # by order id, append-only
    throttled: int = 0  # requests the rate limit refused
    # Several accounts behind one server: the trading API of the account whose API key id sent the
    # request (an unknown key gets Alpaca's 401); market data is this one's. Empty: one account.
    accounts_by_key: dict[str, FakeAlpaca] = field(default_factory=dict)
    _admitted: dict[str, deque[float]] = field(default_factory=dict, init=False, repr=False)
    _pending: set[str] = field(default_factory=set, init=False, repr=False)  # orders with steps left

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

    def throttle(self, account: str, path: str) -> Reply | None:
        """Enforce ``rate_limit`` on the trading API (market data has limits of its own): a 429
        with the reset time once ``account`` is over; a refused request uses no slot."""
        limit = self.rate_limit
        if limit is None or path in MARKET_DATA_PATHS:
            return None
        with self.lock:
            now = self.clock().timestamp()
            window_start = math.floor(now / limit.window_s) * limit.window_s
            admitted = self._admitted.setdefault(account, deque())
            while admitted and (
                admitted[0] <= now - limit.window_s if limit.sliding else admitted[0] < window_start
            ):
                admitted.popleft()
            if len(admitted) < limit.requests:
                admitted.append(now)
                return None
            self.throttled += 1
            reset = admitted[0] + limit.window_s if limit.sliding else window_start + limit.window_s
        return _rate_limited(limit.requests, reset)

    # -- trading ------------------------------------------------------------------------

    def answer(self, method: str, path: str, query: Mapping[str, list[str]], body: dict[str, Any]) -> Reply:
        """Carry out one request and say what the broker answers."""
        status, payload = self._serve(endpoint_of(method, path), method, path, query, body)
        return Reply(status, payload)

    def _serve(
        self, endpoint: Endpoint, method: str, path: str, query: Mapping[str, list[str]], body: dict[str, Any]
    ) -> tuple[int, Any]:
        if endpoint is Endpoint.SUBMIT:
            return self.create_order(body)
        if endpoint is Endpoint.GET_BY_CLIENT_ID:
            return self.get_by_client_id(_first(query, "client_order_id"))
        if endpoint is Endpoint.GET_ORDER:
            return self.get_order(path.rsplit("/", 1)[1])
        if endpoint is Endpoint.CANCEL:
            return self.cancel_order(path.rsplit("/", 1)[1])
        if endpoint is Endpoint.LIST_ORDERS:
            return self.list_orders(query)
        if endpoint is Endpoint.MARKET_DATA:
            return self.latest_quotes(_first(query, "symbols"))
        if method == "GET" and path == "/v2/positions":
            return self.positions()
        if method == "GET" and path.startswith("/v2/positions/"):
            return self.position(unquote(path.removeprefix("/v2/positions/")))
        if method == "GET" and path == "/v2/account/activities/CFEE":
            return self.fee_activities(query)
        return 404, {"code": 40400000, "message": f"no route {method} {path}"}

    def create_order(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        client_order_id = body.get("client_order_id") or str(uuid.uuid4())
        with self.lock:
            if client_order_id in self.by_client_id:
                return 422, {"code": 40010001, "message": "client_order_id must be unique"}
            now = self.clock()
            order = self._new_order(body, client_order_id, now)
            self.orders[order["id"]] = order
            self.by_client_id[client_order_id] = order["id"]
            self.fills[order["id"]] = []
            plan = self.plans_by_client_id.get(client_order_id) or (
                self.fill_mix.plan_for(client_order_id) if self.fill_mix else None
            )
            if plan is None:
                self._fill_without_plan(order)
            else:
                order.update(status="new", _plan=plan, _step=0)
                self._pending.add(order["id"])
                self._advance(order, now)
            return 200, self._public(order)

    def _new_order(self, body: dict[str, Any], client_order_id: str, now: datetime) -> dict[str, Any]:
        symbol = body["symbol"]
        quote = self.quotes.get(symbol, DEFAULT_QUOTE)
        price = quote["ap"] if body["side"] == "buy" else quote["bp"]
        stamp = _iso(now)
        return {
            "id": str(uuid.uuid4()),
            "client_order_id": client_order_id,
            "created_at": stamp,
            "updated_at": stamp,
            "submitted_at": stamp,
            "filled_at": None,
            "symbol": symbol,
            "asset_class": "crypto" if "/" in symbol else "us_option" if len(symbol) > 15 else "us_equity",
            "qty": str(Decimal(str(body["qty"]))),
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
            "_created": now,
            "_seq": len(self.orders),
            "_reads": 0,
        }

    def _fill_without_plan(self, order: dict[str, Any]) -> None:
        qty = Decimal(order["qty"])
        if self.fill == "filled":
            self._fill(order, qty)
        elif self.fill == "partial":
            self._fill(order, qty / 2, status="partially_filled")
        elif self.fill == "rejected":
            order["status"] = "rejected"

    def _fill(self, order: dict[str, Any], qty: Decimal, status: str = "filled") -> None:
        """Fill ``order`` up to ``qty`` in all, at the price quoted when it was placed."""
        delta = qty - Decimal(order["filled_qty"])
        self._record_fill(order, delta, Decimal(order["_fill_price"]), self.clock())
        order["status"] = status

    def _record_fill(self, order: dict[str, Any], delta: Decimal, price: Decimal, at: datetime) -> None:
        """The one place an execution happens: the fill ledger, the order's cumulative quantity and
        average price, and the account's holdings, net of a crypto fee taken in the asset received
        (posted as a CFEE activity, one per fill)."""
        position = order["symbol"].replace("/", "")
        fee = Decimal(0)
        if order["asset_class"] == "crypto" and order["side"] == "buy":
            fee = delta * self.crypto_fee_bps / Decimal(10000)
            self.activities.append(
                {
                    "id": f"{self.clock():%Y%m%d%H%M%S%f}::{uuid.uuid4()}",
                    "activity_type": "CFEE",
                    "date": at.date().isoformat(),
                    "net_amount": "0",
                    "description": "Coin Pair Transaction Fee (Non USD)",
                    "symbol": position,
                    "qty": str(-fee),
                    "price": str(price),
                    "status": "executed",
                }
            )
        fills = self.fills.setdefault(order["id"], [])
        fills.append(
            Fill(
                fill_id=str(uuid.uuid4()),
                order_id=order["id"],
                client_order_id=order["client_order_id"],
                symbol=order["symbol"],
                side=order["side"],
                qty=delta,
                price=price,
                at=at,
                fee_qty=fee,
            )
        )
        filled = Decimal(order["filled_qty"]) + delta
        order.update(
            filled_qty=str(filled),
            filled_avg_price=_average_price(fills),
            filled_at=_iso(at),
            updated_at=_iso(at),
            status="filled" if filled >= Decimal(order["qty"]) else "partially_filled",
        )
        received = delta if order["side"] == "buy" else -delta
        self.holdings[position] = self.holdings.get(position, Decimal(0)) + received - fee

    def _advance(self, order: dict[str, Any], now: datetime) -> None:
        """Apply the steps of the order's plan that are due by ``now``. A step due by time alone
        happens at its due time, however late the order is looked at."""
        plan: FillPlan | None = order.get("_plan")
        if plan is None:
            return
        while order["_step"] < len(plan.steps) and order["status"] in OPEN_STATUSES:
            step = plan.steps[order["_step"]]
            due_at = order["_created"] + timedelta(seconds=step.after_s)
            if order["_reads"] < step.after_polls or now < due_at:
                return
            order["_step"] += 1
            self._apply(order, step, due_at if step.after_polls == 0 else now)
        self._pending.discard(order["id"])

    def _advance_all(self, now: datetime) -> None:
        for order_id in sorted(self._pending, key=lambda oid: self.orders[oid]["_seq"]):
            self._advance(self.orders[order_id], now)

    def _apply(self, order: dict[str, Any], step: FillStep, at: datetime) -> None:
        if step.action is StepAction.CANCEL:
            self._close(order, "canceled", "canceled_at", at)
        elif step.action is StepAction.EXPIRE:
            self._close(order, "expired", "expired_at", at)
        elif step.action is StepAction.REJECT:
            self._close(order, "rejected", "failed_at", at)
        else:
            remaining = Decimal(order["qty"]) - Decimal(order["filled_qty"])
            wanted = (
                remaining if step.fraction is None else _lot(order, Decimal(order["qty"]) * step.fraction)
            )
            delta = min(remaining, wanted)
            if delta > 0:
                price = step.price if step.price is not None else self._market_price(order, step.offset_bps)
                self._record_fill(order, delta, price, at)

    def _market_price(self, order: Mapping[str, Any], offset_bps: Decimal) -> Decimal:
        quote = self.quotes.get(order["symbol"], DEFAULT_QUOTE)
        price = Decimal(str(quote["ap"] if order["side"] == "buy" else quote["bp"]))
        if not offset_bps:
            return price
        exponent = price.as_tuple().exponent
        places = Decimal(1).scaleb(min(exponent if isinstance(exponent, int) else -2, -2))
        return (price * (1 + offset_bps / Decimal(10000))).quantize(places)

    def _close(self, order: dict[str, Any], status: str, stamp: str, at: datetime) -> None:
        order.update({"status": status, stamp: _iso(at), "updated_at": _iso(at)})
        self._pending.discard(order["id"])

    @staticmethod
    def _public(order: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in order.items() if not k.startswith("_")}

    def get_order(self, order_id: str) -> tuple[int, dict[str, Any]]:
        with self.lock:
            order = self.orders.get(order_id)
            if order is None:
                return 404, dict(NOT_FOUND)
            self.polls[order_id] = self.polls.get(order_id, 0) + 1
            order["_reads"] += 1
            self._advance(order, self.clock())
            if (
                order["status"] == "accepted"
                and self.fill == "new"
                and "_plan" not in order
                and self.polls[order_id] >= self.polls_to_fill
            ):
                self._fill(order, Decimal(order["qty"]))
            return 200, self._public(order)

    def get_by_client_id(self, client_order_id: str) -> tuple[int, dict[str, Any]]:
        with self.lock:
            order_id = self.by_client_id.get(client_order_id)
            if order_id is None:
                return 404, dict(NOT_FOUND)
            order = self.orders[order_id]
            order["_reads"] += 1
            self._advance(order, self.clock())
            return 200, self._public(order)

    def cancel_order(self, order_id: str) -> tuple[int, dict[str, Any] | None]:
        """Alpaca: 204 once a cancel is accepted; 422 when the order is no longer cancelable
        (filled, canceled, expired, rejected); 404 for an unknown id. A step that fell due before the
        cancel arrived happens first."""
        with self.lock:
            order = self.orders.get(order_id)
            if order is None:
                return 404, dict(NOT_FOUND)
            now = self.clock()
            self._advance(order, now)
            if order["status"] not in OPEN_STATUSES:
                return 422, {"code": 42210000, "message": "order is not cancelable"}
            self._close(order, "canceled", "canceled_at", now)
            return 204, None

    def list_orders(self, query: Mapping[str, list[str]]) -> tuple[int, Any]:
        try:
            wanted = OrderQuery.parse(query)
        except ValueError as error:
            return 422, {"code": 40010000, "message": str(error)}
        with self.lock:
            self._advance_all(self.clock())
            chosen = [order for order in self.orders.values() if wanted.matches(order)]
            chosen.sort(key=lambda o: (o["_created"], o["_seq"]), reverse=wanted.direction == "desc")
            return 200, [self._public(order) for order in chosen[: wanted.limit]]

    def positions(self) -> tuple[int, list[dict[str, Any]]]:
        """Every non-zero holding as Alpaca's position object."""
        with self.lock:
            self._advance_all(self.clock())
            return 200, [self._position(s, q) for s, q in sorted(self.holdings.items()) if q]

    def position(self, symbol: str) -> tuple[int, dict[str, Any]]:
        """One holding by its position spelling (``BTCUSD``; ``BTC/USD`` is read the same); a symbol
        held flat, or never held, answers 404 as Alpaca does."""
        wanted = symbol.replace("/", "").upper()
        with self.lock:
            self._advance_all(self.clock())
            qty = self.holdings.get(wanted, Decimal(0))
            return (200, self._position(wanted, qty)) if qty else (404, dict(NO_POSITION))

    def _position(self, symbol: str, qty: Decimal) -> dict[str, Any]:
        """Alpaca's position object for ``qty`` of ``symbol``: the cost basis is what the fills that
        built the position cost (the whole price paid for the units received, so a fee taken in the
        asset raises the entry price), the current price the quote's mid."""
        asset_class = self._position_class(symbol)
        price = self._current_price(symbol)
        built_qty, cost = self._position_cost(symbol)
        if built_qty != qty:  # holdings set by hand: no fills to take a cost from
            cost = abs(qty) * price
        cost_basis = cost if qty > 0 else -cost
        entry = (cost / abs(qty)).quantize(PRICE_STEP)
        market_value = qty * price
        profit = market_value - cost_basis
        profit_pc = (profit / cost).quantize(RATIO_STEP) if cost else Decimal(0)
        return {
            "asset_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"alpaca-simulator/{symbol}")),
            "symbol": symbol,
            "exchange": POSITION_EXCHANGE[asset_class],
            "asset_class": asset_class,
            "asset_marginable": asset_class == "us_equity",
            "avg_entry_price": _plain(entry),
            "qty": _plain(qty),
            "side": "long" if qty > 0 else "short",
            "market_value": _plain(market_value),
            "cost_basis": _plain(cost_basis),
            "unrealized_pl": _plain(profit),
            "unrealized_plpc": _plain(profit_pc),
            "unrealized_intraday_pl": _plain(profit),
            "unrealized_intraday_plpc": _plain(profit_pc),
            "current_price": _plain(price),
            "lastday_price": _plain(price),  # no history here: the day has not moved
            "change_today": "0",
            "qty_available": _plain(qty - self._held_for_orders(symbol, qty)),
        }

    def _orders_of(self, symbol: str) -> list[dict[str, Any]]:
        return [o for o in self.orders.values() if o["symbol"].replace("/", "") == symbol]

    def _position_class(self, symbol: str) -> str:
        classes = {order["asset_class"] for order in self._orders_of(symbol)}
        if classes:
            return classes.pop()
        quoted_as_pair = any("/" in quoted and quoted.replace("/", "") == symbol for quoted in self.quotes)
        return "crypto" if quoted_as_pair else "us_equity"

    def _current_price(self, symbol: str) -> Decimal:
        quote = next((q for s, q in self.quotes.items() if s.replace("/", "") == symbol), DEFAULT_QUOTE)
        return (Decimal(str(quote["bp"])) + Decimal(str(quote["ap"]))) / 2

    def _position_cost(self, symbol: str) -> tuple[Decimal, Decimal]:
        """(signed quantity, cost) of the open position the fills built, in time order, at average
        cost: a reduction takes its share of the cost, a fill through flat opens anew at its price."""
        ids = {order["id"] for order in self._orders_of(symbol)}
        fills = sorted(
            (fill for order_id in ids for fill in self.fills.get(order_id, [])), key=lambda f: f.at
        )
        qty = cost = Decimal(0)
        for fill in fills:
            change = fill.qty - fill.fee_qty if fill.side == "buy" else -fill.qty
            if qty == 0 or (qty > 0) == (change > 0):
                qty, cost = qty + change, cost + fill.qty * fill.price
                continue
            closed = min(abs(change), abs(qty))
            cost -= cost / abs(qty) * closed
            qty += change
            if qty != 0 and abs(change) > closed:  # crossed through flat: the rest opens anew
                cost = abs(qty) * fill.price
        return qty, cost

    def _held_for_orders(self, symbol: str, qty: Decimal) -> Decimal:
        """What open orders on the closing side hold back (signed like the position)."""
        closing = "sell" if qty > 0 else "buy"
        held = sum(
            (
                Decimal(o["qty"]) - Decimal(o["filled_qty"])
                for o in self._orders_of(symbol)
                if o["side"] == closing and o["status"] in OPEN_STATUSES
            ),
            Decimal(0),
        )
        return held if qty > 0 else -held

    def fee_activities(self, query: dict[str, list[str]]) -> tuple[int, list[dict[str, Any]]]:
        day = query.get("date", [""])[0]
        after = query.get("page_token", [""])[0]
        size = int(query.get("page_size", ["100"])[0])
        with self.lock:
            self._advance_all(self.clock())
            chosen = [a for a in self.activities if not day or a["date"] == day]
        if after:
            chosen = [a for a in chosen if a["id"] > after]
        return 200, chosen[:size]

    def advance(self) -> None:
        """Apply every plan step due by now (reads apply them lazily, order by order)."""
        with self.lock:
            self._advance_all(self.clock())

    def orders_snapshot(self) -> list[dict[str, Any]]:
        """Every order as the broker would answer for it now, oldest first."""
        with self.lock:
            self._advance_all(self.clock())
            return [self._public(order) for order in sorted(self.orders.values(), key=lambda o: o["_seq"])]

    def order_for(self, client_order_id: str) -> dict[str, Any] | None:
        with self.lock:
            order_id = self.by_client_id.get(client_order_id)
            return self._public(self.orders[order_id]) if order_id else None

    def fills_of(self, order_id: str) -> list[Fill]:
        with self.lock:
            return list(self.fills.get(order_id, []))

    # -- market data ----------------------------------------------------------------------

    def latest_quotes(self, symbols: str) -> tuple[int, dict[str, Any]]:
        wanted = [s for s in symbols.split(",") if s]
        with self.lock:
            quotes = {s: dict(self.quotes[s]) for s in wanted if s in self.quotes}
            now = _iso(self.clock())
        for quote in quotes.values():
            quote["t"] = quote["t"] or now
        return 200, {"quotes": quotes}


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    _reset = False

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    def _reply(self, reply: Reply | None) -> None:
        """Send ``reply``; None resets the connection. A client that gave up (timeout) finds the
        request carried out anyway, as at the real broker."""
        if reply is None:
            self._abort()
            return
        body = reply.body
        data = b"" if body is None else body.encode() if isinstance(body, str) else json.dumps(body).encode()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.send_response(reply.status)
            if body is not None:
                self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(data)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

    def _abort(self) -> None:
        """Close with SO_LINGER 0 (in ``finish``): the kernel sends a RST, the client sees a reset."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self._reset = True

    def finish(self) -> None:
        if not self._reset:
            super().finish()
            return
        with contextlib.suppress(OSError):
            self.rfile.close()
        self.connection.close()

    @property
    def fake(self) -> FakeAlpaca:
        """The account this request is for (see ``FakeAlpaca.accounts_by_key``)."""
        return getattr(self, "_account", None) or self.server.fake

    def _account_of(self, path: str) -> FakeAlpaca | None:
        served = self.server.fake
        if not served.accounts_by_key or path in MARKET_DATA_PATHS:
            return served
        return served.accounts_by_key.get(self.headers.get("APCA-API-KEY-ID", ""))

    def _handle(self, method: str) -> None:
        url = urlparse(self.path)
        account = self._account_of(url.path)
        if account is None:
            self._reply(Reply(401, {"code": 40110000, "message": "request is not authorized"}))
            return
        self._account = account
        fake = account
        with fake.lock:
            fake.log.append((method, url.path, url.query))
        body: dict[str, Any] = {}
        if method == "POST":
            length = int(self.headers.get("Content-Length", 0))
            body = json.loads(self.rfile.read(length) or b"{}")
        if fake.latency_s:
            time.sleep(fake.latency_s)
        throttled = fake.throttle(self.headers.get("APCA-API-KEY-ID", ""), url.path)
        if throttled is not None:
            self._reply(throttled)
            return
        query = parse_qs(url.query)
        fault = fake.take_fault(method, url.path)
        if fault is not None:
            self._scripted(fault, method, url.path, query, body)
            return
        policy = fake.chaos
        subject = subject_of(endpoint_of(method, url.path), url.path, query, body)
        injection = policy.decide(method, url.path, subject) if policy is not None else None
        if policy is not None and injection is not None:
            self._inject(policy, injection, query, body)
            return
        self._reply(fake.answer(method, url.path, query, body))

    def _scripted(
        self, fault: Fault, method: str, path: str, query: dict[str, list[str]], body: dict[str, Any]
    ) -> None:
        fake = self.fake
        if fault.hang_s:
            time.sleep(fault.hang_s)
        if fault.then_process and fault.status is None:
            self._reply(fake.answer(method, path, query, body))  # it went through
            return
        if fault.then_process:
            self._process_silently(method, path, body)  # went through, then the answer broke
        if fault.status is not None:
            self._reply(Reply(fault.status, fault.body, fault.headers))
            return
        self._reply(fake.answer(method, path, query, body))

    def _process_silently(self, method: str, path: str, body: dict[str, Any]) -> None:
        if method == "POST" and path == "/v2/orders":
            self.fake.create_order(body)

    def _inject(
        self, policy: FaultPolicy, injection: Injection, query: dict[str, list[str]], body: dict[str, Any]
    ) -> None:
        """Carry out the request first when the fault comes after it; the sleep holds no lock."""
        fake = self.fake
        real = fake.answer(injection.method, injection.path, query, body) if injection.processed else None
        policy.record_outcome(injection, real.status if real is not None else None)
        if injection.kind is FaultKind.TIMEOUT_AFTER_CREATE:
            time.sleep(policy.config.hang_s)
        self._reply(fault_reply(injection, real, policy.config, fake.clock().timestamp()))

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeAlpaca


@contextmanager
def running(fake: FakeAlpaca) -> Iterator[str]:
    """Serve ``fake`` on a free 127.0.0.1 port; yields the base URL."""
    server = _Server(("127.0.0.1", 0), _Handler)
    server.fake = fake
    # A short poll interval: ``shutdown`` waits for one, and every test that serves pays it.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
