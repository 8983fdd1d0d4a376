"""Exact distinct counts: unions of the ``rollup_sets`` bitmaps of a scope's pieces.

The sets are kept per hour and day; the partial hours at the edges add the ids
of their raw rows. Source IPs are those of the sessions
that started in the scope; usernames, passwords and hashes those of its events.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pyroaring import BitMap
from sqlalchemy import Connection, select

from cowrie_stats.db.models import DOWNLOADS, LOGIN_ATTEMPTS, ROLLUP_SETS, SESSIONS, VALUE_KINDS
from cowrie_stats.ingest.summaries import SET_LEVELS
from cowrie_stats.queries.scope import Scope

SRC_IP, USERNAME, PASSWORD, SHASUM = (
    VALUE_KINDS[name] for name in ("src_ip", "username", "password", "shasum")
)
# kind -> (table, time column, id column) of its raw rows
RAW = {
    SRC_IP: (SESSIONS, "start_ts_us", "src_ip_id"),
    USERNAME: (LOGIN_ATTEMPTS, "ts_us", "username_id"),
    PASSWORD: (LOGIN_ATTEMPTS, "ts_us", "password_id"),
    SHASUM: (DOWNLOADS, "ts_us", "shasum_id"),
}

# (kind, sensor_id) -> the ids seen
Sets = dict[tuple[int, int], BitMap]


def sets_by_sensor(conn: Connection, scope: Scope, kinds: Sequence[int]) -> Sets:
    """The distinct ids of each kind per sensor over the scope."""
    scope = scope.at(SET_LEVELS)
    found: Sets = {}
    t = ROLLUP_SETS.c
    query = select(t.kind, t.sensor_id, t.members).where(
        t.kind.in_(kinds), scope.in_pieces(t.level, t.piece, t.sensor_id)
    )
    for kind, sensor_id, members in conn.execute(query):
        _bitmap(found, kind, sensor_id).update(BitMap.deserialize(bytes(members)))
    if scope.has_edges:
        for kind in kinds:
            table, ts, column = RAW[kind]
            c = table.c
            raw = select(c.sensor_id, c[column]).where(
                scope.on_edges(c[ts], c.sensor_id), c[column].is_not(None)
            )
            for sensor_id, value_id in conn.execute(raw):
                _bitmap(found, kind, sensor_id).add(value_id)
    return found


def _bitmap(found: Sets, kind: int, sensor_id: int) -> BitMap:
    bitmap = found.get((kind, sensor_id))
    if bitmap is None:
        bitmap = found[(kind, sensor_id)] = BitMap()
    return bitmap


def count(sets: Sets, kind: int) -> int:
    """Distinct ids of ``kind`` over every sensor."""
    chosen = [bitmap for (k, _), bitmap in sets.items() if k == kind]
    return len(BitMap.union(*chosen)) if chosen else 0


def count_by_sensor(sets: Sets, kind: int) -> dict[int, int]:
    return {sensor_id: len(bitmap) for (k, sensor_id), bitmap in sets.items() if k == kind}


def union_by_piece(rows: Any) -> dict[int, BitMap]:
    """(piece, members) rows as one bitmap per piece (the union over sensors)."""
    by_piece: dict[int, BitMap] = {}
    for piece, members in rows:
        bitmap = BitMap.deserialize(bytes(members))
        known = by_piece.get(piece)
        by_piece[piece] = bitmap if known is None else known | bitmap
    return by_piece
