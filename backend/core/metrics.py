"""The seed's four metrics, computed from decision records (pure).

- downgrade rate: intents the cost gate turned into WAIT / all intents;
- average estimated slippage: over executed intents (placed or dry run), and over all priced ones;
- cost savings: the estimated cost (notional x estimated slippage) of the downgraded intents, per
  quote currency: USD, JPY and USDT are never added together;
- asset-class distribution: each class's share of executed intents.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal

from backend.core.instruments import AssetClass
from backend.core.ledger import DecisionRecord
from backend.core.orders import ExecutionStatus

_EXECUTED = (ExecutionStatus.PLACED, ExecutionStatus.DRY_RUN)


@dataclass
class _Accumulator:
    intents: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    reason_codes: Counter[str] = field(default_factory=Counter)
    executed_slippage: list[float] = field(default_factory=list)
    priced_slippage: list[float] = field(default_factory=list)
    cost_savings: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    executed_notional: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))

    def add(self, record: DecisionRecord) -> None:
        self.intents += 1
        self.statuses[record.status.value] += 1
        self.reason_codes[record.reason_code.value] += 1
        if record.estimated_slippage is not None:
            self.priced_slippage.append(record.estimated_slippage)
        if record.status in _EXECUTED:
            if record.estimated_slippage is not None:
                self.executed_slippage.append(record.estimated_slippage)
            if record.notional is not None:
                self.executed_notional[record.quote_currency] += record.notional
        if record.status is ExecutionStatus.DOWNGRADED and record.estimated_cost is not None:
            self.cost_savings[record.quote_currency] += record.estimated_cost


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


@dataclass(frozen=True)
class GroupMetrics:
    intents: int
    executed: int
    downgraded: int
    rejected: int
    failed: int
    downgrade_rate: float
    avg_estimated_slippage_executed: float | None
    avg_estimated_slippage_all: float | None
    cost_savings: dict[str, Decimal]
    executed_notional: dict[str, Decimal]
    statuses: dict[str, int]
    reason_codes: dict[str, int]

    @classmethod
    def _from(cls, acc: _Accumulator) -> GroupMetrics:
        executed = sum(acc.statuses[s.value] for s in _EXECUTED)
        downgraded = acc.statuses[ExecutionStatus.DOWNGRADED.value]
        return cls(
            intents=acc.intents,
            executed=executed,
            downgraded=downgraded,
            rejected=acc.statuses[ExecutionStatus.REJECTED.value],
            failed=acc.statuses[ExecutionStatus.FAILED.value] + acc.statuses[ExecutionStatus.UNKNOWN.value],
            downgrade_rate=downgraded / acc.intents if acc.intents else 0.0,
            avg_estimated_slippage_executed=_mean(acc.executed_slippage),
            avg_estimated_slippage_all=_mean(acc.priced_slippage),
            cost_savings=dict(sorted(acc.cost_savings.items())),
            executed_notional=dict(sorted(acc.executed_notional.items())),
            statuses=dict(sorted(acc.statuses.items())),
            reason_codes=dict(sorted(acc.reason_codes.items())),
        )


@dataclass(frozen=True)
class ExecutionMetrics:
    by_asset_class: dict[AssetClass, GroupMetrics]
    total: GroupMetrics
    distribution: dict[AssetClass, float]  # share of executed intents per asset class


def compute_metrics(records: Iterable[DecisionRecord]) -> ExecutionMetrics:
    total = _Accumulator()
    groups: dict[AssetClass, _Accumulator] = {}
    for record in records:
        total.add(record)
        groups.setdefault(record.asset_class, _Accumulator()).add(record)
    by_class = {asset_class: GroupMetrics._from(groups[asset_class]) for asset_class in sorted(groups)}
    total_metrics = GroupMetrics._from(total)
    distribution = {
        asset_class: (metrics.executed / total_metrics.executed if total_metrics.executed else 0.0)
        for asset_class, metrics in by_class.items()
    }
    return ExecutionMetrics(by_class, total_metrics, distribution)
