"""Recompute the window summaries of a span from the raw rows.

Once raw rows are deleted (:mod:`cowrie_stats.maintenance.prune`), the summary
pieces that counted them no longer match their definitions. :func:`rebuild_summaries`
deletes the ``rollups``, ``rollup_sets`` and ``rollup_values`` rows of every piece
that overlaps a span, at every level, for some sensors, and computes them again
from what the raw tables hold, by the definitions the ingest keeps batch by batch
(docs/architecture.md): the result equals a fresh ingest of the remaining events.

It works a UTC day at a time, so memory is bounded by one day's pieces whatever
the span: grouped queries give the day's figures per minute, which are rolled up
to hours and the day in Python (the ingest's own :class:`SummaryChanges`), and
the per-value figures of the rankings are grouped in SQL. Days without events
are skipped by one index lookup each. It runs in the caller's transaction.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from typing import Any

from pyroaring import BitMap
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Table,
    case,
    delete,
    func,
    literal,
    literal_column,
    select,
)

from cowrie_stats.db.models import (
    COMMANDS,
    DOWNLOADS,
    EVENTS,
    LOGIN_ATTEMPTS,
    ROLLUP_SETS,
    ROLLUP_VALUES,
    ROLLUPS,
    SESSIONS,
    VALUE_KINDS,
)
from cowrie_stats.ingest import summaries as at
from cowrie_stats.ingest.bulk import BulkOps
from cowrie_stats.ingest.operations import bulk_operations
from cowrie_stats.ingest.summaries import (
    PIECE_KEY,
    ROLLUP_RULES,
    SET_LEVELS,
    VALUE_LEVELS,
    VALUE_RULES,
    Counters,
    SummaryChanges,
    new_counters,
)
from cowrie_stats.timeline import DAY, LEVELS, MINUTE, Level, PieceRange, Span

#: Sensor ids to rebuild; None means every sensor.
SensorIds = Collection[int] | None
SET_COLUMNS = ["kind", *PIECE_KEY, "members"]
VALUE_COLUMNS = ["kind", *PIECE_KEY, "value_id", *VALUE_RULES]
# Distinct sets kept per piece: kind -> (table, time column, id column) of the raw rows.
SET_SOURCES = {
    VALUE_KINDS["username"]: (LOGIN_ATTEMPTS, "ts_us", "username_id"),
    VALUE_KINDS["password"]: (LOGIN_ATTEMPTS, "ts_us", "password_id"),
    VALUE_KINDS["shasum"]: (DOWNLOADS, "ts_us", "shasum_id"),
    VALUE_KINDS["src_ip"]: (SESSIONS, "start_ts_us", "src_ip_id"),
}
# Rankings of event values: kind -> (table, id column, first-use flag or None for credentials).
EVENT_VALUE_SOURCES = {
    VALUE_KINDS["username"]: (LOGIN_ATTEMPTS, "username_id", "username_first"),
    VALUE_KINDS["password"]: (LOGIN_ATTEMPTS, "password_id", "password_first"),
    VALUE_KINDS["input"]: (COMMANDS, "input_id", "input_first"),
    VALUE_KINDS["shasum"]: (DOWNLOADS, "shasum_id", "shasum_first"),
    VALUE_KINDS["credential"]: (LOGIN_ATTEMPTS, "credential_id", None),
}


def rebuild_summaries(conn: Connection, span: Span, sensor_ids: SensorIds = None) -> int:
    """Recompute the summaries of the pieces overlapping ``span`` for ``sensor_ids``.

    ``span`` is half-open, an unbounded end reaching past every stored event;
    ``sensor_ids`` None means every sensor. Returns the number of UTC days that
    held events and were recomputed.
    """
    if sensor_ids is not None and not sensor_ids:
        return 0
    ranges = {level.id: overlapping(span, level) for level in LEVELS}
    _delete_pieces(conn, ranges.values(), sensor_ids)
    bulk = bulk_operations(conn)
    days = 0
    for day in _days_with_events(conn, ranges[DAY.id], sensor_ids):
        _rebuild_day(conn, bulk, day, ranges, sensor_ids)
        days += 1
    return days


def overlapping(span: Span, level: Level) -> PieceRange:
    """The pieces of ``level`` that share at least a microsecond with ``span``."""
    return PieceRange(
        level,
        None if span.start_us is None else level.piece(span.start_us),
        None if span.end_us is None else level.piece(span.end_us - 1) + 1,
    )


def _covers(pieces: PieceRange, piece: int) -> bool:
    return (pieces.first is None or piece >= pieces.first) and (
        pieces.end is None or piece < pieces.end
    )


def _in_range(column: ColumnElement[Any], low: int | None, high: int | None) -> list[Any]:
    clauses = [] if low is None else [column >= low]
    return clauses + ([] if high is None else [column < high])


def _of_sensors(column: ColumnElement[Any], sensor_ids: SensorIds) -> list[Any]:
    return [] if sensor_ids is None else [column.in_(sorted(sensor_ids))]


def _delete_pieces(conn: Connection, ranges: Collection[PieceRange], sensor_ids: SensorIds) -> None:
    for pieces in ranges:
        tables = [ROLLUPS, ROLLUP_SETS, *([ROLLUP_VALUES] if pieces.level in VALUE_LEVELS else [])]
        for table in tables:
            c = table.c
            conn.execute(
                delete(table).where(
                    c.level == pieces.level.id,
                    *_in_range(c.piece, pieces.first, pieces.end),
                    *_of_sensors(c.sensor_id, sensor_ids),
                )
            )


def _days_with_events(conn: Connection, days: PieceRange, sensor_ids: SensorIds) -> Iterator[int]:
    """The UTC days in ``days`` that hold an event of the sensors, in order."""
    e = EVENTS.c
    day = days.first
    while True:
        after = [] if day is None else [e.ts_us >= DAY.start_of(day)]
        first = conn.scalar(
            select(func.min(e.ts_us)).where(*after, *_of_sensors(e.sensor_id, sensor_ids))
        )
        if first is None or (days.end is not None and DAY.piece(first) >= days.end):
            return
        day = DAY.piece(first)
        yield day
        day += 1


def _constant(value: int) -> ColumnElement[int]:
    # Inlined, so that a grouped expression is the same text in SELECT and GROUP BY.
    return literal_column(str(value), BigInteger)


def _piece_of(ts: ColumnElement[int], low: int, level: Level) -> ColumnElement[int]:
    """The piece of ``level`` holding ``ts``, for times at or after the day start ``low``.

    ``ts - low`` is not negative, so integer division (which truncates) floors.
    """
    offset = (ts - _constant(low)) // _constant(level.width_us)
    return offset + _constant(low // level.width_us)


def _flag_sum(condition: ColumnElement[Any]) -> ColumnElement[Any]:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def _per_piece(
    conn: Connection,
    table: Table,
    ts: str,
    low: int,
    level: Level,
    sensor_ids: SensorIds,
    figures: Sequence[ColumnElement[Any]] = (),
    value: str | None = None,
) -> Iterator[Any]:
    """(piece, sensor_id[, value], *figures) of ``table``'s rows of the day from ``low``.

    Grouped per piece of ``level`` and sensor (and ``value``, whose NULLs are left out).
    """
    c = table.c
    piece = _piece_of(c[ts], low, level)
    keys = [piece, c.sensor_id, *([] if value is None else [c[value]])]
    query = (
        select(*keys, *figures)
        .where(
            c[ts] >= low,
            c[ts] < low + DAY.width_us,
            *_of_sensors(c.sensor_id, sensor_ids),
            *([] if value is None else [c[value].is_not(None)]),
        )
        .group_by(*keys)
    )
    return iter(conn.execute(query))


def _rebuild_day(
    conn: Connection,
    bulk: BulkOps,
    day: int,
    ranges: dict[int, PieceRange],
    sensor_ids: SensorIds,
) -> None:
    low = DAY.start_of(day)
    changes = SummaryChanges()
    _count_events(conn, changes, low, sensor_ids)
    _count_sessions(conn, changes, low, sensor_ids)
    _collect_sets(conn, changes, low, sensor_ids)
    rollups = [row for row in changes.rollup_rows() if _covers(ranges[row[0]], row[1])]
    bulk.insert_rows(ROLLUPS, [*PIECE_KEY, *ROLLUP_RULES], rollups)
    sets = [
        (kind, level_id, piece, sensor_id, BitMap(members).serialize())
        for (kind, level_id, piece, sensor_id), members in sorted(
            changes.set_additions_by_level().items()
        )
        if _covers(ranges[level_id], piece)
    ]
    bulk.insert_rows(ROLLUP_SETS, SET_COLUMNS, sets)
    for level in VALUE_LEVELS:
        rows = [
            row
            for row in _value_rows(conn, low, level, sensor_ids)
            if _covers(ranges[level.id], row[2])
        ]
        bulk.insert_rows(ROLLUP_VALUES, VALUE_COLUMNS, rows)


def _minute(changes: SummaryChanges, minute: int, sensor_id: int) -> Counters:
    return changes.minutes.setdefault((MINUTE.id, minute, sensor_id), new_counters())


def _count_events(
    conn: Connection, changes: SummaryChanges, low: int, sensor_ids: SensorIds
) -> None:
    e = EVENTS.c
    figures = [func.count(), func.min(e.ts_us), func.max(e.ts_us)]
    for minute, sensor_id, events, first, last in _per_piece(
        conn, EVENTS, "ts_us", low, MINUTE, sensor_ids, figures
    ):
        counters = _minute(changes, minute, sensor_id)
        counters[at.EVENTS], counters[at.FIRST], counters[at.LAST] = events, first, last
    logins = [func.count(), _flag_sum(LOGIN_ATTEMPTS.c.success)]
    for minute, sensor_id, attempts, successes in _per_piece(
        conn, LOGIN_ATTEMPTS, "ts_us", low, MINUTE, sensor_ids, logins
    ):
        counters = _minute(changes, minute, sensor_id)
        counters[at.LOGINS], counters[at.SUCCESSES] = attempts, int(successes)
    for table, index in ((COMMANDS, at.COMMANDS), (DOWNLOADS, at.DOWNLOADS)):
        for minute, sensor_id, count in _per_piece(
            conn, table, "ts_us", low, MINUTE, sensor_ids, [func.count()]
        ):
            _minute(changes, minute, sensor_id)[index] = count


def _count_sessions(
    conn: Connection, changes: SummaryChanges, low: int, sensor_ids: SensorIds
) -> None:
    """Session figures by start, in the order of SESSION_COUNTERS, and the most commands."""
    s = SESSIONS.c
    figures = [
        func.count(),
        _flag_sum(s.login_successes > 0),
        _flag_sum(s.commands > 0),
        func.coalesce(func.sum(s.commands), 0),
        func.count(s.duration_us),
        func.coalesce(func.sum(s.duration_us), 0),
        _flag_sum(s.protocol == "ssh"),
        _flag_sum(s.protocol == "telnet"),
        func.coalesce(func.max(s.commands), 0),
    ]
    for minute, sensor_id, *share, most_commands in _per_piece(
        conn, SESSIONS, "start_ts_us", low, MINUTE, sensor_ids, figures
    ):
        counters = _minute(changes, minute, sensor_id)
        for index, value in zip(at.SESSION_AT, share, strict=True):
            counters[index] += int(value)
        counters[at.MOST_COMMANDS] = int(most_commands)


def _collect_sets(
    conn: Connection, changes: SummaryChanges, low: int, sensor_ids: SensorIds
) -> None:
    finest = SET_LEVELS[0]
    for kind, (table, ts, column) in SET_SOURCES.items():
        for piece, sensor_id, value_id in _per_piece(
            conn, table, ts, low, finest, sensor_ids, value=column
        ):
            key = (kind, finest.id, piece, sensor_id)
            changes.set_additions.setdefault(key, set()).add(value_id)


def _value_rows(
    conn: Connection, low: int, level: Level, sensor_ids: SensorIds
) -> Iterator[tuple[Any, ...]]:
    """``rollup_values`` rows of the day's pieces of ``level``, in VALUE_COLUMNS order."""
    sources: list[tuple[int, Table, str, str, list[ColumnElement[Any]]]] = []
    for kind, (table, column, flag) in EVENT_VALUE_SOURCES.items():
        c = table.c
        first_uses = literal(0) if flag is None else _flag_sum(c[flag])
        successes = _flag_sum(c.success) if flag is None else literal(0)
        figures = [func.count(), first_uses, func.min(c.ts_us), func.max(c.ts_us), successes]
        sources.append((kind, table, "ts_us", column, figures))
    s = SESSIONS.c
    # A source IP's use is a session started in the piece, until the session's last event.
    uses = [func.count(), func.count(), func.min(s.start_ts_us), func.max(s.end_ts_us), literal(0)]
    sources.append((VALUE_KINDS["src_ip"], SESSIONS, "start_ts_us", "src_ip_id", uses))
    for kind, table, ts, column, figures in sources:
        for piece, sensor_id, value_id, *values in _per_piece(
            conn, table, ts, low, level, sensor_ids, figures, value=column
        ):
            yield (kind, level.id, piece, sensor_id, value_id, *(int(v) for v in values))
