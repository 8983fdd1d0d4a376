"""Sessions that used a value before a window's start and again inside it.

Their rows inside the window carry no first-use flag (their first use lies
before the window), so counting a value's flagged uses misses them. Only
sessions that straddle the window's start qualify; one started at most its
sensor's longest session before the start, so the search is a short range of
the sessions' start index (usually a handful of sessions, often none), and all
their rows lie in a short time range: one query fetches them for every ranked
value column.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

from sqlalchemy import Connection, func, literal, select, union_all

from cowrie_stats.db.models import FIRST_USE_FLAGS, SENSORS, SESSIONS, Base
from cowrie_stats.queries.scope import Scope
from cowrie_stats.timeline import Span


@dataclass(frozen=True)
class _Straddling:
    """Sessions that started before the window's start and end at or after it."""

    ids: tuple[int, ...] = ()
    first_ts_us: int = 0  # every row of these sessions lies between the two
    last_ts_us: int = 0


def _straddling_sessions(conn: Connection, scope: Scope) -> _Straddling:
    start = scope.span.start_us
    if start is None:
        return _Straddling()
    sensors, s = SENSORS.c, SESSIONS.c
    longest = select(func.coalesce(func.max(sensors.max_session_us), 0))
    if scope.sensor_ids is not None:
        longest = longest.where(sensors.id.in_(scope.sensor_ids))
    query = select(s.id, s.start_ts_us, s.end_ts_us).where(
        s.start_ts_us >= start - longest.scalar_subquery(),
        scope.within(Span(None, start)).where(s.start_ts_us, s.sensor_id),
        s.end_ts_us >= start,
    )
    rows = conn.execute(query).all()
    if not rows:
        return _Straddling()
    return _Straddling(
        tuple(row[0] for row in rows), min(row[1] for row in rows), max(row[2] for row in rows)
    )


def sessions_from_before(conn: Connection, scope: Scope) -> defaultdict[str, Counter[int]]:
    """Per value column (``username``, ``input``, ...), per value id: such sessions."""
    straddling = _straddling_sessions(conn, scope)
    start = scope.span.start_us
    counts: defaultdict[str, Counter[int]] = defaultdict(Counter)
    if start is None or not straddling.ids:
        return counts
    end = straddling.last_ts_us + 1
    if scope.span.end_us is not None:
        end = min(end, scope.span.end_us)
    rows = scope.within(Span(straddling.first_ts_us, end))
    parts = []
    for table_name, pairs in FIRST_USE_FLAGS.items():
        t = Base.metadata.tables[table_name].c
        for column, _ in pairs:
            value_id = t[f"{column}_id"]
            parts.append(
                select(literal(column).label("kind"), t.session_id, t.ts_us, value_id).where(
                    rows.where(t.ts_us, t.sensor_id),
                    t.session_id.in_(straddling.ids),
                    value_id.is_not(None),
                )
            )
    before: set[tuple[str, int, int]] = set()
    inside: set[tuple[str, int, int]] = set()
    for kind, session_id, ts_us, value in conn.execute(union_all(*parts)):
        (before if ts_us < start else inside).add((kind, session_id, value))
    for kind, _, value in before & inside:
        counts[kind][value] += 1
    return counts
