"""GetSessionStats: session and event figures of a window, and its time buckets."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, func, select

from cowrie_stats._gen.cowrie.stats.v1 import stats_pb2
from cowrie_stats.db.models import COMMANDS, LOGIN_ATTEMPTS, ROLLUP_SETS, ROLLUPS, SESSIONS
from cowrie_stats.errors import FieldViolation, InvalidArgumentError
from cowrie_stats.queries.counters import Totals, total, totals_by_sensor
from cowrie_stats.queries.scope import Scope, bounded, timestamp
from cowrie_stats.queries.sets import SHASUM, SRC_IP, count, sets_by_sensor, union_by_piece
from cowrie_stats.timeline import LEVEL_BY_WIDTH, Span
from cowrie_stats.validation import MAX_BUCKETS, Filters


def session_stats(
    conn: Connection, filters: Filters, bucket_us: int
) -> stats_pb2.GetSessionStatsResponse:
    scope = Scope.of(conn, filters)
    figures = total(totals_by_sensor(conn, scope))
    sets = sets_by_sensor(conn, scope, [SRC_IP, SHASUM])
    response = _response(figures, count(sets, SRC_IP), count(sets, SHASUM))
    if bucket_us:
        response.buckets.extend(_buckets(conn, scope, bucket_us))
    return response


def _int(figures: Totals, name: str) -> int:
    return int(figures[name] or 0)


def _response(
    figures: Totals, unique_ips: int, unique_hashes: int
) -> stats_pb2.GetSessionStatsResponse:
    sessions = _int(figures, "sessions")
    ssh, telnet = _int(figures, "ssh_sessions"), _int(figures, "telnet_sessions")
    logins, successes = _int(figures, "login_attempts"), _int(figures, "login_successes")
    with_duration = _int(figures, "sessions_with_duration")
    return stats_pb2.GetSessionStatsResponse(
        total_sessions=sessions,
        unique_source_ips=unique_ips,
        sessions_with_login_success=_int(figures, "sessions_with_login_success"),
        login_attempts=logins,
        login_successes=successes,
        login_failures=logins - successes,
        sessions_with_commands=_int(figures, "sessions_with_commands"),
        total_commands=_int(figures, "commands"),
        avg_commands_per_session=_int(figures, "session_commands") / sessions if sessions else 0.0,
        max_commands_per_session=_int(figures, "max_session_commands"),
        file_downloads=_int(figures, "downloads"),
        unique_download_hashes=unique_hashes,
        # Whole microseconds summed exactly, divided once: the same in any ingest order.
        avg_duration_seconds=(
            _int(figures, "duration_us") / with_duration / 1_000_000 if with_duration else 0.0
        ),
        sessions_with_duration=with_duration,
        sessions_by_protocol={"ssh": ssh, "telnet": telnet, "unknown": sessions - ssh - telnet},
    )


# -- buckets ------------------------------------------------------------------------------


def _bucket_range(conn: Connection, scope: Scope, width: int) -> range | None:
    start, end = scope.span.start_us, scope.span.end_us
    if start is None or end is None:
        # Unbounded side: bound it by the sessions, logins and commands in scope.
        low, high = _activity_bounds(conn, scope)
        if low is None or high is None:
            return None
        start = low if start is None else start
        end = high + 1 if end is None else end
    if end <= start:
        return None
    first = start // width
    last = -(-end // width)
    if last - first > MAX_BUCKETS:
        raise InvalidArgumentError(
            [FieldViolation("bucket", f"more than {MAX_BUCKETS} buckets; narrow time_range")]
        )
    return range(first, last)


def _activity_bounds(conn: Connection, scope: Scope) -> tuple[int | None, int | None]:
    """First and last session start, login or command in scope.

    Asked per sensor, so that each is one descent of a (sensor, time) index.
    """
    sensors: list[tuple[int, ...] | None] = (
        [None] if scope.sensor_ids is None else [(s,) for s in scope.sensor_ids]
    )
    lows: list[int] = []
    highs: list[int] = []
    for table, column in (
        (SESSIONS, "start_ts_us"),
        (LOGIN_ATTEMPTS, "ts_us"),
        (COMMANDS, "ts_us"),
    ):
        ts = table.c[column]
        for sensor_ids in sensors:
            where = bounded(ts, table.c.sensor_id, scope.span, sensor_ids)
            low, high = conn.execute(select(func.min(ts), func.max(ts)).where(where)).one()
            if low is not None:
                lows.append(low)
                highs.append(high)
    return (min(lows), max(highs)) if lows else (None, None)


def _buckets(conn: Connection, scope: Scope, width: int) -> list[stats_pb2.SessionBucket]:
    buckets = _bucket_range(conn, scope, width)
    if buckets is None:
        return []
    start, end = scope.span.start_us, scope.span.end_us
    # Buckets wholly inside the window are pieces of the bucket's level.
    whole_first = buckets.start if start is None else -(-start // width)
    whole_end = buckets.stop if end is None else end // width
    figures, ips = _whole_buckets(conn, scope, width, whole_first, whole_end)
    result = []
    for index in buckets:
        if whole_first <= index < whole_end:
            row, distinct_ips = figures.get(index, {}), len(ips.get(index, ()))
        else:
            row, distinct_ips = _partial_bucket(conn, scope, index * width, (index + 1) * width)
        result.append(
            stats_pb2.SessionBucket(
                start_time=timestamp(index * width),
                sessions=int(row.get("sessions") or 0),
                unique_source_ips=distinct_ips,
                login_attempts=int(row.get("login_attempts") or 0),
                total_commands=int(row.get("commands") or 0),
            )
        )
    return result


def _whole_buckets(
    conn: Connection, scope: Scope, width: int, first: int, end: int
) -> tuple[dict[int, dict[str, Any]], dict[int, Any]]:
    if first >= end:
        return {}, {}
    level = LEVEL_BY_WIDTH[width]
    r = ROLLUPS.c
    where = bounded(r.piece, r.sensor_id, Span(first, end), scope.sensor_ids)
    query = (
        select(r.piece, func.sum(r.sessions), func.sum(r.login_attempts), func.sum(r.commands))
        .where(r.level == level.id, where)
        .group_by(r.piece)
    )
    figures = {
        piece: {"sessions": sessions, "login_attempts": logins, "commands": commands}
        for piece, sessions, logins, commands in conn.execute(query)
    }
    t = ROLLUP_SETS.c
    sets = select(t.piece, t.members).where(
        t.kind == SRC_IP,
        t.level == level.id,
        bounded(t.piece, t.sensor_id, Span(first, end), scope.sensor_ids),
    )
    return figures, union_by_piece(conn.execute(sets))


def _partial_bucket(
    conn: Connection, scope: Scope, bucket_start: int, bucket_end: int
) -> tuple[dict[str, Any], int]:
    """A bucket the window cuts: answered like a window of its own."""
    start, end = scope.span.start_us, scope.span.end_us
    part = scope.within(
        Span(
            bucket_start if start is None else max(start, bucket_start),
            bucket_end if end is None else min(end, bucket_end),
        )
    )
    figures = total(totals_by_sensor(conn, part))
    return figures, count(sets_by_sensor(conn, part, [SRC_IP]), SRC_IP)
