"""One line, and an exit status, for each failure an operator can fix: never a traceback.

Configuration mistakes exit 2; a missing file, an unmigrated schema, an unreachable
database or a role without the rights a command needs exit 1, with the database named
(password masked) and, for roles, what the role lacks and which role the command needs.
"""

from __future__ import annotations

import getpass

from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from cowrie_stats.db.schema import SchemaError
from cowrie_stats.settings import Settings, SettingsError, database_location

# SQLSTATEs of a role without the rights a command needs, and how to say so.
LACKS = {"42501": "lacks a privilege", "25006": "is read-only"}
# What each command needs of its database role.
NEEDS = {
    "migrate": "migrate needs the database's owner role, which creates and alters tables",
    "ingest": "ingest needs the owner role, which writes every table",
    "serve": "serve needs SELECT on every table (the read-only role has it)",
}


def _role(settings: Settings) -> str:
    user = make_url(settings.database_url).username
    # Without a user in the URL, libpq connects as the operating-system user.
    return f'role "{user or getpass.getuser()}"'


def database_error(error: Exception, settings: Settings, command: str) -> str | None:
    """The one line for a database error, or None when ``error`` is not one."""
    if not isinstance(error, DBAPIError):
        return None
    where = database_location(settings.database_url)
    text = str(error.orig).strip()
    reason = text.splitlines()[0] if text else type(error.orig).__name__
    sqlstate = getattr(error.orig, "sqlstate", None)
    if sqlstate in LACKS:
        needs = NEEDS.get(command, "")
        return f"{command} {where}: {_role(settings)} {LACKS[sqlstate]} ({reason}); {needs}"
    if "readonly database" in reason:
        return f"cannot write {where}: {reason} (check the file's and its directory's modes)"
    # The driver's first line says what happened (refused, disk full, ...); neither it
    # nor the redacted URL carries a password.
    return f"database unavailable ({where}): {type(error.orig).__name__}: {reason}"


def operator_error(error: Exception, settings: Settings, command: str) -> tuple[str, int] | None:
    """(line, exit status) for a mistake an operator can fix; None for a bug."""
    if isinstance(error, SettingsError):  # raised at start-up, e.g. a malformed API keys file
        return f"configuration error: {error}", 2
    if isinstance(error, SchemaError | OSError):
        return str(error), 1
    line = database_error(error, settings, command)
    return (line, 1) if line is not None else None
