"""Load, overload, hardening and fuzzing against a real server; figures are printed."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import Database, RunningServer, StartServer
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from loadtools import rss_kib, run_load

from cowrie_stats._gen.cowrie.stats.v1 import stats_pb2
from cowrie_stats.sample import write_sample

LONG = os.environ.get("COWRIE_STATS_LONG_TESTS") == "1"  # long variants: make test-long


@pytest.fixture
def pg_loaded(pg_db: Database, tmp_path: Path) -> Database:
    pg_db.ingest_sample(tmp_path)
    return pg_db


def test_32_clients_no_errors_no_connection_leak(
    pg_loaded: Database, start_server: StartServer
) -> None:
    running = start_server(pg_loaded.settings(result_cache_entries=0, max_concurrent_rpcs=64))
    result = run_load(running.address, clients=32, seconds=60 if LONG else 4)
    print(f"\nload, 32 clients, no cache: {result.summary()}")
    assert result.calls > 100
    assert set(result.codes) == {"OK"}
    endpoints = [running.server.router.primary, *running.server.router.replicas]
    leaked = [e.engine.pool.checkedout() for e in endpoints]  # type: ignore[attr-defined]
    print(f"connections checked out after the load: {leaked}")
    assert all(n <= 1 for n in leaked)  # at most one borrowed by a background check


def test_overload_gets_resource_exhausted_and_memory_stays_flat(
    sqlite_db: Database, start_server: StartServer, tmp_path: Path
) -> None:
    sqlite_db.ingest_sample(tmp_path)
    running = start_server(sqlite_db.settings(max_concurrent_rpcs=2, result_cache_entries=0))
    first = run_load(running.address, clients=24, seconds=2)
    before = rss_kib()
    second = run_load(running.address, clients=24, seconds=30 if LONG else 3)
    after = rss_kib()
    print(f"\noverload round 1: {first.summary()}\noverload round 2: {second.summary()}")
    print(f"RSS of the test process (server inside) {before} KiB -> {after} KiB")
    assert set(second.codes) == {"OK", "RESOURCE_EXHAUSTED"}
    assert after - before < 50 * 1024  # no growth with the number of rejected calls


def test_oversized_request_is_refused(sqlite_db: Database, start_server: StartServer) -> None:
    running = start_server(sqlite_db.settings(max_message_bytes=64 * 1024))
    huge = stats_pb2.GetSessionStatsRequest(sensors=["x" * 1000] * 100)
    with pytest.raises(grpc.RpcError) as caught:
        running.stub.GetSessionStats(huge, timeout=10)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    too_many = stats_pb2.GetSessionStatsRequest(sensors=[f"s{i}" for i in range(1001)])
    with pytest.raises(grpc.RpcError) as caught:
        running.stub.GetSessionStats(too_many, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from cowrie_stats.db.engines import create_db_engine
    from cowrie_stats.db.schema import upgrade
    from cowrie_stats.ingest.reader import Ingester
    from cowrie_stats.server import StatsServer
    from cowrie_stats.settings import Settings

    base = tmp_path_factory.mktemp("fuzz")
    url = f"sqlite:///{base / 'stats.db'}"
    settings = Settings(database_url=url, grpc_host="127.0.0.1", grpc_port=0)
    engine = create_db_engine(url, settings, writer=True)
    upgrade(engine)
    write_sample(base / "cowrie.json")
    Ingester(engine).ingest([str(base / "cowrie.json")])
    engine.dispose()
    server = StatsServer(settings)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    from cowrie_stats._gen.cowrie.stats.v1 import stats_pb2_grpc

    yield RunningServer(server, channel, stats_pb2_grpc.CowrieStatsServiceStub(channel))
    channel.close()
    server.stop(grace=0)


seconds = st.integers(min_value=-(2**40), max_value=2**40)
timestamps = st.builds(Timestamp, seconds=seconds, nanos=st.integers(0, 999_999_999))
time_ranges = st.builds(
    stats_pb2.TimeRange,
    start_time=st.one_of(st.none(), timestamps),
    end_time=st.one_of(st.none(), timestamps),
)
sensor_lists = st.lists(
    st.one_of(st.sampled_from(["sensor-eu-1", "sensor-us-1"]), st.text(max_size=300)), max_size=5
)
ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}
FUZZ = settings(
    max_examples=400 if LONG else 60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def _code(call: Any, request: Any) -> grpc.StatusCode:
    try:
        call(request, timeout=10)
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


@FUZZ
@given(time_ranges, sensor_lists, st.integers(min_value=-5, max_value=5))
def test_fuzzed_session_requests_never_internal(
    fuzz_server: RunningServer, time_range: Any, sensors: list[str], bucket: int
) -> None:
    request = stats_pb2.GetSessionStatsRequest(
        time_range=time_range, sensors=sensors, bucket=stats_pb2.Bucket.ValueType(bucket)
    )
    assert _code(fuzz_server.stub.GetSessionStats, request) in ALLOWED


@FUZZ
@given(time_ranges, sensor_lists, st.integers(min_value=-(2**31), max_value=2**31 - 1))
def test_fuzzed_threat_requests_never_internal(
    fuzz_server: RunningServer, time_range: Any, sensors: list[str], top_n: int
) -> None:
    request = stats_pb2.GetThreatStatsRequest(time_range=time_range, sensors=sensors, top_n=top_n)
    assert _code(fuzz_server.stub.GetThreatStats, request) in ALLOWED


@FUZZ
@given(time_ranges, sensor_lists, st.integers(-(2**40), 2**40), st.integers(-(10**9), 10**9))
def test_fuzzed_sensor_requests_never_internal(
    fuzz_server: RunningServer, time_range: Any, sensors: list[str], secs: int, nanos: int
) -> None:
    request = stats_pb2.GetSensorStatsRequest(
        time_range=time_range, sensors=sensors, stale_after=Duration(seconds=secs, nanos=nanos)
    )
    assert _code(fuzz_server.stub.GetSensorStats, request) in ALLOWED


@settings(max_examples=40, deadline=None)
@given(st.binary(min_size=1, max_size=2000))
def test_fuzzed_raw_bytes_never_internal(fuzz_server: RunningServer, payload: bytes) -> None:
    # Arbitrary bytes where a request should be: INVALID_ARGUMENT (or a valid message).
    call = fuzz_server.channel.unary_unary(
        "/cowrie.stats.v1.CowrieStatsService/GetThreatStats",
        request_serializer=lambda raw: raw,
        response_deserializer=stats_pb2.GetThreatStatsResponse.FromString,
    )
    assert _code(call, payload) in ALLOWED
