"""The table of settings: :class:`Settings`, one field per ``COWRIE_STATS_*`` variable.

Each field declares its default, its parser (type, range or choices, from
:mod:`cowrie_stats.settings_parsers`), whether it is a secret, which commands read it
and a line of help. The variable is the field's name upper-cased after
``COWRIE_STATS_``. The loader (:mod:`cowrie_stats.settings`), ``--help`` and the
documentation tests read the table; nothing else states a default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from sqlalchemy.engine import URL, make_url

from cowrie_stats.settings_parsers import (
    PREFIX,
    Choice,
    DatabaseUrl,
    DatabaseUrls,
    Flag,
    Integer,
    Number,
    Parser,
    ReadableFile,
    Text,
    env_text,
)

DEFAULT_DATABASE_URL = "sqlite:///var/cowrie-stats.db"
LOOPBACK = "127.0.0.1"

T = TypeVar("T")


# Which commands read a setting (their --help lists it).
DATABASE_COMMANDS = frozenset({"serve", "migrate", "ingest", "prune", "dead-letters"})
SERVE = frozenset({"serve"})
INGEST = frozenset({"ingest"})
SERVE_AND_INGEST = SERVE | INGEST
SERVE_AND_HEALTHCHECK = SERVE | {"healthcheck"}
# Groups: the sections of .env.example, and the topics of docs/operations.md.
DATABASE = "database"
SERVER = "gRPC server"
HOSTILE = "hostile clients"
LOGGING = "logging and metrics"
TUNING = "database tuning"
AUTH = "authentication and TLS"

# Which calls the access log writes a line for: every one, only those that
# failed or were slow, or none (metrics count every call in all three).
ACCESS_LOG_CHOICES = ("all", "errors", "off")


@dataclass(frozen=True)
class SettingSpec:
    """One row of the table, beside the field's name and default."""

    parser: Parser[object]
    help: str
    commands: frozenset[str]
    group: str
    secret: bool = False


def setting(
    default: T,
    parser: Parser[T],
    help: str,
    commands: frozenset[str],
    group: str,
    *,
    secret: bool = False,
) -> T:
    """A field of :class:`Settings` with its row of the table (a dataclass field)."""
    spec = SettingSpec(parser, help, commands, group, secret)
    return field(default=default, repr=not secret, metadata={"setting": spec})


@dataclass(frozen=True)
class Settings:
    """All runtime configuration of the service, ingest and CLI: the table of settings."""

    database_url: str = setting(
        DEFAULT_DATABASE_URL,
        DatabaseUrl(),
        "primary database (writes, migrations, ingest); SQLite relative to the working directory",
        DATABASE_COMMANDS,
        DATABASE,
        secret=True,
    )
    database_password: str | None = setting(
        None,
        Text(),
        "password put into the PostgreSQL URLs that have none",
        DATABASE_COMMANDS,
        DATABASE,
        secret=True,
    )
    replica_urls: tuple[str, ...] = setting(
        (), DatabaseUrls(), "read replicas, comma-separated", SERVE, DATABASE, secret=True
    )
    grpc_host: str = setting(  # loopback unless an operator opens it on purpose
        LOOPBACK, Text(), "listen address; beyond loopback set API keys or TLS", SERVE, SERVER
    )
    grpc_port: int = setting(
        50051, Integer(0, 65535), "listen port of the gRPC API", SERVE_AND_HEALTHCHECK, SERVER
    )
    shutdown_grace_seconds: float = setting(
        10.0, Number(0.0), "seconds in-flight calls get to finish after SIGTERM", SERVE, SERVER
    )
    # Serving threads. On 2 cores, 4 answered cached calls 12-17 % faster than 16 with a
    # lower p99 (fewer threads contend for the GIL) and cold calls as fast (PostgreSQL's
    # cores are busy with 4 queries already). docs/performance.md, "Four serving threads".
    max_workers: int = setting(
        4, Integer(1, 1024), "statistics calls worked on at once", SERVE, SERVER
    )
    max_concurrent_rpcs: int = setting(
        64, Integer(1, 100_000), "calls in flight; more get RESOURCE_EXHAUSTED", SERVE, SERVER
    )
    max_message_bytes: int = setting(
        1024 * 1024,
        Integer(1024, 64 * 1024 * 1024),
        "largest request message; answers may be 16 times this",
        SERVE,
        SERVER,
    )
    default_deadline_seconds: float = setting(
        30.0, Number(0.1), "deadline of calls that set none", SERVE, SERVER
    )
    result_cache_entries: int = setting(
        256,
        Integer(0, 1_000_000),
        "answers cached by request and data version; 0 = off",
        SERVE,
        SERVER,
    )
    # Bytes of the cached answers and their request keys (serialized); an answer over
    # an eighth of it is not kept. 0 turns the cache off, as 0 entries does.
    result_cache_bytes: int = setting(
        16 * 1024 * 1024,
        Integer(0, 1 << 40),
        "bytes the cached answers and their keys may take; 0 = off",
        SERVE,
        SERVER,
    )
    data_version_poll_interval: float = setting(
        1.0,
        Number(0.0),
        "seconds between reads of the data version; 0 = read it in every call",
        SERVE,
        SERVER,
    )
    max_sensors_per_request: int = setting(
        1000, Integer(1, 100_000), "sensor names one request may filter on", SERVE, SERVER
    )
    max_window_days: int = setting(
        3660, Integer(1, 100_000), "longest time_range of a request, in days", SERVE, SERVER
    )
    # Hostile clients (docs/security/README.md).
    # Health-only listener without API keys, for kubelet and container probes; 0 = off.
    probe_port: int = setting(
        50052,
        Integer(0, 65535),
        "health-only listener for probes, no key; 0 = off",
        SERVE_AND_HEALTHCHECK,
        HOSTILE,
    )
    # A call whose request message does not arrive within this is cancelled; also bounds
    # each streamed message and each health update a watcher does not read.
    receive_timeout_seconds: float = setting(
        5.0, Number(0.05), "seconds a call's request message may take to arrive", SERVE, HOSTILE
    )
    # Open grpc.health.v1 Watch streams at once; more are refused (RESOURCE_EXHAUSTED).
    max_health_watchers: int = setting(
        16, Integer(1, 10_000), "open health Watch streams at once", SERVE, HOSTILE
    )
    # Connections: closed after this long without a call, and after this age (then given
    # the grace to finish their calls), so no connection holds resources for ever.
    max_connection_idle_seconds: float = setting(
        300.0, Number(1.0), "seconds a connection without calls stays open", SERVE, HOSTILE
    )
    max_connection_age_seconds: float = setting(
        1800.0, Number(1.0), "seconds after which a connection must reconnect", SERVE, HOSTILE
    )
    max_connection_age_grace_seconds: float = setting(
        30.0, Number(0.0), "seconds its calls then get to finish", SERVE, HOSTILE
    )
    log_format: str = setting(
        "text",
        Choice(("text", "json")),
        "text, or json (one object a line)",
        DATABASE_COMMANDS,
        LOGGING,
    )
    log_level: str = setting(
        "INFO",
        Choice(("DEBUG", "INFO", "WARNING", "ERROR"), upper=True),
        "DEBUG, INFO, WARNING or ERROR",
        DATABASE_COMMANDS,
        LOGGING,
    )
    access_log: str = setting(
        "all", Choice(ACCESS_LOG_CHOICES), "access-log lines: all, errors, off", SERVE, LOGGING
    )
    metrics_port: int = setting(
        0, Integer(0, 65535), "Prometheus /metrics port; 0 = off", SERVE_AND_INGEST, LOGGING
    )
    metrics_host: str = setting(  # no authentication: loopback unless opened on purpose
        LOOPBACK,
        Text(),
        "address /metrics listens on (no authentication)",
        SERVE_AND_INGEST,
        LOGGING,
    )
    max_replica_lag: float = setting(
        30.0, Number(0.0), "seconds of replica lag above which reads go elsewhere", SERVE, TUNING
    )
    replica_check_interval: float = setting(
        5.0, Number(0.05), "seconds between health checks of each replica", SERVE, TUNING
    )
    # pool_size + max_overflow >= max_workers: a worker never waits for a connection.
    db_pool_size: int = setting(
        8, Integer(1, 1000), "pooled connections per database", DATABASE_COMMANDS, TUNING
    )
    db_max_overflow: int = setting(
        8, Integer(0, 1000), "connections allowed above the pool", DATABASE_COMMANDS, TUNING
    )
    db_pool_recycle: int = setting(
        1800,
        Integer(-1, 86400),
        "seconds after which a pooled connection is replaced",
        DATABASE_COMMANDS,
        TUNING,
    )
    db_connect_timeout: int = setting(
        5, Integer(1, 600), "seconds to wait for a connection", DATABASE_COMMANDS, TUNING
    )
    # Parse processes of `cowrie-stats ingest` for large inputs; 0 parses in the
    # ingest process itself. One measured as fast as two on 2 cores (the writer
    # and PostgreSQL are the bottleneck), with less CPU taken from PostgreSQL.
    ingest_workers: int = setting(
        1, Integer(0, 64), "parse processes for inputs over 50,000 lines", INGEST, TUNING
    )
    # Longest log line `cowrie-stats ingest` reads; longer ones are dead-lettered
    # and skipped without being held in memory (attackers write the logs).
    ingest_max_line_bytes: int = setting(
        1 << 20,
        Integer(4096, 256 << 20),
        "longest line read; longer ones are dead-lettered and skipped",
        INGEST,
        TUNING,
    )
    # Days of sessions `cowrie-stats ingest` keeps: after each pass it prunes the
    # sessions that ended before today's UTC midnight minus this; 0 keeps everything.
    retention_days: int = setting(
        0,
        Integer(0, 100_000),
        "after each pass, prune older sessions; 0 = keep all",
        INGEST,
        TUNING,
    )
    api_keys_file: str | None = setting(
        None, ReadableFile(), "hashed API keys (mode 600): calls need a key", SERVE, AUTH
    )
    open_health_and_reflection: bool = setting(
        True, Flag(), "health and reflection callable without a key", SERVE, AUTH
    )
    tls_cert_file: str | None = setting(
        None, ReadableFile(), "server certificate (PEM): TLS on", SERVE, AUTH
    )
    tls_key_file: str | None = setting(
        None, ReadableFile(private=True), "its private key (PEM, mode 600)", SERVE, AUTH
    )
    tls_client_ca_file: str | None = setting(
        None, ReadableFile(), "CA (PEM) client certificates must be signed by", SERVE, AUTH
    )

    @property
    def primary_url(self) -> URL:
        return make_url(self.database_url)


@dataclass(frozen=True)
class SettingRow:
    """A setting as the loader, ``--help`` and the documentation tests see it."""

    field: str
    default: object
    spec: SettingSpec

    @property
    def variable(self) -> str:
        return PREFIX + self.field.upper()

    @property
    def shown_default(self) -> str:
        """The default as an operator writes it ('' for none)."""
        value = self.default
        if value is None or value == ():
            return ""
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, float):
            return f"{value:g}"
        return str(value)

    def text(self, env: Mapping[str, str]) -> str | None:
        """The variable's text, or its ``*_FILE`` twin's content; None when unset or empty."""
        if not self.spec.parser.file_variant:  # a path is used as given, it has no twin
            return env.get(self.variable) or None
        return env_text(env, self.field.upper())

    def read(self, env: Mapping[str, str]) -> Any:
        """The value ``env`` sets, or the default; SettingsError for a bad one."""
        raw = self.text(env)
        return self.default if raw is None else self.spec.parser.parse(self.variable, raw)


SETTINGS_TABLE: tuple[SettingRow, ...] = tuple(
    SettingRow(f.name, f.default, f.metadata["setting"]) for f in fields(Settings)
)
SETTING_ROWS: dict[str, SettingRow] = {row.field: row for row in SETTINGS_TABLE}
