"""The chaos suite at a size CI can afford (the full-size figures come from
``python -m devtools.chaos``; see the README): faults in a fifth of the order calls, workers killed
after the claim, after the broker accepted and inside the ledger write, duplicate and repeated
deliveries; afterwards every invariant of exactly-once recording holds, on both stores."""

from __future__ import annotations

from typing import Any

import pytest

from devtools.chaos import CRASH_POINTS, ChaosRun, run_chaos


def assert_chaos_held(report: Any, fault_rate: float) -> None:
    assert report.violations == [], report.summary()
    assert report.fault_share >= fault_rate - 0.01, report.summary()  # exact per block of 100 calls
    assert set(report.faults_by_kind) == {
        "timeout_after_create", "error_5xx_before", "error_5xx_after", "rate_limited", "malformed_body",
        "connection_reset",
    }, report.summary()  # fmt: skip
    for point in CRASH_POINTS:
        assert report.crashes[point] > 0, report.summary()  # every way to die happened
    assert report.duplicate_deliveries > 0
    assert report.orders_at_broker > 0
    assert report.ledger_rows > 0


def test_chaos_on_the_embedded_store(tmp_path: Any) -> None:
    report = run_chaos(ChaosRun(intents=250, workers=4, crash_rate=0.04, seed=11, workdir=str(tmp_path)))
    print(report.summary())
    assert_chaos_held(report, 0.2)


def test_chaos_settled_by_the_sweeper_alone(tmp_path: Any) -> None:
    """No intent is delivered again after the first deliveries: two settlement sweepers at once
    settle what was left, and the same invariants hold."""
    report = run_chaos(
        ChaosRun(
            intents=150, workers=4, crash_rate=0.04, seed=17, finish_with="sweeper", workdir=str(tmp_path)
        )
    )
    print(report.summary())
    assert_chaos_held(report, 0.2)


def test_chaos_on_the_firestore_emulator(firestore_emulator: Any, tmp_path: Any) -> None:
    # The emulator resolves a contended transaction after a ~2 s lock wait, and keeps the locks of a
    # transaction its worker died in for ~17 s: the intents spread over more instruments (each
    # position document takes every write of its symbol), longer leases, fewer deaths mid-commit.
    config = ChaosRun(
        store="firestore", symbols=32, intents=100, workers=3, crash_rate=0.06, max_crashes_per_point=4,
        seed=13, lease_s=3.0, reconcile_s=1.0, intent_ttl_s=20.0, firestore_host=firestore_emulator.host,
        workdir=str(tmp_path),
    )  # fmt: skip
    report = run_chaos(config)
    print(report.summary())
    assert_chaos_held(report, 0.2)


@pytest.mark.parametrize(
    ("broken", "caught"),
    [
        ("drop-ledger-rows", "ledger rows for"),
        ("keep-slots", "daily slots taken"),
        ("leak-in-flight", "in flight"),
    ],
)
def test_the_invariants_catch_a_store_that_records_wrong(tmp_path: Any, broken: str, caught: str) -> None:
    """The checks can fail: a recording bug planted in the store is reported by name."""
    report = run_chaos(
        ChaosRun(intents=40, workers=2, crash_rate=0.0, seed=5, workdir=str(tmp_path), break_store=broken)
    )
    assert any(caught in violation for violation in report.violations), report.summary()
