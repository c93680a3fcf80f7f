"""The execution cost model. Today: the quoted spread; fees and market impact slot in here.

The seed defines estimated slippage as the quoted spread as a fraction of the mid price: what a
round trip pays when it buys at the ask and later sells at the bid. Applied to the order's notional
at mid that is exactly ``qty x (ask - bid) x multiplier``, computed here from the quote itself so
the cost is exact to the last digit of the prices, in the instrument's quote currency.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from backend.core.instruments import Instrument


@dataclass(frozen=True, slots=True)
class CostEstimate:
    notional: Decimal  # qty x mid
    estimated_cost: Decimal  # qty x spread = notional x estimated slippage


def spread_cost(instrument: Instrument, qty: Decimal, bid: Decimal, ask: Decimal) -> CostEstimate:
    return CostEstimate(
        notional=instrument.notional(qty, (bid + ask) / 2),
        estimated_cost=instrument.notional(qty, ask - bid),
    )
