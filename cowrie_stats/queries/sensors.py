"""GetSensorStats: per-sensor figures of a window, and staleness."""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import Connection, select

from cowrie_stats._gen.cowrie.stats.v1 import stats_pb2
from cowrie_stats.db.models import SENSORS
from cowrie_stats.queries.counters import totals_by_sensor
from cowrie_stats.queries.scope import Scope, bytewise, resolve_sensors, timestamp
from cowrie_stats.queries.sets import SRC_IP, count_by_sensor, sets_by_sensor
from cowrie_stats.timeline import Span
from cowrie_stats.validation import Filters


@dataclass(frozen=True)
class SensorSnapshot:
    """Sensor figures from the data alone; staleness is added at answer time."""

    response: stats_pb2.GetSensorStatsResponse
    last_event_us: tuple[int, ...]  # per entry of response.sensors, ever (not windowed)


def sensor_stats(conn: Connection, filters: Filters) -> SensorSnapshot:
    sensors = resolve_sensors(conn, filters.sensors)
    query = select(SENSORS.c.id, SENSORS.c.name, SENSORS.c.last_ts_us).order_by(
        bytewise(SENSORS.c.name, conn)
    )
    if sensors is not None:
        query = query.where(SENSORS.c.id.in_(tuple(sensors)))
    known = conn.execute(query).all()
    window = filters.window
    scope = Scope(Span(window.start_us, window.end_us), None if sensors is None else tuple(sensors))
    totals = totals_by_sensor(conn, scope)
    ips = count_by_sensor(sets_by_sensor(conn, scope, [SRC_IP]), SRC_IP)
    response = stats_pb2.GetSensorStatsResponse(total_sensors=len(known))
    for sensor_id, name, _ in known:
        row = totals.get(sensor_id, {})
        response.sensors.append(
            stats_pb2.SensorStats(
                sensor=name,
                sessions=int(row.get("sessions") or 0),
                unique_source_ips=ips.get(sensor_id, 0),
                events=int(row.get("events") or 0),
                login_successes=int(row.get("login_successes") or 0),
                file_downloads=int(row.get("downloads") or 0),
                first_seen=timestamp(row.get("first_ts_us")),
                last_seen=timestamp(row.get("last_ts_us")),
            )
        )
    return SensorSnapshot(response, tuple(row[2] for row in known))


def with_staleness(
    snapshot: SensorSnapshot, stale_after_us: int, now_us: int | None = None
) -> stats_pb2.GetSensorStatsResponse:
    """A copy of the snapshot's response with ``stale`` set for the clock now."""
    now = int(time.time() * 1_000_000) if now_us is None else now_us
    response = stats_pb2.GetSensorStatsResponse()
    response.CopyFrom(snapshot.response)
    for sensor, last_event_us in zip(response.sensors, snapshot.last_event_us, strict=True):
        sensor.stale = last_event_us < now - stale_after_us
    return response
