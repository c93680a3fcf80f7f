"""Broker routing per asset class: which venue takes which orders (a table, from configuration).

Alpaca trades US equities, options and spot crypto, not FX: a FOREX order goes to the configured FX
venue (the paper venue in local runs) or, with none configured, is refused with
``NO_VENUE_FOR_ASSET_CLASS`` before anything is claimed or sent.
"""

from __future__ import annotations

from collections.abc import Mapping

from backend.core.assets import AssetClass
from backend.core.orders import BrokerOrder, OrderRequest
from backend.core.reasons import ReasonCode
from backend.execution.ports import Broker, BrokerRejectedError


class VenueRouter(Broker):
    name = "venues"

    def __init__(self, venues: Mapping[AssetClass, Broker | None]) -> None:
        self.venues = {AssetClass.parse(k): v for k, v in venues.items()}

    def venue_for(self, asset_class: AssetClass) -> Broker | None:
        return self.venues.get(asset_class)

    def check(self, request: OrderRequest) -> tuple[ReasonCode, str] | None:
        venue = self.venue_for(request.asset_class)
        if venue is None:
            return (
                ReasonCode.NO_VENUE_FOR_ASSET_CLASS,
                f"No venue is configured for {request.asset_class.value}",
            )
        return venue.check(request)

    def submit_order(self, request: OrderRequest) -> BrokerOrder:
        refusal = self.check(request)
        venue = self.venue_for(request.asset_class)
        if refusal is not None or venue is None:
            code, reason = refusal or (ReasonCode.NO_VENUE_FOR_ASSET_CLASS, "no venue")
            raise BrokerRejectedError(reason, code)
        return venue.submit_order(request)

    def get_order_by_client_order_id(self, client_order_id: str) -> BrokerOrder | None:
        seen: set[int] = set()
        for venue in self.venues.values():
            if venue is None or id(venue) in seen:
                continue
            seen.add(id(venue))
            order = venue.get_order_by_client_order_id(client_order_id)
            if order is not None:
                return order
        return None
