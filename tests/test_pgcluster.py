"""Tests of the PostgreSQL primary + streaming replica harness (tests/pgcluster.py) itself."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import psycopg
import pytest
from conftest import require_postgres

from testkit.pgcluster import APP_USER, DATABASE, READER_USER, PgCluster, PgClusterError

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def cluster() -> Iterator[PgCluster]:
    require_postgres()
    pg = PgCluster()
    started = time.monotonic()
    pg.start()
    print(f"pgcluster started in {time.monotonic() - started:.2f}s")
    try:
        yield pg
    finally:
        pg.teardown()


@pytest.fixture
def table(cluster: PgCluster) -> Iterator[str]:
    name = f"harness_{os.getpid()}_{time.monotonic_ns()}"
    cluster.psql(f"CREATE TABLE {name} (id int PRIMARY KEY, note text)")
    try:
        yield name
    finally:
        if cluster.primary is not None and cluster.primary.running:
            cluster.psql(f"DROP TABLE IF EXISTS {name}")


def test_replica_is_a_hot_standby_and_primary_is_not(cluster: PgCluster) -> None:
    assert cluster.primary_port != cluster.replica_port
    assert cluster.primary_url == (
        f"postgresql+psycopg://{APP_USER}@127.0.0.1:{cluster.primary_port}/{DATABASE}"
    )
    with psycopg.connect(cluster.replica_dsn) as conn:
        assert conn.execute("SELECT pg_is_in_recovery(), current_user").fetchone() == (
            True,
            APP_USER,
        )
    with psycopg.connect(cluster.primary_dsn) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
    rows = cluster.psql("SELECT application_name, state FROM pg_stat_replication")
    assert rows == [("replica0", "streaming")]


def test_write_on_primary_appears_on_replica(cluster: PgCluster, table: str) -> None:
    cluster.psql(f"INSERT INTO {table} VALUES (1, 'hello')")
    cluster.wait_replica_caught_up(timeout=10)
    assert cluster.psql(f"SELECT id, note FROM {table}", on="replica") == [(1, "hello")]
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        cluster.psql(f"INSERT INTO {table} VALUES (2, 'nope')", on="replica")


def test_roles(cluster: PgCluster, table: str) -> None:
    # Tables created by the app role are readable, not writable, by the reader role.
    app_table = f"{table}_app"
    with psycopg.connect(cluster.primary_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {app_table} (x int)")
        conn.execute(f"INSERT INTO {app_table} VALUES (7)")
    try:
        reader_dsn = cluster.dsn("primary", user=READER_USER)
        with psycopg.connect(reader_dsn, autocommit=True) as conn:
            assert conn.execute(f"SELECT x FROM {app_table}").fetchall() == [(7,)]
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                conn.execute(f"INSERT INTO {app_table} VALUES (8)")
            conn.execute("SET default_transaction_read_only = off")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"INSERT INTO {app_table} VALUES (8)")
    finally:
        cluster.psql(f"DROP TABLE {app_table}")


def test_pause_replay_makes_replica_fall_behind_and_resume_catches_up(
    cluster: PgCluster, table: str
) -> None:
    cluster.wait_replica_caught_up(timeout=10)
    cluster.pause_replay()
    try:
        assert cluster.replay_paused()
        cluster.psql(f"INSERT INTO {table} SELECT g, 'x' FROM generate_series(1, 100) g")
        deadline = time.monotonic() + 10
        while cluster.replica_byte_lag() <= 0:  # received LSN > replayed LSN
            assert time.monotonic() < deadline, "replica never received the new WAL"
            time.sleep(0.05)
        received, replayed = cluster.replica_lsns()
        assert received != replayed
        assert cluster.psql(f"SELECT count(*) FROM {table}", on="replica") == [(0,)]
    finally:
        cluster.resume_replay()
    cluster.wait_replica_caught_up(timeout=10)
    assert not cluster.replay_paused()
    assert cluster.replica_byte_lag() == 0
    assert cluster.psql(f"SELECT count(*) FROM {table}", on="replica") == [(100,)]


def test_stop_and_start_replica(cluster: PgCluster, table: str) -> None:
    cluster.stop_replica()
    with pytest.raises(PgClusterError):
        cluster.psql("SELECT 1", on="replica")
    assert cluster.psql("SELECT count(*) FROM pg_stat_replication") == [(0,)]
    # Writes made while the replica is down reach it after restart (replication slot).
    cluster.psql(f"INSERT INTO {table} VALUES (42, 'while down')")
    cluster.start_replica()
    cluster.wait_replica_caught_up(timeout=10)
    assert cluster.psql(f"SELECT note FROM {table}", on="replica") == [("while down",)]


def test_restart_primary_and_terminate_backends(cluster: PgCluster, table: str) -> None:
    with psycopg.connect(cluster.primary_dsn, application_name="victim") as victim:
        victim.execute("SELECT 1")
        assert cluster.terminate_backends("victim") == 1
        with pytest.raises(psycopg.OperationalError):
            victim.execute("SELECT 1")
    cluster.restart_primary()
    cluster.wait_streaming(timeout=15)
    cluster.psql(f"INSERT INTO {table} VALUES (1, 'after restart')")
    cluster.wait_replica_caught_up(timeout=10)
    assert cluster.psql(f"SELECT note FROM {table}", on="replica") == [("after restart",)]


def test_replica_serves_reads_while_primary_is_down(cluster: PgCluster, table: str) -> None:
    cluster.psql(f"INSERT INTO {table} VALUES (5, 'durable')")
    cluster.wait_replica_caught_up(timeout=10)
    cluster.stop_primary()
    try:
        with pytest.raises(PgClusterError):
            cluster.psql("SELECT 1")
        assert cluster.psql(f"SELECT note FROM {table}", on="replica") == [("durable",)]
    finally:
        cluster.start_primary()
    cluster.wait_streaming(timeout=15)


def test_teardown_is_idempotent_and_removes_everything() -> None:
    require_postgres()
    pg = PgCluster(replicas=0).start()
    base = pg.base_dir
    assert base is not None
    assert base.is_dir()
    pg.teardown()
    pg.teardown()
    assert not base.exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pg.primary_dsn, connect_timeout=2)
