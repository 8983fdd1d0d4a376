"""What a request covers: its window cut into summary pieces, and its sensors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import ColumnElement, Connection, and_, literal, or_, select

from cowrie_stats.db.models import SENSORS
from cowrie_stats.errors import NotFoundError
from cowrie_stats.timeline import LEVELS, Cut, Level, PieceRange, Span, cut
from cowrie_stats.validation import Filters, Window


def timestamp(ts_us: int | None) -> Timestamp | None:
    if ts_us is None:
        return None
    seconds, micros = divmod(ts_us, 1_000_000)
    return Timestamp(seconds=seconds, nanos=micros * 1000)


def bytewise(column: ColumnElement[Any], conn: Connection) -> ColumnElement[Any]:
    """Order strings by their bytes (PostgreSQL's default collation would not)."""
    return column.collate("C") if conn.dialect.name == "postgresql" else column


def bounded(
    column: ColumnElement[Any],
    sensor: ColumnElement[Any],
    span: Span,
    sensor_ids: tuple[int, ...] | None,
) -> ColumnElement[bool]:
    """``span.start_us <= column < span.end_us`` (None: unbounded), the sensor in ``sensor_ids``."""
    clauses: list[ColumnElement[bool]] = []
    if span.start_us is not None:
        clauses.append(column >= span.start_us)
    if span.end_us is not None:
        clauses.append(column < span.end_us)
    if sensor_ids is not None:
        clauses.append(sensor.in_(sensor_ids))
    return and_(literal(True), *clauses)


def resolve_sensors(conn: Connection, names: Sequence[str]) -> dict[int, str] | None:
    """Sensor ids of ``names``; None when no filter. Unknown names are NOT_FOUND."""
    if not names:
        return None
    rows = conn.execute(select(SENSORS.c.id, SENSORS.c.name).where(SENSORS.c.name.in_(names)))
    found = {name: sensor_id for sensor_id, name in rows}
    missing = [name for name in names if name not in found]
    if missing:
        raise NotFoundError(
            f"unknown sensor(s): {', '.join(missing)}", {"sensors": ",".join(missing)}
        )
    return {sensor_id: name for name, sensor_id in found.items()}


@dataclass(frozen=True)
class Scope:
    """A span of time and the sensors in it (None: every sensor), cut into the pieces of
    ``levels``: the whole pieces come from summaries, the edges from raw rows."""

    span: Span
    sensor_ids: tuple[int, ...] | None
    levels: tuple[Level, ...] = LEVELS
    cut: Cut = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "cut", cut(self.span, self.levels))

    @classmethod
    def of(cls, conn: Connection, filters: Filters) -> Scope:
        sensors = resolve_sensors(conn, filters.sensors)
        return cls(_span(filters.window), None if sensors is None else tuple(sensors))

    def within(self, span: Span) -> Scope:
        return Scope(span, self.sensor_ids, self.levels)

    def at(self, levels: tuple[Level, ...]) -> Scope:
        """The same span and sensors cut into pieces of other levels."""
        return Scope(self.span, self.sensor_ids, levels)

    def where(self, ts: ColumnElement[Any], sensor: ColumnElement[Any]) -> ColumnElement[bool]:
        """Rows of the whole span."""
        return bounded(ts, sensor, self.span, self.sensor_ids)

    def on_edges(self, ts: ColumnElement[Any], sensor: ColumnElement[Any]) -> ColumnElement[bool]:
        """Rows of the span's edges (partial pieces), which no summary piece covers."""
        spans = [bounded(ts, sensor, edge, None) for edge in self.cut.edges]
        clause = or_(*spans) if spans else literal(False)
        if self.sensor_ids is not None:
            clause = and_(clause, sensor.in_(self.sensor_ids))
        return clause

    @property
    def has_edges(self) -> bool:
        return bool(self.cut.edges)

    def in_pieces(
        self,
        level: ColumnElement[Any],
        piece: ColumnElement[Any],
        sensor: ColumnElement[Any],
    ) -> ColumnElement[bool]:
        """Summary rows of the span's whole pieces."""
        ranges = self.cut.pieces
        clause = or_(*(_piece_range(level, piece, r) for r in ranges)) if ranges else literal(False)
        if self.sensor_ids is not None:
            clause = and_(clause, sensor.in_(self.sensor_ids))
        return clause


def _piece_range(
    level: ColumnElement[Any], piece: ColumnElement[Any], pieces: PieceRange
) -> ColumnElement[bool]:
    clauses = [level == pieces.level.id]
    if pieces.first is not None:
        clauses.append(piece >= pieces.first)
    if pieces.end is not None:
        clauses.append(piece < pieces.end)
    return and_(*clauses)


def _span(window: Window) -> Span:
    return Span(window.start_us, window.end_us)
