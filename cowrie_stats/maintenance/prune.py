"""Delete old data, or a sensor and everything of it, keeping every summary exact.

The rule (docs/operations.md, "Retention"): a prune deletes **whole sessions** --
with ``before``, those whose last event is before it; with a sensor, only that
sensor's -- together with all their events and per-event rows. A session still
going on at ``before`` is kept whole, so every remaining session has all its
events and the first-use flags stay right. The summaries of the pieces that held
the deleted rows are then rebuilt from the remaining raw rows
(:func:`~cowrie_stats.maintenance.rebuild.rebuild_summaries`), the sensors' first
and last event times and longest session are recomputed, a sensor left without
events is removed, and ``data_version`` is bumped so that servers drop cached
answers. Dictionary entries stay (other rows may use them; they cost little).

It goes a UTC day of session starts at a time, oldest first, each day its own
transaction under the ingest's lock. Every committed day leaves the database
consistent, and a prune that is killed and run again selects what is left and
ends exactly where an uninterrupted one would.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    delete,
    exists,
    func,
    select,
    update,
)

from cowrie_stats.db.models import (
    COMMANDS,
    DATA_VERSION,
    DEAD_LETTERS,
    DOWNLOADS,
    EVENTS,
    LOGIN_ATTEMPTS,
    ROLLUPS,
    SENSORS,
    SESSIONS,
)
from cowrie_stats.ingest.operations import bulk_operations
from cowrie_stats.maintenance import dead_letters
from cowrie_stats.maintenance.rebuild import rebuild_summaries
from cowrie_stats.timeline import DAY, Span

log = logging.getLogger(__name__)
DETAIL_TABLES = (LOGIN_ATTEMPTS, COMMANDS, DOWNLOADS)


class UnknownSensorError(LookupError):
    """The sensor to prune is not known to the database."""


@dataclass(frozen=True)
class Selection:
    """What a prune deletes: the sessions whose last event is before ``before_us``
    (None: whatever their time) of the sensor ``sensor`` (None: of every sensor)."""

    before_us: int | None = None
    sensor: str | None = None

    def __post_init__(self) -> None:
        if self.before_us is None and self.sensor is None:
            raise ValueError("a prune needs a time, a sensor or both")


@dataclass
class PruneReport:
    """What a prune deletes (a dry run: would delete), row counts per table."""

    sessions: int = 0
    events: int = 0
    login_attempts: int = 0
    commands: int = 0
    downloads: int = 0
    dead_letters: int = 0
    sensors_removed: list[str] = field(default_factory=list)
    days: int = 0  # transactions (UTC days of session starts)

    def add(self, other: PruneReport) -> None:
        for name in ROW_COUNTS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.sensors_removed.extend(other.sensors_removed)
        self.days += other.days

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


ROW_COUNTS = ("sessions", "events", "login_attempts", "commands", "downloads", "dead_letters")
# Per-session counts of ``sessions``: their sums are the rows a prune deletes.
SESSION_FIGURES = ("events", "login_attempts", "commands", "downloads")


def retention_cutoff(days: int, now: datetime | None = None) -> int:
    """The ``before`` of a retention of ``days`` whole UTC days before today, in µs.

    Day-aligned, so that every pass of a day prunes at the same instant and only
    the first one finds anything to delete.
    """
    today = (now or datetime.now(UTC)).astimezone(UTC).date()
    midnight = datetime(today.year, today.month, today.day, tzinfo=UTC) - timedelta(days=days)
    return (midnight - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def apply_retention(engine: Engine, days: int) -> PruneReport:
    """Prune what ``COWRIE_STATS_RETENTION_DAYS`` no longer keeps; logs what went."""
    before = retention_cutoff(days)
    report = prune(engine, Selection(before_us=before))
    if report.sessions or report.dead_letters:
        log.info("retention applied", extra={"retention_days": days, **report.to_dict()})
    return report


def _sensor_id(conn: Connection, selection: Selection) -> int | None:
    if selection.sensor is None:
        return None
    found = conn.scalar(select(SENSORS.c.id).where(SENSORS.c.name == selection.sensor))
    if found is None:
        raise UnknownSensorError(f"unknown sensor: {selection.sensor}")
    return int(found)


def _chosen(selection: Selection, sensor_id: int | None, day: int | None = None) -> list[Any]:
    """The conditions on ``sessions`` of the selected sessions (started on ``day``)."""
    s = SESSIONS.c
    clauses: list[Any] = []
    if selection.before_us is not None:
        clauses.append(s.end_ts_us < selection.before_us)
    if sensor_id is not None:
        clauses.append(s.sensor_id == sensor_id)
    if day is not None:
        clauses += [s.start_ts_us >= DAY.start_of(day), s.start_ts_us < DAY.start_of(day + 1)]
    return clauses


def _prunes_dead_letters(selection: Selection) -> bool:
    """Dead letters name no sensor: only a prune of every sensor by time takes them."""
    return selection.sensor is None and selection.before_us is not None


def _old_dead_letters(selection: Selection) -> dead_letters.Filter:
    return dead_letters.Filter(before_us=selection.before_us)


def plan(conn: Connection, selection: Selection) -> PruneReport:
    """What :func:`prune` would delete, without deleting anything (a dry run)."""
    sensor_id = _sensor_id(conn, selection)
    s = SESSIONS.c
    sums = [func.coalesce(func.sum(s[name]), 0) for name in SESSION_FIGURES]
    counts = conn.execute(select(func.count(), *sums).where(*_chosen(selection, sensor_id))).one()
    report = PruneReport()
    for name, value in zip(("sessions", *SESSION_FIGURES), counts, strict=True):
        setattr(report, name, int(value))
    if _prunes_dead_letters(selection):
        report.dead_letters = dead_letters.count(conn, _old_dead_letters(selection))
    removed = select(SENSORS.c.name).order_by(SENSORS.c.name)
    if sensor_id is not None:
        removed = removed.where(SENSORS.c.id == sensor_id)
    if selection.before_us is not None:  # a sensor's last event ends its last session
        removed = removed.where(SENSORS.c.last_ts_us < selection.before_us)
    report.sensors_removed = list(conn.scalars(removed))
    report.days = sum(1 for _ in _days(conn, selection, sensor_id))
    return report


def _days(conn: Connection, selection: Selection, sensor_id: int | None) -> Iterator[int]:
    """The UTC days on which selected sessions started, oldest first."""
    day = _next_day(conn, selection, sensor_id, None)
    while day is not None:
        yield day
        day = _next_day(conn, selection, sensor_id, day + 1)


def prune(engine: Engine, selection: Selection) -> PruneReport:
    """Delete what ``selection`` names, a day per transaction, oldest first.

    ``engine`` must be a writer engine (cowrie_stats.db.engines.create_db_engine).
    """
    total = PruneReport()
    with engine.connect() as conn:
        sensor_id = _sensor_id(conn, selection)
    day: int | None = None
    while True:
        with engine.begin() as conn:
            bulk_operations(conn).lock()  # one writer at a time, as ingest batches
            day = _next_day(conn, selection, sensor_id, day)
            if day is None:
                break
            done = _prune_day(conn, selection, sensor_id, day)
        total.add(done)
        log.debug("pruned a day", extra={"day": _day_text(day), **done.to_dict()})
        day += 1
    with engine.begin() as conn:
        bulk_operations(conn).lock()
        total.add(_finish(conn, selection, sensor_id))
    return total


def _day_text(day: int) -> str:
    return datetime.fromtimestamp(DAY.start_of(day) / 1_000_000, UTC).date().isoformat()


def _next_day(
    conn: Connection, selection: Selection, sensor_id: int | None, after: int | None
) -> int | None:
    """The first UTC day (from ``after``) on which a selected session started."""
    s = SESSIONS.c
    clauses = _chosen(selection, sensor_id)
    if after is not None:
        clauses.append(s.start_ts_us >= DAY.start_of(after))
    first = conn.scalar(select(func.min(s.start_ts_us)).where(*clauses))
    return None if first is None else DAY.piece(first)


def _prune_day(
    conn: Connection, selection: Selection, sensor_id: int | None, day: int
) -> PruneReport:
    """Delete the selected sessions started on ``day``, rebuild what held them."""
    s = SESSIONS.c
    chosen = _chosen(selection, sensor_id, day)
    spans = conn.execute(
        select(
            s.sensor_id,
            func.min(s.start_ts_us),
            func.max(s.end_ts_us),
            func.max(s.end_ts_us - s.start_ts_us),
        )
        .where(*chosen)
        .group_by(s.sensor_id)
    ).all()
    low = min(row[1] for row in spans)
    high = max(row[2] for row in spans)  # every row of these sessions is in [low, high]
    report = PruneReport(days=1)
    ids = select(s.id).where(*chosen)
    for table in DETAIL_TABLES:
        t = table.c
        deleted = conn.execute(
            delete(table).where(t.ts_us >= low, t.ts_us <= high, t.session_id.in_(ids))
        )
        setattr(report, table.name, deleted.rowcount)
    e = EVENTS.c
    theirs = exists().where(s.sensor_id == e.sensor_id, s.session == e.session, *chosen)
    report.events = conn.execute(
        delete(EVENTS).where(e.ts_us >= low, e.ts_us <= high, theirs)
    ).rowcount
    report.sessions = conn.execute(delete(SESSIONS).where(*chosen)).rowcount
    sensor_ids = [row[0] for row in spans]
    rebuild_summaries(conn, Span(low, high + 1), sensor_ids)
    report.sensors_removed = _settle_sensors(conn, {row[0]: row[3] for row in spans})
    _bump_data_version(conn)
    return report


def _settle_sensors(conn: Connection, longest_deleted: dict[int, int]) -> list[str]:
    """Recompute the sensors' first/last event and, where it may have gone, longest session.

    A sensor left without events is removed; returns the removed names. The
    day-level summaries are exact, so they give the bounds without a scan.
    """
    r, t = ROLLUPS.c, SENSORS.c
    ids = sorted(longest_deleted)
    bounds = {
        sensor_id: (first, last)
        for sensor_id, first, last in conn.execute(
            select(r.sensor_id, func.min(r.first_ts_us), func.max(r.last_ts_us))
            .where(r.level == DAY.id, r.sensor_id.in_(ids))
            .group_by(r.sensor_id)
        )
    }
    stored = dict(conn.execute(select(t.id, t.max_session_us).where(t.id.in_(ids))).all())
    removed = []
    for sensor_id in ids:
        if sensor_id not in bounds:
            removed.append(conn.scalar(select(t.name).where(t.id == sensor_id)))
            conn.execute(delete(SENSORS).where(t.id == sensor_id))
            continue
        first, last = bounds[sensor_id]
        values: dict[str, Any] = {"first_ts_us": first, "last_ts_us": last}
        if longest_deleted[sensor_id] >= stored.get(sensor_id, 0):  # the longest may be gone
            s = SESSIONS.c
            values["max_session_us"] = func.coalesce(
                select(func.max(s.end_ts_us - s.start_ts_us))
                .where(s.sensor_id == sensor_id)
                .scalar_subquery(),
                0,
            )
        conn.execute(update(SENSORS).where(t.id == sensor_id).values(values))
    return [name for name in removed if name is not None]


def _bump_data_version(conn: Connection) -> None:
    conn.execute(update(DATA_VERSION).values(version=DATA_VERSION.c.version + 1))


def _finish(conn: Connection, selection: Selection, sensor_id: int | None) -> PruneReport:
    """After the days: old dead letters, and the selected sensor if it has no events left."""
    report = PruneReport()
    if _prunes_dead_letters(selection):
        old = _old_dead_letters(selection).clauses()
        report.dead_letters = conn.execute(delete(DEAD_LETTERS).where(*old)).rowcount
    if sensor_id is not None and selection.before_us is None:
        report.sensors_removed = _settle_sensors(conn, {sensor_id: 0})
        if report.sensors_removed:
            _bump_data_version(conn)
    return report
