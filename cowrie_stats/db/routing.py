"""Database routing: one engine per endpoint; reads on healthy replicas, writes on the primary.

The query layer asks :meth:`Router.run_read` to run a read function and never
knows which host answered. Replica choice is round-robin over the healthy
replicas: every statistics RPC costs about the same and is short, so rotating
spreads load evenly without the bookkeeping of least-loaded, and each engine's
own pool bounds its connections. A replica is healthy when it answers and its
replay lag is within the limit; health is re-checked in the background (with
exponential backoff while failing) and immediately when a read fails on it.
With no healthy replica, reads go to the primary. A read that fails on one
endpoint is retried once on another; never more.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.pool import StaticPool

from cowrie_stats.errors import DeadlineExceededError, UnavailableError, classify
from cowrie_stats.settings import Settings, redact_url

log = logging.getLogger(__name__)
T = TypeVar("T")

# Replication lag, measured the way an idle primary cannot fool: when all WAL
# received has been replayed the replica is current, however old its last
# replayed commit is (an idle primary sends nothing new). Only when replay is
# behind what was received does the age of the last replayed commit measure
# lag -- unless replay is merely waiting for the rest of a record whose first
# part arrived (an idle primary can stop sending mid-record): then neither LSN
# moves between two samples and replay is not paused.
LAG_SAMPLE = text(
    """
    SELECT pg_is_in_recovery(),
           pg_last_wal_receive_lsn()::text,
           pg_last_wal_replay_lsn()::text,
           pg_is_in_recovery() AND pg_get_wal_replay_pause_state() <> 'not paused',
           EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())
    """
)
RESAMPLE_DELAY_SECONDS = 0.05
DEADLINE_KEY = "cowrie_stats_deadline"


def measure_lag(conn: Connection) -> float:
    """Seconds the replica behind ``conn`` lags its primary (0 on a primary)."""
    in_recovery, received, replayed, paused, age = conn.execute(LAG_SAMPLE).one()
    if not in_recovery or received is None or received == replayed:
        return 0.0
    if not paused:
        time.sleep(RESAMPLE_DELAY_SECONDS)
        again = conn.execute(LAG_SAMPLE).one()
        if (again[1], again[2]) == (received, replayed):
            return 0.0  # replay waits for WAL that was never sent: nothing to catch up
    return float("inf") if age is None else max(float(age), 0.0)


def create_db_engine(url: str, settings: Settings, writer: bool = False) -> Engine:
    """An engine with its own pool, configured from settings.

    ``writer`` engines (ingest, migrations) take SQLite's write lock when a
    transaction begins, so a batch's "already stored?" check and its inserts
    see the same database even with several ingests at once.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = _sqlite_engine(url, writer)
    else:
        engine = _postgresql_engine(url, settings)
    event.listen(engine, "before_cursor_execute", _check_deadline)
    return engine


def _check_deadline(conn: Connection, *_args: object) -> None:
    """Stop a read between statements once its RPC deadline has passed.

    The statement timeout bounds each statement; this bounds the sum of them.
    """
    deadline = conn.info.get(DEADLINE_KEY)
    if deadline is not None and time.monotonic() >= deadline:
        raise DeadlineExceededError("the request deadline passed; remaining queries skipped")


def _postgresql_engine(url: str, settings: Settings) -> Engine:
    return create_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_pre_ping=True,
        pool_recycle=settings.db_pool_recycle_seconds,
        pool_timeout=settings.db_connect_timeout_seconds,
        connect_args={
            "connect_timeout": settings.db_connect_timeout_seconds,
            "application_name": "cowrie-stats",
        },
    )


def _sqlite_engine(url: str, writer: bool) -> Engine:
    parsed = make_url(url)
    if parsed.database and parsed.database != ":memory:":
        from pathlib import Path

        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
    else:
        engine = create_engine(url, connect_args={"check_same_thread": False}, poolclass=StaticPool)

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: object) -> None:
        cursor = dbapi_conn.cursor()
        # WAL lets the server read while an ingest writes.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()
        # We issue BEGIN ourselves, below: the sqlite3 module would not begin a
        # transaction before a SELECT, leaving each statement its own snapshot.
        dbapi_conn.isolation_level = None

    # Writers take the write lock up front; readers get one WAL snapshot per call.
    begin = "BEGIN IMMEDIATE" if writer else "BEGIN"

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql(begin)

    return engine


@dataclass
class Endpoint:
    """One database endpoint and what we last learnt of its health."""

    name: str
    engine: Engine
    is_primary: bool
    healthy: bool = True
    lag_seconds: float = 0.0
    failures: int = 0
    next_check: float = 0.0
    last_error: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)


class Router:
    """Chooses the engine for each read and write."""

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
        self._rotation = itertools.count()
        self._fallback_logged = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- choosing ----------------------------------------------------------------

    def healthy_replicas(self) -> list[Endpoint]:
        return [r for r in self.replicas if r.healthy]

    def read_order(self, prefer_primary: bool = False) -> list[Endpoint]:
        """Endpoints to try for one read, best first."""
        if prefer_primary:
            return [self.primary, *self.healthy_replicas()]
        healthy = self.healthy_replicas()
        if not healthy:
            self._note_fallback(True)
            return [self.primary]
        self._note_fallback(False)
        start = next(self._rotation) % len(healthy)
        rotated = healthy[start:] + healthy[:start]
        return [*rotated, self.primary]

    def _note_fallback(self, on_primary: bool) -> None:
        if not self.replicas or on_primary == self._fallback_logged:
            return
        self._fallback_logged = on_primary
        if on_primary:
            log.warning("no healthy read replica: reads go to the primary")
        else:
            log.info("a read replica is healthy again: reads go to replicas")

    @property
    def reads_on_primary(self) -> bool:
        return bool(self.replicas) and not self.healthy_replicas()

    # -- running reads -------------------------------------------------------------

    def run_read(
        self,
        work: Callable[[Connection], T],
        timeout_seconds: float | None = None,
        prefer_primary: bool = False,
    ) -> T:
        """Run ``work`` in a read transaction; retried once on another endpoint."""
        order = self.read_order(prefer_primary)[:2]
        deadline = None if timeout_seconds is None else time.monotonic() + timeout_seconds
        for endpoint in order:
            # The retry gets what is left of the call's time, not a fresh budget.
            remaining = None if deadline is None else deadline - time.monotonic()
            try:
                with self._read_connection(endpoint, remaining) as conn:
                    return work(conn)
            except sa_exc.DBAPIError as error:
                if not _is_connection_failure(error):
                    raise
                self._mark_failed(endpoint, error)
        raise UnavailableError("no database endpoint answered; retry with backoff")

    @contextmanager
    def _read_connection(self, endpoint: Endpoint, timeout: float | None) -> Iterator[Connection]:
        with endpoint.engine.connect() as conn:
            postgresql = conn.dialect.name == "postgresql"
            if postgresql:
                # One snapshot for all the statements of a call: figures agree with
                # each other (and with the data version) even while ingest commits.
                conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                if timeout is None:
                    yield conn
                    return
                # Keep the dict itself: once the connection breaks mid-call, touching
                # conn.info again would raise instead of the original error.
                info = conn.info
                info[DEADLINE_KEY] = time.monotonic() + timeout
                try:
                    if postgresql:
                        # The remaining RPC deadline becomes a statement timeout, so
                        # a cancelled call stops its query on the server too.
                        conn.execute(
                            text("SELECT set_config('statement_timeout', :ms, true)"),
                            {"ms": str(max(1, int(timeout * 1000)))},
                        )
                    yield conn
                finally:
                    info.pop(DEADLINE_KEY, None)

    # -- health --------------------------------------------------------------------

    def _mark_failed(self, endpoint: Endpoint, error: BaseException) -> None:
        if endpoint.is_primary:
            return
        with endpoint.lock:
            was_healthy = endpoint.healthy
            endpoint.healthy = False
            endpoint.failures += 1
            endpoint.last_error = type(error).__name__
            endpoint.next_check = time.monotonic() + self._backoff(endpoint.failures)
        if was_healthy:
            log.warning("replica %s failed a read: marked unhealthy", endpoint.name)

    def _backoff(self, failures: int) -> float:
        interval = self.settings.replica_check_interval_seconds
        return float(min(interval * 2 ** max(failures - 1, 0), interval * 12))

    def check_replica(self, endpoint: Endpoint) -> bool:
        """Probe one replica now and record the result."""
        try:
            with endpoint.engine.connect() as conn:
                lag = measure_lag(conn)
        except sa_exc.SQLAlchemyError as error:
            self._mark_failed(endpoint, error)
            return False
        limit = self.settings.max_replica_lag_seconds
        with endpoint.lock:
            was_healthy = endpoint.healthy
            endpoint.lag_seconds = lag
            endpoint.healthy = lag <= limit
            if endpoint.healthy:
                endpoint.failures = 0
                endpoint.next_check = (
                    time.monotonic() + self.settings.replica_check_interval_seconds
                )
            else:
                endpoint.failures += 1
                endpoint.last_error = f"lag {lag:.1f}s > {limit:.1f}s"
                endpoint.next_check = time.monotonic() + self._backoff(endpoint.failures)
        if was_healthy != endpoint.healthy:
            state = "healthy" if endpoint.healthy else f"unhealthy ({endpoint.last_error})"
            log.warning("replica %s is %s", endpoint.name, state)
        return endpoint.healthy

    def check_due_replicas(self) -> None:
        now = time.monotonic()
        for endpoint in self.replicas:
            if endpoint.next_check <= now:
                self.check_replica(endpoint)

    def ping(self) -> bool:
        """True when some endpoint answers a trivial query (health service)."""
        for endpoint in [self.primary, *self.healthy_replicas()]:
            try:
                with endpoint.engine.connect() as conn:
                    conn.execute(text("SELECT 1"))
                return True
            except sa_exc.SQLAlchemyError:
                continue
        return False

    def start(self) -> None:
        """Start the background replica health checks (no-op without replicas)."""
        if not self.replicas or self._thread is not None:
            return
        for endpoint in self.replicas:
            self.check_replica(endpoint)
        self._thread = threading.Thread(target=self._loop, name="replica-health", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        tick = min(self.settings.replica_check_interval_seconds, 1.0)
        while not self._stop.wait(tick):
            self.check_due_replicas()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for endpoint in [self.primary, *self.replicas]:
            endpoint.engine.dispose()


def _is_connection_failure(error: sa_exc.DBAPIError) -> bool:
    return isinstance(classify(error), UnavailableError)
