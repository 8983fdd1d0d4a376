"""Store parsed batches; a row the database rejects is dead-lettered, not fatal.

A batch is one transaction. When the database rejects a row's data (a data
exception, a constraint, a program limit such as an over-long index entry,
an error raised by a trigger), the batch is rolled back and cut in halves,
each its own transaction, down to the lines the database refuses: those are
dead-lettered with its one-line reason and the rest is stored. The dead letters
and the file's cursor are committed last, so a run killed in between reads the
batch again and ends with the same totals (the halves already stored are
duplicates then). Errors that are not about a row's data (connection lost,
permission denied, disk full) end the run as before.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections import Counter
from collections.abc import Sequence

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError
from typing_extensions import override

from cowrie_stats.ingest.batch import DeadLetterRecord, ParsedBatch
from cowrie_stats.ingest.parse import ParsedEvent, dead_letter_text
from cowrie_stats.ingest.summary import StoredBatch
from cowrie_stats.ingest.writer import BatchWriter, CursorState

# SQLSTATE classes of errors caused by the data of a row: data exception,
# integrity constraint violation, program limit exceeded, PL/pgSQL raise.
ROW_LEVEL_SQLSTATE = ("22", "23", "54", "P0")
# Permission denied (missing GRANT) and a write in a read-only transaction (role
# with default_transaction_read_only, or a standby).
PERMISSION_SQLSTATE = ("42501", "25006")
REJECTED = "rejected by the database"


def driver_error(exc: BaseException) -> BaseException | None:
    """The database driver's error in ``exc``: SQLAlchemy wraps most; COPY raises them bare."""
    if isinstance(exc, DBAPIError):
        return exc.orig
    if isinstance(exc, sqlite3.Error) or hasattr(exc, "sqlstate"):
        return exc
    return None


def one_line(error: BaseException) -> str:
    """``Type: first line of the message``: what the database said, without its context."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def row_rejection(exc: BaseException) -> str | None:
    """The database's one-line reason when ``exc`` refused a row's data; None otherwise."""
    error = driver_error(exc)
    if error is None or (isinstance(exc, DBAPIError) and exc.connection_invalidated):
        return None
    sqlstate = getattr(error, "sqlstate", None)
    if sqlstate is not None:
        refused = sqlstate.startswith(ROW_LEVEL_SQLSTATE)
    else:  # SQLite: constraint failures, over-long values
        refused = isinstance(error, sqlite3.IntegrityError | sqlite3.DataError)
    return one_line(error) if refused else None


def permission_problem(exc: BaseException) -> str | None:
    """The one-line reason when ``exc`` says the database refuses this login any writing."""
    error = driver_error(exc)
    if error is None:
        return None
    if getattr(error, "sqlstate", None) in PERMISSION_SQLSTATE:
        return one_line(error)
    if str(getattr(error, "sqlite_errorname", "")).startswith("SQLITE_READONLY"):
        return one_line(error)
    return None


class _TallyingWriter(BatchWriter):
    """The writer, noting how many new events each sensor had (for the run's summary)."""

    def __init__(self, conn: Connection) -> None:
        super().__init__(conn)
        self.stored_by_sensor: dict[str, int] = {}

    @override
    def _store(self, fresh: list[ParsedEvent]) -> None:
        self.stored_by_sensor = dict(Counter(event.sensor for event in fresh))
        super()._store(fresh)


def _write(
    engine: Engine,
    events: Sequence[ParsedEvent],
    dead: Sequence[DeadLetterRecord],
    cursor: CursorState | None,
) -> StoredBatch:
    with engine.begin() as conn:
        writer = _TallyingWriter(conn)
        result = writer.write(events, dead, cursor)
    return StoredBatch(
        result.stored, result.duplicates, result.dead_lettered, writer.stored_by_sensor
    )


def store_batch(
    engine: Engine, batch: ParsedBatch, cursor: CursorState | None, source: str
) -> StoredBatch:
    """Store ``batch`` and move ``cursor``; rows the database rejects become dead letters."""
    try:
        return _write(engine, batch.events, batch.dead, cursor)
    except Exception as exc:
        if row_rejection(exc) is None:
            raise
    outcome = StoredBatch()
    _isolate(engine, batch, 0, len(batch.events), outcome, source)
    _add(outcome, _store_dead_letters(engine, [*batch.dead, *outcome.rejected], cursor))
    return outcome


def _add(total: StoredBatch, part: StoredBatch) -> None:
    total.stored += part.stored
    total.duplicates += part.duplicates
    total.dead_lettered += part.dead_lettered
    for sensor, count in part.stored_by_sensor.items():
        total.stored_by_sensor[sensor] = total.stored_by_sensor.get(sensor, 0) + count


def _isolate(
    engine: Engine, batch: ParsedBatch, low: int, high: int, outcome: StoredBatch, source: str
) -> None:
    """Store events ``low:high`` of ``batch``, halving on a rejection down to single events."""
    if low >= high:
        return
    try:
        _add(outcome, _write(engine, batch.events[low:high], (), None))
        return
    except Exception as exc:
        reason = row_rejection(exc)
        if reason is None:
            raise
    if high - low > 1:
        middle = (low + high) // 2
        _isolate(engine, batch, low, middle, outcome, source)
        _isolate(engine, batch, middle, high, outcome, source)
        return
    event = batch.events[low]
    outcome.rejected.append(
        DeadLetterRecord(
            source,
            batch.line_nos[low],
            f"{REJECTED}: {reason}",
            dead_letter_text(event.raw),
            event.sensor,
        )
    )


def _store_dead_letters(
    engine: Engine, dead: list[DeadLetterRecord], cursor: CursorState | None
) -> StoredBatch:
    """The dead letters and the cursor; a record refused as it is is kept without its text."""
    try:
        return _write(engine, (), dead, cursor)
    except Exception as exc:
        if row_rejection(exc) is None:
            raise
    outcome = StoredBatch()
    for record in dead:
        try:
            _add(outcome, _write(engine, (), [record], None))
        except Exception as exc:
            reason = row_rejection(exc)
            if reason is None:
                raise
            bare = dataclasses.replace(
                record, raw="", reason=f"{record.reason[:500]} (line not kept: {reason})"
            )
            _add(outcome, _write(engine, (), [bare], None))
    _add(outcome, _write(engine, (), (), cursor))
    return outcome
