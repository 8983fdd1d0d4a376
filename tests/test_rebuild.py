"""rebuild_summaries: the summaries of a span recomputed from the raw rows equal their definition.

The summaries are damaged on purpose (rows deleted, figures changed, rows added
for pieces that hold nothing), or raw rows are deleted under them; a rebuild of
the affected span must give back exactly what tests/summaries_definition.py
computes from the raw rows, and leave every piece outside the span as it was.
"""

from __future__ import annotations

from pathlib import Path

import summaries_definition
from conftest import Database
from sqlalchemy import text

from cowrie_stats.maintenance.rebuild import overlapping, rebuild_summaries
from cowrie_stats.timeline import DAY, HOUR, LEVELS, MINUTE, PieceRange, Span


def _damage(db: Database, where: str, invent: tuple[int, int] = (MINUTE.id, 1)) -> None:
    """Change and delete summary rows matching ``where`` (SQL on level/piece), and invent
    rows for the (level, piece) ``invent`` where a sensor has none."""
    with db.engine.begin() as conn:
        conn.execute(text(f"UPDATE rollups SET events = events + 7, sessions = 0 WHERE {where}"))
        conn.execute(text(f"DELETE FROM rollup_sets WHERE {where}"))
        conn.execute(text(f"UPDATE rollup_values SET uses = uses * 3 WHERE {where}"))
        conn.execute(
            text(
                "INSERT INTO rollups (level, piece, sensor_id, events)"
                " SELECT :level, :piece, id, 5 FROM sensors WHERE 1 = 1 ON CONFLICT DO NOTHING"
            ),
            {"level": invent[0], "piece": invent[1]},
        )


def _bounds(db: Database) -> tuple[int, int]:
    with db.engine.connect() as conn:
        low, high = conn.execute(text("SELECT min(ts_us), max(ts_us) FROM events")).one()
    return int(low), int(high)


def test_a_full_rebuild_repairs_any_damage(db: Database, tmp_path: Path) -> None:
    db.ingest_sample(tmp_path)
    expected = summaries_definition.defined(db.engine)
    _damage(db, "1 = 1")
    assert summaries_definition.stored(db.engine) != expected
    with db.engine.begin() as conn:
        days = rebuild_summaries(conn, Span(None, None))
    assert days == 2  # the sample spans two UTC days
    assert summaries_definition.stored(db.engine) == expected


def test_a_span_rebuild_touches_only_the_pieces_it_overlaps(db: Database, tmp_path: Path) -> None:
    db.ingest_sample(tmp_path)
    low, high = _bounds(db)
    middle = (low + high) // 2 + 17_000_123  # not on any piece boundary
    span = Span(middle, middle + 3 * HOUR.width_us + 5)
    inside = " OR ".join(_piece_sql(overlapping(span, level)) for level in LEVELS)
    _damage(db, inside, (MINUTE.id, MINUTE.piece(middle)))
    damaged = summaries_definition.stored(db.engine)
    with db.engine.begin() as conn:
        rebuild_summaries(conn, span)
    assert summaries_definition.stored(db.engine) == summaries_definition.defined(db.engine)
    # Outside the span nothing was looked at: damage there stays.
    _damage(db, f"level = {HOUR.id} AND piece < {HOUR.piece(middle)}", (DAY.id, 1))
    outside = summaries_definition.stored(db.engine)
    with db.engine.begin() as conn:
        rebuild_summaries(conn, span)
    assert summaries_definition.stored(db.engine) == outside != damaged


def _piece_sql(pieces: PieceRange) -> str:
    return f"(level = {pieces.level.id} AND piece >= {pieces.first} AND piece < {pieces.end})"


def test_raw_rows_deleted_under_the_summaries_of_one_sensor(db: Database, tmp_path: Path) -> None:
    """Whole sessions go from one sensor; that sensor's pieces are rebuilt, others stay."""
    db.ingest_sample(tmp_path)
    with db.engine.begin() as conn:
        sensor_id, name = conn.execute(
            text("SELECT id, name FROM sensors ORDER BY name LIMIT 1")
        ).one()
        low, high = conn.execute(
            text(
                "SELECT min(start_ts_us), max(end_ts_us) FROM sessions"
                " WHERE sensor_id = :s AND id % 3 = 0"
            ),
            {"s": sensor_id},
        ).one()
        for table in ("login_attempts", "commands", "downloads"):
            conn.execute(
                text(
                    f"DELETE FROM {table} WHERE session_id IN"
                    " (SELECT id FROM sessions WHERE sensor_id = :s AND id % 3 = 0)"
                ),
                {"s": sensor_id},
            )
        conn.execute(
            text(
                "DELETE FROM events WHERE EXISTS (SELECT 1 FROM sessions s"
                " WHERE s.sensor_id = events.sensor_id AND s.session = events.session"
                " AND s.sensor_id = :s AND s.id % 3 = 0)"
            ),
            {"s": sensor_id},
        )
        conn.execute(
            text("DELETE FROM sessions WHERE sensor_id = :s AND id % 3 = 0"), {"s": sensor_id}
        )
    assert summaries_definition.stored(db.engine) != summaries_definition.defined(db.engine)
    with db.engine.begin() as conn:
        rebuild_summaries(conn, Span(low, high + 1), [sensor_id])
    assert summaries_definition.stored(db.engine) == summaries_definition.defined(db.engine)
    assert name  # the sensor itself stays


def test_nothing_to_rebuild(db: Database) -> None:
    with db.engine.begin() as conn:
        assert rebuild_summaries(conn, Span(None, None)) == 0
        assert rebuild_summaries(conn, Span(0, MINUTE.width_us), []) == 0


def test_overlapping_pieces_of_a_span() -> None:
    span = Span(DAY.width_us + 1, 2 * DAY.width_us + 1)
    assert overlapping(span, DAY) == PieceRange(DAY, 1, 3)
    assert overlapping(span, HOUR) == PieceRange(HOUR, 24, 49)
    assert overlapping(Span(None, MINUTE.width_us), MINUTE) == PieceRange(MINUTE, None, 1)
    assert overlapping(Span(-1, None), MINUTE) == PieceRange(MINUTE, -1, None)
