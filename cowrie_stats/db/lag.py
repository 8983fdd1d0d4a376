"""How old a streaming replica's data may be: measured, and bounded at read time.

Two questions, two answers:

* :func:`measure_lag`, for the background checks: is everything the primary has
  written replayed here? With the primary's flush position at hand, "behind"
  means replay has not reached it; without it (primary down), it means replay
  has not reached what this replica received. Being behind is not lag yet:
  replay that reaches the target within a few samples was catching up (the lag
  is the time that took), and replay that does not move while nothing more can
  arrive is waiting for the rest of a record the primary stopped writing mid-way
  (an idle primary does that): nothing to catch up. Otherwise, and whenever
  replay is paused, the age of the last replayed commit bounds the lag; a replica
  that has replayed no commit since it started cannot tell (infinite).
  Comparing positions first matters: the timestamp alone would report a growing
  lag on an idle primary, and the received position alone would call a replica
  cut off from a busy primary current.
* :func:`lag_at_read`, inside every read on a replica believed healthy, from the
  read's own first statement (no extra round trip, no waiting): a replica whose
  replay is behind and that has moved since its last check is taken at the age
  of its last replayed commit. It is cruder (it may see an idle primary's first
  commit as lag), never blind to a replay paused since the last check.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, text

UNKNOWN_LAG = math.inf
RESAMPLE_DELAY_SECONDS = 0.05
RESAMPLES = 2

# The columns of one replay sample; "now()" is the start of the transaction.
REPLAY_COLUMNS = """
    pg_is_in_recovery(),
    pg_last_wal_receive_lsn()::text,
    pg_last_wal_replay_lsn()::text,
    CASE WHEN pg_is_in_recovery() THEN pg_get_wal_replay_pause_state() <> 'not paused' END,
    EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())::float8
"""
REPLAY_SAMPLE = text(f"SELECT {REPLAY_COLUMNS}")
PRIMARY_FLUSH = text("SELECT pg_current_wal_flush_lsn()::text")

Positions = tuple[int | None, int | None]


def lsn(value: str | None) -> int | None:
    """A ``pg_lsn`` in its text form ("16/B374D848") as an integer."""
    if value is None:
        return None
    high, low = value.split("/")
    return (int(high, 16) << 32) | int(low, 16)


@dataclass(frozen=True)
class ReplayState:
    """One sample of a server's replay progress."""

    in_recovery: bool
    received: int | None
    replayed: int | None
    paused: bool
    age: float | None  # seconds since the last replayed commit; None without one

    @classmethod
    def of(cls, row: Sequence[Any]) -> ReplayState:
        in_recovery, received, replayed, paused, age = row
        return cls(bool(in_recovery), lsn(received), lsn(replayed), bool(paused), age)

    @property
    def positions(self) -> Positions:
        return self.received, self.replayed

    def reached(self, target: int | None) -> bool:
        return target is not None and self.replayed is not None and self.replayed >= target

    def age_bound(self) -> float:
        return UNKNOWN_LAG if self.age is None else max(float(self.age), 0.0)


@dataclass(frozen=True)
class Measurement:
    lag_seconds: float
    positions: Positions  # of the last sample, which the verdict is about


def sample(conn: Connection) -> ReplayState:
    return ReplayState.of(conn.execute(REPLAY_SAMPLE).one())


def primary_flush(conn: Connection) -> int | None:
    """How far the primary behind ``conn`` has flushed WAL (what replicas can receive)."""
    return lsn(conn.execute(PRIMARY_FLUSH).scalar_one())


def measure_lag(conn: Connection, primary_flushed: int | None = None) -> Measurement:
    """Seconds the server behind ``conn`` may lag its primary (0 on a primary)."""
    state = sample(conn)
    if not state.in_recovery:
        return Measurement(0.0, state.positions)
    target = state.received if primary_flushed is None else primary_flushed
    if target is None or state.reached(target):
        lag = state.age_bound() if target is None else 0.0
        return Measurement(lag, state.positions)
    if not state.paused:
        started = time.monotonic()
        for _ in range(RESAMPLES):
            time.sleep(RESAMPLE_DELAY_SECONDS)
            again = sample(conn)
            if again.reached(target):
                return Measurement(time.monotonic() - started, again.positions)
            stalled = again.positions == state.positions
            if stalled and again.received is not None and again.received >= target:
                return Measurement(0.0, again.positions)  # waits for WAL never written
            state = again
    return Measurement(state.age_bound(), state.positions)


def lag_at_read(state: ReplayState, checked: Measurement) -> float:
    """A bound of the lag from a read's own sample, given the last check's verdict."""
    if not state.in_recovery or state.reached(state.received):
        return 0.0  # all it received is replayed (cut off from the primary: the checks tell)
    if state.positions == checked.positions and not state.paused:
        return checked.lag_seconds  # nothing moved since the check: its verdict stands
    return state.age_bound()


def describe_lag(lag: float) -> str:
    """Seconds with three decimals, or "unknown"."""
    return "unknown" if math.isinf(lag) else f"{lag:.3f}"
