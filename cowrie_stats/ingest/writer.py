"""Write parsed batches: events, per-event tables, sessions and summaries in one transaction.

Only events not already stored are merged into sessions and summaries, and
every merge rule is order-independent (minimum/maximum by (timestamp, hash),
sums, unions), so any interleaving of files, re-reads and resumed runs gives
the same totals. The steps of a batch:

1. reads: which events are stored already, the sessions the batch continues,
   their flagged first rows, the ids of the values it counts;
2. the events are COPYed in the background while the batch is merged in Python
   (sessions, per-event rows with first-use flags, summary changes);
3. writes: sessions, per-event rows, summaries, the data version, dead letters
   and the file's cursor.

Database differences live in :mod:`cowrie_stats.ingest.bulk`.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import Connection, bindparam, select, update

from cowrie_stats.db.models import (
    COMMANDS,
    DATA_VERSION,
    DEAD_LETTERS,
    DOWNLOADS,
    EVENTS,
    FIRST_USE_FLAGS,
    INGEST_CURSORS,
    LOGIN_ATTEMPTS,
    SENSORS,
    SESSIONS,
)
from cowrie_stats.ingest.batch import DeadLetterRecord
from cowrie_stats.ingest.bulk import BulkOps
from cowrie_stats.ingest.details import (
    CommandRow,
    DownloadRow,
    LoginRow,
    StoredFirstRow,
    Unflag,
    counted_values,
    detail_rows,
    with_first_use_flags,
)
from cowrie_stats.ingest.merge import (
    MERGE_ORDER,
    SESSION_COLUMNS,
    SESSION_STATE_COLUMNS,
    SessionRow,
    merge_event,
    new_session,
)
from cowrie_stats.ingest.parse import HASH_BYTES, ParsedEvent
from cowrie_stats.ingest.summaries import SummaryChanges, store_summaries
from cowrie_stats.ingest.values import ValueIds

EVENT_COLUMNS = ["hash", "sensor_id", "session", "eventid", "ts_us", "raw"]
DETAIL_TABLES = {
    "login_attempts": (LOGIN_ATTEMPTS, list(LoginRow._fields)),
    "commands": (COMMANDS, list(CommandRow._fields)),
    "downloads": (DOWNLOADS, list(DownloadRow._fields)),
}


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


class BatchWriter:
    """Stores batches of parsed events; one call is one transaction.

    ``values`` caches dictionary ids across batches (by default, per engine).
    """

    def __init__(self, conn: Connection, values: ValueIds | None = None) -> None:
        self.bulk = BulkOps.for_connection(conn)
        self.values = values or ValueIds.of(conn.engine)
        self._sensor_ids: dict[str, int] = {}
        self._longest_session: dict[int, int] = {}  # sensor id -> a lower bound

    def write(
        self,
        events: Iterable[ParsedEvent],
        dead_letters: Sequence[DeadLetterRecord] = (),
        cursor: CursorState | None = None,
    ) -> BatchResult:
        result = BatchResult()
        # One ingest batch at a time: the "already stored?" check below and the
        # inserts after it must see the same table (concurrent ingests).
        self.bulk.lock()
        unique: dict[bytes, ParsedEvent] = {}
        for event in events:
            if event.hash in unique:
                result.duplicates += 1
            else:
                unique[event.hash] = event
        existing = self.bulk.existing_event_hashes([(e.ts_us, e.hash) for e in unique.values()])
        result.duplicates += len(existing)
        fresh = [event for digest, event in unique.items() if digest not in existing]
        if fresh:
            with _no_cyclic_gc():
                self._store(fresh)
            self.bulk.execute(
                update(DATA_VERSION)
                .where(DATA_VERSION.c.id == 1)
                .values(version=DATA_VERSION.c.version + 1)
            )
        result.stored = len(fresh)
        result.dead_lettered = self._dead_letters(dead_letters)
        if cursor is not None:
            self._save_cursor(cursor)
        return result

    def _store(self, fresh: list[ParsedEvent]) -> None:
        bulk = self.bulk
        self._ensure_sensors(fresh)
        ids = self._sensor_ids
        in_order = sorted(fresh, key=MERGE_ORDER)
        keys = {(ids[e.sensor], e.session) for e in in_order}
        sessions = {
            (row["sensor_id"], row["session"]): SessionRow(dict(row), row)
            for row in bulk.sessions_of(keys)
        }
        new_ids = iter(bulk.new_ids("sessions", len(keys) - len(sessions)))
        stored_first = self._stored_first_rows(sessions.values())
        value_ids = self.values.resolve(bulk, counted_values(fresh))
        events = [(e.hash, ids[e.sensor], e.session, e.eventid, e.ts_us, e.raw) for e in fresh]
        changes = SummaryChanges()
        with bulk.insert_in_background(EVENTS, EVENT_COLUMNS, events):
            # Python only in here: PostgreSQL stores the events meanwhile.
            for e in in_order:
                key = (ids[e.sensor], e.session)
                row = sessions.get(key)
                if row is None:
                    row = sessions[key] = new_session(*key, next(new_ids), e)
                merge_event(row.values, e, value_ids)
            for row in sessions.values():
                changes.add_session(row.stored, row.values)
            changes.add_events(fresh, ids)
            session_ids = {key: row.values["id"] for key, row in sessions.items()}
            rows = detail_rows(fresh, ids, session_ids, value_ids).by_table()
            flagged = {
                table: with_first_use_flags(table, rows[table], stored_first[table])
                for table in DETAIL_TABLES
            }
            changes.add_credentials(flagged["login_attempts"][0])
            for table, (table_rows, unflags) in flagged.items():
                changes.add_detail_rows(table, table_rows, FIRST_USE_FLAGS[table])
                for u in unflags:
                    changes.unflag(u.value_column, u.sensor_id, u.value_id, u.ts_us)
        self._save_sessions(list(sessions.values()))
        for table, (table_rows, unflags) in flagged.items():
            self._clear_flags(table, unflags)
            bulk.insert_rows(DETAIL_TABLES[table][0], DETAIL_TABLES[table][1], table_rows)
        store_summaries(bulk, changes)

    def _ensure_sensors(self, fresh: list[ParsedEvent]) -> None:
        bounds: dict[str, tuple[int, int]] = {}
        for e in fresh:
            low, high = bounds.get(e.sensor, (e.ts_us, e.ts_us))
            bounds[e.sensor] = (min(low, e.ts_us), max(high, e.ts_us))
        rows = [(name, low, high) for name, (low, high) in sorted(bounds.items())]
        self.bulk.upsert(SENSORS, ["name"], {"first_ts_us": "min", "last_ts_us": "max"}, rows)
        missing = [name for name in bounds if name not in self._sensor_ids]
        self._sensor_ids.update(self.bulk.sensor_ids(missing))

    # -- sessions ---------------------------------------------------------------

    def _save_sessions(self, rows: list[SessionRow]) -> None:
        """Insert the new sessions and update the changed ones."""
        new_rows = [tuple(row.values[c] for c in SESSION_COLUMNS) for row in rows if row.is_new]
        self.bulk.insert_rows(SESSIONS, SESSION_COLUMNS, new_rows)
        columns = [c for c in SESSION_STATE_COLUMNS if c != "id"]
        changed = [
            (row.values["id"], *(row.values[c] for c in columns)) for row in rows if not row.is_new
        ]
        self.bulk.update_rows(SESSIONS, "id", columns, changed)
        self._raise_longest_sessions(rows)

    def _raise_longest_sessions(self, rows: Iterable[SessionRow]) -> None:
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
        _, greatest = self.bulk.least_greatest()
        self.bulk.execute(
            update(SENSORS)
            .where(SENSORS.c.id == bindparam("sensor_id"))
            .values(max_session_us=greatest(SENSORS.c.max_session_us, bindparam("span"))),
            [{"sensor_id": sensor_id, "span": span} for sensor_id, span in sorted(longest.items())],
        )
        self._longest_session.update(longest)

    # -- first-use flags ------------------------------------------------------------

    def _stored_first_rows(self, sessions: Iterable[SessionRow]) -> dict[str, list[StoredFirstRow]]:
        """Per detail table, the flagged rows stored before for the batch's stored sessions.

        Read before the batch is merged, so that its flags can be settled while
        the events are being stored. A stored session's rows lie between its
        stored start and end on its sensor.
        """
        ranges = [
            (s["sensor_id"], s["id"], s["start_ts_us"], s["end_ts_us"])
            for row in sessions
            if (s := row.stored) is not None
        ]
        found: dict[str, list[StoredFirstRow]] = {}
        for table in DETAIL_TABLES:
            pairs = FIRST_USE_FLAGS[table]
            selected = ", ".join(f"t.{value}_id, t.{flag}" for value, flag in pairs)
            any_flag = " OR ".join(f"t.{flag}" for _, flag in pairs)
            rows = self.bulk.rows_in_ranges(
                table,
                f"t.sensor_id, t.session_id, t.ts_us, t.event_hash, {selected}",
                ranges,
                any_flag,
            )
            found[table] = [
                StoredFirstRow(
                    r[0],
                    r[1],
                    r[2],
                    bytes(r[3]),
                    tuple(zip(r[4::2], map(bool, r[5::2]), strict=True)),
                )
                for r in rows
            ]
        return found

    def _clear_flags(self, table: str, unflags: Sequence[Unflag]) -> None:
        by_flag: dict[str, list[tuple[int, bytes]]] = {}
        for u in unflags:
            by_flag.setdefault(u.flag, []).append((u.ts_us, u.event_hash))
        for flag, keys in by_flag.items():
            self.bulk.clear_flags(DETAIL_TABLES[table][0], flag, keys)

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
        self.bulk.insert_ignoring_duplicates(DEAD_LETTERS, rows)
        return len(rows)

    def _save_cursor(self, cursor: CursorState) -> None:
        values = dataclasses.asdict(cursor) | {"updated_ts_us": int(time.time() * 1_000_000)}
        columns = [name for name in values if name != "head_hash"]
        self.bulk.upsert(
            INGEST_CURSORS,
            ["head_hash"],
            dict.fromkeys(columns, "replace"),
            [(values["head_hash"], *(values[c] for c in columns))],
        )


@contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while a batch is merged.

    A batch allocates hundreds of thousands of small tuples and lists, all freed by
    reference counting; the collections they trigger walk every live object of the
    batch again and again, for nothing (the batch makes no cycles).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def load_cursor(conn: Connection, head_hash: bytes) -> tuple[int, int, bytes] | None:
    """(offset, line_no, tail_hash) stored for a file whose first line hashes to ``head_hash``."""
    c = INGEST_CURSORS.c
    row = conn.execute(
        select(c.offset, c.line_no, c.tail_hash).where(c.head_hash == head_hash)
    ).first()
    return None if row is None else (row[0], row[1], row[2])


__all__ = [
    "BatchResult",
    "BatchWriter",
    "CursorState",
    "DeadLetterRecord",
    "load_cursor",
]
