"""AlpacaBroker: orders through the official alpaca-py ``TradingClient``, exactly once.

- Every order carries the engine's deterministic ``client_order_id``. Submission is never retried
  blindly: after a timeout, a lost connection, a 5xx, a malformed answer or a 422 "client_order_id
  must be unique", the order is looked up by client order id and that order is returned. When the
  lookup cannot find it either, the outcome is *unknown* (``BrokerOutcomeUnknownError``): the
  engine keeps the claim and a later reconciliation settles it. A 429 means "not processed": the
  broker waits for the reset, checks the lookup, and submits again (bounded).
- Equities (qty, ``day``), crypto (``BTC/USD`` form, ``gtc``), options (OCC symbols, whole
  contracts, ``day``); market and limit orders. What an asset class does not allow is refused by
  ``check`` before any network call. Alpaca does not trade FX.
- After placement the order is polled (bounded) until it is final, so fills, partial fills and
  rejections reach the ledger as what they are.
- Reads for the position check: the account's positions (all, or one), and its recent orders.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from datetime import date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from functools import partial

import requests
from alpaca.common.enums import Sort
from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderSide, OrderStatus, QueryOrderStatus, TimeInForce
from alpaca.trading.models import Order
from alpaca.trading.requests import GetOrdersRequest, LimitOrderRequest, MarketOrderRequest
from pydantic import ValidationError

from backend.adapters import alpaca as alpaca_package
from backend.adapters.alpaca.http import (
    NETWORK_ERRORS,
    BudgetExhausted,
    RequestPacer,
    harden,
    message_of,
    pacer_for,
    pause,
    retry_after_s,
    time_budget,
    with_read_retries,
)
from backend.adapters.alpaca.settings import AlpacaSettings
from backend.adapters.alpaca.symbols import instrument_from_alpaca, order_symbol, position_symbol
from backend.core.fee_reconciliation import AssetFeeActivity
from backend.core.instruments import AssetClass, instrument_for
from backend.core.intents import Side
from backend.core.orders import BrokerOrder, BrokerOrderStatus, OrderRequest, OrderType
from backend.core.reasons import ReasonCode
from backend.execution.ports import BrokerOutcomeUnknownError, BrokerRejectedError
from backend.observability.logging import log_event

logger = logging.getLogger("msr.alpaca")

# Alpaca's statuses onto the order's life; anything else (new, accepted, pending_new, held,
# done_for_day, pending_cancel, replaced...) is an order that rests at the broker and may still fill.
_STATUS = {
    OrderStatus.FILLED: BrokerOrderStatus.FILLED,
    OrderStatus.PARTIALLY_FILLED: BrokerOrderStatus.PARTIALLY_FILLED,
    OrderStatus.CANCELED: BrokerOrderStatus.CANCELED,
    OrderStatus.EXPIRED: BrokerOrderStatus.EXPIRED,
    OrderStatus.REJECTED: BrokerOrderStatus.REJECTED,
}
_FINAL = frozenset(
    {
        BrokerOrderStatus.FILLED,
        BrokerOrderStatus.CANCELED,
        BrokerOrderStatus.EXPIRED,
        BrokerOrderStatus.REJECTED,
    }
)
_TIME_IN_FORCE = {
    AssetClass.EQUITY: TimeInForce.DAY,
    AssetClass.CRYPTO: TimeInForce.GTC,
    AssetClass.OPTIONS: TimeInForce.DAY,
}
_SUBMIT_ATTEMPTS_AFTER_429 = 3
# An answer alpaca-py cannot turn into its model: a wrong shape (ValidationError), not JSON
# (ValueError), or JSON null / an array where an object belongs (``Order(**None)``: TypeError).
MALFORMED_ANSWERS = (ValidationError, ValueError, TypeError)
_ACTIVITY_PAGE_SIZE = 100
_ORDER_PAGE_SIZE = 500  # Alpaca's largest page of orders


def asset_fee_activity(raw: dict[str, object], day: date) -> AssetFeeActivity:
    """An Alpaca ``CFEE`` activity: ``{"id", "activity_type": "CFEE", "date", "symbol": "ETHUSD",
    "qty": "-0.000195", "price", "status"}``; the negative qty is what was taken, in the base asset."""
    instrument = instrument_from_alpaca(str(raw["symbol"]), "crypto")
    taken = -Decimal(str(raw["qty"]))
    return AssetFeeActivity(
        activity_id=str(raw["id"]),
        symbol=instrument.symbol,
        day=date.fromisoformat(str(raw.get("date") or day.isoformat())[:10]),
        asset=instrument.base,
        amount=taken,
    )


def position_of(raw: Mapping[str, object]) -> tuple[str, Decimal]:
    """An Alpaca position object's canonical symbol and signed quantity (a short is negative,
    whichever way its ``qty`` is written). ``ValueError`` when it cannot be read exactly."""
    try:
        instrument = instrument_from_alpaca(str(raw["symbol"]), raw.get("asset_class"))
        qty = abs(Decimal(str(raw["qty"])))
    except (KeyError, InvalidOperation) as error:
        raise ValueError(f"unreadable Alpaca position {raw!r}: {type(error).__name__}") from None
    if not qty.is_finite():
        raise ValueError(f"unreadable Alpaca position quantity {raw['qty']!r}")
    return instrument.symbol, -qty if raw.get("side") == "short" else qty


def _rejection_code(status: int | None, message: str) -> ReasonCode:
    text = message.lower()
    if "insufficient" in text or "buying power" in text:
        return ReasonCode.INSUFFICIENT_BUYING_POWER
    if "not tradable" in text or "not active" in text or ("not found" in text and status == 422):
        return ReasonCode.ASSET_NOT_TRADABLE
    if "market" in text and "closed" in text:
        return ReasonCode.MARKET_CLOSED
    return ReasonCode.BROKER_REJECTED


def _decimal(value: object) -> Decimal | None:
    return None if value in (None, "") else Decimal(str(value))


def to_broker_order(order: Order) -> BrokerOrder:
    status = _STATUS.get(order.status, BrokerOrderStatus.ACCEPTED)
    filled = _decimal(order.filled_qty) or Decimal(0)
    if status is BrokerOrderStatus.ACCEPTED and filled > 0:
        status = BrokerOrderStatus.PARTIALLY_FILLED  # e.g. done_for_day after a partial fill
    return BrokerOrder(
        broker=AlpacaBroker.name,
        order_id=str(order.id),
        client_order_id=order.client_order_id,
        status=status,
        symbol=instrument_from_alpaca(order.symbol, order.asset_class).symbol if order.symbol else "",
        side=Side.BUY if order.side == OrderSide.BUY else Side.SELL,
        qty=_decimal(order.qty) or Decimal(0),
        filled_qty=filled,
        avg_fill_price=_decimal(order.filled_avg_price) if filled > 0 else None,
        submitted_at=order.submitted_at,
        filled_at=order.filled_at,
        message=f"alpaca status {order.status.value}",
    )


class AlpacaBroker(alpaca_package.AlpacaBroker):
    """The adapter behind the package's ``AlpacaBroker`` name (which constructs this class)."""

    def __init__(
        self,
        settings: AlpacaSettings | None = None,
        client: TradingClient | None = None,
        sleep: Callable[[float], None] = time.sleep,
        pacer: RequestPacer | None = None,
    ) -> None:
        """``pacer``: the account's request pace (default: this process's pacer for the key)."""
        self.settings = settings or AlpacaSettings()
        self._client = client or TradingClient(
            **self.settings.required_credentials(),
            paper=self.settings.paper,
            url_override=self.settings.trading_url,
        )
        self.pacer = pacer or pacer_for(
            self.settings.api_key_id or "", self.settings.trading_requests_per_minute
        )
        harden(self._client, self.settings.timeout_s, self.pacer)
        self._sleep = partial(pause, sleep=sleep)  # cut short by a call's budget (``time_budget``)

    # -- before the network -----------------------------------------------------------

    def check(self, request: OrderRequest) -> tuple[ReasonCode, str] | None:
        if request.asset_class is AssetClass.FOREX:
            return ReasonCode.NO_VENUE_FOR_ASSET_CLASS, "Alpaca does not trade FX"
        problem = instrument_for(request.symbol, request.asset_class).qty_problem(request.qty)
        if problem is not None:
            return ReasonCode.ORDER_INVALID, problem
        if request.order_type is OrderType.LIMIT and (
            request.limit_price is None or request.limit_price <= 0
        ):
            return ReasonCode.ORDER_INVALID, "a limit order needs a positive limit price"
        return None

    def _alpaca_request(self, request: OrderRequest) -> MarketOrderRequest | LimitOrderRequest:
        fields = {
            "symbol": order_symbol(instrument_for(request.symbol, request.asset_class)),
            # alpaca-py types qty as a float; an intent's qty has at most 15 significant digits
            # (``MAX_QTY_DIGITS``), which a double carries exactly.
            "qty": float(request.qty),
            "side": OrderSide.BUY if request.side is Side.BUY else OrderSide.SELL,
            "time_in_force": _TIME_IN_FORCE[request.asset_class],
            "client_order_id": request.client_order_id,
        }
        if request.order_type is OrderType.LIMIT:
            return LimitOrderRequest(**fields, limit_price=float(request.limit_price or 0))
        return MarketOrderRequest(**fields)

    # -- submission -------------------------------------------------------------------

    def submit_order(self, request: OrderRequest) -> BrokerOrder:
        refusal = self.check(request)
        if refusal is not None:
            raise BrokerRejectedError(refusal[1], refusal[0])
        with time_budget(self.settings.call_budget_s):
            order = self._submit_once(request)
            return self._track_fill(order)

    def _submit_once(self, request: OrderRequest) -> Order:
        try:
            return self._submit_attempts(request)
        except BudgetExhausted as exhausted:
            # Raised before a request went out, or instead of a pause after a 429 (which Alpaca did
            # not process): nothing was sent. Unknown all the same, so the lifecycle settles it
            # (sends it again under the same client order id, or releases it) — never waited for.
            raise BrokerOutcomeUnknownError(f"not sent within the call's time budget ({exhausted})") from None

    def _submit_attempts(self, request: OrderRequest) -> Order:
        alpaca_request = self._alpaca_request(request)
        for _ in range(_SUBMIT_ATTEMPTS_AFTER_429):
            try:
                return self._client.submit_order(alpaca_request)
            except APIError as error:
                status, message = error.status_code, message_of(error)
                if status == 429:
                    self._sleep(
                        retry_after_s(error, time.time(), self.settings.max_wait_s) or self.settings.backoff_s
                    )
                    existing = self._lookup(request.client_order_id)
                    if existing is not None:
                        return existing
                    continue  # a 429 was not processed: submitting again is not a second order
                if status == 422 and "client_order_id" in message:
                    return self._established(request, f"duplicate client order id ({message})")
                if status is None or status >= 500:
                    return self._established(request, f"HTTP {status}: {message}")
                raise BrokerRejectedError(
                    f"Alpaca {status}: {message}", _rejection_code(status, message)
                ) from error
            except NETWORK_ERRORS as error:
                return self._established(request, f"{type(error).__name__}: {error}")
            except (*MALFORMED_ANSWERS, requests.exceptions.JSONDecodeError) as error:
                return self._established(request, f"malformed answer: {type(error).__name__}")
        raise BrokerRejectedError("Alpaca kept answering 429 (rate limited)", ReasonCode.BROKER_REJECTED)

    def _established(self, request: OrderRequest, why: str) -> Order:
        """After an answer we cannot trust: the order is what the lookup says, or unknown."""
        log_event(
            logger,
            "alpaca.submit_unconfirmed",
            f"Submit not confirmed ({why}); looking up client order id {request.client_order_id}",
            logging.WARNING,
            client_order_id=request.client_order_id,
        )
        # A request that timed out may still be in the broker's hands: "not found" right away is
        # not an answer, so the lookup is repeated (with backoff) through a grace window.
        deadline = time.monotonic() + self.settings.lookup_grace_s
        wait = self.settings.backoff_s
        while True:
            try:
                existing = self._lookup(request.client_order_id)
            except (APIError, BudgetExhausted, *NETWORK_ERRORS, *MALFORMED_ANSWERS) as error:
                raise BrokerOutcomeUnknownError(f"{why}; lookup failed: {type(error).__name__}") from error
            if existing is not None:
                return existing
            if time.monotonic() >= deadline:
                raise BrokerOutcomeUnknownError(f"{why}; no order with this client order id (yet)")
            try:
                self._sleep(wait)
            except BudgetExhausted:
                raise BrokerOutcomeUnknownError(f"{why}; the call's time budget ran out") from None
            wait = min(wait * 2, self.settings.max_wait_s)

    # -- reads ------------------------------------------------------------------------

    def _lookup(self, client_order_id: str) -> Order | None:
        def call() -> Order | None:
            try:
                return self._client.get_order_by_client_id(client_order_id)
            except APIError as error:
                if error.status_code == 404:
                    return None
                raise

        return with_read_retries(
            call, self.settings.read_attempts, self.settings.backoff_s, self.settings.max_wait_s, self._sleep
        )

    def get_order_by_client_order_id(self, client_order_id: str) -> BrokerOrder | None:
        """The order, or None when Alpaca has none; raises when it could not be read in the call's
        budget (``BudgetExhausted``) or at all: no answer is not "not found"."""
        with time_budget(self.settings.call_budget_s):
            order = self._lookup(client_order_id)
        return to_broker_order(order) if order is not None else None

    def cancel_order(self, client_order_id: str) -> None:
        """Cancel by Alpaca's order id (looked up by client order id). 422: final already (or not
        cancelable); 404: Alpaca has no such order; a lost answer is unknown, not a refusal."""
        with time_budget(self.settings.call_budget_s):
            self._cancel(client_order_id)

    def _cancel(self, client_order_id: str) -> None:
        try:
            order = self._lookup(client_order_id)
        except (APIError, BudgetExhausted, *NETWORK_ERRORS, *MALFORMED_ANSWERS) as error:
            raise BrokerOutcomeUnknownError(f"cancel: lookup failed ({type(error).__name__})") from error
        if order is None:
            raise BrokerRejectedError(
                f"Alpaca has no order {client_order_id}", ReasonCode.ORDER_NOT_CANCELABLE
            )
        try:
            self._client.cancel_order_by_id(order.id)
        except APIError as error:
            if error.status_code in (404, 422):
                raise BrokerRejectedError(
                    f"Alpaca {error.status_code}: {message_of(error)}", ReasonCode.ORDER_NOT_CANCELABLE
                ) from error
            raise BrokerOutcomeUnknownError(f"cancel: Alpaca {error.status_code}") from error
        except (BudgetExhausted, *NETWORK_ERRORS, *MALFORMED_ANSWERS) as error:
            raise BrokerOutcomeUnknownError(f"cancel: {type(error).__name__}") from error
        log_event(logger, "alpaca.cancel_requested", f"Cancel requested for {client_order_id}",
                  client_order_id=client_order_id, broker_order_id=str(order.id))  # fmt: skip

    def asset_fee_activities(self, day: date) -> list[AssetFeeActivity]:
        """The crypto fees Alpaca took in an asset on ``day`` (``CFEE`` account activities, read
        through the SDK's generic request: alpaca-py has no model for them), every page."""
        activities: list[AssetFeeActivity] = []
        page_token: str | None = None
        while True:
            params = {"date": day.isoformat(), "direction": "asc", "page_size": _ACTIVITY_PAGE_SIZE}
            if page_token:
                params["page_token"] = page_token
            page = with_read_retries(
                lambda params=params: self._client.get("/account/activities/CFEE", params),  # type: ignore[misc]
                self.settings.read_attempts,
                self.settings.backoff_s,
                self.settings.max_wait_s,
                self._sleep,
            )
            if not isinstance(page, list):
                raise ValueError(
                    f"Alpaca answered the CFEE activities with {type(page).__name__}, not a list"
                )
            activities.extend(
                asset_fee_activity(raw, day) for raw in page if raw.get("status", "executed") == "executed"
            )
            if len(page) < _ACTIVITY_PAGE_SIZE:
                return activities
            page_token = str(page[-1]["id"])

    # -- the position check ----------------------------------------------------------
    # Positions are read through the SDK's generic request, not ``get_all_positions``: its model
    # has closed enums for ``exchange`` and ``asset_class`` that Alpaca has outgrown before
    # (alpaca-py issues 276 and 624), and one row it cannot read fails the whole list. The check
    # needs the symbol, the class, the side and the quantity, read as exact decimals.

    def _read(self, call: Callable[[], object]) -> object:
        return with_read_retries(
            call, self.settings.read_attempts, self.settings.backoff_s, self.settings.max_wait_s, self._sleep
        )

    def positions(self) -> dict[str, Decimal]:
        """Every position the account holds: canonical symbol -> signed quantity. Any failure
        raises: an answer that could not be read is unknown, never an empty account."""
        page = self._read(lambda: self._client.get("/positions"))
        if not isinstance(page, list):
            raise ValueError(f"Alpaca answered the positions with {type(page).__name__}, not a list")
        held: dict[str, Decimal] = {}
        for raw in page:
            symbol, qty = position_of(raw)
            held[symbol] = held.get(symbol, Decimal(0)) + qty
        return held

    def position(self, symbol: str) -> Decimal:
        """One instrument's position, asked for by itself: Alpaca's 404 (no position) is flat, 0.
        Any other failure raises."""
        path = f"/positions/{position_symbol(instrument_for(symbol))}"

        def call() -> object:
            try:
                return self._client.get(path)
            except APIError as error:
                if error.status_code == 404:
                    return None
                raise

        raw = self._read(call)
        if raw is None:
            return Decimal(0)
        if not isinstance(raw, dict):
            raise ValueError(f"Alpaca answered the {symbol} position with {type(raw).__name__}")
        return position_of(raw)[1]

    def recent_orders(self, after: datetime) -> list[BrokerOrder]:
        """Every order submitted after ``after``, any status, oldest first, every page. Alpaca's
        ``after`` is exclusive, so each next page starts a microsecond before the last order seen
        (orders sharing its time are read again and kept once). A multi-leg order (no symbol at the
        top level; this product places none) is left out."""
        orders: list[BrokerOrder] = []
        seen: set[str] = set()
        cursor = after
        while True:
            request = GetOrdersRequest(
                status=QueryOrderStatus.ALL, after=cursor, direction=Sort.ASC, limit=_ORDER_PAGE_SIZE
            )
            page = self._read(lambda request=request: self._client.get_orders(request))  # type: ignore[misc]
            if not isinstance(page, list):
                raise ValueError(f"Alpaca answered the orders with {type(page).__name__}, not a list")
            new = [order for order in page if str(order.id) not in seen]
            seen.update(str(order.id) for order in new)
            orders.extend(to_broker_order(order) for order in new if order.symbol)
            if len(page) < _ORDER_PAGE_SIZE or not new:
                return orders
            cursor = page[-1].submitted_at - timedelta(microseconds=1)

    def _track_fill(self, order: Order) -> BrokerOrder:
        """Poll (bounded) until the order is final; what is known by then is what is returned."""
        current = to_broker_order(order)
        for attempt in range(self.settings.fill_polls):
            if current.status in _FINAL:
                break
            try:
                self._sleep(self.settings.fill_poll_s * (attempt + 1))
                refreshed = with_read_retries(
                    lambda: self._client.get_order_by_id(order.id),
                    self.settings.read_attempts,
                    self.settings.backoff_s,
                    self.settings.max_wait_s,
                    self._sleep,
                )
            except (APIError, BudgetExhausted, *NETWORK_ERRORS, *MALFORMED_ANSWERS):
                break  # placed for sure; the fill is reconciled later
            current = to_broker_order(refreshed)  # type: ignore[arg-type]
        return current
