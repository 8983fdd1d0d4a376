"""Database routing: each read on the freshest endpoint that answers; writes on the primary.

The servicer asks :meth:`Router.read` to run a read function and never knows
which host answered. A read tries each endpoint at most once, in three stages,
within the call's deadline:

1. the endpoints believed healthy (``db/endpoints.py``): the replicas
   round-robin, then the primary (every statistics RPC costs about the same and
   is short, so rotating spreads load evenly without the bookkeeping of
   least-loaded). A replica whose own snapshot shows it lagging since its last
   check (``db/lag.py``) is set aside for stage 3;
2. as a last resort, with a short connect timeout, every other endpoint not
   known to lag: one believed unreachable may be back;
3. only when none of those answered, the replicas, least behind first; the
   answer then carries an upper bound of its data's age (:class:`Answer`).

It gives up only when all failed (UNAVAILABLE) or the deadline passed. An
endpoint that answers a last-resort attempt takes its state from that contact
at once. A failure of the primary makes every replica due for a check at once.
An outage of every endpoint, and its end, are logged once each.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar

from sqlalchemy import Connection, text
from sqlalchemy import exc as sa_exc

from cowrie_stats.db import lag as replay
from cowrie_stats.db.endpoints import (
    HEALTHY,
    LAGGING,
    UNREACHABLE,
    Endpoint,
    error_text,
)
from cowrie_stats.db.engines import (
    DEADLINE_KEY,
    MIN_CONNECT_TIMEOUT_SECONDS,
    connect_timeout,
    create_db_engine,
)
from cowrie_stats.deadline import NO_DEADLINE, Deadline
from cowrie_stats.errors import DeadlineExceededError, UnavailableError, classify
from cowrie_stats.periodic import Periodic
from cowrie_stats.settings import Settings, redact_url

__all__ = ["Answer", "Endpoint", "Router"]

log = logging.getLogger(__name__)
T = TypeVar("T")

# The stages of one read, in order (see the module docstring).
FRESH, LAST_RESORT, BEHIND = "fresh", "last resort", "behind"


@dataclass(frozen=True)
class Answer(Generic[T]):
    """A read's value; ``lag_seconds`` is set when a lagging replica gave it.

    It is then an upper bound of how old the data is (infinite when the replica
    cannot tell).
    """

    value: T
    lag_seconds: float | None = None


class _FurtherBehindError(Exception):
    """A replica answered but lags beyond the limit: it waits for the last stage."""


class Router:
    """Chooses the endpoint of each read and keeps every endpoint's state current."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.primary = Endpoint(
            redact_url(settings.database_url),
            create_db_engine(settings.database_url, settings),
            is_primary=True,
        )
        self.replicas = [
            Endpoint(redact_url(url), create_db_engine(url, settings), is_primary=False)
            for url in settings.replica_urls
        ]
        self.limit = settings.max_replica_lag
        self.interval = settings.replica_check_interval
        self._rotation = itertools.count()
        self._fallback_logged = False
        self._outage = False
        self._outage_lock = threading.Lock()
        self._checks = Periodic(
            "db-checks",
            self.check_due,
            self.interval,
            next_delay=self._until_next_check,
            first_delay=0.0,
            logger=log,
        )

    @property
    def endpoints(self) -> list[Endpoint]:
        return [self.primary, *self.replicas]

    # -- choosing ----------------------------------------------------------------

    def healthy_replicas(self) -> list[Endpoint]:
        return [r for r in self.replicas if r.healthy]

    @property
    def reads_on_primary(self) -> bool:
        return bool(self.replicas) and not self.healthy_replicas()

    def _fresh_order(self, prefer_primary: bool) -> list[Endpoint]:
        """The endpoints believed to answer with current data, best first."""
        healthy = self.healthy_replicas()
        self._note_fallback(not healthy)
        if healthy:
            start = next(self._rotation) % len(healthy)
            healthy = healthy[start:] + healthy[:start]
        primary = [self.primary] if self.primary.healthy else []
        return [*primary, *healthy] if prefer_primary else [*healthy, *primary]

    def _note_fallback(self, on_primary: bool) -> None:
        if not self.replicas or on_primary == self._fallback_logged:
            return
        self._fallback_logged = on_primary
        if on_primary:
            log.warning("no healthy read replica: reads go to the primary")
        else:
            log.info("a read replica is healthy again: reads go to replicas")

    # -- running reads -------------------------------------------------------------

    def run_read(
        self,
        work: Callable[[Connection], T],
        deadline: Deadline = NO_DEADLINE,
        prefer_primary: bool = False,
    ) -> T:
        """The value of :meth:`read` from current data only (no lagging replica)."""
        return self.read(work, deadline, prefer_primary, allow_lagging=False).value

    def read(
        self,
        work: Callable[[Connection], T],
        deadline: Deadline = NO_DEADLINE,
        prefer_primary: bool = False,
        allow_lagging: bool = True,
    ) -> Answer[T]:
        """Run ``work`` in a read transaction on the freshest endpoint that answers.

        Raises UnavailableError when none answered, DeadlineExceededError when
        ``deadline`` passed first.
        """
        failed: set[Endpoint] = set()
        behind: list[Endpoint] = []  # set aside during this read
        # Each stage looks at the states as they are then: other reads and the
        # checks may have changed them meanwhile.
        stages: list[tuple[str, Callable[[], list[Endpoint]]]] = [
            (FRESH, lambda: self._fresh_order(prefer_primary)),
            (
                LAST_RESORT,
                lambda: [e for e in self.endpoints if e.state != LAGGING and e not in behind],
            ),
        ]
        if allow_lagging:
            stages.append((BEHIND, lambda: sorted(self.replicas, key=lambda r: r.lag_seconds)))
        for stage, candidates in stages:
            for endpoint in candidates():
                if endpoint in failed:
                    continue
                try:
                    return self._attempt(endpoint, stage, work, deadline, failed)
                except _FurtherBehindError:
                    behind.append(endpoint)
                except _EndpointFailedError:
                    continue
        if not allow_lagging and (behind or any(e.state == LAGGING for e in self.replicas)):
            raise UnavailableError("no database endpoint with current data answered")
        raise UnavailableError("no database endpoint answered; retry with backoff")

    def _attempt(
        self,
        endpoint: Endpoint,
        stage: str,
        work: Callable[[Connection], T],
        deadline: Deadline,
        failed: set[Endpoint],
    ) -> Answer[T]:
        """``work``'s answer from ``endpoint``; failures are recorded, then raised."""
        if deadline.expired:
            raise DeadlineExceededError("the request deadline passed before a database answered")
        connected = False
        try:
            with self._read_connection(endpoint, deadline, stage) as (conn, lag):
                connected = True
                value = work(conn)
        except sa_exc.DBAPIError as error:
            if not _is_connection_failure(error):
                raise
            # A connection lost mid-read (a backend killed, say) earns one more try
            # on a new connection, in the last stage; a failed connect does not.
            if not (connected and stage == FRESH):
                failed.add(endpoint)
            self._record_failure(endpoint, f"a read failed: {error_text(error)}")
            raise _EndpointFailedError from error
        return Answer(value, lag if lag > self.limit else None)

    def _connect(self, endpoint: Endpoint, deadline: Deadline, short: bool) -> Connection:
        """A connection; ``short`` (a last resort, a probe) waits at most 2 s for a new one."""
        with connect_timeout(deadline.within(MIN_CONNECT_TIMEOUT_SECONDS) if short else deadline):
            return endpoint.engine.connect()

    @contextmanager
    def _read_connection(
        self, endpoint: Endpoint, deadline: Deadline, stage: str
    ) -> Iterator[tuple[Connection, float]]:
        """A connection in a read transaction, and the lag it reads at."""
        with self._connect(endpoint, deadline, short=stage != FRESH) as conn:
            lag = 0.0
            if stage != FRESH:  # not known to be current: learn its state from this contact
                lag = self._contact(endpoint, conn).lag_seconds
                if lag > self.limit and stage != BEHIND:
                    raise _FurtherBehindError
            postgresql = conn.dialect.name == "postgresql"
            if postgresql:
                # One snapshot for all the statements of a call: figures agree with
                # each other (and with the data version) even while ingest commits.
                conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                # Keep the dict itself: once the connection breaks mid-call, touching
                # conn.info again would raise instead of the original error.
                info = conn.info
                info[DEADLINE_KEY] = deadline
                try:
                    if postgresql:
                        self._begin_snapshot(endpoint, conn, deadline, check=stage == FRESH)
                    yield conn, lag
                finally:
                    info.pop(DEADLINE_KEY, None)

    def _begin_snapshot(
        self, endpoint: Endpoint, conn: Connection, deadline: Deadline, check: bool
    ) -> None:
        """The read's first statement: its statement timeout, and a replica's replay state.

        The remaining RPC deadline becomes a statement timeout, so a cancelled
        call stops its query on the server too. A replica found lagging here is
        set aside, and checked at once.
        """
        columns = []
        ms = deadline.statement_timeout_ms()
        if ms is not None:
            columns.append("set_config('statement_timeout', :ms, true)")
        check = check and not endpoint.is_primary
        if check:
            columns.append(replay.REPLAY_COLUMNS)
        if not columns:
            return
        parameters = {} if ms is None else {"ms": str(ms)}
        row = conn.execute(text(f"SELECT {', '.join(columns)}"), parameters).one()
        state = replay.ReplayState.of(row[-5:]) if check else None
        if state is not None and replay.lag_at_read(state, endpoint.checked) > self.limit:
            endpoint.check_soon()
            self._checks.wake()
            raise _FurtherBehindError

    def _contact(self, endpoint: Endpoint, conn: Connection) -> replay.Measurement:
        """Record that ``endpoint`` answered on ``conn``, with its replay lag."""
        if endpoint.is_primary:
            measured = replay.Measurement(0.0, (None, None))
        else:
            measured = replay.measure_lag(conn, self._primary_flush())
        if conn.in_transaction():
            conn.rollback()  # a read sets its own isolation level before it begins
        if endpoint.record_answer(measured, self.limit, self.interval):
            self._changed(endpoint)
        return measured

    def _primary_flush(self) -> int | None:
        """The primary's flush position, when it answers at once (else None)."""
        if self.primary.state == UNREACHABLE:
            return None
        try:
            with self._connect(self.primary, NO_DEADLINE, short=True) as conn:
                return replay.primary_flush(conn)
        except sa_exc.TimeoutError:
            return None
        except sa_exc.SQLAlchemyError as error:
            self._record_failure(self.primary, f"check failed: {error_text(error)}")
            return None

    # -- state ---------------------------------------------------------------------

    def _record_failure(self, endpoint: Endpoint, reason: str) -> None:
        changed = endpoint.record_failure(reason, self.interval)
        if endpoint.is_primary:
            for replica in self.replicas:
                replica.check_soon()
            self._checks.wake()
        if changed:
            self._changed(endpoint)

    def _changed(self, endpoint: Endpoint) -> None:
        endpoint.log_change()
        with self._outage_lock:
            down = all(e.state == UNREACHABLE for e in self.endpoints)
            if down == self._outage:
                return
            self._outage = down
            if down:
                reasons = "; ".join(f"{e.role} {e.name}: {e.reason}" for e in self.endpoints)
                log.error("database unavailable: no endpoint answers (%s)", reasons)
            else:
                log.info("database available again: %s %s answers", endpoint.role, endpoint.name)

    # -- checks --------------------------------------------------------------------

    def check(self, endpoint: Endpoint) -> bool:
        """Contact ``endpoint`` now and record what it says; True when it answered."""
        try:
            with self._connect(endpoint, NO_DEADLINE, short=True) as conn:
                if endpoint.is_primary:
                    conn.execute(text("SELECT 1"))
                self._contact(endpoint, conn)
        except sa_exc.TimeoutError:  # every pooled connection is busy: it answers, to others
            endpoint.next_check = time.monotonic() + self.interval
            return True
        except Exception as error:  # whatever went wrong, it did not answer: back off
            self._record_failure(endpoint, f"check failed: {error_text(error)}")
            return False
        return True

    def check_due(self) -> None:
        now = time.monotonic()
        for endpoint in self.endpoints:
            if endpoint.next_check <= now:
                self.check(endpoint)

    def ping(self) -> bool:
        """True when some endpoint answers, lagging or not (the health service)."""
        order = {HEALTHY: 0, LAGGING: 1, UNREACHABLE: 2}
        candidates = sorted(self.endpoints, key=lambda e: order[e.state])
        return any(self.check(endpoint) for endpoint in candidates)

    def start(self) -> None:
        """Check the replicas, then keep checking in the background (no-op without replicas)."""
        if not self.replicas or self._checks.started:
            return
        for endpoint in self.replicas:
            self.check(endpoint)
        self._checks.start()

    def _until_next_check(self) -> float:
        """The wait before the next due check: 10 ms to 1 s, so a new due time is seen soon."""
        soonest = min(e.next_check for e in self.endpoints) - time.monotonic()
        return min(max(soonest, 0.01), 1.0)

    def close(self) -> None:
        self._checks.close(timeout=5)
        for endpoint in self.endpoints:
            endpoint.engine.dispose()


class _EndpointFailedError(Exception):
    """An endpoint did not answer; already recorded."""


def _is_connection_failure(error: sa_exc.DBAPIError) -> bool:
    return isinstance(classify(error), UnavailableError)
