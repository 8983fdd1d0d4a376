"""Schema migrations (alembic) and the start-up schema check."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from cowrie_stats.settings import database_location

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


class SchemaError(RuntimeError):
    """The database schema is not the one this version of the code knows."""


def alembic_config() -> Config:
    # No URL in the config: env.py runs on the connection we hand it, and a
    # password in configparser would be both logged risk and broken by "%".
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def head_revision() -> str:
    script = ScriptDirectory(str(MIGRATIONS_DIR))
    head = script.get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (``alembic upgrade head`` by default)."""
    config = alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Take the schema back to ``revision`` (``base`` removes every table)."""
    config = alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, revision)


def check_schema(engine: Engine) -> None:
    """Refuse to serve a database that is unmigrated or newer than this code."""
    current = current_revision(engine)
    head = head_revision()
    if current == head:
        return
    if current is None:
        raise SchemaError(
            f"the database {database_location(engine.url)} is not migrated: "
            "run `cowrie-stats migrate` first"
        )
    known = {rev.revision for rev in ScriptDirectory(str(MIGRATIONS_DIR)).walk_revisions()}
    if current not in known:
        raise SchemaError(
            f"the database schema ({current}) is newer than this cowrie-stats knows ({head}): "
            "upgrade cowrie-stats"
        )
    raise SchemaError(
        f"the database schema ({current}) is older than {head}: run `cowrie-stats migrate`"
    )
