"""The Alpaca simulator as a chaos peer: seeded faults, an enforced rate limit, orders that rest,
fill in parts, get canceled or expire, and a movable clock, all seen through the real alpaca-py SDK
over a socket and through the project's ``AlpacaBroker``."""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import requests
from alpaca.common.enums import Sort
from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import AssetClass as AlpacaAssetClass
from alpaca.trading.enums import (
    AssetExchange,
    OrderSide,
    OrderStatus,
    PositionSide,
    QueryOrderStatus,
    TimeInForce,
)
from alpaca.trading.models import Order
from alpaca.trading.requests import GetOrdersRequest, MarketOrderRequest

from backend.adapters.alpaca.broker import AlpacaBroker
from backend.adapters.alpaca.http import harden
from backend.adapters.alpaca.settings import AlpacaSettings
from backend.core.instruments import AssetClass
from backend.core.intents import Side
from backend.core.orders import BrokerOrderStatus, OrderRequest
from backend.execution.ports import BrokerOutcomeUnknownError, ManualClock
from devtools.alpaca_simulator import (
    ORDER_ENDPOINTS,
    ChaosConfig,
    Endpoint,
    FakeAlpaca,
    FaultKind,
    FaultPolicy,
    FillMix,
    FillPlan,
    FillStep,
    RateLimit,
    running,
)

ORDERS = "/v2/orders"
OPTION = "SPY251219P00450000"
SUBMIT_ONLY = frozenset({Endpoint.SUBMIT})
# The keys of an order as the simulator answered before chaos existed (and still does by default).
LEGACY_ORDER_KEYS = {
    "id", "client_order_id", "created_at", "updated_at", "submitted_at", "filled_at", "symbol",
    "asset_class", "qty", "filled_qty", "filled_avg_price", "order_class", "order_type", "type", "side",
    "time_in_force", "limit_price", "status", "extended_hours",
}  # fmt: skip


@pytest.fixture
def fake() -> FakeAlpaca:
    fake = FakeAlpaca()
    fake.set_quote("AAPL", "189.99", "190.01")
    fake.set_quote("BTC/USD", "49995", "50005")
    fake.set_quote(OPTION, "4.10", "4.12")
    return fake


@pytest.fixture
def url(fake: FakeAlpaca) -> Iterator[str]:
    with running(fake) as base_url:
        yield base_url


def sdk(url: str, timeout_s: float = 0.3) -> TradingClient:
    """The real client, with a timeout and without its own retries, as the adapter uses it."""
    client = TradingClient("k", "s", paper=True, url_override=url)
    harden(client, timeout_s)
    return client


def adapter(url: str, sleep: Callable[[float], None] = time.sleep, **overrides: Any) -> AlpacaBroker:
    """The project's adapter with short timeouts and waits; ``overrides`` are settings."""
    settings = AlpacaSettings(
        trading_requests_per_minute=0,  # not what this is about: the pace has its own test
        api_key_id="k", secret_key="s", trading_url=url, data_url=url, timeout_s=0.2, read_attempts=2,
        backoff_s=0.02, max_wait_s=0.05, lookup_grace_s=0.1, fill_polls=3, fill_poll_s=0.0,
    )  # fmt: skip
    return AlpacaBroker(settings.model_copy(update=overrides), sleep=sleep)


def buy(client_order_id: str, symbol: str = "AAPL", qty: float = 10) -> MarketOrderRequest:
    tif = TimeInForce.GTC if "/" in symbol else TimeInForce.DAY
    return MarketOrderRequest(
        symbol=symbol, qty=qty, side=OrderSide.BUY, time_in_force=tif, client_order_id=client_order_id
    )


def only(kind: FaultKind, after_share: float = 0.5, **options: Any) -> FaultPolicy:
    """Every request on the chosen endpoints (default: submission) gets a fault of ``kind``."""
    options.setdefault("endpoints", SUBMIT_ONLY)
    options.setdefault("hang_s", 0.6)
    return FaultPolicy(ChaosConfig(probability=1, weights={kind: 1}, after_share=after_share, **options))


def equity(client_order_id: str, qty: str = "10") -> OrderRequest:
    return OrderRequest(client_order_id, "alpaca_main", "AAPL", AssetClass.EQUITY, Side.BUY, Decimal(qty))


def quantity(order: Order) -> Decimal:
    return Decimal(str(order.filled_qty))


class TestDefaults:
    def test_without_chaos_or_plans_the_simulator_answers_as_before(self, fake: FakeAlpaca, url: str) -> None:
        client = sdk(url)
        raw = client.get("/positions")
        assert raw == []
        order = client.submit_order(buy("d1"))
        assert (order.status, quantity(order), order.filled_avg_price) == (OrderStatus.FILLED, 10, "190.01")
        assert set(fake.order_for("d1") or {}) == LEGACY_ORDER_KEYS
        # Alpaca would refuse beyond 200 a minute; without a configured limit nothing is refused.
        for _ in range(210):
            client.get_order_by_client_id("d1")
        assert fake.throttled == 0
        assert [(f.qty, f.price) for f in fake.fills_of(str(order.id))] == [(10, Decimal("190.01"))]


class TestFaultsAsTheSdkSeesThem:
    @pytest.mark.parametrize(
        ("kind", "after_share", "error", "created"),
        [
            (FaultKind.TIMEOUT_AFTER_CREATE, 0, requests.exceptions.ReadTimeout, True),
            (FaultKind.ERROR_5XX_BEFORE, 1, APIError, False),
            (FaultKind.ERROR_5XX_AFTER, 0, APIError, True),
            (FaultKind.RATE_LIMITED, 1, APIError, False),
            (FaultKind.MALFORMED_BODY, 0, ValueError, False),
            (FaultKind.MALFORMED_BODY, 1, ValueError, True),
            (FaultKind.CONNECTION_RESET, 0, requests.exceptions.ConnectionError, False),
            (FaultKind.CONNECTION_RESET, 1, requests.exceptions.ConnectionError, True),
        ],
    )
    def test_each_fault_kind_and_whether_the_order_exists(
        self,
        fake: FakeAlpaca,
        url: str,
        kind: FaultKind,
        after_share: float,
        error: type[Exception],
        created: bool,
    ) -> None:
        fake.chaos = only(kind, after_share)
        started = time.monotonic()
        with pytest.raises(error) as raised:
            sdk(url, timeout_s=0.2).submit_order(buy("f1"))
        assert time.monotonic() - started < 0.5  # the client's timeout, not the server's 0.6 s hang
        assert (fake.order_for("f1") is not None) is created
        [injection] = fake.chaos.injections
        assert (injection.kind, injection.subject, injection.processed) == (kind, "f1", created)
        assert injection.outcome == (200 if created else None)
        assert fake.chaos.stats().orders_created == int(created)
        caught = raised.value
        if kind is FaultKind.CONNECTION_RESET:
            assert "reset" in str(caught).lower()
            assert not isinstance(caught, requests.Timeout)
        if isinstance(caught, APIError):
            assert caught.status_code == (429 if kind is FaultKind.RATE_LIMITED else injection.status)
            assert caught.status_code in {429, 500, 502, 503, 504}

    def test_a_429_carries_a_reset_a_moment_ahead(self, fake: FakeAlpaca, url: str) -> None:
        fake.chaos = only(FaultKind.RATE_LIMITED, retry_after_s=1.0)
        with pytest.raises(APIError) as raised:
            sdk(url).submit_order(buy("r1"))
        response = raised.value.response
        assert response is not None
        reset = response.headers["X-RateLimit-Reset"]
        assert reset.isdigit()  # whole Unix seconds, as Alpaca sends it
        assert time.time() < int(reset) <= time.time() + 2
        assert fake.orders == {}

    def test_read_faults_count_the_read_only_when_it_was_carried_out(
        self, fake: FakeAlpaca, url: str
    ) -> None:
        client = sdk(url, timeout_s=0.2)
        fake.plans_by_client_id["p1"] = FillPlan.after_polls(2)
        order_id = client.submit_order(buy("p1")).id
        fake.chaos = only(FaultKind.ERROR_5XX_BEFORE, endpoints=frozenset({Endpoint.GET_ORDER}), max_faults=1)
        with pytest.raises(APIError):
            client.get_order_by_id(order_id)  # refused before it was read: not a poll
        assert client.get_order_by_id(order_id).status is OrderStatus.NEW
        fake.chaos = only(FaultKind.TIMEOUT_AFTER_CREATE, endpoints=frozenset({Endpoint.GET_ORDER}))
        with pytest.raises(requests.exceptions.ReadTimeout):
            client.get_order_by_id(order_id)  # read, then answered too late: the poll counted
        fake.chaos = None
        assert fake.order_for("p1")["status"] == "filled"  # type: ignore[index]
        assert client.get_order_by_id(order_id).status is OrderStatus.FILLED


class TestFaultsAsTheAdapterSeesThem:
    @pytest.mark.parametrize(
        ("kind", "after_share", "placed"),
        [
            (FaultKind.TIMEOUT_AFTER_CREATE, 0, True),
            (FaultKind.ERROR_5XX_BEFORE, 0, False),
            (FaultKind.ERROR_5XX_AFTER, 0, True),
            (FaultKind.MALFORMED_BODY, 0, False),
            (FaultKind.MALFORMED_BODY, 1, True),
            (FaultKind.CONNECTION_RESET, 0, False),
            (FaultKind.CONNECTION_RESET, 1, True),
        ],
    )
    def test_the_order_is_found_when_it_exists_and_unknown_when_not(
        self, fake: FakeAlpaca, url: str, kind: FaultKind, after_share: float, placed: bool
    ) -> None:
        fake.chaos = only(kind, after_share)
        broker = adapter(url)
        if placed:
            order = broker.submit_order(equity("a1"))
            assert order.order_id == (fake.order_for("a1") or {})["id"]
            assert (order.status, order.filled_qty) == (BrokerOrderStatus.FILLED, 10)
        else:
            with pytest.raises(BrokerOutcomeUnknownError):
                broker.submit_order(equity("a1"))
            assert fake.orders == {}
        assert fake.requests_to("POST", ORDERS) == 1  # never sent twice

    def test_a_429_is_waited_out_then_submitted_again(self, fake: FakeAlpaca, url: str) -> None:
        fake.chaos = only(FaultKind.RATE_LIMITED, max_faults=1)
        waits: list[float] = []
        order = adapter(url, sleep=waits.append).submit_order(equity("a2"))
        assert order.status is BrokerOrderStatus.FILLED
        assert fake.requests_to("POST", ORDERS) == 2
        assert len(fake.orders) == 1
        assert waits[0] == 0.05  # the reset header (>= 1 s ahead), capped at max_wait_s; not backoff_s


class TestSeededPolicy:
    def test_share_over_500_calls_and_every_fault_reaches_the_client(
        self, fake: FakeAlpaca, url: str
    ) -> None:
        client = sdk(url, timeout_s=2.0)
        order_id = client.submit_order(buy("s1")).id
        fake.chaos = FaultPolicy(ChaosConfig(probability=0.25, seed=7, hang_s=0.01))
        failures = 0
        for call in range(500):
            try:
                if call % 2:
                    client.get_order_by_id(order_id)
                else:
                    client.get_order_by_client_id("s1")
            except (APIError, ValueError, requests.RequestException):
                failures += 1
        stats = fake.chaos.stats()
        assert stats.requests == 500
        assert stats.faults == 125  # blocks of 100, 25 faults in each
        assert set(stats.by_kind) == set(FaultKind)
        assert sum(stats.by_kind.values()) == sum(stats.by_endpoint.values()) == stats.faults
        # A timeout answers late, within this client's 2 s: every other fault is seen as one.
        assert failures == stats.faults - stats.by_kind[FaultKind.TIMEOUT_AFTER_CREATE]
        assert stats.summary().startswith(f"faults in {100 * stats.fault_share:.1f} % of 500 calls")

    @pytest.mark.parametrize("block", [20, None])
    def test_the_same_seed_gives_the_same_faults(self, block: int | None) -> None:
        def run(seed: int) -> tuple[list[int], list[tuple[FaultKind, bool, int | None, str]]]:
            policy = FaultPolicy(ChaosConfig(probability=0.2, seed=seed, block=block))
            faults_so_far = []
            for call in range(2000):
                policy.decide("POST" if call % 3 else "GET", ORDERS if call % 3 else f"{ORDERS}/x")
                faults_so_far.append(len(policy.injections))
            return faults_so_far, [(i.kind, i.processed, i.status, i.variant) for i in policy.injections]

        counts, first = run(42)
        assert (counts, first) == run(42)
        assert first != run(43)[1]
        if block is None:  # each request drawn on its own: the share wanders
            assert abs(len(first) / 2000 - 0.2) <= 0.02
        else:  # exactly 4 in every 20, at random places
            assert counts[block - 1 :: block] == [4 * (n + 1) for n in range(2000 // block)]
            faulted = [n for n, count in enumerate(counts) if count > (counts[n - 1] if n else 0)]
            places = {tuple(n % block for n in faulted if n // block == b) for b in range(2000 // block)}
            assert len(places) > 50  # the places change from block to block

    def test_weights_share_the_faults_among_kinds(self) -> None:
        weights = {FaultKind.ERROR_5XX_BEFORE: 3, FaultKind.CONNECTION_RESET: 1}
        policy = FaultPolicy(ChaosConfig(probability=1, seed=1, weights=weights, after_share=0.25))
        for _ in range(2000):
            policy.decide("POST", ORDERS)
        kinds = Counter(i.kind for i in policy.injections)
        assert set(kinds) == set(weights)
        assert 0.72 <= kinds[FaultKind.ERROR_5XX_BEFORE] / 2000 <= 0.78
        resets = [i for i in policy.injections if i.kind is FaultKind.CONNECTION_RESET]
        assert 0.19 <= sum(i.processed for i in resets) / len(resets) <= 0.31
        assert {i.status for i in policy.injections if i.kind is FaultKind.ERROR_5XX_BEFORE} == {
            500, 502, 503, 504
        }  # fmt: skip

    def test_only_the_chosen_endpoints_and_at_most_max_faults(self) -> None:
        policy = FaultPolicy(ChaosConfig(probability=1, endpoints=SUBMIT_ONLY, max_faults=2))
        assert policy.decide("GET", f"{ORDERS}/x") is None
        assert policy.decide("GET", "/v2/positions") is None
        decided = [policy.decide("POST", ORDERS) for _ in range(4)]
        assert [d is not None for d in decided] == [True, True, False, False]
        assert policy.stats().requests == 4  # requests on other endpoints are not counted
        assert ChaosConfig().endpoints == ORDER_ENDPOINTS

    @pytest.mark.parametrize(
        ("config", "match"),
        [
            ({"probability": 1.5}, "fractions between 0 and 1"),
            ({"after_share": -0.1}, "fractions between 0 and 1"),
            ({"weights": {"timeout_after_create": 0}}, "positive sum"),
            ({"weights": {"teleport": 1}}, "unknown fault kinds"),
            ({"hang_s": -1}, "cannot be negative"),
            ({"block": 0}, "block must be a positive"),
        ],
    )
    def test_a_bad_config_is_refused(self, config: dict[str, Any], match: str) -> None:
        with pytest.raises(ValueError, match=match):
            ChaosConfig(**config)


class TestRateLimit:
    def test_sliding_window_refuses_past_the_limit_until_the_oldest_request_ages_out(
        self, fake: FakeAlpaca, url: str, clock: ManualClock
    ) -> None:
        fake.clock, fake.rate_limit = clock.now, RateLimit(requests=3, window_s=60)
        client = sdk(url)
        t0 = clock.now().timestamp()
        for _ in range(3):
            client.get_all_positions()
            clock.advance(timedelta(seconds=10))
        refused = self.refusal(client)
        assert refused == {
            "X-RateLimit-Limit": "3",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": str(math.ceil(t0 + 60)),
        }
        clock.advance(timedelta(seconds=30))  # t0 + 60: the first request left the window
        client.get_all_positions()
        clock.advance(timedelta(seconds=1))
        assert self.refusal(client)["X-RateLimit-Reset"] == str(math.ceil(t0 + 70))
        sdk_quotes = requests.get(f"{url}/v2/stocks/quotes/latest?symbols=AAPL", timeout=1)
        assert sdk_quotes.status_code == 200  # market data is not counted against the trading limit
        assert fake.throttled == 2

    def test_fixed_window_resets_at_the_window_boundary(
        self, fake: FakeAlpaca, url: str, clock: ManualClock
    ) -> None:
        fake.clock, fake.rate_limit = clock.now, RateLimit(requests=3, window_s=60, sliding=False)
        client = sdk(url)
        start = clock.now().timestamp()
        assert start % 60 == 0  # the fixture's T0 is on a minute
        for _ in range(3):
            client.get_all_positions()
        clock.advance(timedelta(seconds=59))
        assert self.refusal(client)["X-RateLimit-Reset"] == str(int(start + 60))
        clock.advance(timedelta(seconds=1))
        for _ in range(3):
            client.get_all_positions()
        assert self.refusal(client)["X-RateLimit-Reset"] == str(int(start + 120))

    @staticmethod
    def refusal(client: TradingClient) -> dict[str, str]:
        with pytest.raises(APIError) as raised:
            client.get_all_positions()
        assert raised.value.status_code == 429
        response = raised.value.response
        assert response is not None
        return {k: v for k, v in response.headers.items() if k.startswith("X-RateLimit")}


class TestFillPlans:
    def test_a_resting_order_fills_after_k_polls(self, fake: FakeAlpaca, url: str) -> None:
        fake.plans_by_client_id.update(k1=FillPlan.after_polls(3), k2=FillPlan.after_polls(3))
        client = sdk(url)
        order = client.submit_order(buy("k1"))
        statuses = [order.status] + [client.get_order_by_id(order.id).status for _ in range(3)]
        assert statuses == [OrderStatus.NEW, OrderStatus.NEW, OrderStatus.NEW, OrderStatus.FILLED]
        tracked = adapter(url, fill_polls=5).submit_order(equity("k2"))
        assert (tracked.status, tracked.filled_qty, tracked.avg_fill_price) == (
            BrokerOrderStatus.FILLED,
            10,
            Decimal("190.01"),
        )
        assert fake.requests_to("GET", f"{ORDERS}/{tracked.order_id}") == 3

    def test_partial_fill_then_canceled_by_the_broker(self, fake: FakeAlpaca, url: str) -> None:
        fake.plans_by_client_id.update(
            c1=FillPlan.partial_then_cancel(Decimal("0.4"), after_polls=2),
            c2=FillPlan.partial_then_cancel(Decimal("0.4"), after_polls=2),
        )
        client = sdk(url)
        order = client.submit_order(buy("c1"))
        assert (order.status, quantity(order)) == (OrderStatus.PARTIALLY_FILLED, 4)
        assert fake.holdings["AAPL"] == 4
        assert client.get_order_by_id(order.id).status is OrderStatus.PARTIALLY_FILLED
        final = client.get_order_by_id(order.id)
        assert (final.status, quantity(final), final.filled_avg_price) == (OrderStatus.CANCELED, 4, "190.01")
        assert final.canceled_at is not None
        assert [(f.qty, f.price) for f in fake.fills_of(str(order.id))] == [(4, Decimal("190.01"))]
        tracked = adapter(url, fill_polls=5).submit_order(equity("c2"))
        assert (tracked.status, tracked.filled_qty) == (BrokerOrderStatus.CANCELED, 4)
        assert fake.holdings["AAPL"] == 8

    def test_expires_an_hour_later_keeping_its_partial_fill(
        self, fake: FakeAlpaca, url: str, clock: ManualClock
    ) -> None:
        fake.clock = clock.now
        fake.plans_by_client_id.update(
            e1=FillPlan.expire(3600, partial=Decimal("0.5")), e2=FillPlan.expire(60)
        )
        client = sdk(url)
        order = client.submit_order(buy("e1", "BTC/USD", 0.5))
        bare = client.submit_order(buy("e2"))
        assert (order.status, quantity(order)) == (OrderStatus.PARTIALLY_FILLED, Decimal("0.25"))
        clock.advance(timedelta(seconds=3599))
        assert client.get_order_by_id(order.id).status is OrderStatus.PARTIALLY_FILLED
        clock.advance(timedelta(hours=5))  # looked at long after it expired
        expired = client.get_order_by_id(order.id)
        assert (expired.status, quantity(expired)) == (OrderStatus.EXPIRED, Decimal("0.25"))
        assert expired.expired_at == order.created_at + timedelta(hours=1)  # when it was due, not when read
        assert fake.holdings["BTCUSD"] == Decimal("0.25") * (1 - Decimal("0.0025"))
        closed = client.get_orders(GetOrdersRequest(status=QueryOrderStatus.CLOSED))
        assert {(o.client_order_id, o.status) for o in closed} == {
            ("e1", OrderStatus.EXPIRED),
            ("e2", OrderStatus.EXPIRED),
        }
        assert fake.fills_of(str(bare.id)) == []
        assert "AAPL" not in fake.holdings

    def test_accepted_now_filled_an_hour_later(self, fake: FakeAlpaca, url: str, clock: ManualClock) -> None:
        fake.clock = clock.now
        fake.plans_by_client_id["h1"] = FillPlan.after_seconds(3600)
        client = sdk(url)
        order = client.submit_order(buy("h1"))
        assert (order.status, order.filled_at, order.created_at) == (OrderStatus.NEW, None, clock.now())
        clock.advance(timedelta(minutes=59))
        assert client.get_order_by_client_id("h1").status is OrderStatus.NEW
        clock.advance(timedelta(minutes=2))
        filled = client.get_order_by_client_id("h1")
        assert (filled.status, filled.filled_at) == (
            OrderStatus.FILLED,
            order.created_at + timedelta(hours=1),
        )

    def test_vwap_is_exact_over_several_fills_with_a_fee_per_fill(self, fake: FakeAlpaca, url: str) -> None:
        steps = (
            FillStep(fraction=Decimal("0.2"), price=Decimal("50000")),
            FillStep(fraction=Decimal("0.3"), price=Decimal("50010.5"), after_polls=1),
            FillStep(price=Decimal("49990.25"), after_polls=2),
        )
        fake.plans_by_client_id["v1"] = FillPlan("three_fills", steps)
        client = sdk(url)
        seen = [client.submit_order(buy("v1", "BTC/USD", 1))]
        seen += [client.get_order_by_client_id("v1") for _ in range(2)]
        fills = fake.fills_of(str(seen[0].id))
        assert [(f.qty, f.price) for f in fills] == [
            (Decimal("0.2"), Decimal("50000")),
            (Decimal("0.3"), Decimal("50010.5")),
            (Decimal("0.5"), Decimal("49990.25")),
        ]
        for step, order in enumerate(seen, start=1):
            so_far = fills[:step]
            qty = sum((f.qty for f in so_far), Decimal(0))
            assert quantity(order) == qty
            assert (
                Decimal(str(order.filled_avg_price))
                == sum((f.qty * f.price for f in so_far), Decimal(0)) / qty
            )
        assert seen[-1].status is OrderStatus.FILLED
        assert seen[-1].filled_avg_price == "49998.275"
        fees = [Decimal(a["qty"]) for a in fake.activities]
        assert fees == [Decimal("-0.0005"), Decimal("-0.00075"), Decimal("-0.00125")]
        assert fake.holdings["BTCUSD"] == 1 + sum(fees) == Decimal("0.9975")

    def test_an_average_that_does_not_terminate_is_the_exact_quotient(self, fake: FakeAlpaca) -> None:
        third = Decimal(1) / 3
        fake.plans_by_client_id["q1"] = FillPlan(
            "thirds",
            (
                FillStep(fraction=third, price=Decimal("100")),
                FillStep(fraction=third, price=Decimal("101"), after_polls=1),
                FillStep(price=Decimal("103"), after_polls=2),
            ),
        )
        body = {"symbol": "AAPL", "qty": "3", "side": "buy", "time_in_force": "day", "client_order_id": "q1"}
        _, order = fake.create_order(body)
        fake.get_order(order["id"])
        _, last = fake.get_order(order["id"])
        assert (last["status"], last["filled_qty"]) == ("filled", "3")
        assert Decimal(last["filled_avg_price"]) == Decimal(304) / Decimal(3)

    def test_fill_prices_follow_the_quote_at_each_step(self, fake: FakeAlpaca, url: str) -> None:
        fake.plans_by_client_id["m1"] = FillPlan.in_slices(2)
        client = sdk(url)
        first = client.submit_order(buy("m1"))
        assert (quantity(first), first.filled_avg_price) == (5, "190.01")
        fake.set_quote("AAPL", "190.99", "191.00")
        second = client.get_order_by_id(first.id)
        assert (second.status, second.filled_avg_price) == (OrderStatus.FILLED, "190.505")

    @pytest.mark.parametrize(
        ("symbol", "qty", "partial"),
        [(OPTION, "3", "1"), ("AAPL", "7", "3"), ("BTC/USD", "0.3", "0.15"), ("AAPL", "1", "0")],
    )
    def test_partial_fills_keep_to_whole_units_when_the_order_did(
        self, fake: FakeAlpaca, symbol: str, qty: str, partial: str
    ) -> None:
        fake.plans_by_client_id["u1"] = FillPlan.partial_open(Decimal("0.5"))
        body = {"symbol": symbol, "qty": qty, "side": "buy", "time_in_force": "day", "client_order_id": "u1"}
        _, order = fake.create_order(body)
        assert Decimal(order["filled_qty"]) == Decimal(partial)
        assert order["status"] == ("partially_filled" if Decimal(partial) else "new")

    def test_a_fill_mix_gives_each_client_order_id_its_own_seeded_plan(self, fake: FakeAlpaca) -> None:
        mix = FillMix.realistic(seed=5)
        ids = [f"cid-{i}" for i in range(3000)]
        names = Counter(mix.plan_for(cid).name for cid in ids)
        total = sum(weight for weight, _ in mix.plans)
        for weight, plan in mix.plans:
            assert abs(names[plan.name] / len(ids) - weight / total) <= 0.025, plan.name
        assert [mix.plan_for(c) for c in ids[:50]] == [
            FillMix.realistic(seed=5).plan_for(c) for c in ids[:50]
        ]
        assert [mix.plan_for(c) for c in ids[:50]] != [
            FillMix.realistic(seed=6).plan_for(c) for c in ids[:50]
        ]
        fake.fill_mix = mix
        for cid in ids[:40]:
            body = {
                "symbol": "AAPL",
                "qty": "10",
                "side": "buy",
                "time_in_force": "day",
                "client_order_id": cid,
            }
            _, order = fake.create_order(body)
            expected = {"immediate": "filled", "rejected": "rejected"}.get(mix.plan_for(cid).name)
            if expected:
                assert order["status"] == expected


class TestCancelAndList:
    def test_cancel_is_204_while_open_and_422_once_final(self, fake: FakeAlpaca, url: str) -> None:
        fake.plans_by_client_id.update(o1=FillPlan.after_polls(2), o2=FillPlan.partial_open(Decimal("0.5")))
        client = sdk(url)
        resting, partial, filled = (client.submit_order(buy(c)) for c in ("o1", "o2", "o3"))
        assert client.cancel_order_by_id(resting.id) is None
        canceled = client.get_order_by_id(resting.id)
        assert (canceled.status, quantity(canceled)) == (OrderStatus.CANCELED, 0)  # its plan stopped
        assert canceled.canceled_at is not None
        client.cancel_order_by_id(partial.id)
        kept = client.get_order_by_id(partial.id)
        assert (kept.status, quantity(kept)) == (OrderStatus.CANCELED, 5)
        for final in (resting, filled):
            with pytest.raises(APIError) as raised:
                client.cancel_order_by_id(final.id)
            assert (raised.value.status_code, raised.value.message) == (422, "order is not cancelable")
        with pytest.raises(APIError) as missing:
            client.cancel_order_by_id("8f2c7b7e-1d0a-4d8e-9f51-0c2b7c1d2e3f")
        assert missing.value.status_code == 404

    def test_list_by_status_time_limit_side_and_symbol(
        self, fake: FakeAlpaca, url: str, clock: ManualClock
    ) -> None:
        fake.clock = clock.now
        fake.plans_by_client_id.update(
            n1=FillPlan.after_polls(99), n2=FillPlan.after_polls(99), x1=FillPlan.expire(600)
        )
        client = sdk(url)
        created: dict[str, datetime] = {}
        for cid, symbol in (
            ("f1", "AAPL"),
            ("n1", "AAPL"),
            ("f2", "AAPL"),
            ("n2", "BTC/USD"),
            ("x1", "AAPL"),
        ):
            created[cid] = client.submit_order(buy(cid, symbol, 1)).created_at
            clock.advance(timedelta(seconds=1))
        client.submit_order(
            MarketOrderRequest(
                symbol="AAPL", qty=1, side=OrderSide.SELL, time_in_force=TimeInForce.DAY, client_order_id="s1"
            )
        )

        def listed(**filters: Any) -> list[str]:
            return [o.client_order_id for o in client.get_orders(GetOrdersRequest(**filters))]

        assert listed() == ["x1", "n2", "n1"]  # open by default, newest first
        assert listed(status=QueryOrderStatus.CLOSED) == ["s1", "f2", "f1"]
        assert listed(status=QueryOrderStatus.ALL, direction=Sort.ASC, nested=True) == [
            "f1",
            "n1",
            "f2",
            "n2",
            "x1",
            "s1",
        ]
        assert listed(status=QueryOrderStatus.ALL, after=created["f2"]) == ["s1", "x1", "n2"]
        assert listed(status=QueryOrderStatus.ALL, until=created["f2"]) == ["n1", "f1"]
        assert listed(status=QueryOrderStatus.ALL, limit=2) == ["s1", "x1"]
        assert listed(status=QueryOrderStatus.ALL, symbols=["BTC/USD"]) == ["n2"]
        assert listed(status=QueryOrderStatus.ALL, side=OrderSide.SELL) == ["s1"]
        clock.advance(timedelta(minutes=10))  # x1 expires without anyone reading it
        assert listed() == ["n2", "n1"]
        assert fake.order_for("x1")["status"] == "expired"  # type: ignore[index]


class TestConcurrency:
    def test_a_hung_answer_holds_no_lock(self, fake: FakeAlpaca, url: str) -> None:
        fake.chaos = only(FaultKind.TIMEOUT_AFTER_CREATE, hang_s=1.0)
        late: list[Order | Exception] = []

        def submit_slowly() -> None:
            try:
                late.append(sdk(url, timeout_s=3).submit_order(buy("l1")))
            except (APIError, ValueError, requests.RequestException) as error:
                late.append(error)

        slow = threading.Thread(target=submit_slowly)
        slow.start()
        deadline = time.monotonic() + 1
        while fake.order_for("l1") is None and time.monotonic() < deadline:
            time.sleep(0.01)
        started = time.monotonic()
        client = sdk(url)
        assert client.get_order_by_client_id("l1").client_order_id == "l1"  # not faulted: GETs are not chosen
        client.get_orders()
        assert time.monotonic() - started < 0.5
        slow.join(timeout=3)
        [answer] = late
        assert isinstance(answer, Order)
        assert answer.client_order_id == "l1"  # the answer came, late

    def test_concurrent_clients_under_chaos_leave_a_consistent_record(
        self, fake: FakeAlpaca, url: str
    ) -> None:
        fake.chaos = FaultPolicy(ChaosConfig(probability=0.3, seed=3, hang_s=0.15))
        fake.fill_mix = FillMix.realistic(seed=3, rest_s=0)
        confirmed: list[str] = []

        def worker(n: int) -> None:
            client = sdk(url, timeout_s=0.1)
            for i in range(15):
                cid = f"w{n}-{i}"
                try:
                    order = client.submit_order(buy(cid, qty=10))
                    client.get_order_by_id(order.id)
                    confirmed.append(cid)
                except (APIError, ValueError, requests.RequestException):
                    continue

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        orders = fake.orders_snapshot()
        assert {o["client_order_id"] for o in orders} >= set(confirmed)
        assert len(orders) == len({o["client_order_id"] for o in orders}) == len(fake.by_client_id)
        for order in orders:
            fills = fake.fills_of(order["id"])
            assert sum((f.qty for f in fills), Decimal(0)) == Decimal(order["filled_qty"])
        assert fake.holdings.get("AAPL", Decimal(0)) == sum(Decimal(o["filled_qty"]) for o in orders)
        created = [
            i.subject for i in fake.chaos.injections if i.endpoint is Endpoint.SUBMIT and i.outcome == 200
        ]
        assert all(fake.order_for(cid) is not None for cid in created)
        stats = fake.chaos.stats()
        assert stats.faults > 0
        assert stats.requests == fake.requests_to("POST", ORDERS) + sum(
            1 for m, p, _ in fake.log if m == "GET" and p.startswith(f"{ORDERS}/")
        )


def sell(client_order_id: str, symbol: str = "AAPL", qty: float = 10) -> MarketOrderRequest:
    return buy(client_order_id, symbol, qty).model_copy(update={"side": OrderSide.SELL})


class TestPositions:
    """``GET /v2/positions`` and ``/v2/positions/{symbol}`` answer Alpaca's position object, built
    from the holdings and the fills, which the SDK's own model validates."""

    def test_positions_are_alpacas_objects_priced_from_the_fills(self, url: str) -> None:
        client = sdk(url)
        client.submit_order(buy("p1", qty=10))  # at the ask, 190.01
        client.submit_order(sell("p2", qty=4))
        client.submit_order(buy("p3", "BTC/USD", 0.1))  # 5000.50 USD, 0.00025 BTC taken as the fee
        aapl, btc = client.get_all_positions()
        assert (aapl.symbol, aapl.asset_class, aapl.exchange, aapl.side) == (
            "AAPL", AlpacaAssetClass.US_EQUITY, AssetExchange.NASDAQ, PositionSide.LONG,
        )  # fmt: skip
        # 6 left at their entry price, marked at the quote's mid (190).
        assert (aapl.qty, aapl.avg_entry_price, aapl.cost_basis, aapl.current_price) == (
            "6", "190.01", "1140.06", "190",
        )  # fmt: skip
        assert (aapl.market_value, aapl.unrealized_pl, aapl.qty_available) == ("1140", "-0.06", "6")
        assert Decimal(aapl.unrealized_plpc or "") == (Decimal("-0.06") / Decimal("1140.06")).quantize(
            Decimal("1E-10")
        )
        # The whole price paid buys the units received: the fee raises the entry price.
        assert (btc.symbol, btc.asset_class, btc.exchange, btc.qty, btc.cost_basis) == (
            "BTCUSD", AlpacaAssetClass.CRYPTO, AssetExchange.CRYPTO, "0.09975", "5000.5",
        )  # fmt: skip
        assert btc.avg_entry_price == "50130.325814536"
        assert client.get_open_position("BTCUSD") == btc
        assert client.get_open_position("AAPL") == aapl

    def test_a_short_position_and_what_a_resting_buy_holds_back(self, fake: FakeAlpaca, url: str) -> None:
        fake.plans_by_client_id["rests"] = FillPlan.after_polls(1000)
        client = sdk(url)
        client.submit_order(sell("s1", qty=3))  # at the bid, 189.99, with nothing held
        client.submit_order(buy("rests", qty=2))
        short = client.get_open_position("AAPL")
        assert (short.side, short.qty, short.cost_basis, short.avg_entry_price) == (
            PositionSide.SHORT, "-3", "-569.97", "189.99",
        )  # fmt: skip
        assert short.qty_available == "-1"

    def test_a_symbol_held_flat_or_never_is_404_and_not_listed(self, url: str) -> None:
        client = sdk(url)
        client.submit_order(buy("f1", qty=5))
        client.submit_order(sell("f2", qty=5))
        assert client.get_all_positions() == []
        for symbol in ("AAPL", "MSFT"):
            with pytest.raises(APIError) as raised:
                client.get_open_position(symbol)
            assert raised.value.status_code == 404
            assert raised.value.message == "position does not exist"

    def test_holdings_set_by_hand_are_valued_at_the_current_price(self, fake: FakeAlpaca, url: str) -> None:
        fake.holdings["TSLA"] = Decimal(2)  # no fills: the default quote's mid, 100
        [tsla] = sdk(url).get_all_positions()
        assert (tsla.qty, tsla.avg_entry_price, tsla.cost_basis, tsla.unrealized_pl) == (
            "2",
            "100",
            "200",
            "0",
        )
