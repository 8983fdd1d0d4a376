"""The window summaries as their definitions say, recomputed in plain Python from the raw rows.

Deliberately simple and independent of the ingest's incremental rules: what the
ingest maintains batch by batch must equal this for any order of files and
batches. Ids are replaced by the values' texts, since ids depend on the order
values were first seen.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from pyroaring import BitMap
from sqlalchemy import Engine, text

MINUTE, HOUR, DAY = 60_000_000, 3_600_000_000, 86_400_000_000
LEVELS = {0: MINUTE, 1: HOUR, 2: DAY}
SET_LEVELS = {1: HOUR, 2: DAY}
VALUE_LEVELS = {2: DAY}
KINDS = {"username": 1, "password": 2, "input": 3, "shasum": 4, "src_ip": 5, "credential": 6}


def _rows(engine: Engine, sql: str) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(text(sql)))


def _texts(engine: Engine) -> dict[int, str]:
    return dict(_rows(engine, "SELECT id, value FROM value_dictionary"))


def _sensor_names(engine: Engine) -> dict[int, str]:
    return dict(_rows(engine, "SELECT id, name FROM sensors"))


def stored(engine: Engine) -> dict[str, Any]:
    """The summaries as stored, with texts for ids and names for sensor ids."""
    texts, names = _texts(engine), _sensor_names(engine)
    rollups = sorted(
        (level, piece, names[sensor], *figures)
        for level, piece, sensor, *figures in _rows(
            engine,
            "SELECT level, piece, sensor_id, events, login_attempts, login_successes, commands,"
            " downloads, first_ts_us, last_ts_us, sessions, sessions_with_login_success,"
            " sessions_with_commands, session_commands, max_session_commands,"
            " sessions_with_duration, duration_us, ssh_sessions, telnet_sessions FROM rollups",
        )
    )
    sets = sorted(
        (kind, level, piece, names[sensor], tuple(sorted(texts[i] for i in members)))
        for kind, level, piece, sensor, blob in _rows(
            engine, "SELECT kind, level, piece, sensor_id, members FROM rollup_sets"
        )
        if (members := BitMap.deserialize(bytes(blob)))
    )
    values = sorted(
        (kind, level, piece, names[sensor], texts[value_id], *figures)
        for kind, level, piece, sensor, value_id, *figures in _rows(
            engine,
            "SELECT kind, level, piece, sensor_id, value_id, uses, first_uses, first_ts_us,"
            " last_ts_us, successes FROM rollup_values",
        )
    )
    return {"rollups": rollups, "sets": sets, "values": values}


def _empty_rollup() -> list[Any]:
    # The stored columns' order: events, logins, successes, commands, downloads, first,
    # last, sessions, with success, with commands, their commands, the most commands,
    # with duration, duration, ssh, telnet.
    return [0, 0, 0, 0, 0, None, None, 0, 0, 0, 0, 0, 0, 0, 0, 0]


def defined(engine: Engine) -> dict[str, Any]:
    """The summaries recomputed from the raw rows by their definitions."""
    names = _sensor_names(engine)
    rollups: dict[tuple[int, int, str], list[Any]] = defaultdict(_empty_rollup)
    sets: dict[tuple[int, int, int, str], set[str]] = defaultdict(set)
    for sensor, ts in _rows(engine, "SELECT sensor_id, ts_us FROM events"):
        for level, width in LEVELS.items():
            row = rollups[(level, ts // width, names[sensor])]
            row[0] += 1
            row[5] = ts if row[5] is None else min(row[5], ts)
            row[6] = ts if row[6] is None else max(row[6], ts)
    logins = _rows(
        engine, "SELECT sensor_id, ts_us, success, username, password FROM login_attempts"
    )
    for sensor, ts, success, username, password in logins:
        for level, width in LEVELS.items():
            row = rollups[(level, ts // width, names[sensor])]
            row[1] += 1
            row[2] += int(bool(success))
            for kind, value in (("username", username), ("password", password)):
                if value is not None and level in SET_LEVELS:
                    sets[(KINDS[kind], level, ts // width, names[sensor])].add(value)
    for table, index in (("commands", 3), ("downloads", 4)):
        for sensor, ts, shasum in _rows(
            engine,
            f"SELECT sensor_id, ts_us, {'shasum' if table == 'downloads' else 'NULL'} FROM {table}",
        ):
            for level, width in LEVELS.items():
                rollups[(level, ts // width, names[sensor])][index] += 1
                if shasum is not None and level in SET_LEVELS:
                    sets[(KINDS["shasum"], level, ts // width, names[sensor])].add(shasum)
    sessions = _rows(
        engine,
        "SELECT sensor_id, start_ts_us, end_ts_us, src_ip, login_successes, commands,"
        " duration_us, protocol FROM sessions",
    )
    for sensor, start, _, ip, successes, commands, duration, protocol in sessions:
        for level, width in LEVELS.items():
            row = rollups[(level, start // width, names[sensor])]
            figures = [
                1,
                int(successes > 0),
                int(commands > 0),
                commands,
                None,
                int(duration is not None),
                duration or 0,
                int(protocol == "ssh"),
                int(protocol == "telnet"),
            ]
            for offset, value in enumerate(figures):
                if value is not None:
                    row[7 + offset] += value
            row[11] = max(row[11], commands)
            if ip is not None and level in SET_LEVELS:
                sets[(KINDS["src_ip"], level, start // width, names[sensor])].add(ip)
    return {
        "rollups": sorted((*key, *row) for key, row in rollups.items()),
        "sets": sorted((*key, tuple(sorted(members))) for key, members in sets.items()),
        "values": _values(engine, names),
    }


def _values(engine: Engine, names: dict[int, str]) -> list[tuple[Any, ...]]:
    figures: dict[tuple[Any, ...], list[int]] = {}

    def use(
        kind: str,
        level: int,
        piece: int,
        sensor: int,
        value: str,
        ts: Any,
        first: int,
        last: Any = None,
        success: int = 0,
    ) -> None:
        key = (KINDS[kind], level, piece, names[sensor], value)
        row = figures.setdefault(key, [0, 0, ts, last if last is not None else ts, 0])
        row[0] += 1
        row[1] += first
        row[2] = min(row[2], ts)
        row[3] = max(row[3], last if last is not None else ts)
        row[4] += success

    for level, width in VALUE_LEVELS.items():
        for sensor, ts, u, p, uf, pf, ok in _rows(
            engine,
            "SELECT sensor_id, ts_us, username, password, username_first, password_first, success"
            " FROM login_attempts",
        ):
            if u is not None:
                use("username", level, ts // width, sensor, u, ts, int(bool(uf)))
            if p is not None:
                use("password", level, ts // width, sensor, p, ts, int(bool(pf)))
            if u is not None and p is not None:
                pair = u.replace("\x01", "\x01\x02") + "\x01\x01" + p
                use("credential", level, ts // width, sensor, pair, ts, 0, success=int(bool(ok)))
        for sensor, ts, value, first in _rows(
            engine, "SELECT sensor_id, ts_us, input, input_first FROM commands"
        ):
            use("input", level, ts // width, sensor, value, ts, int(bool(first)))
        for sensor, ts, value, first in _rows(
            engine, "SELECT sensor_id, ts_us, shasum, shasum_first FROM downloads"
        ):
            use("shasum", level, ts // width, sensor, value, ts, int(bool(first)))
        for sensor, start, end, ip in _rows(
            engine, "SELECT sensor_id, start_ts_us, end_ts_us, src_ip FROM sessions"
        ):
            if ip is not None:
                use("src_ip", level, start // width, sensor, ip, start, 1, last=end)
    return sorted((*key, *row) for key, row in figures.items())
