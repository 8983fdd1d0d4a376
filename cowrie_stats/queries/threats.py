"""GetThreatStats: rankings of a window and its distinct counts.

Rankings read the window's whole pieces from ``rollup_values`` and only its
partial edges from the raw rows. A value's distinct sessions are its uses
flagged as their session's first, plus the sessions that used it before the
window and again inside it (:mod:`cowrie_stats.queries.straddling`). Ties
break bytewise on the value's whole text, which the dictionary holds; answers
carry its first characters only (:mod:`cowrie_stats.capping`), cut by the database.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    CTE,
    ColumnElement,
    Connection,
    Select,
    Subquery,
    case,
    func,
    literal,
    select,
    union_all,
)

from cowrie_stats._gen.cowrie.stats.v1 import stats_pb2
from cowrie_stats.capping import MAX_TEXT_CHARS, CappedText, char_length, head
from cowrie_stats.db.models import (
    COMMANDS,
    DOWNLOADS,
    LOGIN_ATTEMPTS,
    ROLLUP_VALUES,
    SESSIONS,
    VALUE_DICTIONARY,
    VALUE_KINDS,
)
from cowrie_stats.ingest.details import CREDENTIAL_ESCAPE, CREDENTIAL_SEPARATOR
from cowrie_stats.ingest.summaries import VALUE_LEVELS
from cowrie_stats.queries.scope import Scope, bytewise, timestamp
from cowrie_stats.queries.sets import PASSWORD, SHASUM, SRC_IP, USERNAME, count, sets_by_sensor
from cowrie_stats.queries.straddling import sessions_from_before
from cowrie_stats.validation import Filters

INPUT, CREDENTIAL = VALUE_KINDS["input"], VALUE_KINDS["credential"]


@dataclass(frozen=True)
class Ranked:
    """One entry of a ranking: the value's capped text and its figures in the window.

    ``texts`` is the value, or a credential's username and password.
    """

    value_id: int
    texts: tuple[CappedText, ...]
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
    t = _top(conn, _grouped_uses(scope, kind), top_n).c
    # The texts are cut here, on the top_n rows only; the order is the whole value's.
    texts = _credential_parts(t.whole, t.length, conn) if kind == CREDENTIAL else _whole(t)
    query = select(
        *texts, t.value_id, t.uses, t.first_uses, t.first_ts_us, t.last_ts_us, t.successes
    ).order_by(t.uses.desc(), bytewise(t.whole, conn).asc())
    read_texts = _read_credential if kind == CREDENTIAL else _read_whole
    return [
        Ranked(
            row.value_id,
            read_texts(row),
            int(row.uses),
            int(row.first_uses or 0),
            row.first_ts_us,
            row.last_ts_us,
            int(row.successes or 0),
        )
        for row in conn.execute(query)
    ]


def _grouped_uses(scope: Scope, kind: int) -> CTE:
    """Per value of ``kind``: its uses and times summed over the scope's pieces and edges."""
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
    return (
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


def _top(conn: Connection, grouped: CTE, top_n: int) -> Subquery:
    """The ``top_n`` groups with their whole texts, in the answer's order."""
    g = grouped.c
    # Only the groups that can make the top (the n-th count's ties included) meet the
    # dictionary for the tie-break.
    threshold = select(g.uses).order_by(g.uses.desc()).limit(1).offset(top_n - 1).scalar_subquery()
    d = VALUE_DICTIONARY.c
    return (
        select(
            d.value.label("whole"),
            d.length.label("length"),
            g.value_id,
            g.uses,
            g.first_uses,
            g.first_ts_us,
            g.last_ts_us,
            g.successes,
        )
        .join_from(grouped, VALUE_DICTIONARY, d.id == g.value_id)
        .where(g.uses >= func.coalesce(threshold, 0))
        .order_by(g.uses.desc(), bytewise(d.value, conn).asc())
        .limit(top_n)
        .subquery("top")
    )


def _whole(top: Any) -> list[ColumnElement[Any]]:
    return [head(top.whole).label("text"), top.length]


def _read_whole(row: Any) -> tuple[CappedText, ...]:
    return (CappedText(row.text, row.length),)


def _position(needle: str, haystack: ColumnElement[Any], conn: Connection) -> ColumnElement[int]:
    """SQL for the 1-based character position of ``needle`` in ``haystack`` (0: absent)."""
    if conn.dialect.name == "postgresql":
        return func.strpos(haystack, needle)
    return func.instr(haystack, needle)


def _credential_parts(
    whole: ColumnElement[Any], length: ColumnElement[Any], conn: Connection
) -> list[ColumnElement[Any]]:
    """SQL for the capped username and password of credential texts and their lengths.

    The username is stored with each ``\\x01`` as ``\\x01\\x02``, so its first
    ``MAX_TEXT_CHARS`` characters lie within twice as many stored ones, and its length
    is the number of stored characters other than ``\\x01``. The first ``\\x01\\x01`` is
    the separator: an escaped username never holds two ``\\x01`` in a row, nor ends in one.
    """
    separator_at = _position(CREDENTIAL_SEPARATOR, whole, conn)
    username = func.substr(whole, 1, separator_at - 1)
    escape = CREDENTIAL_ESCAPE[0]
    return [
        head(whole, 2 * MAX_TEXT_CHARS).label("username_head"),
        separator_at.label("separator_at"),
        char_length(func.replace(username, escape, "")).label("username_length"),
        func.substr(whole, separator_at + len(CREDENTIAL_SEPARATOR), MAX_TEXT_CHARS).label(
            "password_text"
        ),
        (length - separator_at - (len(CREDENTIAL_SEPARATOR) - 1)).label("password_length"),
    ]


def _read_credential(row: Any) -> tuple[CappedText, ...]:
    escaped = row.username_head[: row.separator_at - 1]
    username = escaped.replace(CREDENTIAL_ESCAPE[1], CREDENTIAL_ESCAPE[0])[:MAX_TEXT_CHARS]
    return (
        CappedText(username, row.username_length),
        CappedText(row.password_text, row.password_length),
    )


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
                **r.texts[0].fields("value"),
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
        username, password = r.texts
        credentials.append(
            stats_pb2.Credential(
                **username.fields("username"),
                **password.fields("password"),
                attempts=r.uses,
                successes=r.successes,
            )
        )
    return credentials


def _downloads(
    conn: Connection, scope: Scope, top: list[Ranked], earlier: Counter[int]
) -> list[stats_pb2.Download]:
    urls = _latest_urls(conn, scope, [r.value_id for r in top])
    no_url = CappedText("", 0)
    downloads = []
    for r in top:
        shasum, url = r.texts[0], urls.get(r.value_id, no_url)
        downloads.append(
            stats_pb2.Download(
                **shasum.fields("shasum"),
                **url.fields("url"),
                count=r.uses,
                sessions=r.first_uses + earlier[r.value_id],
            )
        )
    return downloads


def _latest_urls(conn: Connection, scope: Scope, shasum_ids: list[int]) -> dict[int, CappedText]:
    """Per hash id, the non-empty URL of its latest download in scope (ties: the greatest URL).

    One backward step along the (shasum_id, ts_us) index per hash, however many
    downloads the hash has, for each of the URL's head and length.
    """
    if not shasum_ids:
        return {}
    d = DOWNLOADS.c

    def latest(of_url: ColumnElement[Any]) -> Any:
        return (
            select(of_url)
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

    query = select(VALUE_DICTIONARY.c.id, latest(head(d.url)), latest(char_length(d.url))).where(
        VALUE_DICTIONARY.c.id.in_(shasum_ids)
    )
    return {
        value_id: CappedText(url, length)
        for value_id, url, length in conn.execute(query)
        if url is not None
    }
