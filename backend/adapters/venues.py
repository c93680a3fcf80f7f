"""Broker routing per asset class: which venue takes which orders (a table, from configuration).

Alpaca trades US equities, options and spot crypto, not FX: a FOREX order goes to the configured FX
venue (the paper venue in local runs) or, with none configured, is refused with
``NO_VENUE_FOR_ASSET_CLASS`` before anything is claimed or sent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from backend.core.instruments import AssetClass
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
        for venue in self._distinct_venues():
            order = venue.get_order_by_client_order_id(client_order_id)
            if order is not None:
                return order
        return None

    def cancel_order(self, client_order_id: str) -> None:
        """The venue that has the order cancels it."""
        for venue in self._distinct_venues():
            if venue.get_order_by_client_order_id(client_order_id) is not None:
                venue.cancel_order(client_order_id)
                return
        raise BrokerRejectedError(f"no venue has order {client_order_id}", ReasonCode.ORDER_NOT_CANCELABLE)

    def _distinct_venues(self) -> list[Broker]:
        seen: dict[int, Broker] = {}
        for venue in self.venues.values():
            if venue is not None:
                seen.setdefault(id(venue), venue)
        return list(seen.values())


VENUE_NAMES = ("alpaca", "paper", "none")


def build_venues(
    table: Mapping[str, str],
    alpaca: Callable[[], Broker],
    paper: Callable[[], Broker],
) -> VenueRouter:
    """A routing table from configuration, e.g. ``EXEC_VENUES='{"FOREX": "paper"}'`` on top of the
    defaults. Unknown classes or venue names are refused with the offending value; Alpaca is never
    accepted for FOREX."""
    made: dict[str, Broker] = {}
    venues: dict[AssetClass, Broker | None] = {}
    for raw_class, raw_venue in table.items():
        asset_class = AssetClass.parse(raw_class)
        venue = raw_venue.strip().lower()
        if venue not in VENUE_NAMES:
            raise ValueError(
                f"unknown venue {raw_venue!r} for {asset_class.value}; expected one of {VENUE_NAMES}"
            )
        if venue == "alpaca" and asset_class is AssetClass.FOREX:
            raise ValueError("Alpaca does not trade FX: route FOREX to 'paper' or 'none'")
        if venue == "none":
            venues[asset_class] = None
            continue
        if venue not in made:
            made[venue] = alpaca() if venue == "alpaca" else paper()
        venues[asset_class] = made[venue]
    return VenueRouter(venues)
