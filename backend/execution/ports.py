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

from backend.core.broker_accounts import BrokerAccount
from backend.core.instruments import AssetClass, detect_asset_class
from backend.core.ledger import DecisionRecord, LedgerEntry, LedgerFeeAdjustment, LedgerTrade
from backend.core.order_lifecycle import OrderRecord
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

    @abstractmethod
    def cancel_order(self, client_order_id: str) -> None:
        """Ask the broker to cancel a resting order. ``BrokerRejectedError``: it cannot (final
        already, or unknown there); ``BrokerOutcomeUnknownError``: the answer was lost. Either way
        the order's state comes from the broker's next report, never from this call."""


class StoreBusy(RuntimeError):
    """The store could not commit for contention (other writers on the same documents) after its
    retries. Nothing was written: the caller may try again (HTTP: 503 with Retry-After)."""


class LedgerIntegrityError(RuntimeError):
    """A write that the ledger's invariants forbid (a second row for one trade id)."""


@dataclass(frozen=True, slots=True)
class OrderCursor:
    """Where a sweep over open orders stopped: the last order's change time and document path."""

    updated_at: datetime
    path: str


@dataclass(frozen=True, slots=True)
class StoredExecution:
    """What the store holds for one idempotency key: the decision's result and, for an intent that
    reached the claim, its order (whose ``version`` every update must name). ``result`` is None only
    for a claim written before orders were recorded (its order is rebuilt from the intent)."""

    result: ExecutionResult | None
    order: OrderRecord | None = None

    @property
    def settled(self) -> bool:
        """Nothing more will happen to it: no order, or an order in a final state."""
        return self.result is not None and (self.order is None or self.order.state.terminal)


class ClaimOutcome(StrEnum):
    CLAIMED = "claimed"
    DUPLICATE = "duplicate"  # the key has a decision or an order already (``stored``)
    REFUSED = "refused"  # the risk check, run inside the claim, said no (``risk``)


@dataclass(frozen=True, slots=True)
class Claim:
    outcome: ClaimOutcome
    stored: StoredExecution | None = (
        None  # CLAIMED: the new claim (its order holds the slot); DUPLICATE: what was there
    )
    risk: RiskDecision | None = None


@dataclass(frozen=True, slots=True)
class OrderUpdate:
    """One transition of an order, applied only over ``expected_version`` (compare-and-set), with
    everything it changes, in one commit: the order and the decision's result, the ledger rows of
    its new fills, the position (signed booked quantity), the in-flight quantity it gives back
    (on the order's side) and the daily-trade slot it gives back."""

    result: ExecutionResult
    order: OrderRecord
    expected_version: int
    trades: tuple[LedgerTrade, ...] = ()
    position_delta: Decimal = Decimal(0)
    release_in_flight: Decimal = Decimal(0)
    release_slot: str | None = None


@dataclass(frozen=True, slots=True)
class OrderCommit:
    committed: bool  # False: the order had moved on (another delivery settled it): see ``stored``
    stored: StoredExecution


class OrderVersionConflict(RuntimeError):
    """Raised inside a store's transaction when the stored version is not the expected one."""


RiskCheck = Callable[[Exposure], RiskDecision]


class ExecutionStore(Protocol):
    """The engine's unit of work. Each method is one atomic commit."""

    def get_execution(self, tenant_id: str, idempotency_key: str) -> StoredExecution | None:
        """What is stored for a key (a decision, a claim in flight, an order at any stage), or None."""
        ...

    def get_exposure(
        self, tenant_id: str, broker_account_id: str, symbol: str, trading_day: str, daily_limit: int
    ) -> Exposure:
        """The position, its in-flight quantities per side, and a free daily-trade slot among
        ``daily_limit`` (what a claim would see, without taking anything)."""
        ...

    def record_outcome(self, result: ExecutionResult) -> StoredExecution:
        """Record an outcome that never reached the broker. Whatever is stored for the key already
        wins and is returned (an earlier decision, or a claim in flight)."""
        ...

    def claim(
        self,
        result: ExecutionResult,
        order: OrderRecord,
        trading_day: str,
        daily_limit: int,
        check: RiskCheck,
    ) -> Claim:
        """Atomically: read the exposure, run ``check`` on it, and if approved take the key (the
        decision, pending, with ``order`` in state claimed), a free daily-trade slot and the order's
        quantity as in flight on its side. Or say why not."""
        ...

    def commit_order(self, update: OrderUpdate) -> OrderCommit:
        """Apply one order transition if the stored order is still at ``update.expected_version``.
        An in-flight counter that would go negative, or a ledger row that exists already, raises
        ``LedgerIntegrityError``: never clamped, never written."""
        ...

    def iter_orders(self, tenant_id: str | None = None, open_only: bool = False) -> Iterator[StoredExecution]:
        """Every stored order (of a tenant or of all); ``open_only``: those not in a final state."""
        ...

    def daily_slots_taken(self, tenant_id: str, trading_day: str) -> int: ...

    def find_order(self, tenant_id: str, client_order_id: str) -> StoredExecution | None:
        """A tenant's order by its client order id (the broker's name for it)."""
        ...

    def open_orders(
        self, updated_before: datetime, after: OrderCursor | None = None, limit: int = 100
    ) -> list[StoredExecution]:
        """Orders of every tenant not in a final state whose last change is older than
        ``updated_before``, oldest change first, from after ``after``: an indexed query."""
        ...

    def ledger_entries_since(self, written_since: datetime) -> Iterator[LedgerEntry]:
        """Every tenant's ledger entries written at or after ``written_since``, in writing order:
        an indexed query on the server's write time."""
        ...

    def all_positions(self) -> dict[tuple[str, str, str], tuple[Decimal, Decimal, Decimal]]:
        """(tenant, account, symbol) -> (booked qty, in-flight buys, in-flight sells), every tenant."""
        ...

    def get_ops_state(self, name: str) -> dict[str, Any] | None:
        """What a scheduled job kept between runs (``ops/{name}``): JSON values only (times as
        RFC 3339 text), so both stores give back exactly what was put."""
        ...

    def put_ops_state(self, name: str, state: dict[str, Any]) -> None: ...

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


class BrokerAccountRegistry(Protocol):
    """Each tenant's broker accounts (``backend.core.broker_accounts``). Written by the admin path
    (``msr accounts``) only; the engine reads."""

    def broker_accounts(self, tenant_id: str) -> list[BrokerAccount]: ...

    def broker_account(self, tenant_id: str, account_id: str) -> BrokerAccount | None: ...

    def all_broker_accounts(self) -> list[BrokerAccount]:
        """Every tenant's (the position check visits each account)."""
        ...

    def put_broker_account(self, account: BrokerAccount) -> None:
        """Create or replace; an account marked default makes the tenant's others not default."""
        ...

    def set_default_broker_account(self, tenant_id: str, account_id: str) -> None:
        """``ValueError`` when the tenant has no such account."""
        ...


class BrokerProvider(Protocol):
    """The broker that trades through one account, with that account's own credentials."""

    def broker_for(self, account: BrokerAccount) -> Broker: ...
