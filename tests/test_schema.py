"""Migrations run both ways on both backends and leave the schema the models describe."""

from __future__ import annotations

from pathlib import Path

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


def test_migrations_give_every_table_the_models_primary_key(db: Database) -> None:
    # compare_metadata does not compare primary keys; 0006 changed four of them.
    inspector = inspect(db.engine)
    for name, table in Base.metadata.tables.items():
        reflected = inspector.get_pk_constraint(name)["constrained_columns"]
        assert reflected == list(table.primary_key.columns.keys()), name
    assert inspector.get_pk_constraint("events")["constrained_columns"] == ["ts_us", "hash"]


def test_migrate_with_a_password_full_of_special_characters(pg_cluster: object) -> None:
    from sqlalchemy.engine import make_url

    from cowrie_stats.db.engines import create_db_engine
    from cowrie_stats.settings import Settings
    from testkit.pgcluster import PgCluster

    assert isinstance(pg_cluster, PgCluster)
    # The test cluster trusts loopback, so any password is accepted: this checks
    # that the URL survives migrations (configparser once choked on "%").
    url = make_url(pg_cluster.primary_url).set(password="p%a=s/s+w:o@rd")
    engine = create_db_engine(url.render_as_string(hide_password=False), Settings(), writer=True)
    try:
        upgrade(engine)
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()


def test_migrations_0004_0005_fill_existing_data_as_the_ingest_does(
    db: Database, tmp_path: Path
) -> None:
    from test_ingest import snapshot

    sample = db.ingest_sample(tmp_path)
    db.ingest([sample])
    ingested = snapshot(db.engine)
    assert any(ingested["first_use_flags"].values())
    downgrade(db.engine, "0003")
    upgrade(db.engine)
    assert snapshot(db.engine) == ingested
