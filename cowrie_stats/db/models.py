"""The relational schema, portable between SQLite and PostgreSQL.

Design notes (the "why" behind the columns and indexes):

* Times are stored as integer microseconds since the Unix epoch (UTC). That is
  exact, identical on both backends, cheap to compare and to bucket
  (``ts_us // 3_600_000_000`` is the hour), and BRIN-friendly on PostgreSQL.
* ``events`` keeps every distinct usable event, keyed by a 128-bit hash of its
  canonical content: re-reading a file, overlapping rotations or the same
  events under another name insert nothing (dedup by content, not offset).
* ``login_attempts``, ``commands`` and ``downloads`` are narrow per-event
  tables keyed by the same hash, so each ranking scans one small index.
* The per-event tables have no foreign keys (migration 0003): their
  ``sensor_id``/``session_id`` are written by the ingest in the transaction that
  creates or reads the sensor and session, nothing deletes either, and the
  per-row constraint triggers cost about an eighth of the ingest's database time.
* ``sessions`` is the denormalised per-session summary maintained by the
  ingest (start, protocol, duration, per-session counts): session-level
  figures never touch ``events``.
* ``*_first`` flags on the per-event tables mark, for each (session, value), the
  session's first row with that value (by timestamp, then hash). Counting the
  flagged rows of a value counts its distinct sessions in the same scan as the
  ranking; ``sensors.max_session_us`` bounds the sessions that straddle a
  window's start, the one case the flags do not cover (see queries.py).
* ``hourly_rollups`` holds additive per (sensor, hour) counters maintained in
  the ingest transaction; whole hours of a window are answered from it.
* Indexes: every time-window query filters on a time column, alone or with a
  sensor list, hence the ``(ts_us)`` and ``(sensor_id, ts_us)`` btrees on the
  per-event tables and ``(start_ts_us)`` / ``(sensor_id, start_ts_us)`` on
  sessions; ``(src_ip, start_ts_us)`` serves the source-IP ranking. BRIN on the
  time columns was considered and not used: backfilling older rotated files
  makes insertion order differ from time order, which widens BRIN ranges until
  they prune little, and the btrees also give the ordered min/max lookups.
* IPs are stored as text in Python's canonical form (``ipaddress`` compressed),
  so IPv4 and IPv6 compare and count exactly on both backends; a value that is
  not an IP is kept verbatim rather than rejected.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
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
    the time per row (docs/performance.md, session 6).
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

    __table_args__ = (
        _time_ordered_key("events", "hash"),
        # Sensor event counts over partial hours of a window.
        Index("ix_events_sensor_ts", "sensor_id", "ts_us"),
    )


class Session(Base):
    __tablename__ = "sessions"

    id: Mapped[int] = mapped_column(SESSION_ID, primary_key=True)
    sensor_id: Mapped[int] = mapped_column(ForeignKey("sensors.id"))
    session: Mapped[str] = mapped_column(Text)
    start_ts_us: Mapped[int] = mapped_column(BigInteger)
    end_ts_us: Mapped[int] = mapped_column(BigInteger)
    src_ip: Mapped[str | None] = mapped_column(Text)
    src_port: Mapped[int | None] = mapped_column(Integer)
    dst_port: Mapped[int | None] = mapped_column(Integer)
    protocol: Mapped[str] = mapped_column(String(16), default="unknown")
    client_version: Mapped[str | None] = mapped_column(Text)
    duration_s: Mapped[float | None] = mapped_column(Float)
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
        # Source-IP rankings and distinct counts.
        Index("ix_sessions_src_ip", "src_ip", "start_ts_us"),
    )


class LoginAttempt(Base):
    __tablename__ = "login_attempts"

    event_hash: Mapped[bytes] = mapped_column(LargeBinary(HASH_BYTES))
    sensor_id: Mapped[int] = mapped_column(Integer)
    session_id: Mapped[int] = mapped_column(SESSION_ID)
    ts_us: Mapped[int] = mapped_column(BigInteger)
    username: Mapped[str | None] = mapped_column(Text)
    password: Mapped[str | None] = mapped_column(Text)
    success: Mapped[bool] = mapped_column(Boolean)
    username_first: Mapped[bool] = _first_flag()
    password_first: Mapped[bool] = _first_flag()

    __table_args__ = (
        _time_ordered_key("login_attempts", "event_hash"),
        Index("ix_login_attempts_ts", "ts_us"),
        Index("ix_login_attempts_sensor_ts", "sensor_id", "ts_us"),
    )


class Command(Base):
    __tablename__ = "commands"

    event_hash: Mapped[bytes] = mapped_column(LargeBinary(HASH_BYTES))
    sensor_id: Mapped[int] = mapped_column(Integer)
    session_id: Mapped[int] = mapped_column(SESSION_ID)
    ts_us: Mapped[int] = mapped_column(BigInteger)
    input: Mapped[str] = mapped_column(Text)
    input_first: Mapped[bool] = _first_flag()

    __table_args__ = (
        _time_ordered_key("commands", "event_hash"),
        Index("ix_commands_ts", "ts_us"),
        Index("ix_commands_sensor_ts", "sensor_id", "ts_us"),
    )


class Download(Base):
    __tablename__ = "downloads"

    event_hash: Mapped[bytes] = mapped_column(LargeBinary(HASH_BYTES))
    sensor_id: Mapped[int] = mapped_column(Integer)
    session_id: Mapped[int] = mapped_column(SESSION_ID)
    ts_us: Mapped[int] = mapped_column(BigInteger)
    shasum: Mapped[str] = mapped_column(Text)
    url: Mapped[str | None] = mapped_column(Text)
    outfile: Mapped[str | None] = mapped_column(Text)
    shasum_first: Mapped[bool] = _first_flag()

    __table_args__ = (
        _time_ordered_key("downloads", "event_hash"),
        Index("ix_downloads_ts", "ts_us"),
        Index("ix_downloads_sensor_ts", "sensor_id", "ts_us"),
    )


# Units of the rollup keys: hourly_rollups.hour and daily_values.day.
US_PER_HOUR = 3_600_000_000
US_PER_DAY = 86_400_000_000


class HourlyRollup(Base):
    """Additive counters per sensor and UTC hour, maintained by the ingest."""

    __tablename__ = "hourly_rollups"

    sensor_id: Mapped[int] = mapped_column(ForeignKey("sensors.id"), primary_key=True)
    hour: Mapped[int] = mapped_column(BigInteger, primary_key=True)  # ts_us // US_PER_HOUR
    sessions: Mapped[int] = mapped_column(BigInteger, default=0)
    events: Mapped[int] = mapped_column(BigInteger, default=0)
    login_attempts: Mapped[int] = mapped_column(BigInteger, default=0)
    login_successes: Mapped[int] = mapped_column(BigInteger, default=0)
    commands: Mapped[int] = mapped_column(BigInteger, default=0)
    downloads: Mapped[int] = mapped_column(BigInteger, default=0)
    # First and last event of the sensor in the hour (events are never removed,
    # so these only ever move outwards).
    first_ts_us: Mapped[int | None] = mapped_column(BigInteger)
    last_ts_us: Mapped[int | None] = mapped_column(BigInteger)

    __table_args__ = (Index("ix_hourly_rollups_hour", "hour"),)


class DailyValue(Base):
    """Per (kind, UTC day, sensor, value): how a ranked value was used that day.

    Maintained by the ingest in the batch's transaction. Uses and first uses add
    up over days and first/last take the minimum/maximum, so a ranking over a
    window's whole days reads one row per value-day instead of one per event;
    the partial days at the window's edges come from the raw rows. ``kind`` is
    one of :data:`DAILY_KINDS`. Credentials are not kept: (username, password)
    pairs repeat too little per day for a row per pair-day to be smaller than
    the raw rows (measured in docs/performance.md).
    """

    __tablename__ = "daily_values"

    kind: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    day: Mapped[int] = mapped_column(Integer, primary_key=True)  # ts_us // US_PER_DAY
    sensor_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    value: Mapped[str] = mapped_column(Text, primary_key=True)
    # 32-bit counts (per value, sensor and day): PostgreSQL sums them into a bigint,
    # where sums of bigints are numeric, slower and heavier to hash.
    uses: Mapped[int] = mapped_column(Integer)
    first_uses: Mapped[int] = mapped_column(Integer)  # rows with the first-use flag
    first_ts_us: Mapped[int] = mapped_column(BigInteger)
    last_ts_us: Mapped[int] = mapped_column(BigInteger)


# daily_values.kind of each ranked value column
DAILY_KINDS = {"username": 1, "password": 2, "input": 3, "shasum": 4}


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
HOURLY_ROLLUPS = Base.metadata.tables["hourly_rollups"]
DAILY_VALUES = Base.metadata.tables["daily_values"]
DEAD_LETTERS = Base.metadata.tables["dead_letters"]
INGEST_CURSORS = Base.metadata.tables["ingest_cursors"]
DATA_VERSION = Base.metadata.tables["data_version"]
