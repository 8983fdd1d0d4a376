"""Typed settings read from ``COWRIE_STATS_*`` environment variables.

Every secret-bearing variable has a ``*_FILE`` twin that reads the value from a
file (Docker and Kubernetes secrets). Values are validated once at start-up;
a bad value raises :class:`SettingsError` naming the variable.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

PREFIX = "COWRIE_STATS_"
DEFAULT_DATABASE_URL = "sqlite:///var/cowrie-stats.db"
LOOPBACK = "127.0.0.1"

log = logging.getLogger("cowrie_stats")


class SettingsError(ValueError):
    """A configuration value is missing or invalid."""


@dataclass(frozen=True)
class Settings:
    """All runtime configuration of the service, ingest and CLI."""

    database_url: str = DEFAULT_DATABASE_URL
    replica_urls: tuple[str, ...] = ()
    grpc_host: str = LOOPBACK  # loopback unless an operator opens it on purpose
    grpc_port: int = 50051
    log_format: str = "text"
    access_log: str = "all"
    log_level: str = "INFO"
    shutdown_grace_seconds: float = 10.0
    # Serving threads. On 2 cores, 4 answered cached calls 12-17 % faster than 16 with a
    # lower p99 (fewer threads contend for the GIL) and cold calls as fast (PostgreSQL's
    # cores are busy with 4 queries already). docs/performance.md, "Four serving threads".
    max_workers: int = 4
    max_concurrent_rpcs: int = 64
    max_message_bytes: int = 1024 * 1024
    max_replica_lag: float = 30.0
    replica_check_interval: float = 5.0
    # pool_size + max_overflow >= max_workers: a worker never waits for a connection.
    db_pool_size: int = 8
    db_max_overflow: int = 8
    db_pool_recycle: int = 1800
    db_connect_timeout: int = 5
    default_deadline_seconds: float = 30.0
    api_keys_file: str | None = None
    open_health_and_reflection: bool = True
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_client_ca_file: str | None = None
    metrics_port: int = 0
    metrics_host: str = LOOPBACK  # no authentication: loopback unless opened on purpose
    result_cache_entries: int = 256
    # Bytes of the cached answers and their request keys (serialized); an answer over
    # an eighth of it is not kept. 0 turns the cache off, as 0 entries does.
    result_cache_bytes: int = 16 * 1024 * 1024
    data_version_poll_interval: float = 1.0
    max_sensors_per_request: int = 1000
    max_window_days: int = 3660
    # Parse processes of `cowrie-stats ingest` for large inputs; 0 parses in the
    # ingest process itself. One measured as fast as two on 2 cores (the writer
    # and PostgreSQL are the bottleneck), with less CPU taken from PostgreSQL.
    ingest_workers: int = 1
    # Longest log line `cowrie-stats ingest` reads; longer ones are dead-lettered
    # and skipped without being held in memory (attackers write the logs).
    ingest_max_line_bytes: int = 1 << 20
    # Days of sessions `cowrie-stats ingest` keeps: after each pass it prunes the
    # sessions that ended before today's UTC midnight minus this; 0 keeps everything.
    retention_days: int = 0
    # Hostile clients (docs/security/README.md). A call whose request message does not
    # arrive within this is cancelled; also bounds each streamed message and each health
    # update a watcher does not read.
    receive_timeout_seconds: float = 5.0
    # Health-only listener without API keys, for kubelet and container probes; 0 = off.
    probe_port: int = 50052
    # Open grpc.health.v1 Watch streams at once; more are refused (RESOURCE_EXHAUSTED).
    max_health_watchers: int = 16
    # Connections: closed after this long without a call, and after this age (then given
    # the grace to finish their calls), so no connection holds resources for ever.
    max_connection_idle_seconds: float = 300.0
    max_connection_age_seconds: float = 1800.0
    max_connection_age_grace_seconds: float = 30.0

    @property
    def primary_url(self) -> URL:
        return make_url(self.database_url)


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


def _int(env: Mapping[str, str], key: str, default: int, minimum: int, maximum: int) -> int:
    raw = _raw(env, key)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{PREFIX}{key}: expected an integer, got {raw!r}") from None
    if not minimum <= value <= maximum:
        raise SettingsError(f"{PREFIX}{key}: {value} is outside {minimum}..{maximum}")
    return value


def _float(env: Mapping[str, str], key: str, default: float, minimum: float) -> float:
    raw = _raw(env, key)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{PREFIX}{key}: expected a number, got {raw!r}") from None
    if not value >= minimum:
        raise SettingsError(f"{PREFIX}{key}: {value} is below {minimum}")
    return value


# Which calls the access log writes a line for: every one, only those that
# failed or were slow, or none (metrics count every call in all three).
ACCESS_LOG_CHOICES = ("all", "errors", "off")


def _choice(env: Mapping[str, str], key: str, default: str, choices: tuple[str, ...]) -> str:
    raw = (_raw(env, key) or default).strip()
    normalised = raw.upper() if key == "LOG_LEVEL" else raw.lower()
    if normalised not in choices:
        raise SettingsError(f"{PREFIX}{key}: {raw!r} is not one of {', '.join(choices)}")
    return normalised


def _bool(env: Mapping[str, str], key: str, default: bool) -> bool:
    raw = _raw(env, key)
    if raw is None:
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{PREFIX}{key}: expected true or false, got {raw!r}")


def _database_url(name: str, raw: str, password: str | None) -> str:
    try:
        url = make_url(raw)
    except ArgumentError:
        raise SettingsError(f"{PREFIX}{name}: not a database URL") from None
    if url.get_backend_name() not in ("sqlite", "postgresql"):
        raise SettingsError(f"{PREFIX}{name}: only sqlite and postgresql are supported")
    if url.get_backend_name() == "postgresql" and url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")  # psycopg 3 is our only driver
    if password is not None and url.get_backend_name() == "postgresql" and url.password is None:
        url = url.set(password=password)
    return url.render_as_string(hide_password=False)


def _optional_path(env: Mapping[str, str], key: str) -> str | None:
    value = env.get(PREFIX + key)
    if value and not Path(value).is_file():
        raise SettingsError(f"{PREFIX}{key}: {value} is not a readable file")
    return value or None


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build and validate :class:`Settings` from ``env`` (default: os.environ)."""
    env = dict(os.environ if env is None else env)
    password = _raw(env, "DATABASE_PASSWORD")
    primary = _database_url(
        "DATABASE_URL", _raw(env, "DATABASE_URL") or DEFAULT_DATABASE_URL, password
    )
    replicas_raw = _raw(env, "REPLICA_URLS") or ""
    replicas = tuple(
        _database_url("REPLICA_URLS", part.strip(), password)
        for part in replicas_raw.split(",")
        if part.strip()
    )
    if replicas and make_url(primary).get_backend_name() == "sqlite":
        raise SettingsError(f"{PREFIX}REPLICA_URLS: replicas need a PostgreSQL primary")
    tls = (_optional_path(env, "TLS_CERT_FILE"), _optional_path(env, "TLS_KEY_FILE"))
    if tls[1] is not None:
        check_private_file(Path(tls[1]), f"{PREFIX}TLS_KEY_FILE")
    if (tls[0] is None) != (tls[1] is None):
        raise SettingsError(f"{PREFIX}TLS_CERT_FILE and {PREFIX}TLS_KEY_FILE go together")
    client_ca = _optional_path(env, "TLS_CLIENT_CA_FILE")
    if client_ca and tls[0] is None:
        raise SettingsError(f"{PREFIX}TLS_CLIENT_CA_FILE needs {PREFIX}TLS_CERT_FILE")
    return Settings(
        database_url=primary,
        replica_urls=replicas,
        grpc_host=_raw(env, "GRPC_HOST") or LOOPBACK,
        grpc_port=_int(env, "GRPC_PORT", 50051, 0, 65535),
        log_format=_choice(env, "LOG_FORMAT", "text", ("text", "json")),
        access_log=_choice(env, "ACCESS_LOG", "all", ACCESS_LOG_CHOICES),
        log_level=_choice(env, "LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR")),
        shutdown_grace_seconds=_float(env, "SHUTDOWN_GRACE_SECONDS", 10.0, 0.0),
        max_workers=_int(env, "MAX_WORKERS", 4, 1, 1024),
        max_concurrent_rpcs=_int(env, "MAX_CONCURRENT_RPCS", 64, 1, 100_000),
        max_message_bytes=_int(env, "MAX_MESSAGE_BYTES", 1024 * 1024, 1024, 64 * 1024 * 1024),
        max_replica_lag=_float(env, "MAX_REPLICA_LAG", 30.0, 0.0),
        replica_check_interval=_float(env, "REPLICA_CHECK_INTERVAL", 5.0, 0.05),
        db_pool_size=_int(env, "DB_POOL_SIZE", 8, 1, 1000),
        db_max_overflow=_int(env, "DB_MAX_OVERFLOW", 8, 0, 1000),
        db_pool_recycle=_int(env, "DB_POOL_RECYCLE", 1800, -1, 86400),
        db_connect_timeout=_int(env, "DB_CONNECT_TIMEOUT", 5, 1, 600),
        default_deadline_seconds=_float(env, "DEFAULT_DEADLINE_SECONDS", 30.0, 0.1),
        api_keys_file=_optional_path(env, "API_KEYS_FILE"),
        open_health_and_reflection=_bool(env, "OPEN_HEALTH_AND_REFLECTION", True),
        tls_cert_file=tls[0],
        tls_key_file=tls[1],
        tls_client_ca_file=client_ca,
        metrics_port=_int(env, "METRICS_PORT", 0, 0, 65535),
        metrics_host=_raw(env, "METRICS_HOST") or LOOPBACK,
        result_cache_entries=_int(env, "RESULT_CACHE_ENTRIES", 256, 0, 1_000_000),
        result_cache_bytes=_int(env, "RESULT_CACHE_BYTES", 16 * 1024 * 1024, 0, 1 << 40),
        data_version_poll_interval=_float(env, "DATA_VERSION_POLL_INTERVAL", 1.0, 0.0),
        max_sensors_per_request=_int(env, "MAX_SENSORS_PER_REQUEST", 1000, 1, 100_000),
        max_window_days=_int(env, "MAX_WINDOW_DAYS", 3660, 1, 100_000),
        ingest_workers=_int(env, "INGEST_WORKERS", 1, 0, 64),
        ingest_max_line_bytes=_int(env, "INGEST_MAX_LINE_BYTES", 1 << 20, 4096, 256 << 20),
        retention_days=_int(env, "RETENTION_DAYS", 0, 0, 100_000),
        receive_timeout_seconds=_float(env, "RECEIVE_TIMEOUT_SECONDS", 5.0, 0.05),
        probe_port=_int(env, "PROBE_PORT", 50052, 0, 65535),
        max_health_watchers=_int(env, "MAX_HEALTH_WATCHERS", 16, 1, 10_000),
        max_connection_idle_seconds=_float(env, "MAX_CONNECTION_IDLE_SECONDS", 300.0, 1.0),
        max_connection_age_seconds=_float(env, "MAX_CONNECTION_AGE_SECONDS", 1800.0, 1.0),
        max_connection_age_grace_seconds=_float(env, "MAX_CONNECTION_AGE_GRACE_SECONDS", 30.0, 0.0),
    )


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
