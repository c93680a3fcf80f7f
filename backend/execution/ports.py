"""Ports: the small interfaces the engine talks through. Adapters live in ``backend/adapters``."""

from __future__ import annotations

import threading
from abc import ABC, ABCMeta, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any, Protocol

from backend.core.instruments import AssetClass, detect_asset_class
from backend.core.ledger import DecisionRecord, LedgerEntry, LedgerFeeAdjustment, LedgerTrade
from backend.core.orders import BrokerOrder, ExecutionResult, OrderRequest
from backend.core.portfolio import FanOutResult, LotsSnapshot, PortfolioTrade
from backend.core.quotes import Quote, require_utc
from backend.core.reasons import ReasonCode
from backend.core.risk import Exposure, RiskDecision
from backend.core.tax_lots import LotMethod


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class ManualClock:
    """A clock a replay or a test moves by hand."""

    def __init__(self, start: datetime) -> None:
        self._now = require_utc(start)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        return self._now

    def set(self, moment: datetime) -> None:
        with self._lock:
            self._now = require_utc(moment)

    def advance(self, delta: timedelta) -> None:
        with self._lock:
            self._now += delta


class _ConfiguredWhenCalledBare(ABCMeta):
    """Calling the port itself, as the seed does (``MarketDataProvider()``), gives the provider the
    environment configures; adapters subclass and construct as usual."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if cls is MarketDataProvider:
            from backend.adapters.market_data_selection import configured_market_data

            return configured_market_data(*args, **kwargs)
        return super().__call__(*args, **kwargs)


class MarketDataProvider(metaclass=_ConfiguredWhenCalledBare):
    """Top-of-book quotes. ``None`` means no quote: the router refuses to trade on it.

    An abstract port: ``MarketDataProvider()`` returns the configured adapter
    (``EXEC_MARKET_DATA``, see ``configured_market_data``) or raises ``ConfigurationError`` saying
    what to set.
    """

    @abstractmethod
    def get_quote(self, symbol: str, asset_class: AssetClass | str | None = None) -> Quote | None:
        """The latest quote for one symbol."""

    def get_quotes(
        self,
        symbols: Iterable[str],
        asset_classes: Mapping[str, AssetClass] | None = None,
    ) -> dict[str, Quote | None]:
        """Many symbols at once. Adapters with a batch API override this with one call per class."""
        classes = asset_classes or {}
        return {
            symbol: self.get_quote(symbol, classes.get(symbol) or detect_asset_class(symbol))
            for symbol in dict.fromkeys(symbols)
        }


class BrokerRejectedError(Exception):
    """The broker definitely refused the order: nothing exists at the broker."""

    def __init__(self, message: str, code: ReasonCode = ReasonCode.BROKER_REJECTED) -> None:
        super().__init__(message)
        self.code = code


class BrokerOutcomeUnknownError(Exception):
    """The order may or may not exist (timeout, lost connection): reconcile, never resend blindly."""


class Broker(ABC):
    name: str

    def check(self, request: OrderRequest) -> tuple[ReasonCode, str] | None:
        """Can this broker take the order at all? A reason refuses it before any claim or network
        call (wrong venue, a time in force or fraction the asset class does not allow)."""
        return None

    @abstractmethod
    def submit_order(self, request: OrderRequest) -> BrokerOrder:
        """Place an order. Same client order id twice must never make two orders."""

    @abstractmethod
    def get_order_by_client_order_id(self, client_order_id: str) -> BrokerOrder | None:
        """Look an order up after an unknown outcome."""


class LedgerIntegrityError(RuntimeError):
    """A write that the ledger's invariants forbid (a second row for one trade id)."""


class ClaimOutcome(StrEnum):
    CLAIMED = "claimed"
    DUPLICATE = "duplicate"  # the key has an outcome (``existing``) or another worker holds it
    REFUSED = "refused"  # the risk check, run inside the claim, said no (``risk``)


@dataclass(frozen=True, slots=True)
class Claim:
    outcome: ClaimOutcome
    existing: ExecutionResult | None = None
    risk: RiskDecision | None = None


RiskCheck = Callable[[Exposure], RiskDecision]


class ExecutionStore(Protocol):
    """The engine's unit of work. Each method is one atomic commit."""

    def get_execution(self, tenant_id: str, idempotency_key: str) -> ExecutionResult | None:
        """The stored outcome for a key; None when there is none yet (absent, or a claim in flight)."""
        ...

    def get_exposure(
        self, tenant_id: str, broker_account_id: str, symbol: str, trading_day: str
    ) -> Exposure: ...

    def record_outcome(self, result: ExecutionResult) -> ExecutionResult | None:
        """Record an outcome that never reached the broker. An earlier outcome for the key wins and
        is returned; None while another worker's claim on the key is in flight."""
        ...

    def claim(self, result: ExecutionResult, trading_day: str, check: RiskCheck) -> Claim:
        """Atomically: read the exposure, run ``check`` on it, and if approved take the key, a
        daily-trade slot and the order's quantity as pending exposure. Or say why not."""
        ...

    def record_trade(self, result: ExecutionResult, trade: LedgerTrade) -> ExecutionResult:
        """The ledger row, the position and the final outcome, in one commit."""
        ...

    def settle_claim(self, result: ExecutionResult, trading_day: str) -> ExecutionResult:
        """Close a claim without a fill: failed frees the daily slot and the pending quantity;
        unknown and accepted-unfilled keep both until reconciliation."""
        ...

    def record_fee_adjustment(self, adjustment: LedgerFeeAdjustment) -> bool:
        """The adjustment's ledger entry and its change to the position, in one commit; False when
        it had been recorded before."""
        ...

    def get_ledger_trade(self, tenant_id: str, trade_id: str) -> LedgerEntry | None: ...

    def iter_ledger_trades(self, tenant_id: str | None = None) -> Iterator[LedgerEntry]:
        """Every ledger entry (fills and fee adjustments), of one tenant or of all, by time."""
        ...

    def iter_decisions(self, tenant_id: str | None = None) -> Iterator[DecisionRecord]: ...

    def positions(self, tenant_id: str) -> dict[str, Decimal]:
        """Net quantity per symbol, over all of the tenant's broker accounts."""
        ...


class PortfolioStore(Protocol):
    """Portfolio history and tax lots. ``apply_history_entry`` is one transaction."""

    def apply_history_entry(self, entry: PortfolioTrade, method: LotMethod | None = None) -> FanOutResult:
        """Create the entry if it is new, recompute the tax fields of every entry of its user,
        account and symbol, write those that changed and the lots snapshot. The lot method is
        ``method``, else the user's setting, else FIFO."""
        ...

    def has_history(self, uid: str, history_id: str) -> bool: ...

    def history(self, uid: str) -> list[PortfolioTrade]: ...

    def lots(self, uid: str, broker_account_id: str, symbol: str) -> LotsSnapshot | None: ...

    def set_lot_method(self, uid: str, method: LotMethod) -> None: ...
