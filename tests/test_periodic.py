"""Background loops: interval, wake-up, chosen delays, failures logged once, close joins."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from itertools import pairwise

import pytest

from cowrie_stats.periodic import Periodic


def _until(predicate: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.005)


def _alive(name: str) -> bool:
    return any(thread.name == name for thread in threading.enumerate())


def test_steps_repeat_at_the_interval_until_close_joins() -> None:
    steps: list[float] = []
    worker = Periodic("test-repeat", lambda: steps.append(time.monotonic()), 0.02)
    started = time.monotonic()
    worker.start()
    worker.start()  # a second start changes nothing
    _until(lambda: len(steps) >= 3)
    worker.close()
    assert not _alive("test-repeat")
    assert steps[0] - started >= 0.02  # the first step waits for the interval
    assert all(later - earlier >= 0.015 for earlier, later in pairwise(steps))
    done = len(steps)
    time.sleep(0.05)
    assert len(steps) == done and worker.stopping


def test_wake_runs_the_next_step_at_once() -> None:
    ran = threading.Event()
    worker = Periodic("test-wake", ran.set, 3600)
    worker.start()
    try:
        time.sleep(0.02)
        assert not ran.is_set()
        woken = time.monotonic()
        worker.wake()
        assert ran.wait(5)
        assert time.monotonic() - woken < 1
    finally:
        worker.close()


def test_close_ends_a_long_wait_at_once() -> None:
    worker = Periodic("test-close", lambda: None, 3600)
    worker.start()
    closing = time.monotonic()
    worker.close()
    assert time.monotonic() - closing < 1
    assert not _alive("test-close")


def test_next_delay_and_first_delay_choose_the_waits() -> None:
    steps: list[float] = []
    delays = iter([0.0, 3600.0])
    worker = Periodic(
        "test-delays",
        lambda: steps.append(time.monotonic()),
        3600,
        next_delay=lambda: next(delays),
        first_delay=0.0,
    )
    worker.start()
    try:
        _until(lambda: len(steps) == 2)  # at once, then after the chosen 0 s
        time.sleep(0.05)
        assert len(steps) == 2  # then the chosen hour
    finally:
        worker.close()


def test_a_failing_loop_logs_its_first_failure_and_its_recovery(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="cowrie_stats.periodic")
    outcomes = iter([ValueError("bad"), ValueError("bad"), ValueError("bad"), None, None])
    calls: list[object] = []

    def step() -> None:
        outcome = next(outcomes, None)
        calls.append(outcome)
        if outcome is not None:
            raise outcome

    worker = Periodic("test-failing", step, 0.01, failing="it fails", recovered="it works")
    worker.start()
    _until(lambda: len(calls) >= 5)
    worker.close()
    assert not _alive("test-failing")  # failures did not end the loop early either
    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert messages == [("WARNING", "it fails"), ("INFO", "it works")]
    assert caplog.records[0].error == "ValueError"  # type: ignore[attr-defined]
    assert caplog.records[0].worker == "test-failing"  # type: ignore[attr-defined]


def test_run_now_steps_in_the_caller_and_says_whether_it_failed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="cowrie_stats.periodic")
    failing = [True]

    def step() -> None:
        if failing[0]:
            raise OSError("down")

    worker = Periodic("test-now", step, 3600)
    assert worker.run_now() is False and worker.failing
    assert worker.run_now() is False
    failing[0] = False
    assert worker.run_now() is True and not worker.failing
    assert [r.getMessage() for r in caplog.records] == [
        "test-now failing",
        "test-now works again",
    ]
    assert not worker.started
    worker.close()  # never started: nothing to join


def test_close_waits_for_the_step_in_progress_at_most_its_timeout() -> None:
    release = threading.Event()
    entered = threading.Event()

    def step() -> None:
        entered.set()
        release.wait(5)

    worker = Periodic("test-busy", step, 0.0, first_delay=0.0)
    worker.start()
    assert entered.wait(5)
    worker.close(timeout=0.05)
    assert _alive("test-busy")  # the step still runs: close gave up waiting
    release.set()
    worker.close()
    assert not _alive("test-busy")
