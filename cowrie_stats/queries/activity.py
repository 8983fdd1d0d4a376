"""Each sensor's all-time activity, for the Prometheus series of cowrie_stats.activity.

Sums of the day-level ``rollups``: one row per sensor and day it saw, never the
raw rows, so a scrape costs about what a one-day statistics call costs.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, and_, func, select

from cowrie_stats.db.models import ROLLUPS, SENSORS
from cowrie_stats.queries.scope import bytewise
from cowrie_stats.timeline import DAY

#: The figures, as named in ``rollups``.
FIGURES = ("sessions", "login_attempts", "login_successes", "commands", "downloads")


@dataclass(frozen=True)
class SensorActivity:
    name: str
    last_event_us: int
    totals: dict[str, int]  # FIGURES


@dataclass(frozen=True)
class FleetActivity:
    sensors: list[SensorActivity]  # the busiest ``limit``, by sessions then name
    known_sensors: int


def fleet_activity(conn: Connection, limit: int) -> FleetActivity:
    """The all-time totals of the ``limit`` sensors with the most sessions."""
    s, r = SENSORS.c, ROLLUPS.c
    sums = [func.coalesce(func.sum(r[name]), 0).label(name) for name in FIGURES]
    query = (
        select(s.name, s.last_ts_us, *sums)
        .select_from(SENSORS.outerjoin(ROLLUPS, and_(r.sensor_id == s.id, r.level == DAY.id)))
        .group_by(s.id, s.name, s.last_ts_us)
        .order_by(sums[0].desc(), bytewise(s.name, conn))
        .limit(limit)
    )
    rows = [
        SensorActivity(name, last, {f: int(v) for f, v in zip(FIGURES, figures, strict=True)})
        for name, last, *figures in conn.execute(query)
    ]
    known = int(conn.scalar(select(func.count()).select_from(SENSORS)) or 0)
    return FleetActivity(rows, known)
