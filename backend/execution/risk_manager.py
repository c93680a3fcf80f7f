"""RiskManager: the seed's name for the risk step; limits come from EXEC_* unless given."""

from __future__ import annotations

from decimal import Decimal

from backend.core.intents import OrderIntent
from backend.core.risk import Exposure, RiskDecision, RiskLimits, check_risk
from backend.execution.settings import load_settings


class RiskManager:
    def __init__(self, limits: RiskLimits | None = None) -> None:
        self.limits = limits if limits is not None else load_settings().risk_limits()

    def evaluate(
        self,
        intent: OrderIntent,
        exposure: Exposure,
        mark_price: Decimal | None = None,
        limits: RiskLimits | None = None,
    ) -> RiskDecision:
        """``limits``: those in force now (runtime controls applied), else the configured ones."""
        return check_risk(intent, exposure, self.limits if limits is None else limits, mark_price)
