"""Counters of a scope: ``rollups`` for its whole pieces, raw rows for its edges.

The figures and how they combine are those of ``rollups`` (cowrie_stats.db.models):
counts add up, the first and last event take the minimum and maximum, and so
does the largest session.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import ColumnElement, Connection, case, func, select

from cowrie_stats.db.models import (
    COMMANDS,
    DOWNLOADS,
    EVENTS,
    LOGIN_ATTEMPTS,
    ROLLUP_COMBINE,
    ROLLUPS,
    SESSIONS,
)
from cowrie_stats.queries.scope import Scope

Totals = dict[str, int | None]  # ROLLUP_COMBINE' figures


def empty_totals() -> Totals:
    return {name: (None if rule in ("min", "max") else 0) for name, rule in ROLLUP_COMBINE.items()}


def combine(into: Totals, figures: Iterable[tuple[str, Any]]) -> None:
    """Fold figures into ``into`` by each figure's rule."""
    for name, value in figures:
        if value is None:
            continue
        rule, known = ROLLUP_COMBINE[name], into[name]
        if rule == "add":
            into[name] = int(known or 0) + int(value)
        elif known is None:
            into[name] = int(value)
        else:
            into[name] = min(known, int(value)) if rule == "min" else max(known, int(value))


def _aggregate(column: ColumnElement[Any], name: str) -> ColumnElement[Any]:
    rule = ROLLUP_COMBINE[name]
    if rule == "add":
        return func.sum(column)
    return func.min(column) if rule == "min" else func.max(column)


def totals_by_sensor(conn: Connection, scope: Scope) -> dict[int, Totals]:
    """Every rollup figure per sensor id over the scope."""
    totals: dict[int, Totals] = {}
    for sensor_id, figures in _pieces(conn, scope):
        combine(totals.setdefault(sensor_id, empty_totals()), figures)
    if scope.has_edges:
        for sensor_id, figures in _edges(conn, scope):
            combine(totals.setdefault(sensor_id, empty_totals()), figures)
    return totals


def total(per_sensor: dict[int, Totals]) -> Totals:
    """The figures of all sensors together."""
    result = empty_totals()
    for figures in per_sensor.values():
        combine(result, figures.items())
    return result


def _pieces(conn: Connection, scope: Scope) -> list[tuple[int, list[tuple[str, Any]]]]:
    r = ROLLUPS.c
    names = list(ROLLUP_COMBINE)
    query = (
        select(r.sensor_id, *(_aggregate(r[name], name) for name in names))
        .where(scope.in_pieces(r.level, r.piece, r.sensor_id))
        .group_by(r.sensor_id)
    )
    return [(row[0], list(zip(names, row[1:], strict=True))) for row in conn.execute(query)]


def session_figures(session: Any) -> list[tuple[str, ColumnElement[Any]]]:
    """SQL for the session figures of ``sessions`` rows (alias ``session``), by name."""
    s = session.c
    duration = s.duration_us
    return [
        ("sessions", func.count()),
        ("sessions_with_login_success", func.sum(case((s.login_successes > 0, 1), else_=0))),
        ("sessions_with_commands", func.sum(case((s.commands > 0, 1), else_=0))),
        ("session_commands", func.sum(s.commands)),
        ("max_session_commands", func.max(s.commands)),
        ("sessions_with_duration", func.count(duration)),
        ("duration_us", func.sum(duration)),
        ("ssh_sessions", func.sum(case((s.protocol == "ssh", 1), else_=0))),
        ("telnet_sessions", func.sum(case((s.protocol == "telnet", 1), else_=0))),
    ]


def _event_figures() -> list[tuple[Any, list[tuple[str, ColumnElement[Any]]]]]:
    la = LOGIN_ATTEMPTS.c
    return [
        (
            EVENTS,
            [
                ("events", func.count()),
                ("first_ts_us", func.min(EVENTS.c.ts_us)),
                ("last_ts_us", func.max(EVENTS.c.ts_us)),
            ],
        ),
        (
            LOGIN_ATTEMPTS,
            [
                ("login_attempts", func.count()),
                ("login_successes", func.sum(case((la.success.is_(True), 1), else_=0))),
            ],
        ),
        (COMMANDS, [("commands", func.count())]),
        (DOWNLOADS, [("downloads", func.count())]),
    ]


def _edges(conn: Connection, scope: Scope) -> list[tuple[int, list[tuple[str, Any]]]]:
    """The figures of the raw rows on the scope's edges (a partial minute each at most)."""
    found: list[tuple[int, list[tuple[str, Any]]]] = []
    sources = [
        *((table, table.c.ts_us, figures) for table, figures in _event_figures()),
        (SESSIONS, SESSIONS.c.start_ts_us, session_figures(SESSIONS)),
    ]
    for table, ts, figures in sources:
        names = [name for name, _ in figures]
        query = (
            select(table.c.sensor_id, *(expression for _, expression in figures))
            .where(scope.on_edges(ts, table.c.sensor_id))
            .group_by(table.c.sensor_id)
        )
        found.extend(
            (row[0], list(zip(names, row[1:], strict=True))) for row in conn.execute(query)
        )
    return found
