"""Engine construction: one SQLAlchemy engine (and pool) per database endpoint.

Two per-call limits are attached to every engine here, so that the router can
bound each attempt by what is left of the call's deadline: a deadline checked
between statements (:data:`DEADLINE_KEY` in ``Connection.info``), and, on
PostgreSQL, a connect timeout chosen per attempt (:func:`connect_timeout`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.pool import StaticPool

from cowrie_stats.errors import DeadlineExceededError
from cowrie_stats.settings import Settings

DEADLINE_KEY = "cowrie_stats_deadline"
# libpq (and psycopg) round any connect timeout below 2 s up to 2 s.
MIN_CONNECT_TIMEOUT_SECONDS = 2
_CONNECT_TIMEOUT: ContextVar[int | None] = ContextVar("cowrie_stats_connect_timeout", default=None)


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


@contextmanager
def connect_timeout(seconds: float | None) -> Iterator[None]:
    """Connections opened inside give up after ``seconds`` (rounded up; PostgreSQL only).

    None keeps the engine's configured timeout. Connections taken from the
    pool are not affected: only new ones wait for a server.
    """
    token = _CONNECT_TIMEOUT.set(
        None if seconds is None else max(MIN_CONNECT_TIMEOUT_SECONDS, math.ceil(seconds))
    )
    try:
        yield
    finally:
        _CONNECT_TIMEOUT.reset(token)


def _check_deadline(conn: Connection, *_args: object) -> None:
    """Stop a read between statements once its RPC deadline has passed.

    The statement timeout bounds each statement; this bounds the sum of them.
    """
    deadline = conn.info.get(DEADLINE_KEY)
    if deadline is not None and time.monotonic() >= deadline:
        raise DeadlineExceededError("the request deadline passed; remaining queries skipped")


def _postgresql_engine(url: str, settings: Settings) -> Engine:
    engine = create_engine(
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

    @event.listens_for(engine, "do_connect")
    def _per_attempt_timeout(
        _dialect: object, _record: object, _args: list[Any], params: dict[str, Any]
    ) -> None:
        # SQLAlchemy hands each attempt its own copy of the parameters.
        chosen = _CONNECT_TIMEOUT.get()
        if chosen is not None:
            params["connect_timeout"] = min(chosen, settings.db_connect_timeout_seconds)

    return engine


def _sqlite_engine(url: str, writer: bool) -> Engine:
    parsed = make_url(url)
    if parsed.database and parsed.database != ":memory:":
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
