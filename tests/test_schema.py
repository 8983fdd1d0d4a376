"""Migrations run both ways on both backends and leave the schema the models describe."""

from __future__ import annotations

from conftest import Database
from sqlalchemy import inspect

from cowrie_stats.db.models import Base
from cowrie_stats.db.schema import current_revision, downgrade, head_revision, upgrade


def test_migrations_round_trip(db: Database) -> None:
    assert current_revision(db.engine) == head_revision()
    tables = set(inspect(db.engine).get_table_names())
    assert set(Base.metadata.tables) <= tables
    downgrade(db.engine, "base")
    assert current_revision(db.engine) is None
    assert not set(Base.metadata.tables) & set(inspect(db.engine).get_table_names())
    upgrade(db.engine)
    assert current_revision(db.engine) == head_revision()


def test_migrations_produce_exactly_the_models(db: Database) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    with db.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
