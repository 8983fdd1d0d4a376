"""Write parsed batches: events, per-event tables, sessions and summaries in one transaction.

Only events not already stored are merged into sessions and summaries, and
every merge rule is order-independent (minimum/maximum by (timestamp, hash),
sums, unions), so any interleaving of files, re-reads and resumed runs gives
the same totals. The steps of a batch:

1. reads (:class:`~cowrie_stats.ingest.plan.BatchReads`): which events are
   stored already, the sessions the batch continues, their flagged first rows,
   the ids of the values it counts and of its new sessions;
2. its plan (:class:`~cowrie_stats.ingest.plan.BatchPlan`), computed from the
   reads in pure Python (sessions, per-event rows with first-use flags, summary
   changes) while the events are COPYed in the background;
3. the plan's writes, by the bulk-operations class of the database
   (:mod:`cowrie_stats.ingest.bulk`), then the data version, dead letters and
   the file's cursor.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import hashlib
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select, update

from cowrie_stats.db.models import (
    DATA_VERSION,
    DEAD_LETTERS,
    FIRST_USE_FLAGS,
    INGEST_CURSORS,
    SENSORS,
)
from cowrie_stats.ingest.batch import DeadLetterRecord
from cowrie_stats.ingest.details import StoredFirstRow, counted_values
from cowrie_stats.ingest.operations import bulk_operations
from cowrie_stats.ingest.parse import HASH_BYTES, ParsedEvent
from cowrie_stats.ingest.plan import DETAIL_TABLES, BatchReads, event_rows, plan_batch
from cowrie_stats.ingest.summaries import store_summaries
from cowrie_stats.ingest.values import ValueIds


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
        self.bulk = bulk_operations(conn)
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
        reads = self._read(fresh)
        events = event_rows(fresh, reads.sensor_ids)
        # Pure Python from the reads: it runs while PostgreSQL stores the events.
        plan = self.bulk.apply(events, functools.partial(plan_batch, fresh, reads))
        store_summaries(self.bulk, plan.summary)
        self._longest_session.update(plan.longest_sessions)

    # -- reads ------------------------------------------------------------------------

    def _read(self, fresh: list[ParsedEvent]) -> BatchReads:
        """What the batch needs from the database, before its plan is computed.

        Sensors and dictionary values the batch names are added here: their ids
        are read back (the dictionary keeps no id a rolled-back batch assigned).
        """
        self._ensure_sensors(fresh)
        ids = self._sensor_ids
        keys = {(ids[e.sensor], e.session) for e in fresh}
        stored = {(row["sensor_id"], row["session"]): row for row in self.bulk.sessions_of(keys)}
        return BatchReads(
            sensor_ids=ids,
            stored_sessions=stored,
            new_session_ids=self.bulk.new_ids("sessions", len(keys) - len(stored)),
            stored_first=self._stored_first_rows(stored.values()),
            value_ids=self.values.resolve(self.bulk, counted_values(fresh)),
            longest_known=dict(self._longest_session),
        )

    def _ensure_sensors(self, fresh: list[ParsedEvent]) -> None:
        bounds: dict[str, tuple[int, int]] = {}
        for e in fresh:
            low, high = bounds.get(e.sensor, (e.ts_us, e.ts_us))
            bounds[e.sensor] = (min(low, e.ts_us), max(high, e.ts_us))
        rows = [(name, low, high) for name, (low, high) in sorted(bounds.items())]
        self.bulk.upsert(SENSORS, ["name"], {"first_ts_us": "min", "last_ts_us": "max"}, rows)
        missing = [name for name in bounds if name not in self._sensor_ids]
        self._sensor_ids.update(self.bulk.sensor_ids(missing))

    def _stored_first_rows(
        self, sessions: Iterable[Mapping[str, Any]]
    ) -> dict[str, list[StoredFirstRow]]:
        """Per detail table, the flagged rows stored before for the batch's stored sessions.

        Read before the batch is merged, so that its flags can be settled while
        the events are being stored. A stored session's rows lie between its
        stored start and end on its sensor.
        """
        ranges = [(s["sensor_id"], s["id"], s["start_ts_us"], s["end_ts_us"]) for s in sessions]
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
                    r["sensor_id"],
                    r["session_id"],
                    r["ts_us"],
                    bytes(r["event_hash"]),
                    tuple((r[f"{value}_id"], bool(r[flag])) for value, flag in pairs),
                )
                for r in rows
            ]
        return found

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
