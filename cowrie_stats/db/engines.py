"""Engine construction: one SQLAlchemy engine (and pool) per database endpoint.

Two per-call limits are attached to every engine here, so that the router can
bound each attempt by what is left of the call's :class:`Deadline`: the deadline
checked between statements (under :data:`DEADLINE_KEY` in ``Connection.info``),
and, on PostgreSQL, a connect timeout chosen per attempt (:func:`connect_timeout`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import StaticPool

from cowrie_stats.deadline import Deadline
from cowrie_stats.errors import DeadlineExceededError
from cowrie_stats.settings import Settings, is_secret_parameter

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
    parsed, secrets = split_secret_parameters(make_url(url))
    if parsed.get_backend_name() == "sqlite":  # a file has no password: nothing to pass on
        engine = _sqlite_engine(parsed, writer)
    else:
        engine = _postgresql_engine(parsed, settings, secrets)
    event.listen(engine, "before_cursor_execute", _check_deadline)
    return engine


def split_secret_parameters(url: URL) -> tuple[URL, dict[str, str]]:
    """``url`` without its secret query parameters (``?password=``...), and those apart.

    The driver gets them as connect arguments, which is what SQLAlchemy would do
    with them anyway; kept out of ``engine.url``, they cannot reach a log line,
    a metric label or an exception text that shows the engine or its URL.
    """
    secrets = {k: v for k, v in url.query.items() if is_secret_parameter(k)}
    if not secrets:
        return url, {}
    values = {k: v if isinstance(v, str) else v[-1] for k, v in secrets.items()}
    return url.difference_update_query(list(secrets)), values


@contextmanager
def connect_timeout(deadline: Deadline) -> Iterator[None]:
    """Connections opened inside give up at ``deadline`` (whole seconds, at least
    :data:`MIN_CONNECT_TIMEOUT_SECONDS`; PostgreSQL only).

    Without a deadline the engine's configured timeout applies. Connections
    taken from the pool are not affected: only new ones wait for a server.
    """
    seconds = deadline.remaining()
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
    deadline: Deadline | None = conn.info.get(DEADLINE_KEY)
    if deadline is not None and deadline.expired:
        raise DeadlineExceededError("the request deadline passed; remaining queries skipped")


def _postgresql_engine(url: URL, settings: Settings, secrets: dict[str, str]) -> Engine:
    engine = create_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_pre_ping=True,
        pool_recycle=settings.db_pool_recycle,
        pool_timeout=settings.db_connect_timeout,
        connect_args={
            "connect_timeout": settings.db_connect_timeout,
            "application_name": "cowrie-stats",
            **secrets,
        },
    )

    @event.listens_for(engine, "do_connect")
    def _per_attempt_timeout(
        _dialect: object, _record: object, _args: list[Any], params: dict[str, Any]
    ) -> None:
        # SQLAlchemy hands each attempt its own copy of the parameters.
        chosen = _CONNECT_TIMEOUT.get()
        if chosen is not None:
            params["connect_timeout"] = min(chosen, settings.db_connect_timeout)

    return engine


def _sqlite_engine(url: URL, writer: bool) -> Engine:
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
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
