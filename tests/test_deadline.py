"""The call deadline: built from the caller's and the default, what is left, its limits."""

from __future__ import annotations

import time

import pytest

from cowrie_stats.deadline import NO_DEADLINE, Deadline


class _Call:
    def __init__(self, remaining: float | None) -> None:
        self.remaining = remaining

    def time_remaining(self) -> float | None:
        return self.remaining


def test_a_call_gets_the_sooner_of_its_deadline_and_the_default() -> None:
    caller = Deadline.of_call(_Call(3.0), default_seconds=30.0).remaining()
    assert caller is not None and 2.9 < caller <= 3.0
    capped = Deadline.of_call(_Call(100.0), default_seconds=30.0).remaining()
    assert capped is not None and 29.9 < capped <= 30.0
    default = Deadline.of_call(_Call(None), default_seconds=5.0).remaining()
    assert default is not None and 4.9 < default <= 5.0


def test_no_deadline_never_expires_nor_limits() -> None:
    assert NO_DEADLINE.remaining() is None
    assert not NO_DEADLINE.expired
    assert NO_DEADLINE.statement_timeout_ms() is None
    bounded = NO_DEADLINE.within(2.0).remaining()
    assert bounded is not None and 1.9 < bounded <= 2.0


def test_a_passed_deadline_is_expired_with_nothing_left() -> None:
    deadline = Deadline.after(0.01)
    assert not deadline.expired
    time.sleep(0.02)
    assert deadline.expired
    assert deadline.remaining() == 0.0
    assert deadline.statement_timeout_ms() == 1  # PostgreSQL reads 0 as "no timeout"


def test_statement_timeout_is_what_is_left_in_milliseconds() -> None:
    ms = Deadline.after(2.5).statement_timeout_ms()
    assert ms is not None and 2400 < ms <= 2500


def test_within_keeps_the_sooner_deadline() -> None:
    near = Deadline.after(0.5)
    assert near.within(10.0) == near
    short = Deadline.after(60.0).within(2.0).remaining()
    assert short == pytest.approx(2.0, abs=0.1)


def test_a_deadline_is_an_immutable_value() -> None:
    deadline = Deadline.after(1.0)
    with pytest.raises(AttributeError):
        deadline.at = None  # type: ignore[misc]
    assert Deadline(5.0) == Deadline(5.0) and hash(Deadline(5.0)) == hash(Deadline(5.0))
