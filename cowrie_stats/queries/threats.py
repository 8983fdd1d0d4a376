"""GetThreatStats: rankings of a window and its distinct counts.

Rankings read the window's whole pieces from ``rollup_values`` and only its
partial edges from the raw rows. A value's distinct sessions are its uses
flagged as their session's first, plus the sessions that used it before the
window and again inside it (:mod:`cowrie_stats.queries.straddling`). Ties
break bytewise on the value's text, which the dictionary holds.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Select, case, func, literal, select, union_all

from cowrie_stats._gen.cowrie.stats.v1 import stats_pb2
from cowrie_stats.db.models import (
    COMMANDS,
    DOWNLOADS,
    LOGIN_ATTEMPTS,
    ROLLUP_VALUES,
    SESSIONS,
    VALUE_DICTIONARY,
    VALUE_KINDS,
)
from cowrie_stats.ingest.details import split_credential
from cowrie_stats.ingest.summaries import VALUE_LEVELS
from cowrie_stats.queries.scope import Scope, bytewise, timestamp
from cowrie_stats.queries.sets import PASSWORD, SHASUM, SRC_IP, USERNAME, count, sets_by_sensor
from cowrie_stats.queries.straddling import sessions_from_before
from cowrie_stats.validation import Filters

INPUT, CREDENTIAL = VALUE_KINDS["input"], VALUE_KINDS["credential"]


@dataclass(frozen=True)
class Ranked:
    """One entry of a ranking: the value's text and its figures in the window."""

    value_id: int
    text: str
    uses: int
    first_uses: int
    first_ts_us: int
    last_ts_us: int
    successes: int


def _raw_uses(kind: int, scope: Scope) -> Select[Any]:
    """The edges' raw rows of ``kind`` shaped like ``rollup_values`` rows."""
    if kind == SRC_IP:
        s = SESSIONS.c
        return select(
            s.src_ip_id, literal(1), literal(1), s.start_ts_us, s.end_ts_us, literal(0)
        ).where(scope.on_edges(s.start_ts_us, s.sensor_id), s.src_ip_id.is_not(None))
    if kind == CREDENTIAL:
        la = LOGIN_ATTEMPTS.c
        return select(
            la.credential_id,
            literal(1),
            literal(0),
            la.ts_us,
            la.ts_us,
            case((la.success.is_(True), 1), else_=0),
        ).where(scope.on_edges(la.ts_us, la.sensor_id), la.credential_id.is_not(None))
    table, column = {
        USERNAME: (LOGIN_ATTEMPTS, "username"),
        PASSWORD: (LOGIN_ATTEMPTS, "password"),
        INPUT: (COMMANDS, "input"),
        SHASUM: (DOWNLOADS, "shasum"),
    }[kind]
    t = table.c
    return select(
        t[f"{column}_id"],
        literal(1),
        case((t[f"{column}_first"].is_(True), 1), else_=0),
        t.ts_us,
        t.ts_us,
        literal(0),
    ).where(scope.on_edges(t.ts_us, t.sensor_id), t[f"{column}_id"].is_not(None))


def rank(conn: Connection, scope: Scope, kind: int, top_n: int) -> list[Ranked]:
    """The top ``top_n`` values of ``kind``: uses descending, then text bytewise."""
    v = ROLLUP_VALUES.c
    parts: list[Select[Any]] = [
        select(v.value_id, v.uses, v.first_uses, v.first_ts_us, v.last_ts_us, v.successes).where(
            v.kind == kind, scope.in_pieces(v.level, v.piece, v.sensor_id)
        )
    ]
    if scope.has_edges:
        parts.append(_raw_uses(kind, scope))
    uses = union_all(*parts).subquery("uses") if len(parts) > 1 else parts[0].subquery("uses")
    u = uses.c
    grouped = (
        select(
            u.value_id.label("value_id"),
            func.sum(u.uses).label("uses"),
            func.sum(u.first_uses).label("first_uses"),
            func.min(u.first_ts_us).label("first_ts_us"),
            func.max(u.last_ts_us).label("last_ts_us"),
            func.sum(u.successes).label("successes"),
        )
        .group_by(u.value_id)
        .cte("grouped")
    )
    g = grouped.c
    # Only the groups that can make the top (the n-th count's ties included) meet the
    # dictionary for the tie-break.
    threshold = select(g.uses).order_by(g.uses.desc()).limit(1).offset(top_n - 1).scalar_subquery()
    d = VALUE_DICTIONARY.c
    query = (
        select(d.value, g.value_id, g.uses, g.first_uses, g.first_ts_us, g.last_ts_us, g.successes)
        .join_from(grouped, VALUE_DICTIONARY, d.id == g.value_id)
        .where(g.uses >= func.coalesce(threshold, 0))
        .order_by(g.uses.desc(), bytewise(d.value, conn).asc())
        .limit(top_n)
    )
    return [
        Ranked(
            row.value_id,
            row.value,
            int(row.uses),
            int(row.first_uses or 0),
            row.first_ts_us,
            row.last_ts_us,
            int(row.successes or 0),
        )
        for row in conn.execute(query)
    ]


def threat_stats(
    conn: Connection, filters: Filters, top_n: int
) -> stats_pb2.GetThreatStatsResponse:
    scope = Scope.of(conn, filters)
    ranking_scope = scope.at(VALUE_LEVELS)
    earlier = sessions_from_before(conn, scope)
    sets = sets_by_sensor(conn, scope, [SRC_IP, USERNAME, PASSWORD, SHASUM])

    def ranked(kind: int, column: str) -> list[stats_pb2.RankedValue]:
        return [
            stats_pb2.RankedValue(
                value=r.text,
                count=r.uses,
                sessions=r.first_uses + earlier[column][r.value_id],
                first_seen=timestamp(r.first_ts_us),
                last_seen=timestamp(r.last_ts_us),
            )
            for r in rank(conn, ranking_scope, kind, top_n)
        ]

    return stats_pb2.GetThreatStatsResponse(
        top_source_ips=ranked(SRC_IP, "src_ip"),
        top_usernames=ranked(USERNAME, "username"),
        top_passwords=ranked(PASSWORD, "password"),
        top_commands=ranked(INPUT, "input"),
        top_credentials=_credentials(rank(conn, ranking_scope, CREDENTIAL, top_n)),
        top_downloads=_downloads(
            conn, scope, rank(conn, ranking_scope, SHASUM, top_n), earlier["shasum"]
        ),
        unique_source_ips=count(sets, SRC_IP),
        unique_usernames=count(sets, USERNAME),
        unique_passwords=count(sets, PASSWORD),
        unique_download_hashes=count(sets, SHASUM),
    )


def _credentials(top: list[Ranked]) -> list[stats_pb2.Credential]:
    credentials = []
    for r in top:
        username, password = split_credential(r.text)
        credentials.append(
            stats_pb2.Credential(
                username=username, password=password, attempts=r.uses, successes=r.successes
            )
        )
    return credentials


def _downloads(
    conn: Connection, scope: Scope, top: list[Ranked], earlier: Counter[int]
) -> list[stats_pb2.Download]:
    urls = _latest_urls(conn, scope, [r.value_id for r in top])
    return [
        stats_pb2.Download(
            shasum=r.text,
            url=urls.get(r.value_id, ""),
            count=r.uses,
            sessions=r.first_uses + earlier[r.value_id],
        )
        for r in top
    ]


def _latest_urls(conn: Connection, scope: Scope, shasum_ids: list[int]) -> dict[int, str]:
    """Per hash id, the non-empty URL of its latest download in scope (ties: the greatest URL).

    One backward step along the (shasum_id, ts_us) index per hash, however many
    downloads the hash has.
    """
    if not shasum_ids:
        return {}
    d = DOWNLOADS.c
    latest = (
        select(d.url)
        .where(
            d.shasum_id == VALUE_DICTIONARY.c.id,
            scope.where(d.ts_us, d.sensor_id),
            d.url.is_not(None),
            d.url != "",
        )
        .order_by(d.ts_us.desc(), bytewise(d.url, conn).desc())
        .limit(1)
        .correlate(VALUE_DICTIONARY)
        .scalar_subquery()
    )
    query = select(VALUE_DICTIONARY.c.id, latest).where(VALUE_DICTIONARY.c.id.in_(shasum_ids))
    return {value_id: url for value_id, url in conn.execute(query) if url is not None}
