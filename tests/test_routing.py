"""Read-replica routing on a real primary + streaming replica, with real faults.

This module runs its own cluster: it stops and pauses servers, which the shared
session cluster of the other tests must not see.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from conftest import private_cluster
from pgcluster import PgCluster
from sqlalchemy import Connection, text

from cowrie_stats._gen.cowrie.stats.v1 import stats_pb2, stats_pb2_grpc
from cowrie_stats.db.routing import Router, create_db_engine
from cowrie_stats.errors import UnavailableError
from cowrie_stats.sample import write_sample
from cowrie_stats.server import StatsServer
from cowrie_stats.settings import Settings

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def cluster() -> Iterator[PgCluster]:
    with private_cluster() as running:
        yield running


@pytest.fixture
def settings(cluster: PgCluster) -> Settings:
    return Settings(
        database_url=cluster.primary_url,
        replica_urls=(cluster.replica_url,),
        grpc_host="127.0.0.1",
        grpc_port=0,
        replica_check_interval_seconds=0.1,
        max_replica_lag_seconds=0.5,
        db_connect_timeout_seconds=2,
    )


@pytest.fixture
def router(settings: Settings, cluster: PgCluster) -> Iterator[Router]:
    routed = Router(settings)
    routed.start()
    yield routed
    routed.close()
    # Leave the cluster whole for the next test.
    if not _up(cluster, "primary"):
        cluster.start_primary()
    if not _up(cluster, "replica"):
        cluster.start_replica()
    if cluster.replay_paused():
        cluster.resume_replay()
    cluster.wait_streaming()


def _up(cluster: PgCluster, on: str) -> bool:
    try:
        cluster.scalar("SELECT 1", on=on)
    except Exception:
        return False
    return True


def in_recovery(conn: Connection) -> bool:
    return bool(conn.execute(text("SELECT pg_is_in_recovery()")).scalar_one())


def _eventually(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def test_reads_land_on_the_replica_and_primary_on_request(router: Router) -> None:
    assert router.run_read(in_recovery) is True
    assert router.run_read(in_recovery, prefer_primary=True) is False


def test_ingested_data_appears_through_the_replica(
    settings: Settings, cluster: PgCluster, tmp_path: Path
) -> None:
    sample = tmp_path / "cowrie.json"
    write_sample(sample)
    from cowrie_stats.ingest.reader import Ingester

    engine = create_db_engine(cluster.primary_url, settings)
    Ingester(engine).ingest([str(sample)])
    engine.dispose()
    cluster.wait_replica_caught_up()
    server = StatsServer(settings)
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = stats_pb2_grpc.CowrieStatsServiceStub(channel)
            reply = stub.GetSessionStats(stats_pb2.GetSessionStatsRequest(), timeout=10)
            assert reply.total_sessions >= 240
            primary = stub.GetSessionStats(
                stats_pb2.GetSessionStatsRequest(),
                timeout=10,
                metadata=(("x-cowrie-read-from", "primary"),),
            )
            assert primary.total_sessions == reply.total_sessions
    finally:
        server.stop(grace=0)


def test_stopped_replica_moves_reads_within_one_request_and_back(
    router: Router, cluster: PgCluster
) -> None:
    assert router.run_read(in_recovery) is True
    cluster.stop_replica()
    assert router.run_read(in_recovery) is False  # this very request, retried on the primary
    assert router.reads_on_primary
    cluster.start_replica()
    _eventually(lambda: router.run_read(in_recovery) is True)
    assert not router.reads_on_primary


def test_replay_lag_beyond_the_limit_moves_reads_to_the_primary(
    router: Router, cluster: PgCluster
) -> None:
    cluster.pause_replay()
    cluster.psql("CREATE TABLE IF NOT EXISTS lag_probe (x int)")
    cluster.psql("INSERT INTO lag_probe VALUES (1)")
    _eventually(lambda: not router.replicas[0].healthy, timeout=15)
    assert router.replicas[0].lag_seconds > 0.5
    assert router.run_read(in_recovery) is False
    cluster.resume_replay()
    _eventually(lambda: router.replicas[0].healthy, timeout=15)
    assert router.run_read(in_recovery) is True


def test_idle_primary_is_not_lag(router: Router, cluster: PgCluster) -> None:
    cluster.wait_replica_caught_up()
    time.sleep(1.0)  # nothing written: the last replayed commit gets old
    assert router.check_replica(router.replicas[0])
    assert router.replicas[0].lag_seconds == 0


def test_primary_down_replica_reads_continue_ingest_fails(
    router: Router, cluster: PgCluster, tmp_path: Path
) -> None:
    cluster.stop_primary()
    assert router.run_read(in_recovery) is True
    sample = tmp_path / "cowrie.json"
    write_sample(sample)
    result = subprocess.run(
        [sys.executable, "-m", "cowrie_stats.cli", "ingest", str(sample)],
        env={**os.environ, "COWRIE_STATS_DATABASE_URL": cluster.primary_url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "database unavailable" in result.stderr
    assert "password" not in result.stderr


def test_everything_down_is_unavailable_then_recovers(
    settings: Settings, cluster: PgCluster
) -> None:
    server = StatsServer(settings)
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = stats_pb2_grpc.CowrieStatsServiceStub(channel)
            cluster.stop_replica()
            cluster.stop_primary()
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as caught:
                stub.GetSessionStats(stats_pb2.GetSessionStatsRequest(), timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert time.monotonic() - started < 5
            assert not server.update_health()
            cluster.start_primary()
            cluster.start_replica()
            _eventually(server.update_health)
            reply = stub.GetSessionStats(stats_pb2.GetSessionStatsRequest(), timeout=10)
            assert reply.total_sessions >= 0
    finally:
        server.stop(grace=0)


def test_no_endpoint_raises_unavailable(settings: Settings, cluster: PgCluster) -> None:
    routed = Router(replace(settings, replica_urls=()))
    cluster.stop_primary()
    try:
        with pytest.raises(UnavailableError):
            routed.run_read(in_recovery)
    finally:
        cluster.start_primary()
        cluster.wait_streaming()
        routed.close()


def test_pool_exhaustion_neither_deadlocks_nor_leaks(settings: Settings) -> None:
    tight = replace(settings, db_pool_size=1, db_max_overflow=0)
    server = StatsServer(tight)
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = stats_pb2_grpc.CowrieStatsServiceStub(channel)
            with ThreadPoolExecutor(16) as pool:
                calls = [
                    pool.submit(stub.GetThreatStats, stats_pb2.GetThreatStatsRequest(), timeout=30)
                    for _ in range(64)
                ]
                codes = []
                for call in calls:
                    try:
                        call.result()
                        codes.append(grpc.StatusCode.OK)
                    except grpc.RpcError as error:
                        codes.append(error.code())
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert codes.count(grpc.StatusCode.OK) > 0
        # Background health checks borrow a connection now and then: wait for idle.
        endpoints = [server.router.primary, *server.router.replicas]
        _eventually(
            lambda: all(e.engine.pool.checkedout() == 0 for e in endpoints),  # type: ignore[attr-defined]
            timeout=5,
        )
    finally:
        server.stop(grace=0)
