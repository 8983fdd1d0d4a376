"""What one ingest batch writes, computed from its reads without a connection.

:class:`BatchReads` holds everything a batch needs from the database, read
before anything is computed; :func:`plan_batch` turns those reads and the
batch's new events into a :class:`BatchPlan` (pure Python, no connection, so it
can run while the events are being stored, and be tested without a database);
:meth:`cowrie_stats.ingest.bulk.BulkOps.apply` writes the plan.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import Table

from cowrie_stats.db.models import COMMANDS, DOWNLOADS, FIRST_USE_FLAGS, LOGIN_ATTEMPTS
from cowrie_stats.ingest.details import (
    CommandRow,
    DetailRow,
    DownloadRow,
    LoginRow,
    StoredFirstRow,
    Unflag,
    detail_rows,
    with_first_use_flags,
)
from cowrie_stats.ingest.merge import MERGE_ORDER, SessionRow, merge_event, new_session
from cowrie_stats.ingest.parse import ParsedEvent
from cowrie_stats.ingest.summaries import SummaryChanges

SessionKey = tuple[int, str]  # (sensor_id, session)


class EventRow(NamedTuple):
    """An ``events`` row, in the table's column order (it is COPYed as is)."""

    hash: bytes
    sensor_id: int
    session: str
    eventid: str
    ts_us: int
    raw: str


EVENT_COLUMNS = list(EventRow._fields)


class DetailTable(NamedTuple):
    table: Table
    columns: list[str]


DETAIL_TABLES = {
    "login_attempts": DetailTable(LOGIN_ATTEMPTS, list(LoginRow._fields)),
    "commands": DetailTable(COMMANDS, list(CommandRow._fields)),
    "downloads": DetailTable(DOWNLOADS, list(DownloadRow._fields)),
}


@dataclass(frozen=True)
class BatchReads:
    """What a batch needs from the database, read before its plan is computed."""

    sensor_ids: Mapping[str, int]  # every sensor of the batch
    stored_sessions: Mapping[SessionKey, Mapping[str, Any]]  # the sessions it continues
    new_session_ids: Sequence[int]  # one per session it starts
    stored_first: Mapping[str, Sequence[StoredFirstRow]]  # per detail table
    value_ids: Mapping[tuple[int, str], int]  # every (kind, text) it counts
    longest_known: Mapping[int, int]  # sensor id -> a lower bound of max_session_us


@dataclass(frozen=True)
class BatchPlan:
    """Every row a batch writes, and how the summaries change."""

    events: list[EventRow]
    new_sessions: list[dict[str, Any]]  # whole sessions rows, by column
    changed_sessions: list[dict[str, Any]]  # whole sessions rows, by column
    longest_sessions: dict[int, int]  # sensor id -> a longer session span than known
    details: dict[str, list[DetailRow]]  # per detail table, flags set
    unflags: dict[str, list[Unflag]]  # per detail table, stored rows losing a flag
    summary: SummaryChanges


def event_rows(fresh: Sequence[ParsedEvent], sensor_ids: Mapping[str, int]) -> list[EventRow]:
    """The ``events`` rows of the batch: the first part of its plan, stored meanwhile."""
    return [
        EventRow(e.hash, sensor_ids[e.sensor], e.session, e.eventid, e.ts_us, e.raw) for e in fresh
    ]


def plan_batch(
    fresh: Sequence[ParsedEvent], reads: BatchReads, events: list[EventRow]
) -> BatchPlan:
    """The batch's writes: its new events (not stored before) merged into ``reads``."""
    sessions = _merged_sessions(fresh, reads)
    changes = SummaryChanges()
    for row in sessions.values():
        changes.add_session(row.stored, row.values)
    changes.add_events(fresh, reads.sensor_ids)
    session_ids = {key: row.values["id"] for key, row in sessions.items()}
    rows = detail_rows(fresh, reads.sensor_ids, session_ids, reads.value_ids).by_table()
    details: dict[str, list[DetailRow]] = {}
    unflags: dict[str, list[Unflag]] = {}
    for table in DETAIL_TABLES:
        details[table], unflags[table] = with_first_use_flags(
            table, rows[table], reads.stored_first[table]
        )
    changes.add_credentials(details["login_attempts"])
    for table in DETAIL_TABLES:
        changes.add_detail_rows(table, details[table], FIRST_USE_FLAGS[table])
        for u in unflags[table]:
            changes.unflag(u.value_column, u.sensor_id, u.value_id, u.ts_us)
    merged = list(sessions.values())
    return BatchPlan(
        events=events,
        new_sessions=[row.values for row in merged if row.is_new],
        changed_sessions=[row.values for row in merged if not row.is_new],
        longest_sessions=_longer_sessions(merged, reads.longest_known),
        details=details,
        unflags=unflags,
        summary=changes,
    )


def _merged_sessions(
    fresh: Sequence[ParsedEvent], reads: BatchReads
) -> dict[SessionKey, SessionRow]:
    """The batch's sessions: the stored ones it continues and the new ones, merged."""
    ids, value_ids = reads.sensor_ids, reads.value_ids
    sessions = {
        key: SessionRow(dict(stored), stored) for key, stored in reads.stored_sessions.items()
    }
    new_ids = iter(reads.new_session_ids)
    for e in sorted(fresh, key=MERGE_ORDER):
        key = (ids[e.sensor], e.session)
        row = sessions.get(key)
        if row is None:
            row = sessions[key] = new_session(*key, next(new_ids), e)
        merge_event(row.values, e, value_ids)
    return sessions


def _longer_sessions(rows: Sequence[SessionRow], known: Mapping[int, int]) -> dict[int, int]:
    """Per sensor, its longest session span of the batch where longer than ``known``.

    ``sensors.max_session_us`` only grows, so batches whose sessions are all
    shorter than a known lower bound write nothing.
    """
    longest: dict[int, int] = {}
    for row in rows:
        span = row.values["end_ts_us"] - row.values["start_ts_us"]
        sensor_id = row.values["sensor_id"]
        if span > max(longest.get(sensor_id, 0), known.get(sensor_id, 0)):
            longest[sensor_id] = span
    return longest
