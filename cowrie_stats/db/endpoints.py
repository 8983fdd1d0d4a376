"""One database endpoint and what the router last learnt of it.

An endpoint is in one of three states:

* ``healthy``: it answered its last contact and, for a replica, replays within
  ``COWRIE_STATS_MAX_REPLICA_LAG``;
* ``lagging``: a replica that answers but replays further behind;
* ``unreachable``: its last contact failed.

Each contact (a check or a read that had to learn the state) sets the state at
once, and when the next background check is due: a healthy endpoint after the
check interval, any other after a backoff that starts at 0.25 s and doubles up
to :data:`RECHECK_MAX_SECONDS`, so that a recovered endpoint is back in rotation
within about two seconds. A change of state is logged once, with its reason
and the measured lag.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field

from sqlalchemy import Engine

from cowrie_stats.db.lag import UNKNOWN_LAG, Measurement, describe_lag

log = logging.getLogger("cowrie_stats.db.routing")

HEALTHY, LAGGING, UNREACHABLE = "healthy", "lagging", "unreachable"
RECHECK_FIRST_SECONDS = 0.25
RECHECK_MAX_SECONDS = 2.0


@dataclass(eq=False)  # one endpoint is one object: compared and hashed by identity
class Endpoint:
    """One database endpoint: its engine, state and the last check's verdict."""

    name: str
    engine: Engine
    is_primary: bool
    healthy: bool = True  # in rotation; kept equal to ``state == HEALTHY``
    lag_seconds: float = 0.0  # at the last contact; unknown (inf) while unreachable
    state: str = HEALTHY
    reason: str = ""
    failures: int = 0
    checked_at: float = 0.0
    next_check: float = 0.0
    checked: Measurement = field(default_factory=lambda: Measurement(0.0, (None, None)))
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def role(self) -> str:
        return "primary" if self.is_primary else "replica"

    def record_answer(self, measured: Measurement, limit: float, interval: float) -> bool:
        """It answered, ``measured`` behind; True when its state changed."""
        lag = measured.lag_seconds
        behind = lag > limit
        seconds = describe_lag(lag) + ("" if math.isinf(lag) else " s")
        reason = f"lag {seconds} {'>' if behind else '<='} limit {limit:g} s"
        with self.lock:
            self.failures = self.failures + 1 if behind else 0
            self.checked = measured
            self._schedule(None if behind else interval, interval)
            return self._set_state(LAGGING if behind else HEALTHY, lag, reason)

    def record_failure(self, reason: str, interval: float) -> bool:
        """It did not answer; True when its state changed."""
        with self.lock:
            self.failures += 1
            self._schedule(None, interval)
            return self._set_state(UNREACHABLE, UNKNOWN_LAG, reason)

    def check_soon(self) -> None:
        """Make a background check due now, unless one ran a moment ago."""
        if self.checked_at < time.monotonic() - RECHECK_FIRST_SECONDS:
            self.next_check = 0.0

    def _schedule(self, after: float | None, interval: float) -> None:
        """The next check: ``after`` seconds, or the backoff of a failing endpoint."""
        self.checked_at = time.monotonic()
        if after is None:
            growing = RECHECK_FIRST_SECONDS * 2 ** min(max(self.failures - 1, 0), 8)
            after = min(growing, RECHECK_MAX_SECONDS, interval)
        self.next_check = self.checked_at + after

    def _set_state(self, state: str, lag: float, reason: str) -> bool:
        changed = self.state != state
        self.state, self.healthy, self.lag_seconds = state, state == HEALTHY, lag
        if changed or state != HEALTHY:
            self.reason = reason
        return changed

    def log_change(self) -> None:
        lag = None if math.isinf(self.lag_seconds) else round(self.lag_seconds, 3)
        extra = {"endpoint": self.name, "role": self.role, "state": self.state}
        log.log(
            logging.INFO if self.healthy else logging.WARNING,
            "%s %s is %s: %s",
            self.role,
            self.name,
            self.state,
            self.reason,
            extra={**extra, "lag_seconds": lag},
        )


def error_text(error: BaseException) -> str:
    """The first line of the driver's message (host and port, never a password)."""
    cause = getattr(error, "orig", None) or error
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0][:200] if lines else 'no message'}"
