"""The ingest's bulk operations, one class per database, chosen once per connection.

Like alembic's per-dialect ``Impl`` classes: the writer hands over *what* to
store (a batch's :class:`~cowrie_stats.ingest.plan.BatchPlan`, rows, upsert
rules) and never branches on the backend. PostgreSQL
(:mod:`cowrie_stats.ingest.bulk_postgres`) loads rows with COPY and looks keys
up with binary array parameters; SQLite uses plain executemany. Both run inside
the caller's transaction.

:meth:`BulkOps.apply` may COPY a batch's events in a background thread while
the batch's plan is computed; that computation is given the events, not this
object, and every operation here refuses to run until the copy is joined, so
the sharing is safe by construction, not by convention.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from sqlalchemy import (
    Connection,
    Table,
    bindparam,
    func,
    insert,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.sql.dml import Insert

from cowrie_stats.db.models import (
    EVENTS,
    ROLLUP_SETS,
    ROLLUP_VALUES,
    SENSORS,
    SESSIONS,
    VALUE_DICTIONARY,
    Rule,
)
from cowrie_stats.ingest.details import Unflag
from cowrie_stats.ingest.merge import SESSION_COLUMNS, SESSION_STATE_COLUMNS
from cowrie_stats.ingest.plan import DETAIL_TABLES, EVENT_COLUMNS, BatchPlan, EventRow

INGEST_LOCK_KEY = 0x636F777269650001  # "cowrie" + 1: pg_advisory_xact_lock key of ingest
IN_CHUNK = 500  # bound on parameters per IN (...) list, well under SQLite's limit
# Upserts of more rows go through a COPYed temporary table; fewer are executemany.
STAGE_ABOVE_ROWS = 64
# A stored session's columns a batch may change (all but its keys).
SESSION_UPDATES = [c for c in SESSION_STATE_COLUMNS if c != "id"]

# How an upsert combines a stored value with the batch's: add, keep the least or
# greatest (NULL-safe), or replace.


def chunks(items: Sequence[Any], size: int = IN_CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def quoted_names(columns: Sequence[str]) -> str:
    """Column names quoted for raw SQL (``offset`` is a keyword)."""
    return ", ".join(f'"{column}"' for column in columns)


class ConnectionBusyError(RuntimeError):
    """An operation was attempted while a background COPY holds the connection."""


class BulkOps:
    """Portable operations; subclasses replace the hot ones per database."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._copy: Future[None] | None = None
        self._thread: ThreadPoolExecutor | None = None
        self._lent = False  # inside insert_in_background's block

    # -- the connection's one user at a time --------------------------------------

    def _idle(self) -> Connection:
        if self._lent or self._copy is not None:
            raise ConnectionBusyError("a background COPY is using the connection")
        return self.conn

    @contextmanager
    def _lend(self) -> Iterator[None]:
        """Refuse every operation while the block runs."""
        self._lent = True
        try:
            yield
        finally:
            self._lent = False

    @contextmanager
    def insert_in_background(
        self, table: Table, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> Iterator[None]:
        """Insert ``rows`` while the block runs; the block cannot use this object meanwhile.

        Here the rows are inserted first, but the block is refused the connection
        all the same: a misuse fails on every database, not only on PostgreSQL.
        """
        self.insert_rows(table, columns, rows)
        with self._lend():
            yield

    def _join_copy(self) -> None:
        copy, self._copy = self._copy, None
        if self._thread is not None:
            self._thread.shutdown(wait=True)
            self._thread = None
        if copy is not None:
            copy.result()

    # -- a batch's plan -----------------------------------------------------------------

    def apply(
        self, events: list[EventRow], compute: Callable[[list[EventRow]], BatchPlan]
    ) -> BatchPlan:
        """Store a batch: its events while ``compute`` makes its plan, then the plan's rows.

        The summaries follow (cowrie_stats.ingest.summaries.store_summaries): they
        read what these writes stored.

        ``compute`` is given the events, not this object: it is pure Python
        (:func:`cowrie_stats.ingest.plan.plan_batch`), and any use of the
        connection while a background COPY holds it raises ConnectionBusyError.
        """
        with self.insert_in_background(EVENTS, EVENT_COLUMNS, events):
            plan = compute(events)
        self._store_sessions(plan)
        for table, detail in DETAIL_TABLES.items():
            self._clear_flags(detail.table, plan.unflags[table])
            self.insert_rows(detail.table, detail.columns, plan.details[table])
        return plan

    def _store_sessions(self, plan: BatchPlan) -> None:
        new_rows = [tuple(values[c] for c in SESSION_COLUMNS) for values in plan.new_sessions]
        self.insert_rows(SESSIONS, SESSION_COLUMNS, new_rows)
        self.update_rows(SESSIONS, "id", SESSION_UPDATES, plan.changed_sessions)
        if plan.longest_sessions:
            _, greatest = self.least_greatest()
            self.execute(
                update(SENSORS)
                .where(SENSORS.c.id == bindparam("sensor_id"))
                .values(max_session_us=greatest(SENSORS.c.max_session_us, bindparam("span"))),
                [
                    {"sensor_id": sensor_id, "span": span}
                    for sensor_id, span in sorted(plan.longest_sessions.items())
                ],
            )

    def _clear_flags(self, table: Table, unflags: Sequence[Unflag]) -> None:
        by_flag: dict[str, list[tuple[int, bytes]]] = {}
        for u in unflags:
            by_flag.setdefault(u.flag, []).append((u.ts_us, u.event_hash))
        for flag, keys in by_flag.items():
            self.clear_flags(table, flag, keys)

    # -- generic statements ----------------------------------------------------------

    def _insert(self, table: Table) -> Insert:
        raise NotImplementedError

    def lock(self) -> None:
        """Serialise ingest batches (the "already stored?" checks need a stable table)."""

    def least_greatest(self) -> tuple[Any, Any]:
        return func.least, func.greatest

    def insert_rows(
        self, table: Table, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        """Insert rows (in ``columns`` order) known to be new: the batch holds the lock."""
        if rows:
            self._idle().execute(
                insert(table), [dict(zip(columns, row, strict=True)) for row in rows]
            )

    def insert_ignoring_duplicates(self, table: Table, rows: list[dict[str, Any]]) -> None:
        if rows:
            stmt: Any = self._insert(table)
            self._idle().execute(stmt.on_conflict_do_nothing(), rows)

    def upsert(
        self,
        table: Table,
        keys: Sequence[str],
        rules: Mapping[str, Rule],
        rows: Sequence[Sequence[Any]],
    ) -> None:
        """Insert rows of ``(*keys, *rules)``; where a key exists, combine per column rule."""
        if not rows:
            return
        columns = [*keys, *rules]
        stmt: Any = self._insert(table)
        stmt = stmt.on_conflict_do_update(
            index_elements=list(keys), set_=self._combine(table, stmt, rules)
        )
        self._execute_upsert(stmt, table, columns, rows)

    def _execute_upsert(
        self, stmt: Any, table: Table, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        self._idle().execute(stmt, [dict(zip(columns, row, strict=True)) for row in rows])

    def _combine(self, table: Table, stmt: Any, rules: Mapping[str, Rule]) -> dict[str, Any]:
        least, greatest = self.least_greatest()
        combined: dict[str, Any] = {}
        for name, rule in rules.items():
            old, new = table.c[name], stmt.excluded[name]
            if rule == "add":
                combined[name] = old + new
            elif rule == "replace":
                combined[name] = new
            else:
                pick = least if rule == "min" else greatest
                # NULL-safe on both backends: SQLite's scalar min/max return NULL on NULL.
                combined[name] = pick(func.coalesce(old, new), func.coalesce(new, old))
        return combined

    def update_rows(
        self, table: Table, key: str, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]
    ) -> None:
        """Set ``columns`` of the rows whose ``key`` is each row's ``key``."""
        if not rows:
            return
        stmt = (
            update(table)
            .where(table.c[key] == bindparam("row_key"))
            .values({c: bindparam(c) for c in columns})
        )
        self._idle().execute(
            stmt, [{"row_key": row[key], **{c: row[c] for c in columns}} for row in rows]
        )

    def clear_flags(self, table: Table, flag: str, keys: Sequence[tuple[int, bytes]]) -> None:
        """Clear ``flag`` on the rows with these (ts_us, event_hash) keys."""
        key = tuple_(table.c.ts_us, table.c.event_hash)
        for chunk in chunks(keys):
            self._idle().execute(update(table).where(key.in_(chunk)).values({flag: False}))

    # -- lookups ---------------------------------------------------------------------------

    def existing_event_hashes(self, keys: Sequence[tuple[int, bytes]]) -> set[bytes]:
        found: set[bytes] = set()
        key = tuple_(EVENTS.c.ts_us, EVENTS.c.hash)
        for chunk in chunks(keys):
            found.update(self._idle().scalars(select(EVENTS.c.hash).where(key.in_(chunk))))
        return found

    def sensor_ids(self, names: Sequence[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        for chunk in chunks(names):
            query = select(SENSORS.c.name, SENSORS.c.id).where(SENSORS.c.name.in_(chunk))
            found.update(dict(self._idle().execute(query).all()))
        return found

    def sessions_of(self, keys: Iterable[tuple[int, str]]) -> Iterator[dict[str, Any]]:
        """The whole sessions rows with these (sensor_id, session) keys."""
        by_sensor: dict[int, list[str]] = {}
        for sensor_id, session in keys:
            by_sensor.setdefault(sensor_id, []).append(session)
        for sensor_id, sessions in by_sensor.items():
            for chunk in chunks(sessions):
                query = select(SESSIONS).where(
                    SESSIONS.c.sensor_id == sensor_id, SESSIONS.c.session.in_(chunk)
                )
                yield from (dict(row) for row in self._idle().execute(query).mappings())

    def dictionary_ids(self, digests: Sequence[bytes]) -> Iterator[tuple[bytes, int]]:
        d = VALUE_DICTIONARY.c
        for chunk in chunks(digests):
            yield from (self._idle().execute(select(d.digest, d.id).where(d.digest.in_(chunk))))

    def insert_dictionary(self, rows: Sequence[tuple[int, int, bytes, str, int]]) -> None:
        self.insert_rows(VALUE_DICTIONARY, ["id", "kind", "digest", "value", "length"], rows)

    def max_session_commands(self, sensor_id: int, low: int, high: int) -> int:
        """The most commands of a session of the sensor that started in [low, high)."""
        s = SESSIONS.c
        query = select(func.coalesce(func.max(s.commands), 0)).where(
            s.sensor_id == sensor_id, s.start_ts_us >= low, s.start_ts_us < high
        )
        return int(self._idle().scalar(query) or 0)

    def session_ips(self, sensor_id: int, low: int, high: int) -> list[int]:
        """Source IP ids of the sessions of the sensor that started in [low, high)."""
        s = SESSIONS.c
        query = (
            select(s.src_ip_id)
            .where(
                s.sensor_id == sensor_id,
                s.start_ts_us >= low,
                s.start_ts_us < high,
                s.src_ip_id.is_not(None),
            )
            .distinct()
        )
        return [int(value) for value in self._idle().scalars(query)]

    def source_ip_figures(
        self, sensor_id: int, ip: int, low: int, high: int
    ) -> tuple[int, int, int, int, int] | None:
        """A source IP's ranking entry recounted from its sessions started in [low, high)."""
        s = SESSIONS.c
        count, first, last = (
            self._idle()
            .execute(
                select(func.count(), func.min(s.start_ts_us), func.max(s.end_ts_us)).where(
                    s.sensor_id == sensor_id,
                    s.src_ip_id == ip,
                    s.start_ts_us >= low,
                    s.start_ts_us < high,
                )
            )
            .one()
        )
        return None if not count else (int(count), int(count), int(first), int(last), 0)

    def delete_values(self, keys: Sequence[tuple[int, int, int, int, int]]) -> None:
        """Remove ``rollup_values`` entries by (kind, level, piece, sensor_id, value_id)."""
        t = ROLLUP_VALUES.c
        key = tuple_(t.kind, t.level, t.piece, t.sensor_id, t.value_id)
        for chunk in chunks(keys):
            self._idle().execute(ROLLUP_VALUES.delete().where(key.in_(chunk)))

    def execute(self, statement: Any, parameters: Any = None) -> None:
        self._idle().execute(statement, parameters)

    def stored_sets(
        self, keys: Sequence[tuple[int, int, int, int]]
    ) -> dict[tuple[int, int, int, int], bytes]:
        """Stored bitmaps of ``rollup_sets`` by (kind, level, piece, sensor_id)."""
        t = ROLLUP_SETS.c
        key = tuple_(t.kind, t.level, t.piece, t.sensor_id)
        found: dict[tuple[int, int, int, int], bytes] = {}
        for chunk in chunks(keys):
            query = select(t.kind, t.level, t.piece, t.sensor_id, t.members).where(key.in_(chunk))
            for kind, level, piece, sensor_id, members in self._idle().execute(query):
                found[(kind, level, piece, sensor_id)] = bytes(members)
        return found

    def new_ids(self, table: str, count: int) -> list[int]:
        """``count`` unused ids of ``table``'s integer primary key ``id``, ascending."""
        raise NotImplementedError

    def rows_in_ranges(
        self, table: str, columns: str, ranges: Sequence[tuple[int, int, int, int]], where: str
    ) -> list[dict[str, Any]]:
        """``columns`` of ``table`` rows per (sensor_id, session_id, low, high) range and ``where``.

        Each range is a short stretch of the (sensor_id, ts_us) index: the rows of
        one stored session. Rows by column name.
        """
        query = text(
            f"SELECT {columns} FROM {table} t WHERE t.sensor_id = :sensor_id"
            " AND t.ts_us BETWEEN :low AND :high"
            f" AND t.session_id = :session_id AND ({where})"
        )
        rows: list[dict[str, Any]] = []
        for sensor_id, session_id, low, high in ranges:
            params = {"sensor_id": sensor_id, "session_id": session_id, "low": low, "high": high}
            rows.extend(dict(row) for row in self._idle().execute(query, params).mappings())
        return rows


class SqliteBulkOps(BulkOps):
    def _insert(self, table: Table) -> Insert:
        return sqlite.insert(table)

    def least_greatest(self) -> tuple[Any, Any]:
        return func.min, func.max  # SQLite's two-argument scalar min/max

    def new_ids(self, table: str, count: int) -> list[int]:
        # The writer's transaction began IMMEDIATE: it holds the write lock, so
        # no other writer can take these ids.
        highest = self._idle().scalar(text(f"SELECT coalesce(max(id), 0) FROM {table}")) or 0
        return list(range(highest + 1, highest + 1 + count))
