"""Write parsed batches: events, per-event tables, sessions and rollups in one transaction.

Only events not already stored are merged into sessions and rollups, and every
merge rule is order-independent (minimum/maximum by (timestamp, hash), sums),
so any interleaving of files, re-reads and resumed runs gives the same totals.
"""

from __future__ import annotations

import dataclasses
import hashlib
import operator
import time
from collections import defaultdict
from collections.abc import Collection, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import (
    Connection,
    RowMapping,
    Table,
    bindparam,
    func,
    insert,
    select,
    sql,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.dml import Insert

from cowrie_stats.db.models import (
    COMMANDS,
    DAILY_KINDS,
    DAILY_VALUES,
    DATA_VERSION,
    DEAD_LETTERS,
    DOWNLOADS,
    EVENTS,
    FIRST_USE_FLAGS,
    HOURLY_ROLLUPS,
    INGEST_CURSORS,
    LOGIN_ATTEMPTS,
    SENSORS,
    SESSIONS,
    US_PER_DAY,
    US_PER_HOUR,
)
from cowrie_stats.ingest.batch import DeadLetterRecord
from cowrie_stats.ingest.parse import (
    CLIENT_VERSION,
    COMMAND_INPUT,
    FILE_DOWNLOAD,
    HASH_BYTES,
    LOGIN_FAILED,
    LOGIN_SUCCESS,
    PROTOCOLS,
    SESSION_CLOSED,
    SESSION_CONNECT,
    ParsedEvent,
)

INGEST_LOCK_KEY = 0x636F777269650001  # "cowrie" + 1: pg_advisory_xact_lock key of ingest
IN_CHUNK = 500  # bound on parameters per IN (...) list, well under SQLite's limit

SESSION_STATE_COLUMNS = [c.name for c in SESSIONS.columns if c.name not in ("sensor_id", "session")]
SESSION_COLUMNS = [c.name for c in SESSIONS.columns]
EVENT_COLUMNS = ["hash", "sensor_id", "session", "eventid", "ts_us", "raw"]
DETAIL_COLUMNS = ["event_hash", "sensor_id", "session_id", "ts_us"]
LOGIN_COLUMNS = [
    *DETAIL_COLUMNS,
    "username",
    "password",
    "success",
    "username_first",
    "password_first",
]
COMMAND_COLUMNS = [*DETAIL_COLUMNS, "input", "input_first"]
DOWNLOAD_COLUMNS = [*DETAIL_COLUMNS, "shasum", "url", "outfile", "shasum_first"]
DETAIL_TABLES = [
    (LOGIN_ATTEMPTS, LOGIN_COLUMNS),
    (COMMANDS, COMMAND_COLUMNS),
    (DOWNLOADS, DOWNLOAD_COLUMNS),
]


# The order a batch is merged in: (ts_us, hash), as a C-level key function.
MERGE_ORDER = operator.attrgetter("ts_us", "hash")


@dataclass(frozen=True)
class CursorState:
    head_hash: bytes
    path: str
    inode: int | None
    compressed: bool
    offset: int
    line_no: int
    tail_hash: bytes


@dataclass
class BatchResult:
    stored: int = 0
    duplicates: int = 0
    dead_lettered: int = 0


@dataclass
class _Rollup:
    sessions: int = 0
    events: int = 0
    login_attempts: int = 0
    login_successes: int = 0
    commands: int = 0
    downloads: int = 0
    first_ts_us: int | None = None
    last_ts_us: int | None = None

    def saw(self, ts_us: int) -> None:
        self.events += 1
        self.first_ts_us = ts_us if self.first_ts_us is None else min(self.first_ts_us, ts_us)
        self.last_ts_us = ts_us if self.last_ts_us is None else max(self.last_ts_us, ts_us)


DAILY_VALUE_COLUMNS = [
    "kind",
    "day",
    "sensor_id",
    "value",
    "uses",
    "first_uses",
    "first_ts_us",
    "last_ts_us",
]


class _DailyValues:
    """A batch's additions to ``daily_values``: (kind, day, sensor, value) -> figures.

    The figures are [uses, first_uses, first_ts_us, last_ts_us]; they add up (or
    take the minimum/maximum) with what is stored, like the hourly rollups.
    """

    def __init__(self) -> None:
        self.rows: dict[tuple[int, int, int, str], list[int]] = {}

    def add_rows(self, table: str, columns: Sequence[str], rows: list[tuple[Any, ...]]) -> None:
        """Count rows of ``table`` (tuples in ``columns`` order, flags included)."""
        sources = [
            (DAILY_KINDS[value], columns.index(value), columns.index(flag))
            for value, flag in FIRST_USE_FLAGS[table]
        ]
        figures_of = self.rows
        for row in rows:
            ts_us = row[3]
            day = ts_us // US_PER_DAY
            for kind, value_at, flag_at in sources:
                value = row[value_at]
                if value is None:
                    continue
                key = (kind, day, row[1], value)
                figures = figures_of.get(key)
                if figures is None:
                    figures_of[key] = [1, int(row[flag_at]), ts_us, ts_us]
                    continue
                figures[0] += 1
                figures[1] += row[flag_at]
                if ts_us < figures[2]:
                    figures[2] = ts_us
                elif ts_us > figures[3]:
                    figures[3] = ts_us

    def unflag(self, value_column: str, sensor_id: int, value: str, ts_us: int) -> None:
        """A stored row at ``ts_us`` lost its first-use flag for ``value``."""
        key = (DAILY_KINDS[value_column], ts_us // US_PER_DAY, sensor_id, value)
        figures = self.rows.get(key)
        if figures is None:
            # Nothing new that day yet: the times are the stored row's, inside the stored range.
            self.rows[key] = [0, -1, ts_us, ts_us]
        else:
            figures[1] -= 1


# A stored row of a detail table with its flags:
# (sensor_id, session_id, ts_us, event_hash, value, flag, ...).
_FlaggedRow = tuple[Any, ...]
# The primary key of a row of a per-event table: (ts_us, event hash).
_RowKey = tuple[int, bytes]


class _StoredSession(NamedTuple):
    """A session as stored before the batch: its rows lie between ``low`` and ``high``."""

    sensor_id: int
    session_id: int
    low: int
    high: int


@dataclass
class _SessionRow:
    """Mutable copy of a ``sessions`` row while a batch is merged into it."""

    values: dict[str, Any]
    is_new: bool
    old_start_ts_us: int | None = None
    old_end_ts_us: int | None = None


def _chunks(items: Sequence[Any], size: int = IN_CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _dialect_insert(conn: Connection, table: Table) -> Insert:
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def _insert_ignore(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    if rows:
        stmt: Any = _dialect_insert(conn, table)
        conn.execute(stmt.on_conflict_do_nothing(), rows)


def _dbapi_cursor(conn: Connection) -> Any:
    """The psycopg cursor under ``conn``, for COPY and binary parameters."""
    return conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]


def _copy_rows(
    conn: Connection, target: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]
) -> None:
    """PostgreSQL COPY ... FROM STDIN: the fastest way in, several times executemany."""
    cursor = _dbapi_cursor(conn)
    with cursor.copy(f"COPY {target} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def _staged(
    conn: Connection,
    name: str,
    source: Table,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
) -> sql.TableClause:
    """PostgreSQL: a temporary table (dropped at commit) of ``source``'s ``columns``, COPYed in.

    For set-based UPDATE / upsert statements over many rows of a batch.
    """
    conn.execute(
        text(
            f"CREATE TEMP TABLE {name} ON COMMIT DROP AS"
            f" SELECT {', '.join(columns)} FROM {source.name} WITH NO DATA"
        )
    )
    _copy_rows(conn, name, columns, rows)
    return sql.table(name, *(sql.column(c) for c in columns))


def _bulk_insert(
    conn: Connection, table: Table, columns: Sequence[str], rows: list[tuple[Any, ...]]
) -> None:
    """Insert rows (tuples in ``columns`` order) known to be new (the batch holds the lock).

    Tuples rather than dicts: on the hot path a dict per row and a lookup per
    value cost more than the COPY itself.
    """
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        _copy_rows(conn, table.name, columns, rows)
    else:
        conn.execute(insert(table), [dict(zip(columns, row, strict=True)) for row in rows])


def _least_greatest(conn: Connection) -> tuple[Any, Any]:
    if conn.dialect.name == "postgresql":
        return func.least, func.greatest
    return func.min, func.max  # SQLite's two-argument scalar min/max


class BatchWriter:
    """Stores batches of parsed events; one call is one transaction."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._sensor_ids: dict[str, int] = {}
        self._longest_session: dict[int, int] = {}  # sensor id -> a lower bound

    def write(
        self,
        events: Iterable[ParsedEvent],
        dead_letters: Sequence[DeadLetterRecord] = (),
        cursor: CursorState | None = None,
    ) -> BatchResult:
        result = BatchResult()
        if self.conn.dialect.name == "postgresql":
            # One ingest batch at a time: the "already stored?" check below and
            # the inserts after it must see the same table (concurrent ingests).
            self.conn.execute(select(func.pg_advisory_xact_lock(INGEST_LOCK_KEY)))
        unique: dict[bytes, ParsedEvent] = {}
        for event in events:
            if event.hash in unique:
                result.duplicates += 1
            else:
                unique[event.hash] = event
        existing = self._existing_hashes(unique.values())
        result.duplicates += len(existing)
        fresh = [event for digest, event in unique.items() if digest not in existing]
        if fresh:
            self._store(fresh)
            self.conn.execute(
                update(DATA_VERSION)
                .where(DATA_VERSION.c.id == 1)
                .values(version=DATA_VERSION.c.version + 1)
            )
        result.stored = len(fresh)
        result.dead_lettered = self._dead_letters(dead_letters)
        if cursor is not None:
            self._save_cursor(cursor)
        return result

    # -- events -----------------------------------------------------------------

    def _existing_hashes(self, events: Collection[ParsedEvent]) -> set[bytes]:
        """The hashes of ``events`` already stored, looked up by the key (ts_us, hash)."""
        keys = [(e.ts_us, e.hash) for e in events]
        if self.conn.dialect.name == "postgresql":
            # Array parameters: a short statement psycopg prepares once, where
            # IN lists of hundreds of placeholders are parsed again every batch.
            # Sent in binary (%b): the text form escapes each bytea element in
            # Python, about 100 times slower for a batch of 5,000 hashes.
            cursor = _dbapi_cursor(self.conn)
            cursor.execute(
                "SELECT e.hash FROM events e"
                " JOIN unnest(%b::bigint[], %b::bytea[]) AS k(ts_us, hash)"
                " ON e.ts_us = k.ts_us AND e.hash = k.hash",
                [[ts_us for ts_us, _ in keys], [digest for _, digest in keys]],
            )
            return {row[0] for row in cursor}
        found: set[bytes] = set()
        key = tuple_(EVENTS.c.ts_us, EVENTS.c.hash)
        for chunk in _chunks(keys):
            found.update(self.conn.scalars(select(EVENTS.c.hash).where(key.in_(chunk))))
        return found

    def _store(self, fresh: list[ParsedEvent]) -> None:
        self._ensure_sensors(fresh)
        ids = self._sensor_ids
        in_order = sorted(fresh, key=MERGE_ORDER)
        keys = {(ids[e.sensor], e.session) for e in in_order}
        sessions = self._load_sessions(keys)
        new_ids = self._new_session_ids(len(keys) - len(sessions))
        stored_first = self._stored_first_rows(sessions)
        events = [(e.hash, ids[e.sensor], e.session, e.eventid, e.ts_us, e.raw) for e in fresh]
        rollups: defaultdict[tuple[int, int], _Rollup] = defaultdict(_Rollup)
        daily = _DailyValues()
        with self._inserting(EVENTS, EVENT_COLUMNS, events):
            # Python only in here: PostgreSQL stores the events meanwhile.
            self._merge_sessions(in_order, sessions, new_ids, rollups)
            details = [
                _with_first_use_flags(table, columns, rows, stored_first[table.name], daily)
                for (table, columns), rows in zip(
                    DETAIL_TABLES, self._detail_rows(fresh, sessions, rollups), strict=True
                )
            ]
        self._save_sessions(sessions)
        for (table, columns), (flagged, unflag) in zip(DETAIL_TABLES, details, strict=True):
            self._unflag(table, unflag)
            _bulk_insert(self.conn, table, columns, flagged)
        self._add_daily_values(daily)
        self._add_rollups(rollups)

    @contextmanager
    def _inserting(
        self, table: Table, columns: Sequence[str], rows: list[tuple[Any, ...]]
    ) -> Iterator[None]:
        """Insert ``rows`` while the block runs; the block must not use the connection.

        On PostgreSQL the COPY runs in a thread: the server stores the rows
        while this one runs the block's Python (the client waits on the server
        for most of a COPY, and the GIL is free while it waits). SQLite
        inserts before the block.
        """
        if self.conn.dialect.name != "postgresql":
            _bulk_insert(self.conn, table, columns, rows)
            yield
            return
        with ThreadPoolExecutor(1) as thread:
            copied = thread.submit(_bulk_insert, self.conn, table, columns, rows)
            yield
            copied.result()

    def _ensure_sensors(self, fresh: list[ParsedEvent]) -> None:
        bounds: dict[str, tuple[int, int]] = {}
        for e in fresh:
            low, high = bounds.get(e.sensor, (e.ts_us, e.ts_us))
            bounds[e.sensor] = (min(low, e.ts_us), max(high, e.ts_us))
        least, greatest = _least_greatest(self.conn)
        stmt: Any = _dialect_insert(self.conn, SENSORS)
        stmt = stmt.on_conflict_do_update(
            index_elements=["name"],
            set_={
                "first_ts_us": least(SENSORS.c.first_ts_us, stmt.excluded.first_ts_us),
                "last_ts_us": greatest(SENSORS.c.last_ts_us, stmt.excluded.last_ts_us),
            },
        )
        rows = [
            {"name": name, "first_ts_us": low, "last_ts_us": high}
            for name, (low, high) in sorted(bounds.items())
        ]
        self.conn.execute(stmt, rows)
        missing = [name for name in bounds if name not in self._sensor_ids]
        for chunk in _chunks(missing):
            for sensor_id, name in self.conn.execute(
                select(SENSORS.c.id, SENSORS.c.name).where(SENSORS.c.name.in_(chunk))
            ):
                self._sensor_ids[name] = sensor_id

    # -- sessions ---------------------------------------------------------------

    def _sessions_of(self, keys: Iterable[tuple[int, str]]) -> Iterator[RowMapping]:
        """The sessions rows with these (sensor_id, session) keys, chunk by chunk."""
        by_sensor: defaultdict[int, list[str]] = defaultdict(list)
        for sensor_id, session in keys:
            by_sensor[sensor_id].append(session)
        for sensor_id, sessions in by_sensor.items():
            for chunk in _chunks(sessions):
                query = select(SESSIONS).where(
                    SESSIONS.c.sensor_id == sensor_id, SESSIONS.c.session.in_(chunk)
                )
                yield from self.conn.execute(query).mappings()

    def _pg_sessions_of(self, keys: Collection[tuple[int, str]]) -> Iterator[dict[str, Any]]:
        """Whole sessions rows for these keys: one query joining two binary arrays.

        SQLAlchemy compiles a new statement per IN list of up to 500 sessions per
        sensor; with arrays the text is constant and the parameters are cheap.
        """
        cursor = _dbapi_cursor(self.conn)
        cursor.execute(
            "SELECT s.* FROM sessions s"
            " JOIN unnest(%b::integer[], %b::text[]) AS k(sensor_id, session)"
            " ON s.sensor_id = k.sensor_id AND s.session = k.session",
            [[sensor_id for sensor_id, _ in keys], [session for _, session in keys]],
        )
        names = [column.name for column in cursor.description]
        for values in cursor:
            yield dict(zip(names, values, strict=True))

    def _load_sessions(self, keys: set[tuple[int, str]]) -> dict[tuple[int, str], _SessionRow]:
        rows: dict[tuple[int, str], _SessionRow] = {}
        found = (
            self._pg_sessions_of(keys)
            if self.conn.dialect.name == "postgresql"
            else self._sessions_of(keys)
        )
        for row in found:
            values = dict(row)
            key = (values["sensor_id"], values["session"])
            rows[key] = _SessionRow(values, False, values["start_ts_us"], values["end_ts_us"])
        return rows

    def _new_session_ids(self, count: int) -> Iterator[int]:
        """``count`` ids for the sessions not stored yet, in ascending order.

        Taken before the merge so that the rows of the per-event tables can be
        built while the events are being stored; the merge hands them out in the
        order its new sessions first appear.
        """
        if not count:
            return iter(())
        if self.conn.dialect.name == "postgresql":
            cursor = _dbapi_cursor(self.conn)
            cursor.execute(
                "SELECT nextval(pg_get_serial_sequence('sessions', 'id'))"
                " FROM generate_series(1, %s)",
                [count],
            )
            return iter([session_id for (session_id,) in cursor])
        # SQLite: this transaction has written (the sensors) and so holds the
        # database's write lock; no other writer can take these ids.
        highest: int = self.conn.scalar(select(func.coalesce(func.max(SESSIONS.c.id), 0))) or 0
        return iter(range(highest + 1, highest + 1 + count))

    def _merge_sessions(
        self,
        in_order: list[ParsedEvent],
        rows: dict[tuple[int, str], _SessionRow],
        new_ids: Iterator[int],
        rollups: defaultdict[tuple[int, int], _Rollup],
    ) -> None:
        """Merge the batch (sorted by (ts_us, hash)) into ``rows``, adding its new sessions."""
        for e in in_order:
            key = (self._sensor_ids[e.sensor], e.session)
            row = rows.get(key)
            if row is None:
                row = rows[key] = _SessionRow(_new_session(key, e), True)
                row.values["id"] = next(new_ids)
            _merge_event(row, e)
        # Every row has events of this batch: its key came from them.
        for row in rows.values():
            new_hour = row.values["start_ts_us"] // US_PER_HOUR
            sensor_id = row.values["sensor_id"]
            if row.old_start_ts_us is None:
                rollups[(sensor_id, new_hour)].sessions += 1
            elif row.old_start_ts_us // US_PER_HOUR != new_hour:
                rollups[(sensor_id, row.old_start_ts_us // US_PER_HOUR)].sessions -= 1
                rollups[(sensor_id, new_hour)].sessions += 1

    def _raise_longest_sessions(self, rows: Iterable[_SessionRow]) -> None:
        """Keep ``sensors.max_session_us`` at least the longest session of each sensor.

        It only grows, so a value this writer has stored or read is a lower
        bound: batches whose sessions are all shorter write nothing.
        """
        longest: dict[int, int] = {}
        for row in rows:
            span = row.values["end_ts_us"] - row.values["start_ts_us"]
            sensor_id = row.values["sensor_id"]
            if span > max(longest.get(sensor_id, 0), self._longest_session.get(sensor_id, 0)):
                longest[sensor_id] = span
        if not longest:
            return
        _, greatest = _least_greatest(self.conn)
        self.conn.execute(
            update(SENSORS)
            .where(SENSORS.c.id == bindparam("sensor_id"))
            .values(max_session_us=greatest(SENSORS.c.max_session_us, bindparam("span"))),
            [{"sensor_id": sensor_id, "span": span} for sensor_id, span in sorted(longest.items())],
        )
        self._longest_session.update(longest)

    def _save_sessions(self, rows: dict[tuple[int, str], _SessionRow]) -> None:
        """Insert the new sessions and update the changed ones."""
        new_rows = [
            tuple(row.values[c] for c in SESSION_COLUMNS) for row in rows.values() if row.is_new
        ]
        _bulk_insert(self.conn, SESSIONS, SESSION_COLUMNS, new_rows)
        self._update_sessions([r.values for r in rows.values() if not r.is_new])
        self._raise_longest_sessions(rows.values())

    def _update_sessions(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        columns = [c for c in SESSION_STATE_COLUMNS if c != "id"]
        if self.conn.dialect.name == "postgresql":
            copied = ["id", *columns]
            _staged(
                self.conn,
                "session_updates",
                SESSIONS,
                copied,
                ([r[c] for c in copied] for r in rows),
            )
            assignments = ", ".join(f"{c} = u.{c}" for c in columns)
            self.conn.execute(
                text(
                    f"UPDATE sessions s SET {assignments} FROM session_updates u WHERE s.id = u.id"
                )
            )
            return
        stmt = (
            update(SESSIONS)
            .where(SESSIONS.c.id == bindparam("row_id"))
            .values({c: bindparam(c) for c in columns})
        )
        self.conn.execute(stmt, [{"row_id": r["id"], **{c: r[c] for c in columns}} for r in rows])

    # -- per-event tables and rollups ---------------------------------------------

    def _detail_rows(
        self,
        fresh: list[ParsedEvent],
        sessions: dict[tuple[int, str], _SessionRow],
        rollups: defaultdict[tuple[int, int], _Rollup],
    ) -> list[list[tuple[Any, ...]]]:
        """Rows of login_attempts, commands and downloads (flags not yet); counts the rollups."""
        logins: list[tuple[Any, ...]] = []
        commands: list[tuple[Any, ...]] = []
        downloads: list[tuple[Any, ...]] = []
        for e in fresh:
            sensor_id = self._sensor_ids[e.sensor]
            session_id = sessions[(sensor_id, e.session)].values["id"]
            common = (e.hash, sensor_id, session_id, e.ts_us)
            bucket = rollups[(sensor_id, e.ts_us // US_PER_HOUR)]
            bucket.saw(e.ts_us)
            if e.eventid in (LOGIN_SUCCESS, LOGIN_FAILED):
                success = e.eventid == LOGIN_SUCCESS
                logins.append((*common, e.username, e.password, success))
                bucket.login_attempts += 1
                bucket.login_successes += int(success)
            elif e.eventid == COMMAND_INPUT:
                commands.append((*common, e.command or ""))
                bucket.commands += 1
            elif e.eventid == FILE_DOWNLOAD and e.shasum is not None:
                downloads.append((*common, e.shasum, e.url, e.outfile))
                bucket.downloads += 1
        return [logins, commands, downloads]

    # -- first-use flags ------------------------------------------------------------

    def _stored_first_rows(
        self, sessions: dict[tuple[int, str], _SessionRow]
    ) -> dict[str, list[_FlaggedRow]]:
        """Per detail table, the flagged rows stored before for the batch's stored sessions.

        Read before the batch is merged, so that its flags can be settled while
        the events are being stored. A stored session's rows lie between its
        stored start and end on its sensor: each is a short range of the
        (sensor_id, ts_us) index.
        """
        stored = [
            _StoredSession(row.values["sensor_id"], row.values["id"], low, high)
            for row in sessions.values()
            if (low := row.old_start_ts_us) is not None and (high := row.old_end_ts_us) is not None
        ]
        found: dict[str, list[_FlaggedRow]] = {table.name: [] for table, _ in DETAIL_TABLES}
        if not stored:
            return found
        for table, _ in DETAIL_TABLES:
            pairs = FIRST_USE_FLAGS[table.name]
            selected = ", ".join(f"t.{value}, t.{flag}" for value, flag in pairs)
            any_flag = " OR ".join(f"t.{flag}" for _, flag in pairs)
            rows: Iterable[Sequence[Any]]
            if self.conn.dialect.name == "postgresql":
                cursor = _dbapi_cursor(self.conn)
                cursor.execute(
                    f"SELECT t.sensor_id, t.session_id, t.ts_us, t.event_hash, {selected}"
                    " FROM unnest(%b::integer[], %b::bigint[], %b::bigint[], %b::bigint[])"
                    " AS k(sensor_id, session_id, low, high)"
                    f" CROSS JOIN LATERAL (SELECT * FROM {table.name} t"
                    "  WHERE t.sensor_id = k.sensor_id AND t.ts_us BETWEEN k.low AND k.high"
                    f"  AND t.session_id = k.session_id AND ({any_flag})) t",
                    [list(column) for column in zip(*stored, strict=True)],
                )
                rows = cursor.fetchall()
            else:
                query = text(
                    f"SELECT t.sensor_id, t.session_id, t.ts_us, t.event_hash, {selected}"
                    f" FROM {table.name} t WHERE t.sensor_id = :sensor_id"
                    " AND t.ts_us BETWEEN :low AND :high"
                    f" AND t.session_id = :session_id AND ({any_flag})"
                )
                rows = [r for s in stored for r in self.conn.execute(query, s._asdict()).all()]
            found[table.name] = [tuple(row) for row in rows]
        return found

    def _unflag(self, table: Table, unflag: list[list[_RowKey]]) -> None:
        """Clear the flags of stored rows that a row of the batch precedes."""
        key = tuple_(table.c.ts_us, table.c.event_hash)
        for (_, flag), keys in zip(FIRST_USE_FLAGS[table.name], unflag, strict=True):
            for chunk in _chunks(keys):
                self.conn.execute(update(table).where(key.in_(chunk)).values({flag: False}))

    def _add_rollups(self, rollups: dict[tuple[int, int], _Rollup]) -> None:
        if not rollups:
            return
        stmt: Any = _dialect_insert(self.conn, HOURLY_ROLLUPS)
        table = HOURLY_ROLLUPS
        least, greatest = _least_greatest(self.conn)
        counters = [f.name for f in dataclasses.fields(_Rollup) if not f.name.endswith("_ts_us")]
        updates = {name: table.c[name] + stmt.excluded[name] for name in counters}
        for name, pick in (("first_ts_us", least), ("last_ts_us", greatest)):
            # NULL-safe on both backends: SQLite's scalar min/max return NULL on NULL.
            old, new = table.c[name], stmt.excluded[name]
            updates[name] = pick(func.coalesce(old, new), func.coalesce(new, old))
        stmt = stmt.on_conflict_do_update(index_elements=["sensor_id", "hour"], set_=updates)
        rows = [
            {"sensor_id": sensor_id, "hour": hour, **dataclasses.asdict(counts)}
            for (sensor_id, hour), counts in sorted(rollups.items())
        ]
        self.conn.execute(stmt, rows)

    def _add_daily_values(self, daily: _DailyValues) -> None:
        if not daily.rows:
            return
        columns = DAILY_VALUE_COLUMNS
        rows = sorted((*key, *values) for key, values in daily.rows.items())
        stmt: Any = _dialect_insert(self.conn, DAILY_VALUES)
        parameters: list[dict[str, Any]] | None = None
        if self.conn.dialect.name == "postgresql":
            staged = _staged(self.conn, "daily_batch", DAILY_VALUES, columns, rows)
            stmt = stmt.from_select(columns, select(*staged.c))
        else:
            parameters = [dict(zip(columns, row, strict=True)) for row in rows]
        least, greatest = _least_greatest(self.conn)
        stored, new = DAILY_VALUES.c, stmt.excluded
        stmt = stmt.on_conflict_do_update(
            index_elements=columns[:4],
            set_={
                "uses": stored.uses + new.uses,
                "first_uses": stored.first_uses + new.first_uses,
                "first_ts_us": least(stored.first_ts_us, new.first_ts_us),
                "last_ts_us": greatest(stored.last_ts_us, new.last_ts_us),
            },
        )
        self.conn.execute(stmt, parameters)

    # -- dead letters and cursors -------------------------------------------------

    def _dead_letters(self, records: Sequence[DeadLetterRecord]) -> int:
        now = int(time.time() * 1_000_000)
        rows = [
            {
                "source": r.source,
                "line_no": r.line_no,
                "reason": r.reason,
                "raw": r.raw,
                "raw_hash": hashlib.blake2b(r.raw.encode(), digest_size=HASH_BYTES).digest(),
                "created_ts_us": now,
            }
            for r in records
        ]
        _insert_ignore(self.conn, DEAD_LETTERS, rows)
        return len(rows)

    def _save_cursor(self, cursor: CursorState) -> None:
        stmt: Any = _dialect_insert(self.conn, INGEST_CURSORS)
        values = dataclasses.asdict(cursor) | {"updated_ts_us": int(time.time() * 1_000_000)}
        stmt = stmt.on_conflict_do_update(
            index_elements=["head_hash"],
            set_={k: v for k, v in values.items() if k != "head_hash"},
        )
        self.conn.execute(stmt, [values])


def load_cursor(conn: Connection, head_hash: bytes) -> tuple[int, int, bytes] | None:
    """(offset, line_no, tail_hash) stored for a file whose first line hashes to ``head_hash``."""
    c = INGEST_CURSORS.c
    row = conn.execute(
        select(c.offset, c.line_no, c.tail_hash).where(c.head_hash == head_hash)
    ).first()
    return None if row is None else (row[0], row[1], row[2])


def _with_first_use_flags(
    table: Table,
    columns: Sequence[str],
    rows: list[tuple[Any, ...]],
    stored_first: list[_FlaggedRow],
    daily: _DailyValues,
) -> tuple[list[tuple[Any, ...]], list[list[_RowKey]]]:
    """``rows`` (event_hash, sensor_id, session_id, ts_us, ...) with their flags appended,
    and per flag the stored rows that lose it; counts the rows into ``daily``.

    A row is flagged for a value when it is the first row of its session with
    that value, by (ts_us, event_hash), counting the rows stored before: a
    stored first row that a new row precedes loses its flag. Order-independent,
    like the session merge, so any split of the logs into files and batches
    flags the same rows.
    """
    pairs = FIRST_USE_FLAGS[table.name]
    positions = [columns.index(value) for value, _ in pairs]
    first: dict[tuple[int, int, Any], tuple[int, bytes]] = {}
    for row in rows:
        order = (row[3], row[0])
        for pair, position in enumerate(positions):
            if row[position] is None:
                continue
            key = (pair, row[2], row[position])
            known = first.get(key)
            if known is None or order < known:
                first[key] = order
    unflag: list[list[_RowKey]] = [[] for _ in pairs]
    # Where a stored row comes first, the batch has no first row for that key;
    # where the batch's comes first, the stored row is unflagged.
    for sensor_id, session_id, ts_us, event_hash, *values in stored_first:
        for pair, (value, flagged) in enumerate(zip(values[::2], values[1::2], strict=True)):
            key = (pair, session_id, value)
            if not flagged or key not in first:
                continue
            if first[key] < (ts_us, event_hash):
                unflag[pair].append((ts_us, event_hash))
                daily.unflag(pairs[pair][0], sensor_id, value, ts_us)
            else:
                del first[key]
    flagged = [
        (
            *row,
            *(
                row[position] is not None
                and first.get((pair, row[2], row[position])) == (row[3], row[0])
                for pair, position in enumerate(positions)
            ),
        )
        for row in rows
    ]
    daily.add_rows(table.name, columns, flagged)
    return flagged, unflag


def _new_session(key: tuple[int, str], e: ParsedEvent) -> dict[str, Any]:
    values: dict[str, Any] = dict.fromkeys(SESSION_STATE_COLUMNS)
    values.update(
        sensor_id=key[0],
        session=key[1],
        start_ts_us=e.ts_us,
        start_hash=e.hash,
        end_ts_us=e.ts_us,
        protocol="unknown",
        events=0,
        login_attempts=0,
        login_successes=0,
        commands=0,
        downloads=0,
    )
    return values


def _precedes(key: tuple[int, bytes], ts_us: int | None, digest: bytes | None) -> bool:
    """Whether the event ordered by ``key`` comes before the event (ts_us, digest), if any."""
    return ts_us is None or digest is None or key < (ts_us, digest)


def _merge_event(row: _SessionRow, e: ParsedEvent) -> None:
    """Fold one new event into its session; the result is independent of order.

    The hot loop of the writer (one call per event): plain dict stores, and the
    ordering keys of a field group are only read for the events that can set it.
    """
    v = row.values
    ts_us, eventid = e.ts_us, e.eventid
    key = (ts_us, e.hash)
    if key < (v["start_ts_us"], v["start_hash"]):
        v["start_ts_us"], v["start_hash"] = key
    if ts_us > v["end_ts_us"]:
        v["end_ts_us"] = ts_us
    if e.src_ip is not None and _precedes(key, v["src_ip_ts_us"], v["src_ip_hash"]):
        v.update(src_ip=e.src_ip, src_port=e.src_port, src_ip_ts_us=ts_us, src_ip_hash=e.hash)
    v["events"] += 1
    if eventid == SESSION_CONNECT:
        if _precedes(key, v["connect_ts_us"], v["connect_hash"]):
            protocol = e.protocol if e.protocol in PROTOCOLS else "unknown"
            v.update(
                protocol=protocol, dst_port=e.dst_port, connect_ts_us=ts_us, connect_hash=e.hash
            )
    elif eventid == SESSION_CLOSED:
        # The duration is the last close's (shared/COUNTING.md, rule 4).
        closed_ts, closed_hash = v["closed_ts_us"], v["closed_hash"]
        if closed_ts is None or closed_hash is None or key > (closed_ts, closed_hash):
            v.update(duration_s=e.duration_s, closed_ts_us=ts_us, closed_hash=e.hash)
    elif eventid == CLIENT_VERSION:
        if _precedes(key, v["version_ts_us"], v["version_hash"]):
            v.update(client_version=e.client_version, version_ts_us=ts_us, version_hash=e.hash)
    elif eventid in (LOGIN_FAILED, LOGIN_SUCCESS):
        v["login_attempts"] += 1
        v["login_successes"] += eventid == LOGIN_SUCCESS
    elif eventid == COMMAND_INPUT:
        v["commands"] += 1
    elif eventid == FILE_DOWNLOAD and e.shasum is not None:
        v["downloads"] += 1


__all__ = [
    "BatchResult",
    "BatchWriter",
    "CursorState",
    "DeadLetterRecord",
    "load_cursor",
]
