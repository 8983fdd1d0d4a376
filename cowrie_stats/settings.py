"""Typed settings read from ``COWRIE_STATS_*`` environment variables: loading them.

:class:`Settings` is the one table of them (:mod:`cowrie_stats.settings_table`): each
field declares its default, its parser (:mod:`cowrie_stats.settings_parsers`), whether
it is a secret, which commands read it and a line of help. This module loads and checks
them, redacts secrets out of what is shown, and warns of a listener open to strangers;
it is also where the rest of the code imports every setting name from.

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
from collections.abc import Mapping
from pathlib import Path

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

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
    SettingsError,
    Text,
    check_private_file,
    env_flag,
    env_text,
    read_secret_file,
)
from cowrie_stats.settings_table import (
    ACCESS_LOG_CHOICES,
    AUTH,
    DATABASE,
    DATABASE_COMMANDS,
    DEFAULT_DATABASE_URL,
    HOSTILE,
    INGEST,
    LOGGING,
    LOOPBACK,
    SERVE,
    SERVE_AND_HEALTHCHECK,
    SERVE_AND_INGEST,
    SERVER,
    SETTING_ROWS,
    SETTINGS_TABLE,
    TUNING,
    SettingRow,
    Settings,
    SettingSpec,
    setting,
)

__all__ = [
    "ACCESS_LOG_CHOICES",
    "AUTH",
    "DATABASE",
    "DATABASE_COMMANDS",
    "DEFAULT_DATABASE_URL",
    "HOSTILE",
    "INGEST",
    "LOGGING",
    "LOOPBACK",
    "MASK",
    "PREFIX",
    "SECRET_PARAMETER_PARTS",
    "SERVE",
    "SERVER",
    "SERVE_AND_HEALTHCHECK",
    "SERVE_AND_INGEST",
    "SETTINGS_TABLE",
    "SETTING_ROWS",
    "TUNING",
    "Choice",
    "DatabaseUrl",
    "DatabaseUrls",
    "Flag",
    "Integer",
    "Number",
    "Parser",
    "ReadableFile",
    "SettingRow",
    "SettingSpec",
    "Settings",
    "SettingsError",
    "Text",
    "check_private_file",
    "database_location",
    "env_flag",
    "env_text",
    "exposure_warning",
    "is_loopback",
    "is_secret_parameter",
    "load_env_file",
    "load_settings",
    "read_secret_file",
    "redact_text",
    "redact_url",
    "setting",
    "warn_if_exposed",
]

log = logging.getLogger("cowrie_stats")


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
