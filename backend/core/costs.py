"""The execution cost model. Today: the quoted spread; fees and market impact slot in here.

The seed defines estimated slippage as the quoted spread as a fraction of the mid price: what a
round trip pays when it buys at the ask and later sells at the bid. ``estimated_cost`` is that
fraction applied to the order's notional at mid, in the instrument's quote currency.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from backend.core.quotes import to_decimal


@dataclass(frozen=True, slots=True)
class CostEstimate:
    estimated_slippage: Decimal
    notional: Decimal | None
    estimated_cost: Decimal | None


def estimate_cost(qty: Decimal, mid_price: Decimal | None, slippage: float | Decimal) -> CostEstimate:
    slippage_d = to_decimal(slippage, "estimated_slippage")
    if mid_price is None:
        return CostEstimate(slippage_d, None, None)
    notional = qty * mid_price
    return CostEstimate(slippage_d, notional, notional * slippage_d)
