"""Window summaries per minute, hour and day; a dictionary of counted values.

* ``value_dictionary`` holds each counted value (username, password, command,
  hash, source IP, credential) once, found by a digest of its text; the raw
  tables gain the ids. No attacker-written text stays part of an index key:
  ``daily_values`` (keyed by the raw value) and ``ix_sessions_src_ip`` go.
* ``rollups`` (counters), ``rollup_sets`` (distinct ids as Roaring bitmaps) and
  ``rollup_values`` (per-value uses) replace ``hourly_rollups`` and
  ``daily_values``; existing data is summarised here with the ingest's rules.
* ``sessions.duration_s`` (a float) becomes ``duration_us`` (whole microseconds):
  sums no longer depend on the order they were added in.
* Indexes that became prefixes of the primary keys, or that only the old
  queries used, are dropped.

Frozen: this file must keep producing the same schema and data whatever the
application code becomes, so it repeats the few rules it needs.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from pyroaring import BitMap

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MINUTE, HOUR, DAY = 60_000_000, 3_600_000_000, 86_400_000_000
LEVELS = {0: MINUTE, 1: HOUR, 2: DAY}
KINDS = {"username": 1, "password": 2, "input": 3, "shasum": 4, "src_ip": 5, "credential": 6}
# The username with \x01 escaped as \x01\x02, \x01\x01, the password (sorts as the pair).
CREDENTIAL_TEXT = "(replace(t.username, {one}, {one} || {two}) || {one} || {one} || t.password)"
# Where each kind's values live: (table, text expression over alias t, id column, condition).
VALUE_SOURCES = [
    ("username", "login_attempts", "t.username", "username_id", "t.username IS NOT NULL"),
    ("password", "login_attempts", "t.password", "password_id", "t.password IS NOT NULL"),
    (
        "credential",
        "login_attempts",
        CREDENTIAL_TEXT,
        "credential_id",
        "t.username IS NOT NULL AND t.password IS NOT NULL",
    ),
    ("input", "commands", "t.input", "input_id", "t.input IS NOT NULL"),
    ("shasum", "downloads", "t.shasum", "shasum_id", "t.shasum IS NOT NULL"),
    ("src_ip", "sessions", "t.src_ip", "src_ip_id", "t.src_ip IS NOT NULL"),
]
DROPPED_INDEXES = {
    "events": [("ix_events_sensor_ts", ["sensor_id", "ts_us"])],
    "sessions": [("ix_sessions_src_ip", ["src_ip", "start_ts_us"])],
    "login_attempts": [("ix_login_attempts_ts", ["ts_us"])],
    "commands": [("ix_commands_ts", ["ts_us"])],
    "downloads": [("ix_downloads_ts", ["ts_us"])],
}


def _floor(column: str, width: int) -> str:
    # Floor division on both backends (their integer division truncates toward zero).
    return (
        f"(CASE WHEN {column} >= 0 THEN {column} / {width} ELSE ({column} + 1) / {width} - 1 END)"
    )


def _digest(kind: int, text: str) -> bytes:
    return hashlib.blake2b(kind.to_bytes(2, "big") + text.encode("utf-8"), digest_size=16).digest()


def _count(name: str) -> sa.Column[Any]:
    return sa.Column(name, sa.Integer(), server_default="0", nullable=False)


def _piece_key() -> list[sa.Column[Any]]:
    return [
        sa.Column("level", sa.SmallInteger(), nullable=False),
        sa.Column("piece", sa.BigInteger(), nullable=False),
        sa.Column("sensor_id", sa.Integer(), nullable=False),
    ]


def _create_tables() -> None:
    # Declarative: one create_table per table, read top to bottom; split, it says less.
    op.create_table(
        "value_dictionary",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("kind", sa.SmallInteger(), nullable=False),
        sa.Column("digest", sa.LargeBinary(16), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("length", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_value_dictionary")),
        sa.UniqueConstraint("digest", name=op.f("uq_value_dictionary_digest")),
    )
    op.create_table(
        "rollups",
        *_piece_key(),
        *(
            _count(name)
            for name in ("events", "login_attempts", "login_successes", "commands", "downloads")
        ),
        sa.Column("first_ts_us", sa.BigInteger(), nullable=True),
        sa.Column("last_ts_us", sa.BigInteger(), nullable=True),
        *(
            _count(name)
            for name in (
                "sessions",
                "sessions_with_login_success",
                "sessions_with_commands",
                "session_commands",
                "max_session_commands",
                "sessions_with_duration",
            )
        ),
        sa.Column("duration_us", sa.BigInteger(), server_default="0", nullable=False),
        _count("ssh_sessions"),
        _count("telnet_sessions"),
        sa.PrimaryKeyConstraint("level", "piece", "sensor_id", name=op.f("pk_rollups")),
    )
    op.create_table(
        "rollup_sets",
        sa.Column("kind", sa.SmallInteger(), nullable=False),
        *_piece_key(),
        sa.Column("members", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("kind", "level", "piece", "sensor_id", name=op.f("pk_rollup_sets")),
    )
    op.create_table(
        "rollup_values",
        sa.Column("kind", sa.SmallInteger(), nullable=False),
        *_piece_key(),
        sa.Column("value_id", sa.BigInteger(), nullable=False),
        sa.Column("uses", sa.Integer(), nullable=False),
        sa.Column("first_uses", sa.Integer(), nullable=False),
        sa.Column("first_ts_us", sa.BigInteger(), nullable=False),
        sa.Column("last_ts_us", sa.BigInteger(), nullable=False),
        _count("successes"),
        sa.PrimaryKeyConstraint(
            "kind", "level", "piece", "sensor_id", "value_id", name=op.f("pk_rollup_values")
        ),
    )


def _add_id_columns() -> None:
    for _, table, _, column, _ in VALUE_SOURCES:
        op.add_column(table, sa.Column(column, sa.BigInteger(), nullable=True))
    op.add_column("sessions", sa.Column("duration_us", sa.BigInteger(), nullable=True))


def _fill_dictionary(bind: sa.Connection) -> None:
    char = "chr" if bind.dialect.name == "postgresql" else "char"
    next_id = 1
    for kind_name, table, template, column, condition in VALUE_SOURCES:
        expression = template.format(one=f"{char}(1)", two=f"{char}(2)")
        kind = KINDS[kind_name]
        texts = bind.execute(
            sa.text(f"SELECT DISTINCT {expression} FROM {table} t WHERE {condition}")
        ).scalars()
        rows = []
        for text in texts:
            rows.append(
                {
                    "id": next_id,
                    "kind": kind,
                    "digest": _digest(kind, text),
                    "value": text,
                    "length": len(text),
                }
            )
            next_id += 1
            if len(rows) >= 5000:
                bind.execute(sa.text(_INSERT_VALUE), rows)
                rows = []
        if rows:
            bind.execute(sa.text(_INSERT_VALUE), rows)
        _set_ids(bind, kind, table, expression, column, condition)
    if bind.dialect.name == "postgresql":
        bind.execute(
            sa.text("SELECT setval(pg_get_serial_sequence('value_dictionary', 'id'), :n, false)"),
            {"n": next_id},
        )


def _set_ids(
    bind: sa.Connection, kind: int, table: str, expression: str, column: str, condition: str
) -> None:
    """Write each row's dictionary id, joining on the text (a hash join, no index on it)."""
    if bind.dialect.name == "postgresql":
        bind.execute(
            sa.text(
                f"UPDATE {table} t SET {column} = d.id FROM value_dictionary d"
                f" WHERE d.kind = {kind} AND d.value = {expression} AND {condition}"
            )
        )
        return
    # SQLite has no hash join: a temporary index on the text (no key size limit there).
    bind.execute(sa.text("CREATE INDEX tmp_dictionary_text ON value_dictionary (kind, value)"))
    own = expression.replace("t.", table + ".")
    bind.execute(
        sa.text(
            f"UPDATE {table} SET {column} = (SELECT d.id FROM value_dictionary d"
            f" WHERE d.kind = {kind} AND d.value = {own})"
            f" WHERE {condition.replace('t.', table + '.')}"
        )
    )
    bind.execute(sa.text("DROP INDEX tmp_dictionary_text"))


_INSERT_VALUE = (
    "INSERT INTO value_dictionary (id, kind, digest, value, length)"
    " VALUES (:id, :kind, :digest, :value, :length)"
)


def _convert_durations() -> None:
    op.execute(
        "UPDATE sessions SET duration_us = CAST(floor(duration_s * 1000000 + 0.5) AS BIGINT)"
        " WHERE duration_s IS NOT NULL AND duration_s * 1000000 + 0.5 <= 2147483648000000"
    )
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("duration_s")


EVENT_FIGURES = [
    ("events", "events", "count(*), min(t.ts_us), max(t.ts_us)", "events, first_ts_us, last_ts_us"),
    (
        "login_attempts",
        "login_attempts",
        "count(*), sum(CASE WHEN t.success THEN 1 ELSE 0 END)",
        "login_attempts, login_successes",
    ),
    ("commands", "commands", "count(*)", "commands"),
    ("downloads", "downloads", "count(*)", "downloads"),
]
SESSION_FIGURES = (
    "count(*), sum(CASE WHEN t.login_successes > 0 THEN 1 ELSE 0 END),"
    " sum(CASE WHEN t.commands > 0 THEN 1 ELSE 0 END), sum(t.commands), max(t.commands),"
    " count(t.duration_us), coalesce(sum(t.duration_us), 0),"
    " sum(CASE WHEN t.protocol = 'ssh' THEN 1 ELSE 0 END),"
    " sum(CASE WHEN t.protocol = 'telnet' THEN 1 ELSE 0 END)"
)
SESSION_COLUMNS = (
    "sessions, sessions_with_login_success, sessions_with_commands, session_commands,"
    " max_session_commands, sessions_with_duration, duration_us, ssh_sessions, telnet_sessions"
)


def _fill_rollups() -> None:
    for level, width in LEVELS.items():
        for table, _, figures, columns in EVENT_FIGURES:
            _upsert_rollup(level, _floor("t.ts_us", width), table, figures, columns)
        _upsert_rollup(
            level, _floor("t.start_ts_us", width), "sessions", SESSION_FIGURES, SESSION_COLUMNS
        )


def _upsert_rollup(level: int, piece: str, table: str, figures: str, columns: str) -> None:
    updates = ", ".join(f"{c.strip()} = excluded.{c.strip()}" for c in columns.split(","))
    op.execute(
        f"INSERT INTO rollups (level, piece, sensor_id, {columns})"
        f" SELECT {level}, {piece}, t.sensor_id, {figures} FROM {table} t WHERE 1 = 1"
        f" GROUP BY 2, 3 ON CONFLICT (level, piece, sensor_id) DO UPDATE SET {updates}"
    )


def _fill_values() -> None:
    day = _floor("t.ts_us", DAY)
    for value, table, flag in (
        ("username", "login_attempts", "username_first"),
        ("password", "login_attempts", "password_first"),
        ("input", "commands", "input_first"),
        ("shasum", "downloads", "shasum_first"),
    ):
        _insert_values(
            f"{KINDS[value]}, 2, {day}, t.sensor_id, t.{value}_id, count(*),"
            f" sum(CASE WHEN t.{flag} THEN 1 ELSE 0 END), min(t.ts_us), max(t.ts_us), 0",
            f"{table} t WHERE t.{value}_id IS NOT NULL",
        )
    _insert_values(
        f"{KINDS['credential']}, 2, {day}, t.sensor_id, t.credential_id, count(*), 0,"
        " min(t.ts_us), max(t.ts_us), sum(CASE WHEN t.success THEN 1 ELSE 0 END)",
        "login_attempts t WHERE t.credential_id IS NOT NULL",
    )
    _insert_values(
        f"{KINDS['src_ip']}, 2, {_floor('t.start_ts_us', DAY)}, t.sensor_id, t.src_ip_id,"
        " count(*), count(*), min(t.start_ts_us), max(t.end_ts_us), 0",
        "sessions t WHERE t.src_ip_id IS NOT NULL",
    )


def _insert_values(selected: str, source: str) -> None:
    op.execute(
        "INSERT INTO rollup_values (kind, level, piece, sensor_id, value_id, uses, first_uses,"
        f" first_ts_us, last_ts_us, successes) SELECT {selected} FROM {source} GROUP BY 3, 4, 5"
    )


SET_SOURCES = [
    ("username", "login_attempts", "ts_us", "username_id"),
    ("password", "login_attempts", "ts_us", "password_id"),
    ("shasum", "downloads", "ts_us", "shasum_id"),
    ("src_ip", "sessions", "start_ts_us", "src_ip_id"),
]


def _pieces(bind: sa.Connection, table: str, ts: str, column: str, width: int) -> Iterator[Any]:
    query = sa.text(
        f"SELECT DISTINCT {_floor('t.' + ts, width)}, t.sensor_id, t.{column}"
        f" FROM {table} t WHERE t.{column} IS NOT NULL ORDER BY 1, 2"
    )
    return iter(bind.execute(query.execution_options(stream_results=True)))


def _fill_sets(bind: sa.Connection) -> None:
    for kind_name, table, ts, column in SET_SOURCES:
        for level, width in LEVELS.items():
            if width == MINUTE:
                continue  # sets are kept per hour and day
            rows: list[dict[str, Any]] = []
            key: tuple[int, int] | None = None
            members = BitMap()
            for piece, sensor_id, value_id in _pieces(bind, table, ts, column, width):
                if key is not None and key != (piece, sensor_id):
                    rows.append(_set_row(kind_name, level, key, members))
                    members = BitMap()
                key = (piece, sensor_id)
                members.add(value_id)
                if len(rows) >= 1000:
                    bind.execute(sa.text(_INSERT_SET), rows)
                    rows = []
            if key is not None:
                rows.append(_set_row(kind_name, level, key, members))
            if rows:
                bind.execute(sa.text(_INSERT_SET), rows)


_INSERT_SET = (
    "INSERT INTO rollup_sets (kind, level, piece, sensor_id, members)"
    " VALUES (:kind, :level, :piece, :sensor_id, :members)"
)


def _set_row(kind_name: str, level: int, key: tuple[int, int], members: BitMap) -> dict[str, Any]:
    return {
        "kind": KINDS[kind_name],
        "level": level,
        "piece": key[0],
        "sensor_id": key[1],
        "members": members.serialize(),
    }


def upgrade() -> None:
    bind = op.get_bind()
    _create_tables()
    _add_id_columns()
    _fill_dictionary(bind)
    for table, column in (("commands", "input_id"), ("downloads", "shasum_id")):
        with op.batch_alter_table(table) as batch:  # every such row has a value
            batch.alter_column(column, existing_type=sa.BigInteger(), nullable=False)
    _convert_durations()
    for table, indexes in DROPPED_INDEXES.items():
        for name, _ in indexes:
            op.drop_index(name, table_name=table)
    op.create_index("ix_downloads_shasum_ts", "downloads", ["shasum_id", "ts_us"])
    _fill_rollups()
    _fill_values()
    _fill_sets(bind)
    op.drop_table("hourly_rollups")
    op.drop_table("daily_values")


# -- downgrade: the 0006 tables, filled from the raw rows as 0005 and 0002 did --------------


def downgrade() -> None:
    # Declarative: the dropped tables recreated as they were; split, it says less.
    op.create_table(
        "hourly_rollups",
        sa.Column("sensor_id", sa.Integer(), nullable=False),
        sa.Column("hour", sa.BigInteger(), nullable=False),
        *(
            sa.Column(name, sa.BigInteger(), nullable=False)
            for name in (
                "sessions",
                "events",
                "login_attempts",
                "login_successes",
                "commands",
                "downloads",
            )
        ),
        sa.Column("first_ts_us", sa.BigInteger(), nullable=True),
        sa.Column("last_ts_us", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["sensor_id"], ["sensors.id"], name=op.f("fk_hourly_rollups_sensor_id_sensors")
        ),
        sa.PrimaryKeyConstraint("sensor_id", "hour", name=op.f("pk_hourly_rollups")),
    )
    op.create_index("ix_hourly_rollups_hour", "hourly_rollups", ["hour"])
    op.execute(
        "INSERT INTO hourly_rollups (sensor_id, hour, sessions, events, login_attempts,"
        " login_successes, commands, downloads, first_ts_us, last_ts_us)"
        " SELECT sensor_id, piece, sessions, events, login_attempts, login_successes, commands,"
        " downloads, first_ts_us, last_ts_us FROM rollups WHERE level = 1"
    )
    op.create_table(
        "daily_values",
        sa.Column("kind", sa.SmallInteger(), nullable=False),
        sa.Column("day", sa.Integer(), nullable=False),
        sa.Column("sensor_id", sa.Integer(), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("uses", sa.Integer(), nullable=False),
        sa.Column("first_uses", sa.Integer(), nullable=False),
        sa.Column("first_ts_us", sa.BigInteger(), nullable=False),
        sa.Column("last_ts_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("kind", "day", "sensor_id", "value", name=op.f("pk_daily_values")),
    )
    op.execute(
        "INSERT INTO daily_values (kind, day, sensor_id, value, uses, first_uses, first_ts_us,"
        " last_ts_us) SELECT v.kind, v.piece, v.sensor_id, d.value, v.uses, v.first_uses,"
        " v.first_ts_us, v.last_ts_us FROM rollup_values v"
        " JOIN value_dictionary d ON d.id = v.value_id WHERE v.level = 2 AND v.kind <= 4"
    )
    op.drop_table("rollup_values")
    op.drop_table("rollup_sets")
    op.drop_table("rollups")
    op.drop_index("ix_downloads_shasum_ts", table_name="downloads")
    for table, indexes in DROPPED_INDEXES.items():
        for name, columns in indexes:
            op.create_index(name, table, columns)
    op.add_column("sessions", sa.Column("duration_s", sa.Float(), nullable=True))
    op.execute("UPDATE sessions SET duration_s = duration_us / 1000000.0")
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("duration_us")
    for _, table, _, column, _ in VALUE_SOURCES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column(column)
    op.drop_table("value_dictionary")
