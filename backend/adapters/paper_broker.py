"""A paper venue: fills market orders in full at the current quote (buy at the ask, sell at the bid).

It is the local default for every asset class and the FX venue of local runs. Like a real broker it
keeps orders by client order id, so submitting the same client order id twice returns the first
order instead of making a second one.
"""

from __future__ import annotations

import hashlib
import threading

from backend.core.intents import Side
from backend.core.orders import BrokerOrder, BrokerOrderStatus, OrderRequest
from backend.core.reasons import ReasonCode
from backend.execution.ports import Broker, BrokerRejectedError, Clock, MarketDataProvider


class PaperBroker(Broker):
    name = "paper"

    def __init__(self, market_data: MarketDataProvider, clock: Clock) -> None:
        self._market_data = market_data
        self._clock = clock
        self._orders: dict[str, BrokerOrder] = {}
        self._lock = threading.Lock()
        self.submissions = 0  # orders actually created, for tests and reports

    def submit_order(self, request: OrderRequest) -> BrokerOrder:
        with self._lock:
            existing = self._orders.get(request.client_order_id)
            if existing is not None:
                return existing
            quote = self._market_data.get_quote(request.symbol, request.asset_class)
            if quote is None or quote.bid <= 0 or quote.ask < quote.bid:
                raise BrokerRejectedError(
                    f"paper venue has no tradable quote for {request.symbol}",
                    ReasonCode.BROKER_REJECTED,
                )
            now = self._clock.now()
            order = BrokerOrder(
                broker=self.name,
                order_id="paper-" + hashlib.sha256(request.client_order_id.encode()).hexdigest()[:32],
                client_order_id=request.client_order_id,
                status=BrokerOrderStatus.FILLED,
                symbol=request.symbol,
                side=request.side,
                qty=request.qty,
                filled_qty=request.qty,
                avg_fill_price=quote.ask if request.side is Side.BUY else quote.bid,
                submitted_at=now,
                filled_at=now,
            )
            self._orders[request.client_order_id] = order
            self.submissions += 1
            return order

    def get_order_by_client_order_id(self, client_order_id: str) -> BrokerOrder | None:
        with self._lock:
            return self._orders.get(client_order_id)

    def cancel_order(self, client_order_id: str) -> None:
        """The paper venue fills in full at once: there is never anything left to cancel."""
        with self._lock:
            order = self._orders.get(client_order_id)
        what = f"order {client_order_id} is {order.status.value}" if order else f"no order {client_order_id}"
        raise BrokerRejectedError(f"paper venue: {what}, nothing to cancel", ReasonCode.ORDER_NOT_CANCELABLE)
