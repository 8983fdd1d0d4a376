"""Typed settings read from ``COWRIE_STATS_*`` environment variables.

:class:`Settings` is the one table of them: each field declares its default, its parser
(type, range or choices), whether it is a secret, which commands read it and a line of
help. The variable is the field's name upper-cased after ``COWRIE_STATS_``. The loader,
``--help`` and the documentation tests read the table; nothing else states a default.

Every variable but a file path also has a ``*_FILE`` twin that reads the value from a
file (Docker and Kubernetes secrets); secrets are documented with it and never logged.
Values are validated once at start-up; a bad value raises :class:`SettingsError`, one
line naming the variable.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import stat
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Generic, TypeVar

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

PREFIX = "COWRIE_STATS_"
DEFAULT_DATABASE_URL = "sqlite:///var/cowrie-stats.db"
LOOPBACK = "127.0.0.1"

log = logging.getLogger("cowrie_stats")

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class SettingsError(ValueError):
    """A configuration value is missing or invalid."""


# -- parsers: text of a variable -> typed value, or one line naming the variable ----------


class Parser(ABC, Generic[T_co]):
    """Turns a variable's text into its value; ``describe`` is its allowed range, if any."""

    #: Whether the value may come from a ``*_FILE`` twin (file paths are read as given).
    file_variant = True

    @abstractmethod
    def parse(self, variable: str, raw: str) -> T_co:
        """The value, or SettingsError: one line naming ``variable``."""

    def describe(self) -> str:
        return ""


@dataclass(frozen=True)
class Text(Parser[str]):
    def parse(self, variable: str, raw: str) -> str:
        return raw


@dataclass(frozen=True)
class Integer(Parser[int]):
    minimum: int
    maximum: int

    def parse(self, variable: str, raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise SettingsError(f"{variable}: expected an integer, got {raw!r}") from None
        if not self.minimum <= value <= self.maximum:
            raise SettingsError(f"{variable}: {value} is outside {self.minimum}..{self.maximum}")
        return value

    def describe(self) -> str:
        return f"{self.minimum}..{self.maximum}"


@dataclass(frozen=True)
class Number(Parser[float]):
    minimum: float

    def parse(self, variable: str, raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise SettingsError(f"{variable}: expected a number, got {raw!r}") from None
        if not value >= self.minimum:  # NaN too
            raise SettingsError(f"{variable}: {value} is below {self.minimum}")
        return value

    def describe(self) -> str:
        return f">= {self.minimum:g}"


@dataclass(frozen=True)
class Choice(Parser[str]):
    choices: tuple[str, ...]
    upper: bool = False  # log levels are upper case, everything else lower

    def parse(self, variable: str, raw: str) -> str:
        stripped = raw.strip()
        value = stripped.upper() if self.upper else stripped.lower()
        if value not in self.choices:
            raise SettingsError(f"{variable}: {stripped!r} is not one of {', '.join(self.choices)}")
        return value


@dataclass(frozen=True)
class Flag(Parser[bool]):
    def parse(self, variable: str, raw: str) -> bool:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{variable}: expected true or false, got {raw!r}")


@dataclass(frozen=True)
class ReadableFile(Parser[str]):
    """A path to an existing file; ``private``: refused when others may read it."""

    private: bool = False
    file_variant = False

    def parse(self, variable: str, raw: str) -> str:
        if not Path(raw).is_file():
            raise SettingsError(f"{variable}: {raw} is not a readable file")
        if self.private:
            check_private_file(Path(raw), variable)
        return raw


@dataclass(frozen=True)
class DatabaseUrl(Parser[str]):
    """A SQLite or PostgreSQL URL, with psycopg 3 as the PostgreSQL driver."""

    def parse(self, variable: str, raw: str) -> str:
        try:
            url = make_url(raw)
        except ArgumentError:
            raise SettingsError(f"{variable}: not a database URL") from None
        if url.get_backend_name() not in ("sqlite", "postgresql"):
            raise SettingsError(f"{variable}: only sqlite and postgresql are supported")
        if url.get_backend_name() == "postgresql" and url.drivername == "postgresql":
            url = url.set(drivername="postgresql+psycopg")  # psycopg 3 is our only driver
        return url.render_as_string(hide_password=False)


@dataclass(frozen=True)
class DatabaseUrls(Parser[tuple[str, ...]]):
    """Comma-separated database URLs."""

    def parse(self, variable: str, raw: str) -> tuple[str, ...]:
        parts = (part.strip() for part in raw.split(","))
        return tuple(DatabaseUrl().parse(variable, part) for part in parts if part)


# -- the table ----------------------------------------------------------------------------

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
        return _raw(env, self.field.upper())

    def read(self, env: Mapping[str, str]) -> Any:
        """The value ``env`` sets, or the default; SettingsError for a bad one."""
        raw = self.text(env)
        return self.default if raw is None else self.spec.parser.parse(self.variable, raw)


SETTINGS_TABLE: tuple[SettingRow, ...] = tuple(
    SettingRow(f.name, f.default, f.metadata["setting"]) for f in fields(Settings)
)
SETTING_ROWS: dict[str, SettingRow] = {row.field: row for row in SETTINGS_TABLE}


# Query parameters whose value is a secret, by a part of their name (any case):
# password, passwd, pwd, sslpassword, secret, client_secret, token, key, apikey ...
SECRET_PARAMETER_PARTS = ("pass", "pwd", "secret", "token", "key", "credential")
MASK = "***"
_SECRET_PARAMETER = re.compile(
    r"(?P<name>[?&;][^=&;\s#]*?(?:" + "|".join(SECRET_PARAMETER_PARTS) + r")[^=&;\s#]*=)"
    r"[^&;\s#'\"]*",
    re.IGNORECASE,
)
# scheme://user:password@ -- the password of a URL's userinfo.
_USERINFO_PASSWORD = re.compile(r"(?P<user>\b[a-z][a-z0-9+.-]*://[^\s/?#@:]*:)[^\s/?#@]*@", re.I)


def is_secret_parameter(name: str) -> bool:
    """True for a URL query parameter that carries a secret (``password``, ``sslpassword`` ...)."""
    lowered = name.lower()
    return any(part in lowered for part in SECRET_PARAMETER_PARTS)


def redact_text(text: str) -> str:
    """``text`` with URL passwords and secret query parameters masked (exception text, logs)."""
    if "=" not in text and "@" not in text:  # the common case: nothing to look for
        return text
    text = _USERINFO_PASSWORD.sub(lambda m: m["user"] + MASK + "@", text)
    return _SECRET_PARAMETER.sub(lambda m: m["name"] + MASK, text)


def redact_url(url: str | URL) -> str:
    """The URL with its password and every secret query parameter masked, safe to show."""
    try:
        rendered = make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<invalid database URL>"
    return redact_text(rendered)


def database_location(url: str | URL) -> str:
    """Where the data is, safe to log: :func:`redact_url`, a SQLite file's path absolute.

    The default SQLite path is relative to the working directory, so the same command
    run elsewhere opens another file; naming the absolute path shows which one.
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        return redact_url(url)
    path = parsed.database
    in_memory = path in (None, "", ":memory:") or str(path).startswith("file:")
    if parsed.get_backend_name() == "sqlite" and not in_memory:
        parsed = parsed.set(database=os.path.abspath(str(path)))
    return redact_url(parsed)


def check_private_file(path: Path, variable: str | None = None) -> None:
    """Refuse a secret file that others may read: one clear line, as for ``.env``.

    A file is private when only its owner may read it, or, owned by root, its group
    too (PostgreSQL's rule for key files: Kubernetes mounts Secrets root-owned with
    the pod's fsGroup, mode 0440).
    """
    info = path.stat()
    mode = stat.S_IMODE(info.st_mode)
    shared = stat.S_IRWXO | (stat.S_IWGRP | stat.S_IXGRP if info.st_uid == 0 else stat.S_IRWXG)
    if mode & shared:
        where = f"{variable}: {path}" if variable else str(path)
        raise SettingsError(
            f"{where} is readable by group or others (mode {mode:o}); run: chmod 600 {path}"
        )


def _read_secret_file(name: str, path: str) -> str:
    try:
        check_private_file(Path(path), name)
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SettingsError(f"{name}: cannot read {path}: {exc.strerror}") from exc


def _raw(env: Mapping[str, str], key: str) -> str | None:
    """Value of COWRIE_STATS_<key>, or the content of the file named by <key>_FILE."""
    name = PREFIX + key
    file_name = name + "_FILE"
    if name in env and file_name in env:
        raise SettingsError(f"set either {name} or {file_name}, not both")
    if file_name in env:
        return _read_secret_file(file_name, env[file_name])
    value = env.get(name)
    return value if value not in (None, "") else None


def _bool(env: Mapping[str, str], key: str, default: bool) -> bool:
    raw = _raw(env, key)
    return default if raw is None else Flag().parse(PREFIX + key, raw)


def _with_password(url: str, password: str | None) -> str:
    parsed = make_url(url)
    if password is None or parsed.get_backend_name() != "postgresql" or parsed.password is not None:
        return url
    return parsed.set(password=password).render_as_string(hide_password=False)


def _check_combinations(settings: Settings) -> None:
    """The rules between settings, each broken one a line naming the variables."""
    if settings.replica_urls and settings.primary_url.get_backend_name() == "sqlite":
        raise SettingsError(f"{PREFIX}REPLICA_URLS: replicas need a PostgreSQL primary")
    if (settings.tls_cert_file is None) != (settings.tls_key_file is None):
        raise SettingsError(f"{PREFIX}TLS_CERT_FILE and {PREFIX}TLS_KEY_FILE go together")
    if settings.tls_client_ca_file and settings.tls_cert_file is None:
        raise SettingsError(f"{PREFIX}TLS_CLIENT_CA_FILE needs {PREFIX}TLS_CERT_FILE")


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build and validate :class:`Settings` from ``env`` (default: os.environ)."""
    env = dict(os.environ if env is None else env)
    values = {row.field: row.read(env) for row in SETTINGS_TABLE}
    password = values["database_password"]
    values["database_url"] = _with_password(values["database_url"], password)
    values["replica_urls"] = tuple(_with_password(url, password) for url in values["replica_urls"])
    settings = Settings(**values)
    _check_combinations(settings)
    return settings


def load_env_file(path: Path, env: dict[str, str]) -> None:
    """Add COWRIE_STATS_* lines of a ``.env`` file to ``env`` (existing values win).

    The file holds secrets, so one readable by group or others is refused.
    """
    check_private_file(path)
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key = key.removeprefix("export ").strip()
        if key.startswith(PREFIX):
            env.setdefault(key, value.strip().strip("\"'"))


def is_loopback(host: str) -> bool:
    """True when ``host`` (a listen address) is reachable from this machine only."""
    name = host.strip().removeprefix("[").removesuffix("]")
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:  # a host name other than localhost: it may resolve to anything
        return False


def exposure_warning(settings: Settings) -> str | None:
    """Why the gRPC listener is open to strangers, or None when it is not.

    A listener beyond loopback with neither API keys nor TLS lets anyone who can
    reach the port call the service, and read its answers on the wire.
    """
    if is_loopback(settings.grpc_host):
        return None
    if settings.api_keys_file is not None or settings.tls_cert_file is not None:
        return None
    return (
        f"gRPC listens on {settings.grpc_host}:{settings.grpc_port}, beyond loopback, without "
        f"API keys or TLS: anyone who can reach the port may call it and read the answers; "
        f"set {PREFIX}API_KEYS_FILE and {PREFIX}TLS_CERT_FILE/_KEY_FILE, or "
        f"{PREFIX}GRPC_HOST={LOOPBACK}"
    )


def warn_if_exposed(settings: Settings) -> bool:
    """Log :func:`exposure_warning` once, at start; True when it was logged."""
    warning = exposure_warning(settings)
    if warning is not None:
        log.warning(warning)
    return warning is not None
