"""The one deadline of a call, built once and handed down to every wait it bounds.

The servicer builds a :class:`Deadline` from the caller's gRPC deadline and
COWRIE_STATS_DEFAULT_DEADLINE_SECONDS; the result cache waits for another
caller's computation until it, the router gives up on endpoints at it, and each
read turns what is left of it into a connect timeout, a PostgreSQL
``statement_timeout`` and a check between statements. Reads outside a call
(the CLI, maintenance) use :data:`NO_DEADLINE`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol


class _TimedCall(Protocol):
    def time_remaining(self) -> float | None: ...


@dataclass(frozen=True)
class Deadline:
    """A point on the monotonic clock by which the work must be done; ``at`` None: never."""

    at: float | None

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds)

    @classmethod
    def of_call(cls, context: _TimedCall, default_seconds: float) -> Deadline:
        """The caller's deadline, but no later than ``default_seconds`` from now."""
        remaining = context.time_remaining()
        seconds = default_seconds if remaining is None else min(remaining, default_seconds)
        return cls.after(seconds)

    def remaining(self) -> float | None:
        """Seconds left (never negative); None without a deadline."""
        if self.at is None:
            return None
        return max(0.0, self.at - time.monotonic())

    @property
    def expired(self) -> bool:
        return self.at is not None and time.monotonic() >= self.at

    def within(self, seconds: float) -> Deadline:
        """This deadline, or ``seconds`` from now when that comes first."""
        soon = time.monotonic() + seconds
        return Deadline(soon if self.at is None else min(self.at, soon))

    def statement_timeout_ms(self) -> int | None:
        """What is left as a PostgreSQL ``statement_timeout`` (at least 1 ms: 0 means none)."""
        remaining = self.remaining()
        return None if remaining is None else max(1, int(remaining * 1000))


NO_DEADLINE = Deadline(None)
