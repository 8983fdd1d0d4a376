"""All SQL of the statistics RPCs, in one place.

Every figure of a window comes from the summaries the ingest keeps per UTC
minute, hour and day (cowrie_stats.timeline, docs/architecture.md): counters
from ``rollups``, distinct counts from the ``rollup_sets`` bitmaps, rankings
from ``rollup_values``; only the window's partial edges are read from the raw
rows. Counting rules: docs/api.md. Session figures select sessions by their
start; event figures select events by their timestamp.

* :mod:`.scope` -- the window's pieces and sensors;
* :mod:`.counters`, :mod:`.sets` -- additive figures and distinct counts;
* :mod:`.sessions`, :mod:`.threats`, :mod:`.sensors` -- one module per RPC.
"""

from __future__ import annotations

from sqlalchemy import Connection, select

from cowrie_stats.db.models import DATA_VERSION
from cowrie_stats.queries.scope import resolve_sensors
from cowrie_stats.queries.sensors import SensorSnapshot, sensor_stats, with_staleness
from cowrie_stats.queries.sessions import session_stats
from cowrie_stats.queries.threats import threat_stats


def data_version(conn: Connection) -> int:
    """The ingest batch counter of the data this connection sees."""
    return int(conn.execute(select(DATA_VERSION.c.version)).scalar_one())


__all__ = [
    "SensorSnapshot",
    "data_version",
    "resolve_sensors",
    "sensor_stats",
    "session_stats",
    "threat_stats",
    "with_staleness",
]
