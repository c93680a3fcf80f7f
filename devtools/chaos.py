"""The chaos suite: many intents through the real engine and the real alpaca-py SDK against the
local Alpaca simulator with faults in a share of its calls, in worker processes that are killed at
the worst moments, with duplicate and repeated deliveries; then the invariants that say recording
is exactly once.

    python -m devtools.chaos --intents 1000 --store sqlite
    python -m devtools.chaos --intents 100 --store firestore      # starts the Firestore emulator

What it does:

1. The simulator (in this process) injects seeded faults into ``--fault-rate`` of the order calls:
   timeouts that still create the order, 5xx before and after creating it, 429 with a reset, bodies
   the SDK cannot read (before and after), connection resets; orders follow seeded fill plans
   (immediate, resting then filled, filled in slices, partially filled and left open, partially
   filled then canceled, expired, rejected).
2. ``--workers`` processes execute the intents. Each may be killed (``os._exit``) right after its
   claim, right after the broker accepted, or inside the ledger write (after the writes were
   staged, before the commit), each with probability ``--crash-rate``. A killed worker's intent is
   delivered again to another worker, and a share of intents is delivered twice at once.
3. Then, rounds of re-deliveries after the leases expire settle what was left (crashes off after
   the first rounds, faults on throughout), until every order is final or resting at the broker.
4. The invariants: at most one order per client order id; the orders at the broker are exactly the
   intents recorded as placed; one ledger row per fill, adding up to the broker's filled quantity;
   every intent final or resting at the broker; daily slots taken = orders placed; in-flight
   quantity = the resting orders' leaves quantity, per side; positions = the ledger's booked
   quantities = what the broker holds; nothing negative.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import multiprocessing.connection
import os
import random
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC
from decimal import Decimal
from pathlib import Path
from typing import Any

from devtools.alpaca_simulator import ChaosConfig, FakeAlpaca, FaultPolicy, FillMix, MalformedBody, running

TENANT, UID, ACCOUNT, STRATEGY = "chaos", "chaos-user", "chaos_acct", "chaos"
# A crypto pair (its fee taken in the asset) and equities; a run trades the first ``--symbols``.
_TICKERS = ((f"T{chr(65 + i // 26)}{chr(65 + i % 26)}", f"{100 + i}.00", f"{100 + i}.02") for i in range(28))
SYMBOLS = (("BTC/USD", "49995", "50005"), ("AAPL", "189.99", "190.01"), ("MSFT", "409.95", "410.05"),
           ("SPY", "511.20", "511.22"), *_TICKERS)  # fmt: skip
CRASH_POINTS = ("after_claim", "after_accept", "inside_ledger_write")
CRASH_EXIT = 137  # what a SIGKILL looks like to a parent
UNSETTLED = ("claimed", "submitted", "unknown")
OPEN_AT_BROKER = frozenset({"new", "accepted", "partially_filled", "pending_new", "held", "done_for_day"})


@dataclass(frozen=True)
class ChaosRun:
    intents: int = 1000
    store: str = "sqlite"  # or "firestore"
    workers: int = 4
    fault_rate: float = 0.2
    crash_rate: float = 0.03  # per crash point, per execution in a worker
    crash_points: str = ",".join(CRASH_POINTS)  # where workers may be killed
    # Killed inside the ledger write, a worker leaves its transaction open: Firestore (and its
    # emulator, for ~17 s) keeps that transaction's locks until they expire. Defaults to crash_rate.
    ledger_write_crash_rate: float | None = None
    max_crashes_per_point: int | None = None  # a budget per crash point for the whole run
    # A crash point no worker has died at yet is forced on its Nth reach in the run, so a small run
    # still dies at every point (drawn by rate alone, a 150-intent run once never died mid-write).
    force_crash_after: int | None = 20
    duplicate_rate: float = 0.15  # share of intents delivered twice at once
    # How many instruments the intents spread over: every claim and update of one account and
    # symbol writes its position document (about one write per second in production Firestore).
    symbols: int = 4
    seed: int = 7
    lease_s: float = 1.0
    reconcile_s: float = 0.5
    intent_ttl_s: float = 5.0  # lost sends found later than this are released, not sent again
    client_timeout_s: float = 0.3
    max_rounds: int = 40
    # What settles the orders left open after the first deliveries: "deliveries" (each open order's
    # intent delivered again) or "sweeper" (two settlement sweepers at once, no delivery).
    finish_with: str = "deliveries"
    # For proving the checks can fail, a recording bug planted in every worker's store:
    # "drop-ledger-rows" commits order updates without their ledger rows; "keep-slots" never gives
    # a daily slot back; "leak-in-flight" never gives an in-flight quantity back.
    break_store: str = ""
    firestore_host: str | None = None
    workdir: str | None = None


@dataclass
class ChaosReport:
    config: dict[str, Any]
    seconds: float = 0.0
    deliveries: int = 0
    duplicate_deliveries: int = 0
    redelivery_rounds: int = 0
    crashes: dict[str, int] = field(default_factory=dict)
    worker_restarts: int = 0
    broker_calls: int = 0
    faults: int = 0
    fault_share: float = 0.0
    faults_by_kind: dict[str, int] = field(default_factory=dict)
    orders_at_broker: int = 0
    ledger_rows: int = 0
    final_states: dict[str, int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)

    def summary(self) -> str:
        crashes = ", ".join(f"{point} {count}" for point, count in sorted(self.crashes.items())) or "none"
        verdict = "ALL INVARIANTS HOLD" if not self.violations else f"{len(self.violations)} VIOLATION(S)"
        return (
            f"{verdict}: {self.config['intents']} intents on {self.config['store']}, {self.deliveries} "
            f"deliveries ({self.duplicate_deliveries} concurrent duplicates, {self.redelivery_rounds} "
            f"settling rounds: {self.config['finish_with']}) in {self.seconds:.1f}s\n"
            f"  faults in {self.fault_share:.1%} of {self.broker_calls} order calls: {self.faults_by_kind}\n"
            f"  workers killed: {crashes}; restarts {self.worker_restarts}\n"
            f"  orders at the broker {self.orders_at_broker}, ledger rows {self.ledger_rows}, "
            f"final states {self.final_states}" + "".join(f"\n  VIOLATION: {v}" for v in self.violations[:20])
        )


def intent_data(config: ChaosRun, index: int) -> dict[str, Any]:
    """Intent ``index`` of the run, the same every time it is delivered."""
    rng = random.Random(config.seed * 1_000_003 + index)
    symbol = SYMBOLS[rng.randrange(min(config.symbols, len(SYMBOLS)))][0]
    qty = str(Decimal(rng.randint(1, 50)) / 100) if symbol == "BTC/USD" else str(rng.randint(1, 20))
    return {
        "strategy_id": STRATEGY,
        "broker_account_id": ACCOUNT,
        "symbol": symbol,
        "side": "buy" if rng.random() < 0.7 else "sell",
        "qty": qty,
        "metadata": {"tenant_id": TENANT, "uid": UID, "run": "chaos"},
        "idempotency_key": f"chaos-{config.seed}-{index}",
    }


# -- the workers ------------------------------------------------------------------------------------


def _settings_env(config: ChaosRun, alpaca_url: str) -> dict[str, str]:
    env = {
        "EXEC_DRY_RUN": "0",
        "EXEC_TENANT_ID": TENANT,
        "EXEC_UID": UID,
        "EXEC_LEASE_SECONDS": str(config.lease_s),
        "EXEC_RECONCILE_AFTER_SECONDS": str(config.reconcile_s),
        "EXEC_INTENT_TTL_SECONDS": str(config.intent_ttl_s),
        "EXEC_MAX_POSITION_QTY": "1000000000",
        "EXEC_MAX_DAILY_TRADES": str(config.intents * 2),
        "EXEC_FANOUT": "trigger",  # the portfolio is not what is under test here
        "APCA_API_KEY_ID": "chaos",
        "APCA_API_SECRET_KEY": "chaos",
        "APCA_API_BASE_URL": alpaca_url,
        "APCA_API_DATA_URL": alpaca_url,
        "EXEC_ALPACA_TIMEOUT_S": str(config.client_timeout_s),
        "EXEC_ALPACA_LOOKUP_GRACE_S": "0.3",
        "EXEC_ALPACA_BACKOFF_S": "0.01",
        "EXEC_ALPACA_MAX_WAIT_S": "0.3",
        "EXEC_ALPACA_FILL_POLLS": "2",
        "EXEC_ALPACA_FILL_POLL_S": "0.01",
        "EXEC_ALPACA_QUOTE_TTL_S": "0.5",
        "EXEC_ALPACA_TRADING_REQUESTS_PER_MINUTE": "0",  # the simulator does not limit; chaos is about faults
    }
    if config.store == "firestore":
        env.update(EXEC_STORE="firestore", FIRESTORE_EMULATOR_HOST=config.firestore_host or "",
                   GOOGLE_CLOUD_PROJECT="demo-chaos")  # fmt: skip
    else:
        env.update(EXEC_STORE="sqlite", EXEC_SQLITE_PATH=str(Path(config.workdir or ".") / "chaos.sqlite3"))
    return env


class _Crashes:
    """Where this worker dies, drawn from its own seeded generator. Counted in shared memory before
    dying (a queue's feeder thread would not flush before ``os._exit``)."""

    def __init__(
        self, rates: dict[str, float], seed: int, counters: Any, budget: int | None, force_after: int | None
    ) -> None:
        self.rates = rates
        self.budget = budget
        self.force_after = force_after
        self.rng = random.Random(seed)
        self.counters = counters  # per crash point: deaths, then reaches (shared by the workers)
        self.enabled = True

    def maybe(self, point: str) -> None:
        if not self.enabled or point not in self.rates:
            return
        drawn = self.rng.random() < self.rates[point]
        slot, reached = CRASH_POINTS.index(point), len(CRASH_POINTS) + CRASH_POINTS.index(point)
        with self.counters.get_lock():
            self.counters[reached] += 1
            forced = (
                self.force_after is not None
                and self.counters[slot] == 0
                and self.counters[reached] >= self.force_after
            )
            if not (drawn or forced):
                return
            if self.budget is not None and self.counters[slot] >= self.budget:
                return
            self.counters[slot] += 1
        os._exit(CRASH_EXIT)


def _install_crashes(engine: Any, crashes: _Crashes, store_kind: str) -> None:
    store, broker = engine.store, engine.broker
    claim, submit, commit = store.claim, broker.submit_order, store.commit_order
    in_ledger_write = {"armed": False}

    def claim_then_die(*args: Any, **kwargs: Any) -> Any:
        outcome = claim(*args, **kwargs)
        if outcome.outcome.value == "claimed":
            crashes.maybe("after_claim")
        return outcome

    def submit_then_die(request: Any) -> Any:
        order = submit(request)
        crashes.maybe("after_accept")
        return order

    def commit_dying_inside(update: Any) -> Any:
        in_ledger_write["armed"] = bool(update.trades)
        try:
            return commit(update)
        finally:
            in_ledger_write["armed"] = False

    store.claim, broker.submit_order, store.commit_order = (
        claim_then_die,
        submit_then_die,
        commit_dying_inside,
    )
    if store_kind == "sqlite":
        from backend.adapters import sqlite_store

        original_exit = sqlite_store._Transaction.__exit__

        def exit_before_commit(self: Any, exc_type: Any, *rest: Any) -> None:
            if exc_type is None and in_ledger_write["armed"]:
                crashes.maybe("inside_ledger_write")  # the writes are staged; COMMIT never runs
            original_exit(self, exc_type, *rest)

        sqlite_store._Transaction.__exit__ = exit_before_commit  # type: ignore[method-assign]
    else:
        from google.cloud.firestore_v1 import transaction as firestore_transaction

        original_commit = firestore_transaction.Transaction._commit

        def die_before_commit_rpc(self: Any) -> Any:
            if in_ledger_write["armed"]:
                crashes.maybe("inside_ledger_write")  # the writes are staged; the commit RPC never leaves
            return original_commit(self)

        firestore_transaction.Transaction._commit = die_before_commit_rpc  # type: ignore[method-assign]


BROKEN_STORES: dict[str, dict[str, Any]] = {
    "drop-ledger-rows": {"trades": ()},
    "keep-slots": {"release_slot": None},
    "leak-in-flight": {"release_in_flight": Decimal(0)},
}


def _break(store: Any, how: str) -> None:
    from dataclasses import replace

    commit, planted = store.commit_order, BROKEN_STORES[how]
    store.commit_order = lambda update: commit(replace(update, **planted))


def _worker(
    config: ChaosRun, env: dict[str, str], number: int, tasks: Any, answer: Any, crashed: Any
) -> None:
    """One worker process: builds its engine from the environment, then executes what it is given."""
    os.environ.update(env)
    from backend.observability.logging import configure_logging

    log = Path(config.workdir or ".") / f"worker-{number}.log"
    configure_logging("WARNING", stream=log.open("a", encoding="utf-8"))
    from backend.adapters.alpaca.broker import AlpacaBroker
    from backend.adapters.alpaca.market_data import AlpacaMarketData
    from backend.adapters.alpaca.settings import AlpacaSettings
    from backend.execution.engine import ExecutionEngine, RiskManager, SmartRouter
    from backend.execution.settings import load_settings

    settings = load_settings()
    alpaca = AlpacaSettings()
    engine = ExecutionEngine(
        broker=AlpacaBroker(alpaca),
        router=SmartRouter(market_data=AlpacaMarketData(alpaca), policy=settings.routing_policy()),
        risk=RiskManager(settings.risk_limits()),
        settings=settings,
        worker_id=f"chaos-worker-{number}",
    )
    rates = dict.fromkeys(config.crash_points.split(","), config.crash_rate)
    if config.ledger_write_crash_rate is not None and "inside_ledger_write" in rates:
        rates["inside_ledger_write"] = config.ledger_write_crash_rate
    crashes = _Crashes(
        rates, config.seed * 7919 + number, crashed, config.max_crashes_per_point, config.force_crash_after
    )
    _install_crashes(engine, crashes, config.store)
    if config.break_store:
        _break(engine.store, config.break_store)
    while True:
        task = tasks.get()
        if task is None:
            return
        index, crash_enabled = task
        crashes.enabled = crash_enabled
        answer.send(("start", index))
        try:
            answer.send(("done", index, _work(config, engine, index)))
        except Exception as exc:  # noqa: BLE001 - reported: a delivery that fails is delivered again
            answer.send(("error", index, f"{type(exc).__name__}: {exc}"))


SWEEP = -1  # the task "run the settlement sweeper", beside intent indexes


def _work(config: ChaosRun, engine: Any, index: int) -> str:
    if index == SWEEP:
        from datetime import datetime, timedelta

        from backend.execution.settings import SweepLimits
        from backend.execution.settlement_sweep import sweep_open_orders

        limits = SweepLimits(older_than=timedelta(seconds=config.lease_s), max_orders=config.intents)
        return f"swept {sweep_open_orders(engine, limits, datetime.now(UTC)).examined}"
    return str(engine.execute_intent(intent_data(config, index)).status.value)


class _Pool:
    """Worker processes that deliver intents at least once: an intent a dead worker held is handed
    to another worker; a dead worker is replaced. Each worker answers on its own pipe, written
    synchronously: a worker killed mid-run holds no lock another process could wait on."""

    def __init__(self, config: ChaosRun, env: dict[str, str], report: ChaosReport) -> None:
        self.config, self.env, self.report = config, env, report
        # spawn: a forked child could inherit a lock some thread of this process holds (the
        # simulator's server threads, a queue's feeder thread) and wait on it forever.
        self.context = multiprocessing.get_context("spawn")
        self.tasks = self.context.Queue()
        self.crashed = self.context.Array("i", 2 * len(CRASH_POINTS))  # deaths, then reaches
        self.workers: dict[int, tuple[Any, Any]] = {}  # number -> (process, its answers' pipe)
        self.holding: dict[int, int] = {}
        self.next_number = 0
        for _ in range(config.workers):
            self._spawn()

    def _spawn(self) -> None:
        number = self.next_number
        self.next_number += 1
        answers, answer = self.context.Pipe(duplex=False)
        process = self.context.Process(
            target=_worker,
            args=(self.config, self.env, number, self.tasks, answer, self.crashed),
            daemon=True,
        )
        process.start()
        answer.close()  # the worker holds the writing end: its death closes the pipe
        self.workers[number] = (process, answers)

    def deliver(self, indexes: list[int], crash_enabled: bool) -> list[str]:
        """Deliver every index (duplicates included) until each delivery answered; returns errors."""
        outstanding = Counter(indexes)
        for index in indexes:
            self.tasks.put((index, crash_enabled))
        self.report.deliveries += len(indexes)
        errors: list[str] = []
        while outstanding:
            by_pipe = {answers: number for number, (_, answers) in self.workers.items()}
            for pipe in multiprocessing.connection.wait(list(by_pipe), timeout=1.0):
                number = by_pipe[pipe]  # type: ignore[index]
                try:
                    message = pipe.recv()  # type: ignore[union-attr]
                except EOFError:
                    self._replace(number, crash_enabled, outstanding)
                    continue
                self._take(message, number, crash_enabled, outstanding, errors)
        return errors

    def _take(
        self,
        message: tuple[Any, ...],
        number: int,
        crash_enabled: bool,
        outstanding: Counter[int],
        errors: list[str],
    ) -> None:
        kind, index = message[0], message[1]
        if kind == "start":
            self.holding[number] = index
            return
        self.holding.pop(number, None)
        outstanding[index] -= 1
        if outstanding[index] <= 0:
            del outstanding[index]
        if kind == "error":
            errors.append(f"intent {index}: {message[2]}")
            self.tasks.put((index, crash_enabled))  # delivered again, as Pub/Sub would
            outstanding[index] += 1
            self.report.deliveries += 1

    def _replace(self, number: int, crash_enabled: bool, outstanding: Counter[int]) -> None:
        process, answers = self.workers.pop(number)
        answers.close()
        process.join(30)
        if process.exitcode != CRASH_EXIT:
            raise RuntimeError(f"chaos worker {number} failed (exit {process.exitcode}); see its log")
        held = self.holding.pop(number, None)
        if held is not None and outstanding.get(held):
            self.tasks.put((held, crash_enabled))  # the killed worker's intent, delivered again
            self.report.deliveries += 1
        self.report.worker_restarts += 1
        self._spawn()

    def close(self) -> None:
        self.report.crashes = dict(zip(CRASH_POINTS, self.crashed[: len(CRASH_POINTS)], strict=True))
        for _ in self.workers:
            self.tasks.put(None)
        for process, answers in self.workers.values():
            process.join(10)
            if process.is_alive():
                process.kill()
            answers.close()


# -- the run ----------------------------------------------------------------------------------------


def _open_store(config: ChaosRun, env: dict[str, str]) -> Any:
    if config.store == "firestore":
        from google.cloud import firestore

        from backend.adapters.firestore_store import FirestoreExecutionStore

        os.environ["FIRESTORE_EMULATOR_HOST"] = env["FIRESTORE_EMULATOR_HOST"]
        return FirestoreExecutionStore(firestore.Client(project=env["GOOGLE_CLOUD_PROJECT"]))
    from backend.adapters.sqlite_store import SQLiteExecutionStore

    return SQLiteExecutionStore(env["EXEC_SQLITE_PATH"])


def _open_orders(store: Any) -> dict[int, tuple[str, str]]:
    """Intents whose order is not final (unsettled, or resting and possibly filling) -> (state,
    filled quantity): what a round of re-deliveries may still change."""
    return {
        int(stored.order.idempotency_key.rsplit("-", 1)[1]): (
            stored.order.state.value,
            str(stored.order.filled_qty),
        )
        for stored in store.iter_orders(TENANT, open_only=True)
    }


def _behind_the_broker(store: Any, fake: FakeAlpaca) -> bool:
    """Some order the store has as resting is final at the broker, or filled more there: the next
    delivery (or sweep) has something to settle."""
    at_broker = {order["client_order_id"]: order for order in fake.orders_snapshot()}
    for stored in store.iter_orders(TENANT, open_only=True):
        broker = at_broker.get(stored.order.client_order_id)
        if broker is None:
            continue
        if broker["status"] not in OPEN_AT_BROKER or Decimal(broker["filled_qty"]) != stored.order.filled_qty:
            return True
    return False


def run_chaos(config: ChaosRun) -> ChaosReport:
    started = time.monotonic()
    report = ChaosReport(config=asdict(config))
    with ExitStack() as stack:
        workdir = config.workdir or stack.enter_context(tempfile.TemporaryDirectory(prefix="chaos-"))
        if config.store == "firestore" and not config.firestore_host:
            host = stack.enter_context(_firestore_emulator())
            config = ChaosRun(**{**asdict(config), "firestore_host": host})
        config = ChaosRun(**{**asdict(config), "workdir": workdir})
        fake = _simulator(config)
        url = stack.enter_context(running(fake))
        env = _settings_env(config, url)
        pool = _Pool(config, env, report)
        try:
            errors = _deliver_everything(pool, config, report, env, fake)
        finally:
            pool.close()
        store = _open_store(config, env)
        try:
            report.violations = errors + check_invariants(config, store, fake)
            _figures(report, store, fake)
        finally:
            if hasattr(store, "close"):
                store.close()
    report.seconds = time.monotonic() - started
    return report


def _simulator(config: ChaosRun) -> FakeAlpaca:
    chaos = ChaosConfig(
        probability=config.fault_rate,
        seed=config.seed,
        hang_s=config.client_timeout_s + 0.2,
        retry_after_s=0.2,
        malformed=tuple(MalformedBody),
    )
    fake = FakeAlpaca(chaos=FaultPolicy(chaos), fill_mix=FillMix.realistic(seed=config.seed, rest_s=0.3))
    for symbol, bid, ask in SYMBOLS:
        fake.set_quote(symbol, bid, ask)
    return fake


def _deliver_everything(
    pool: _Pool, config: ChaosRun, report: ChaosReport, env: dict[str, str], fake: FakeAlpaca
) -> list[str]:
    rng = random.Random(config.seed)
    first: list[int] = []
    for index in range(config.intents):
        first.append(index)
        if rng.random() < config.duplicate_rate:
            first.append(index)  # the same intent, twice at once
            report.duplicate_deliveries += 1
    errors = pool.deliver(first, crash_enabled=True)
    store = None
    before: dict[int, tuple[str, str]] | None = None
    try:
        for round_number in range(config.max_rounds):
            time.sleep(config.lease_s + config.reconcile_s)
            if store is None:
                store = _open_store(config, env)
            open_orders = _open_orders(store)
            unsettled = [i for i, (state, _) in open_orders.items() if state in UNSETTLED]
            if not unsettled and open_orders == before and not _behind_the_broker(store, fake):
                # Only resting orders left, a whole round changed none of them, and the broker has
                # moved none on (a round whose lookup met a fault proves nothing by itself).
                break
            before = open_orders
            report.redelivery_rounds += 1
            if config.finish_with == "sweeper":
                errors += pool.deliver([SWEEP, SWEEP], crash_enabled=False)  # two sweepers at once
                continue
            pending = sorted(open_orders)
            again = pending + [i for i in pending if rng.random() < config.duplicate_rate]
            report.duplicate_deliveries += len(again) - len(pending)
            errors += pool.deliver(again, crash_enabled=round_number < 3)
    finally:
        if store is not None and hasattr(store, "close"):
            store.close()
    # Errors that a later delivery settled are part of at-least-once, not violations.
    return [e for e in errors if "LedgerIntegrityError" in e]


# -- the invariants ---------------------------------------------------------------------------------


def check_invariants(config: ChaosRun, store: Any, fake: FakeAlpaca) -> list[str]:
    from backend.core.ledger import LedgerTrade

    broker_orders = fake.orders_snapshot()
    stored = {s.order.client_order_id: s for s in store.iter_orders(TENANT)}
    ledger = [t for t in store.iter_ledger_trades(TENANT) if isinstance(t, LedgerTrade)]
    at_broker = {o["client_order_id"]: o for o in broker_orders if o["status"] != "rejected"}
    return (
        _one_order_per_intent(config, store, broker_orders, stored, at_broker)
        + _one_row_per_fill(stored, ledger, at_broker)
        + _nothing_held_twice(store, stored)
        + _positions_agree(store, ledger, fake)
    )


def _one_order_per_intent(
    config: ChaosRun,
    store: Any,
    broker_orders: list[dict[str, Any]],
    stored: dict[str, Any],
    at_broker: dict[str, Any],
) -> list[str]:
    """At most one order per client order id; the orders at the broker are the intents placed."""
    from backend.core.paths import client_order_id_for

    per_cid = Counter(order["client_order_id"] for order in broker_orders)
    problems = [f"{count} orders at the broker for {cid}" for cid, count in per_cid.items() if count > 1]
    keys = [intent_data(config, i)["idempotency_key"] for i in range(config.intents)]
    problems += [f"intent {key} has no decision" for key in keys if store.get_execution(TENANT, key) is None]
    placed = {cid for cid, s in stored.items() if s.order.state.at_broker}
    problems += [
        f"order {cid} is at the broker, not recorded as placed" for cid in sorted(set(at_broker) - placed)
    ]
    problems += [
        f"order {cid} is recorded as placed, not at the broker" for cid in sorted(placed - set(at_broker))
    ]
    expected = {client_order_id_for(TENANT, key) for key in keys}
    problems += [f"order {cid} at the broker belongs to no intent" for cid in sorted(set(per_cid) - expected)]
    return problems


def _one_row_per_fill(stored: dict[str, Any], ledger: list[Any], at_broker: dict[str, Any]) -> list[str]:
    """One ledger row per fill, adding up to what the broker filled; nothing left unsettled; a
    resting order rests at the broker too."""
    open_at_broker = OPEN_AT_BROKER
    problems = [
        f"ledger row {tid} written {n} times"
        for tid, n in Counter(t.trade_id for t in ledger).items()
        if n > 1
    ]
    by_order: dict[str, list[Any]] = defaultdict(list)
    for trade in ledger:
        by_order[trade.broker.client_order_id].append(trade)
    for cid, s in stored.items():
        order, broker, rows = s.order, at_broker.get(cid), by_order.get(cid, [])
        filled_at_broker = Decimal(broker["filled_qty"]) if broker else Decimal(0)
        recorded = sum((t.filled_qty for t in rows), Decimal(0))
        if len(rows) != len(order.fills):
            problems.append(f"order {cid}: {len(rows)} ledger rows for {len(order.fills)} fills")
        if recorded != filled_at_broker:
            problems.append(f"order {cid}: ledger fills {recorded} != broker filled {filled_at_broker}")
        if order.state.value in UNSETTLED:
            problems.append(f"order {cid} left {order.state.value}")
        status = broker["status"] if broker else "nowhere"
        if order.state.resting and status not in open_at_broker:
            problems.append(f"order {cid} recorded {order.state.value}, the broker has it {status}")
        if order.state.value == "filled" and status != "filled":
            problems.append(f"order {cid} recorded filled, the broker has it {status}")
    return problems


def _nothing_held_twice(store: Any, stored: dict[str, Any]) -> list[str]:
    """Daily slots taken = orders placed; in flight = the resting orders' leaves, per side."""
    placed = sum(1 for s in stored.values() if s.order.state.at_broker)
    days = {s.order.claimed_at.astimezone(UTC).date().isoformat() for s in stored.values()}
    slots = sum(store.daily_slots_taken(TENANT, day) for day in days)
    problems = [] if slots == placed else [f"daily slots taken {slots} != orders placed {placed}"]
    leaves: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for s in stored.values():
        leaves[(s.result.intent.symbol, s.order.side.value)] += s.order.leaves_qty
    for (account, symbol), (buys, sells) in store.in_flight(TENANT).items():
        expected = (leaves[(symbol, "buy")], leaves[(symbol, "sell")])
        if buys < 0 or sells < 0:
            problems.append(f"{account} {symbol}: negative in flight ({buys}, {sells})")
        if (buys, sells) != expected:
            problems.append(f"{symbol}: in flight ({buys}, {sells}) != resting leaves {expected}")
    return problems


def _positions_agree(store: Any, ledger: list[Any], fake: FakeAlpaca) -> list[str]:
    from backend.adapters.alpaca.symbols import instrument_from_alpaca

    booked: dict[str, Decimal] = defaultdict(Decimal)
    for trade in ledger:
        booked[trade.symbol] += trade.side.sign * trade.qty
    fake.advance()
    with fake.lock:
        held = {instrument_from_alpaca(s).symbol: q for s, q in fake.holdings.items()}
    problems = []
    for symbol, qty in store.positions(TENANT).items():
        if qty != booked[symbol]:
            problems.append(f"{symbol}: position {qty} != ledger {booked[symbol]}")
        if qty != held.get(symbol, Decimal(0)):
            problems.append(f"{symbol}: position {qty} != broker holds {held.get(symbol, Decimal(0))}")
    return problems


def _figures(report: ChaosReport, store: Any, fake: FakeAlpaca) -> None:
    assert fake.chaos is not None
    stats = fake.chaos.stats()
    report.broker_calls, report.faults, report.fault_share = stats.requests, stats.faults, stats.fault_share
    report.faults_by_kind = {str(kind): count for kind, count in sorted(stats.by_kind.items())}
    report.orders_at_broker = len([o for o in fake.orders_snapshot() if o["status"] != "rejected"])
    report.ledger_rows = len(list(store.iter_ledger_trades(TENANT)))
    report.final_states = dict(Counter(s.order.state.value for s in store.iter_orders(TENANT)))


@contextmanager
def _firestore_emulator() -> Iterator[str]:
    from devtools.emulators import FirestoreEmulator

    emulator = FirestoreEmulator()
    emulator.start()
    try:
        yield emulator.host
    finally:
        emulator.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.chaos", description=__doc__.split("\n\n")[0])
    defaults = ChaosRun()
    kinds = {
        "firestore_host": str,
        "workdir": str,
        "ledger_write_crash_rate": float,
        "max_crashes_per_point": int,
        "force_crash_after": int,
    }
    for name, value in asdict(defaults).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=kinds.get(name, type(value)), default=value)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = vars(parser.parse_args(argv))
    as_json = args.pop("json")
    report = run_chaos(ChaosRun(**args))
    print(json.dumps(asdict(report), indent=2, default=str) if as_json else report.summary())
    return 0 if not report.violations else 1


if __name__ == "__main__":
    sys.exit(main())
