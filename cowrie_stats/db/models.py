"""The relational schema, portable between SQLite and PostgreSQL.

Design notes (the "why" behind the columns and indexes):

* Times are stored as integer microseconds since the Unix epoch (UTC). That is
  exact, identical on both backends, cheap to compare and to bucket
  (``ts_us // 3_600_000_000`` is the hour), and BRIN-friendly on PostgreSQL.
* ``events`` keeps every distinct usable event, keyed by a 128-bit hash of its
  canonical content: re-reading a file, overlapping rotations or the same
  events under another name insert nothing (dedup by content, not offset).
* ``login_attempts``, ``commands`` and ``downloads`` are narrow per-event
  tables keyed by (time, the same hash); ``sessions`` is the denormalised
  per-session summary maintained by the ingest (start, protocol, duration,
  per-session counts).
* The per-event tables have no foreign keys (migration 0003): their
  ``sensor_id``/``session_id`` are written by the ingest in the transaction that
  creates or reads the sensor and session, and the per-row constraint triggers
  cost about an eighth of the ingest's database time.
* Counted values (usernames, passwords, commands, hashes, source IPs,
  credentials) are also held once each in ``value_dictionary`` and referred to
  by id: attacker-written text is never part of an index key.
* The summaries -- ``rollups`` (counters), ``rollup_sets`` (distinct values as
  bitmaps) and ``rollup_values`` (per-value uses for the rankings) -- are kept
  per sensor for every UTC minute, hour and day (cowrie_stats.timeline) by the
  ingest, in the batch's transaction. A window is answered from its whole
  pieces and the raw rows of its partial minutes at most (docs/architecture.md).
* ``*_first`` flags on the per-event tables mark, for each (session, value), the
  session's first row with that value (by timestamp, then hash). Summing them
  counts a value's distinct sessions; ``sensors.max_session_us`` bounds the
  sessions that straddle a window's start, the one case the flags do not cover
  (see cowrie_stats.queries).
* Indexes: raw rows are read by time (their primary keys start with it) and by
  (sensor, time), for a window's edges and a batch's continuing sessions.
* IPs are stored as text in Python's canonical form (``ipaddress`` compressed),
  so IPv4 and IPv6 compare and count exactly on both backends; a value that is
  not an IP is kept verbatim rather than rejected.
"""

from __future__ import annotations

from typing import Literal

from sqlalchemy import (
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from cowrie_stats.ingest.parse import HASH_BYTES

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

SESSION_ID = BigInteger().with_variant(Integer, "sqlite")  # rowid alias on SQLite


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Sensor(Base):
    __tablename__ = "sensors"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(Text, unique=True)
    first_ts_us: Mapped[int] = mapped_column(BigInteger)
    last_ts_us: Mapped[int] = mapped_column(BigInteger)
    # Longest session (end - start) seen on the sensor; only ever grows.
    max_session_us: Mapped[int] = mapped_column(BigInteger, server_default="0")


# Per-event table: (value column, its first-use flag column) pairs.
FIRST_USE_FLAGS = {
    "login_attempts": [("username", "username_first"), ("password", "password_first")],
    "commands": [("input", "input_first")],
    "downloads": [("shasum", "shasum_first")],
}


def _first_flag() -> Mapped[bool]:
    """True on the session's first row (by ts_us, then hash) with the column's value."""
    return mapped_column(Boolean, server_default=false())


def _time_ordered_key(table: str, digest: str) -> PrimaryKeyConstraint:
    """The primary key of a per-event table: (ts_us, hash), not the hash alone.

    The hash identifies an event and it covers the timestamp, so the pair is
    unique exactly when the hash is. Logs arrive roughly in time order, so new
    keys land at the right edge of the index instead of on random pages: once
    the index outgrows shared buffers, random keys cost PostgreSQL about twice
    the time per row (docs/performance.md, "Time-ordered keys").
    """
    return PrimaryKeyConstraint("ts_us", digest, name=f"pk_{table}")


class Event(Base):
    __tablename__ = "events"

    hash: Mapped[bytes] = mapped_column(LargeBinary(HASH_BYTES))
    sensor_id: Mapped[int] = mapped_column(Integer)
    session: Mapped[str] = mapped_column(Text)
    eventid: Mapped[str] = mapped_column(Text)
    ts_us: Mapped[int] = mapped_column(BigInteger)
    raw: Mapped[str] = mapped_column(Text)

    __table_args__ = (_time_ordered_key("events", "hash"),)


class Session(Base):
    __tablename__ = "sessions"

    id: Mapped[int] = mapped_column(SESSION_ID, primary_key=True)
    sensor_id: Mapped[int] = mapped_column(ForeignKey("sensors.id"))
    session: Mapped[str] = mapped_column(Text)
    start_ts_us: Mapped[int] = mapped_column(BigInteger)
    end_ts_us: Mapped[int] = mapped_column(BigInteger)
    src_ip: Mapped[str | None] = mapped_column(Text)
    src_ip_id: Mapped[int | None] = mapped_column(BigInteger)  # value_dictionary id
    src_port: Mapped[int | None] = mapped_column(Integer)
    dst_port: Mapped[int | None] = mapped_column(Integer)
    protocol: Mapped[str] = mapped_column(String(16), default="unknown")
    client_version: Mapped[str | None] = mapped_column(Text)
    # Whole microseconds: sums are exact and independent of the order of addition.
    duration_us: Mapped[int | None] = mapped_column(BigInteger)
    # Ordering keys (ts_us, event hash) of the events that set the fields
    # above, so merging batches in any order gives the same session.
    start_hash: Mapped[bytes] = mapped_column(LargeBinary(HASH_BYTES))
    src_ip_ts_us: Mapped[int | None] = mapped_column(BigInteger)
    src_ip_hash: Mapped[bytes | None] = mapped_column(LargeBinary(HASH_BYTES))
    connect_ts_us: Mapped[int | None] = mapped_column(BigInteger)
    connect_hash: Mapped[bytes | None] = mapped_column(LargeBinary(HASH_BYTES))
    closed_ts_us: Mapped[int | None] = mapped_column(BigInteger)
    closed_hash: Mapped[bytes | None] = mapped_column(LargeBinary(HASH_BYTES))
    version_ts_us: Mapped[int | None] = mapped_column(BigInteger)
    version_hash: Mapped[bytes | None] = mapped_column(LargeBinary(HASH_BYTES))
    events: Mapped[int] = mapped_column(Integer, default=0)
    login_attempts: Mapped[int] = mapped_column(Integer, default=0)
    login_successes: Mapped[int] = mapped_column(Integer, default=0)
    commands: Mapped[int] = mapped_column(Integer, default=0)
    downloads: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = (
        UniqueConstraint("sensor_id", "session", name="uq_sessions_sensor_session"),
        # Window scans by session start, with or without a sensor filter.
        Index("ix_sessions_start", "start_ts_us"),
        Index("ix_sessions_sensor_start", "sensor_id", "start_ts_us"),
    )


class LoginAttempt(Base):
    __tablename__ = "login_attempts"

    event_hash: Mapped[bytes] = mapped_column(LargeBinary(HASH_BYTES))
    sensor_id: Mapped[int] = mapped_column(Integer)
    session_id: Mapped[int] = mapped_column(SESSION_ID)
    ts_us: Mapped[int] = mapped_column(BigInteger)
    username: Mapped[str | None] = mapped_column(Text)
    password: Mapped[str | None] = mapped_column(Text)
    username_id: Mapped[int | None] = mapped_column(BigInteger)
    password_id: Mapped[int | None] = mapped_column(BigInteger)
    credential_id: Mapped[int | None] = mapped_column(BigInteger)
    success: Mapped[bool] = mapped_column(Boolean)
    username_first: Mapped[bool] = _first_flag()
    password_first: Mapped[bool] = _first_flag()

    __table_args__ = (
        _time_ordered_key("login_attempts", "event_hash"),
        Index("ix_login_attempts_sensor_ts", "sensor_id", "ts_us"),
    )


class Command(Base):
    __tablename__ = "commands"

    event_hash: Mapped[bytes] = mapped_column(LargeBinary(HASH_BYTES))
    sensor_id: Mapped[int] = mapped_column(Integer)
    session_id: Mapped[int] = mapped_column(SESSION_ID)
    ts_us: Mapped[int] = mapped_column(BigInteger)
    input: Mapped[str] = mapped_column(Text)
    input_id: Mapped[int] = mapped_column(BigInteger)
    input_first: Mapped[bool] = _first_flag()

    __table_args__ = (
        _time_ordered_key("commands", "event_hash"),
        Index("ix_commands_sensor_ts", "sensor_id", "ts_us"),
    )


class Download(Base):
    __tablename__ = "downloads"

    event_hash: Mapped[bytes] = mapped_column(LargeBinary(HASH_BYTES))
    sensor_id: Mapped[int] = mapped_column(Integer)
    session_id: Mapped[int] = mapped_column(SESSION_ID)
    ts_us: Mapped[int] = mapped_column(BigInteger)
    shasum: Mapped[str] = mapped_column(Text)
    shasum_id: Mapped[int] = mapped_column(BigInteger)
    url: Mapped[str | None] = mapped_column(Text)
    outfile: Mapped[str | None] = mapped_column(Text)
    shasum_first: Mapped[bool] = _first_flag()

    __table_args__ = (
        _time_ordered_key("downloads", "event_hash"),
        Index("ix_downloads_sensor_ts", "sensor_id", "ts_us"),
        # The latest URL of each top download.
        Index("ix_downloads_shasum_ts", "shasum_id", "ts_us"),
    )


# Kinds of the values the summaries count, as stored in their ``kind`` columns.
VALUE_KINDS = {
    "username": 1,
    "password": 2,
    "input": 3,
    "shasum": 4,
    "src_ip": 5,
    "credential": 6,  # username and password in one text (ingest.details.credential)
}


class ValueDictionary(Base):
    """Every distinct value the summaries count, by kind, as a small integer id.

    Attackers choose usernames, passwords and commands, so no such text is ever
    part of an index key: values are found by a fixed-size digest of their text,
    and summaries and per-event rows refer to them by id. Ids also make the
    distinct sets of the summaries compact bitmaps.
    """

    __tablename__ = "value_dictionary"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    kind: Mapped[int] = mapped_column(SmallInteger)
    # blake2b of (kind, text): unique by itself, the one key values are found by.
    digest: Mapped[bytes] = mapped_column(LargeBinary(HASH_BYTES), unique=True)
    value: Mapped[str] = mapped_column(Text)
    length: Mapped[int] = mapped_column(Integer)  # in characters


def _count() -> Mapped[int]:
    # 32-bit per piece and sensor: PostgreSQL sums them into a bigint, where sums
    # of bigints are numeric, slower and heavier to hash.
    return mapped_column(Integer, server_default="0")


class Rollup(Base):
    """Counters per sensor and time piece (a UTC minute, hour or day: cowrie_stats.timeline).

    Event figures count the events timestamped in the piece; session figures
    count the sessions that started in it, as they stand after every event
    stored so far (the ingest moves a session's share when a later batch
    changes it). All add up over pieces, except the maximum and the first and
    last times, which combine by max/min.
    """

    __tablename__ = "rollups"

    level: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    piece: Mapped[int] = mapped_column(BigInteger, primary_key=True)  # ts_us // level width
    sensor_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    events: Mapped[int] = _count()
    login_attempts: Mapped[int] = _count()
    login_successes: Mapped[int] = _count()
    commands: Mapped[int] = _count()
    downloads: Mapped[int] = _count()
    first_ts_us: Mapped[int | None] = mapped_column(BigInteger)  # first and last event
    last_ts_us: Mapped[int | None] = mapped_column(BigInteger)
    sessions: Mapped[int] = _count()
    sessions_with_login_success: Mapped[int] = _count()
    sessions_with_commands: Mapped[int] = _count()
    session_commands: Mapped[int] = _count()  # commands of the sessions started here
    max_session_commands: Mapped[int] = _count()
    sessions_with_duration: Mapped[int] = _count()
    duration_us: Mapped[int] = mapped_column(BigInteger, server_default="0")
    ssh_sessions: Mapped[int] = _count()
    telnet_sessions: Mapped[int] = _count()


# How the figures of ``rollups`` combine over pieces: counts add up, the first and
# last event take the minimum and maximum, and so does the largest session.
EVENT_COUNTERS = ("events", "login_attempts", "login_successes", "commands", "downloads")
SESSION_COUNTERS = (
    "sessions",
    "sessions_with_login_success",
    "sessions_with_commands",
    "session_commands",
    "sessions_with_duration",
    "duration_us",
    "ssh_sessions",
    "telnet_sessions",
)
# How an upsert combines a stored column with the new row's value.
Rule = Literal["add", "min", "max", "replace"]
ROLLUP_COMBINE: dict[str, Literal["add", "min", "max"]] = {
    **dict.fromkeys(EVENT_COUNTERS + SESSION_COUNTERS, "add"),
    "first_ts_us": "min",
    "last_ts_us": "max",
    "max_session_commands": "max",
}


class RollupSet(Base):
    """The distinct values of one kind per sensor and time piece, as a Roaring bitmap of ids.

    Usernames, passwords and download hashes of the events in the piece; source
    IPs of the sessions that started in it. The union of a window's bitmaps
    counts its distinct values exactly, in microseconds.
    """

    __tablename__ = "rollup_sets"

    kind: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    level: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    piece: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    sensor_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    members: Mapped[bytes] = mapped_column(LargeBinary)  # pyroaring BitMap.serialize()


class RollupValue(Base):
    """How each ranked value was used per sensor and time piece.

    Uses and first uses (rows with a first-use flag: sessions whose first use
    of the value lies here) add up over pieces; first/last use take the
    minimum/maximum. For source IPs a use is a session started in the piece
    (its last use is the session's last event); for credentials, successes
    count the successful attempts. Rankings read whole pieces from here and
    only the window's partial edges from the raw rows.
    """

    __tablename__ = "rollup_values"

    kind: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    level: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    piece: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    sensor_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    value_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    uses: Mapped[int] = mapped_column(Integer)
    first_uses: Mapped[int] = mapped_column(Integer)
    first_ts_us: Mapped[int] = mapped_column(BigInteger)
    last_ts_us: Mapped[int] = mapped_column(BigInteger)
    successes: Mapped[int] = _count()  # credentials: successful attempts


class DataVersion(Base):
    """One row counting the ingest batches that stored something.

    Bumped in the same transaction as the data, so equal versions mean equal
    data on any endpoint: the key of the server's result cache.
    """

    __tablename__ = "data_version"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger)


class DeadLetter(Base):
    """A line that could not be used, with why; never silently dropped."""

    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    source: Mapped[str] = mapped_column(Text)
    line_no: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(Text)
    raw: Mapped[str] = mapped_column(Text)
    raw_hash: Mapped[bytes] = mapped_column(LargeBinary(HASH_BYTES))
    created_ts_us: Mapped[int] = mapped_column(BigInteger)

    # Re-reading a file must not duplicate its dead letters.
    __table_args__ = (
        UniqueConstraint("source", "line_no", "raw_hash", name="uq_dead_letters_line"),
    )


class IngestCursor(Base):
    """How far a file has been read, committed with the data it covers."""

    __tablename__ = "ingest_cursors"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # Identity of the file content: hash of its first line (stable while the
    # file grows, and across renames by rotation or gzip), plus the path and
    # inode seen last, for operators.
    head_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    # Hash of the bytes just before ``offset``: a file that shares the first
    # line but not the content up to the cursor is read from the start.
    tail_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    path: Mapped[str] = mapped_column(Text)
    inode: Mapped[int | None] = mapped_column(BigInteger)
    compressed: Mapped[bool] = mapped_column(Boolean)
    offset: Mapped[int] = mapped_column(BigInteger)  # of the decompressed stream
    line_no: Mapped[int] = mapped_column(BigInteger)
    updated_ts_us: Mapped[int] = mapped_column(BigInteger)


# Core Table objects, for set-based statements (typed as Table, unlike __table__).
SENSORS = Base.metadata.tables["sensors"]
EVENTS = Base.metadata.tables["events"]
SESSIONS = Base.metadata.tables["sessions"]
LOGIN_ATTEMPTS = Base.metadata.tables["login_attempts"]
COMMANDS = Base.metadata.tables["commands"]
DOWNLOADS = Base.metadata.tables["downloads"]
VALUE_DICTIONARY = Base.metadata.tables["value_dictionary"]
ROLLUPS = Base.metadata.tables["rollups"]
ROLLUP_SETS = Base.metadata.tables["rollup_sets"]
ROLLUP_VALUES = Base.metadata.tables["rollup_values"]
DEAD_LETTERS = Base.metadata.tables["dead_letters"]
INGEST_CURSORS = Base.metadata.tables["ingest_cursors"]
DATA_VERSION = Base.metadata.tables["data_version"]
