"""Read-replica routing on a real primary + streaming replica, with real faults.

This module runs its own cluster: it stops and pauses servers, which the shared
session cluster of the other tests must not see.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import access_lines, private_cluster
from sqlalchemy import Connection, text

from cowrie_stats._gen.cowrie.stats.v1 import stats_pb2, stats_pb2_grpc
from cowrie_stats.db.endpoints import RECHECK_MAX_SECONDS
from cowrie_stats.db.engines import create_db_engine
from cowrie_stats.db.routing import Router
from cowrie_stats.deadline import Deadline
from cowrie_stats.errors import DeadlineExceededError, UnavailableError, translate
from cowrie_stats.ingest.reader import Ingester
from cowrie_stats.sample import write_sample
from cowrie_stats.server import StatsServer
from cowrie_stats.servicer import DATA_LAG_HEADER
from cowrie_stats.settings import Settings
from testkit.pgcluster import PgCluster

pytestmark = pytest.mark.postgres
ROUTING_LOGGER = "cowrie_stats.db.routing"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgCluster]:
    with private_cluster() as running:
        ingest(running, tmp_path_factory.mktemp("routing"), seed=7)
        running.wait_replica_caught_up()
        yield running


def ingest(cluster: PgCluster, directory: Path, seed: int) -> None:
    sample = directory / f"cowrie-{seed}.json"
    write_sample(sample, seed=seed)
    engine = create_db_engine(cluster.primary_url, Settings(), writer=True)
    Ingester(engine).ingest([str(sample)])
    engine.dispose()


def pair_settings(cluster: PgCluster, **overrides: Any) -> Settings:
    """A server on a free loopback port reading from the cluster's primary and replica."""
    pair = Settings(
        database_url=cluster.primary_url,
        replica_urls=(cluster.replica_url,),
        grpc_host="127.0.0.1",
        grpc_port=0,
        db_connect_timeout=2,
        shutdown_grace_seconds=5.0,
    )
    return replace(pair, **overrides)


@pytest.fixture
def settings(cluster: PgCluster) -> Settings:
    return pair_settings(cluster, replica_check_interval=0.1, max_replica_lag=0.5)


@pytest.fixture(autouse=True)
def whole_cluster(cluster: PgCluster) -> Iterator[None]:
    """Every test starts and leaves the cluster whole: both up, replay running, streaming."""
    yield
    if not cluster.is_running("primary"):
        cluster.start_primary()
    if not cluster.is_running("replica"):
        cluster.start_replica()
    if cluster.replay_paused():
        cluster.resume_replay()
    cluster.wait_streaming()


@pytest.fixture
def router(settings: Settings) -> Iterator[Router]:
    routed = Router(settings)
    routed.start()
    yield routed
    routed.close()


def in_recovery(conn: Connection) -> bool:
    return bool(conn.execute(text("SELECT pg_is_in_recovery()")).scalar_one())


def eventually(predicate: Callable[[], object], timeout: float = 10.0) -> float:
    """Seconds until ``predicate()`` is true; fails after ``timeout``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError("condition not reached in time")


def make_replica_lag(cluster: PgCluster, seconds: float) -> None:
    """Pause replay while the primary commits, until the replica is ``seconds`` behind.

    A first commit is replayed, so that the replica knows the time of its last one.
    """
    cluster.psql("CREATE TABLE IF NOT EXISTS lag_probe (x int)")
    cluster.wait_replica_caught_up()
    cluster.pause_replay()
    cluster.psql("INSERT INTO lag_probe VALUES (1)")
    time.sleep(seconds)


def routing_messages(caplog: pytest.LogCaptureFixture, start: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == ROUTING_LOGGER and r.getMessage().startswith(start)
    ]


# -- ordinary routing ------------------------------------------------------------------


def test_reads_land_on_the_replica_and_primary_on_request(router: Router) -> None:
    assert router.run_read(in_recovery) is True
    assert router.run_read(in_recovery, prefer_primary=True) is False


def test_ingested_data_appears_through_the_replica(settings: Settings, cluster: PgCluster) -> None:
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
    eventually(lambda: router.run_read(in_recovery) is True)
    assert not router.reads_on_primary


# -- lag -------------------------------------------------------------------------------


def test_replay_lag_beyond_the_limit_moves_reads_to_the_primary(
    router: Router, cluster: PgCluster
) -> None:
    make_replica_lag(cluster, 0.6)
    eventually(lambda: router.replicas[0].state == "lagging", timeout=15)
    assert router.replicas[0].lag_seconds > 0.5
    assert router.run_read(in_recovery) is False
    cluster.resume_replay()
    eventually(lambda: router.replicas[0].healthy, timeout=15)
    assert router.run_read(in_recovery) is True


def test_idle_primary_is_not_lag_even_with_replay_paused(
    router: Router, cluster: PgCluster
) -> None:
    cluster.wait_replica_caught_up()
    time.sleep(1.0)  # nothing written: the last replayed commit gets old
    replica = router.replicas[0]
    assert router.check(replica)
    assert (replica.state, replica.lag_seconds) == ("healthy", 0)
    cluster.pause_replay()  # paused, but nothing to replay: still current
    time.sleep(0.6)
    assert router.check(replica)
    assert (replica.state, replica.lag_seconds) == ("healthy", 0)


def test_a_dead_replica_has_unknown_lag_not_zero(router: Router, cluster: PgCluster) -> None:
    cluster.stop_replica(mode="immediate")
    replica = router.replicas[0]
    assert not router.check(replica)
    assert replica.state == "unreachable"
    assert math.isinf(replica.lag_seconds)


def test_lagging_replica_answers_with_its_lag_when_the_primary_is_down(
    router: Router, cluster: PgCluster
) -> None:
    make_replica_lag(cluster, 0.6)
    eventually(lambda: router.replicas[0].state == "lagging", timeout=15)
    cluster.stop_primary()
    with pytest.raises(UnavailableError, match="current data"):
        router.run_read(in_recovery)  # current data only: the data-version poll
    answer = router.read(in_recovery)
    assert answer.value is True
    assert answer.lag_seconds is not None and answer.lag_seconds > 0.5


def test_lag_travels_with_every_answer_and_the_cache_hides_none(
    settings: Settings, cluster: PgCluster, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Old data from a lagging replica says so, from the database or from the cache."""
    caplog.set_level(logging.INFO)
    # "errors": only failed, slow and lagging calls get an access-log line.
    server = StatsServer(replace(settings, data_version_poll_interval=0.2, access_log="errors"))
    server.start()
    request = stats_pb2.GetSessionStatsRequest(bucket=stats_pb2.BUCKET_DAY)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = stats_pb2_grpc.CowrieStatsServiceStub(channel)

            def call() -> tuple[stats_pb2.GetSessionStatsResponse, str | None]:
                reply, rpc = stub.GetSessionStats.with_call(request, timeout=10)
                headers = dict(rpc.initial_metadata())
                return reply, headers.get(DATA_LAG_HEADER)  # type: ignore[return-value]

            before, lag = call()
            assert lag is None
            cluster.pause_replay()
            ingest(cluster, tmp_path, seed=11)  # new figures the replica does not replay
            eventually(lambda: server.router.replicas[0].state == "lagging", timeout=15)
            eventually(lambda: call()[0] != before)  # once the data-version poll sees it
            after, lag = call()
            assert lag is None  # from the primary
            cluster.stop_primary()
            # Until the last version read from the primary expires (3 polls), the cache
            # still answers for it; then every answer, computed or cached, is the
            # replica's old data and says how old.
            answers = [call()]
            expired = time.monotonic() + 3 * 0.2 + 0.5
            while time.monotonic() < expired or len(answers) < 20:
                answers.append(call())
            for reply, lag in answers:
                assert (reply, lag) == (after, None) or (reply == before and float(lag) > 0.5)  # type: ignore[arg-type]
            stale = [lag for reply, lag in answers if reply == before]
            assert len(stale) >= 10 and answers[-1][0] == before
            server.access_log.flush()
            lines = [vars(r) for r in access_lines(caplog)]
            assert sum("data_lag_seconds" in line for line in lines) >= len(stale)
            assert all("data_lag_seconds" in line or line["duration_ms"] >= 1000 for line in lines)
            assert server.update_health()  # the lagging replica answers: SERVING
            cluster.start_primary()
            cluster.resume_replay()
            eventually(lambda: call() == (after, None), timeout=15)
    finally:
        server.stop(grace=0)


# -- failures and recovery -------------------------------------------------------------


def test_a_replica_marked_down_answers_when_the_primary_fails(
    settings: Settings, cluster: PgCluster
) -> None:
    """No background checks at all: the read itself tries the replica marked unreachable."""
    router = Router(replace(settings, replica_check_interval=60))
    try:
        cluster.stop_replica()
        for _ in range(5):
            assert router.run_read(in_recovery) is False
            router.check(router.replicas[0])
        assert router.replicas[0].state == "unreachable"
        cluster.start_replica()
        cluster.stop_primary()
        started = time.monotonic()
        assert router.run_read(in_recovery) is True
        print(f"\nfirst read after the primary failed: {time.monotonic() - started:.3f}s")
        assert router.replicas[0].healthy  # answered: healthy again at once
    finally:
        router.close()


def test_replica_restart_then_primary_failure_keeps_reads_up(
    cluster: PgCluster, settings: Settings
) -> None:
    """Default check interval: the replica's outage must not cost the reads a minute later."""
    server = StatsServer(replace(settings, replica_check_interval=5.0))
    server.start()
    request = stats_pb2.GetThreatStatsRequest(top_n=5)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = stats_pb2_grpc.CowrieStatsServiceStub(channel)
            expected = stub.GetThreatStats(request, timeout=10)
            cluster.stop_replica()
            outage_ends = time.monotonic() + 4
            while time.monotonic() < outage_ends:
                assert stub.GetThreatStats(request, timeout=10) == expected
                time.sleep(0.05)
            cluster.start_replica()  # waits until it streams
            time.sleep(0.5)
            cluster.stop_primary()
            for _ in range(50):
                assert stub.GetThreatStats(request, timeout=10) == expected
    finally:
        server.stop(grace=0)


def test_recovered_replica_is_back_in_rotation_within_seconds(
    settings: Settings, cluster: PgCluster
) -> None:
    router = Router(replace(settings, replica_check_interval=5.0))
    router.start()
    try:
        cluster.stop_replica()
        router.run_read(in_recovery)
        time.sleep(2 * RECHECK_MAX_SECONDS)  # the checks back off as far as they go
        cluster.start_replica(wait_streaming=False)
        started = time.monotonic()
        back = eventually(lambda: router.replicas[0].healthy, timeout=15)
        streaming = time.monotonic() - started
        cluster.wait_streaming()
        print(f"\nrecovered replica back in rotation {back:.2f}s after it accepted connections")
        assert back <= RECHECK_MAX_SECONDS + 2.0, (back, streaming)
        assert router.run_read(in_recovery) is True
    finally:
        router.close()


def test_primary_failure_probes_the_replicas_at_once(
    settings: Settings, cluster: PgCluster
) -> None:
    router = Router(replace(settings, replica_check_interval=60))
    router.start()
    try:
        replica = router.replicas[0]
        checked = replica.checked_at
        cluster.stop_primary()
        router.read(in_recovery, prefer_primary=True)
        took = eventually(lambda: replica.checked_at > checked, timeout=5)
        print(f"\nreplica probed {took:.3f}s after the primary failed a read")
        assert took < 1.0
    finally:
        router.close()


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


def test_everything_down_is_unavailable_then_recovers_logged_once(
    settings: Settings, cluster: PgCluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ROUTING_LOGGER)
    server = StatsServer(settings)
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = stats_pb2_grpc.CowrieStatsServiceStub(channel)
            cluster.stop_replica()
            cluster.stop_primary(mode="immediate")
            for _ in range(10):
                started = time.monotonic()
                with pytest.raises(grpc.RpcError) as caught:
                    stub.GetSessionStats(stats_pb2.GetSessionStatsRequest(), timeout=5)
                assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
                assert time.monotonic() - started < 5
            assert not server.update_health()
            time.sleep(1.0)  # background checks keep failing meanwhile
            cluster.start_replica(wait_streaming=False)
            assert server.update_health()  # one endpoint answers: SERVING again
            cluster.start_primary()
            cluster.wait_streaming()
            eventually(lambda: server.router.replicas[0].healthy)
            reply = stub.GetSessionStats(stats_pb2.GetSessionStatsRequest(), timeout=10)
            assert reply.total_sessions >= 240
    finally:
        server.stop(grace=0)
    assert len(routing_messages(caplog, "database unavailable")) == 1
    assert len(routing_messages(caplog, "database available again")) == 1
    assert len(routing_messages(caplog, "replica ")) >= 2  # unreachable, then back
    unreachable = routing_messages(caplog, "replica ")[0]
    assert "is unreachable: " in unreachable and "OperationalError" in unreachable


def test_state_changes_are_logged_once_each_with_reason_and_lag(
    router: Router, cluster: PgCluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ROUTING_LOGGER)
    make_replica_lag(cluster, 0.6)
    eventually(lambda: router.replicas[0].state == "lagging", timeout=15)
    time.sleep(1.0)  # several more checks, all lagging
    cluster.resume_replay()
    eventually(lambda: router.replicas[0].healthy, timeout=15)
    # The checking thread logs the change just after it records it.
    eventually(lambda: len(routing_messages(caplog, "replica ")) >= 2, timeout=5)
    time.sleep(0.5)  # and nothing more follows
    lines = routing_messages(caplog, "replica ")
    assert len(lines) == 2, lines
    assert "is lagging: lag " in lines[0] and "> limit 0.5 s" in lines[0]
    assert "is healthy: lag " in lines[1] and "<= limit 0.5 s" in lines[1]
    records = [r for r in caplog.records if r.getMessage() in lines]
    assert getattr(records[0], "lag_seconds", 0) > 0.5


def statement_timeout_ms(conn: Connection) -> int:
    return int(
        conn.execute(
            text("SELECT setting::int FROM pg_settings WHERE name = 'statement_timeout'")
        ).scalar_one()
    )


def test_the_deadline_is_each_reads_statement_timeout(router: Router) -> None:
    within = router.run_read(statement_timeout_ms, Deadline.after(3.0))
    assert 2500 < within <= 3000
    assert router.run_read(statement_timeout_ms) == 0  # no deadline: none set
    with pytest.raises(Exception) as caught:  # noqa: PT011 - checked just below
        router.run_read(lambda conn: conn.execute(text("SELECT pg_sleep(5)")), Deadline.after(0.3))
    assert isinstance(translate(caught.value), DeadlineExceededError)  # cancelled on the server


def test_no_endpoint_raises_unavailable(settings: Settings, cluster: PgCluster) -> None:
    routed = Router(replace(settings, replica_urls=()))
    cluster.stop_primary()
    try:
        with pytest.raises(UnavailableError):
            routed.run_read(in_recovery)
        assert not routed.ping()
    finally:
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
        eventually(
            lambda: all(e.engine.pool.checkedout() == 0 for e in endpoints),  # type: ignore[attr-defined]
            timeout=5,
        )
    finally:
        server.stop(grace=0)
