"""The real server: reflection, health, shutdown drain, deadlines, limits and error mapping."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from conftest import REPO, Database, RunningServer, StartServer, access_lines
from google.protobuf import descriptor_pool, message_factory
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from grpc_status import rpc_status
from sqlalchemy import create_engine, text

from cowrie_stats import SERVICE_NAME, queries
from cowrie_stats._gen.cowrie.stats.v1 import stats_pb2, stats_pb2_grpc
from cowrie_stats.db.schema import SchemaError
from cowrie_stats.server import StatsServer


@pytest.fixture
def loaded(sqlite_db: Database, tmp_path: Path) -> Database:
    sqlite_db.ingest_sample(tmp_path)
    return sqlite_db


def test_client_built_from_reflection_alone(loaded: Database, start_server: StartServer) -> None:
    running = start_server(loaded.settings())
    database = ProtoReflectionDescriptorDatabase(running.channel)
    assert SERVICE_NAME in database.get_services()
    pool = descriptor_pool.DescriptorPool(database)
    service = pool.FindServiceByName(SERVICE_NAME)
    method = service.FindMethodByName("GetSessionStats")
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    call = running.channel.unary_unary(
        f"/{SERVICE_NAME}/GetSessionStats",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=response_class.FromString,
    )
    reply = call(request_class(), timeout=10)
    expected = running.stub.GetSessionStats(stats_pb2.GetSessionStatsRequest())
    assert reply.total_sessions == expected.total_sessions == 240
    assert reply.login_attempts == expected.login_attempts


def _buf() -> str | None:
    local = REPO / ".tools" / "node_modules" / ".bin" / "buf"
    return str(local) if local.exists() else shutil.which("buf")


def test_buf_curl_with_reflection(loaded: Database, start_server: StartServer) -> None:
    buf = _buf()
    if buf is None:
        if os.environ.get("COWRIE_STATS_REQUIRE_TOOLS") == "1":
            pytest.fail("buf is not installed (make tools)")
        pytest.skip("buf is not installed")
    running = start_server(loaded.settings())
    result = subprocess.run(
        [
            buf, "curl", "--protocol", "grpc", "--http2-prior-knowledge",
            "--data", '{"top_n": 2}',
            f"http://{running.address}/{SERVICE_NAME}/GetThreatStats",
        ],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    reply = json.loads(result.stdout)
    assert len(reply["topUsernames"]) == 2
    assert int(reply["uniqueSourceIps"]) == 5


def test_health_serving_for_both_names(loaded: Database, start_server: StartServer) -> None:
    running = start_server(loaded.settings())
    health = health_pb2_grpc.HealthStub(running.channel)
    for name in ("", SERVICE_NAME):
        reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_refuses_unmigrated_and_newer_schema(tmp_path: Path, loaded: Database) -> None:
    empty = tmp_path / "empty.db"
    with pytest.raises(SchemaError, match="not migrated"):
        StatsServer(loaded.settings(database_url=f"sqlite:///{empty}")).start()
    with loaded.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'ffffffff'"))
    with pytest.raises(SchemaError, match="newer"):
        StatsServer(loaded.settings()).start()


def test_port_cannot_be_shared(loaded: Database, start_server: StartServer) -> None:
    running = start_server(loaded.settings())
    with pytest.raises(OSError, match="cannot bind"):
        StatsServer(loaded.settings(grpc_port=running.server.port)).start()


def test_unexpected_error_is_internal_without_details(
    loaded: Database, start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A bug cannot be caused for real; this is the one fault that is simulated.
    def broken(*_args: Any) -> None:
        raise RuntimeError("SELECT secret FROM somewhere")

    monkeypatch.setattr(queries, "session_stats", broken)
    running = start_server(loaded.settings())
    with pytest.raises(grpc.RpcError) as caught:
        running.stub.GetSessionStats(stats_pb2.GetSessionStatsRequest())
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in (caught.value.details() or "")
    status = rpc_status.from_call(cast(grpc.Call, caught.value))
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert len(info.metadata["request_id"]) == 32
    trailers = dict(cast(grpc.Call, caught.value).trailing_metadata() or ())
    assert trailers["x-request-id"] == info.metadata["request_id"]


def test_every_call_has_a_request_id_a_peer_and_its_violated_fields_in_the_log(
    loaded: Database, start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    running = start_server(loaded.settings(access_log="all"))
    stub = running.stub
    _, call = stub.GetSessionStats.with_call(stats_pb2.GetSessionStatsRequest())
    issued = dict(call.initial_metadata())["x-request-id"]
    assert len(issued) == 32
    _, call = stub.GetSessionStats.with_call(
        stats_pb2.GetSessionStatsRequest(), metadata=(("x-request-id", "dashboard-7.a:1"),)
    )
    assert dict(call.initial_metadata())["x-request-id"] == "dashboard-7.a:1"
    # Not a short token (it would land in logs as it is): replaced by a new id.
    _, call = stub.GetSessionStats.with_call(
        stats_pb2.GetSessionStatsRequest(), metadata=(("x-request-id", "not a token " + "x" * 80),)
    )
    replaced = dict(call.initial_metadata())["x-request-id"]
    assert len(replaced) == 32 and replaced != issued
    bad = stats_pb2.GetThreatStatsRequest(sensors=["", "x" * 300], top_n=5000)
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetThreatStats(bad, metadata=(("x-request-id", "bad-call"),))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        dict(cast(grpc.Call, caught.value).trailing_metadata() or ())["x-request-id"] == "bad-call"
    )
    running.server.access_log.flush()
    lines = [vars(r) for r in access_lines(caplog)]
    assert [line["request_id"] for line in lines] == [
        issued,
        "dashboard-7.a:1",
        replaced,
        "bad-call",
    ]
    assert all(line["peer"].startswith(("ipv4:127.0.0.1:", "ipv6:")) for line in lines)
    assert "fields" not in lines[0]
    assert set(lines[-1]["fields"].split(",")) == {"sensors[0]", "sensors[1]", "top_n"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(url: str, port: int, **env: str) -> subprocess.Popen[bytes]:
    environment = {
        **os.environ,
        "COWRIE_STATS_DATABASE_URL": url,
        "COWRIE_STATS_GRPC_HOST": "127.0.0.1",
        "COWRIE_STATS_GRPC_PORT": str(port),
        **env,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "cowrie_stats.cli", "serve"],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        check = subprocess.run(
            [
                sys.executable,
                "-m",
                "cowrie_stats.cli",
                "healthcheck",
                "--address",
                f"127.0.0.1:{port}",
            ],
            capture_output=True,
            env=environment,
        )
        if check.returncode == 0:
            return proc
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(proc.communicate()[0].decode())


def test_sigterm_exits_zero(loaded: Database) -> None:
    port = _free_port()
    proc = _serve(loaded.url, port, COWRIE_STATS_LOG_FORMAT="json")
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = stats_pb2_grpc.CowrieStatsServiceStub(channel)
        stub.GetSessionStats(stats_pb2.GetSessionStatsRequest(), timeout=10)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 0
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    messages = [line.get("message") for line in lines]
    assert "stopped" in messages
    # The access-log thread wrote the call's line, at the latest while stopping.
    (access,) = [
        line
        for line in lines
        if line.get("logger") == "cowrie_stats.access"
        and line["method"].endswith("/GetSessionStats")
    ]
    assert access["code"] == "OK" and lines.index(access) < messages.index("stopped")
    (frozen,) = [line for line in lines if line.get("message") == "startup objects frozen"]
    assert frozen["objects"] > 10_000  # SQLAlchemy, protobuf, grpc: out of the GC's way


@contextmanager
def table_locked(url: str, table: str) -> Iterator[None]:
    """Hold an ACCESS EXCLUSIVE lock so queries on ``table`` wait: a real slow query."""
    engine = create_engine(url)
    with engine.connect() as conn:
        conn.execute(text(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
        yield
        conn.rollback()
    engine.dispose()


def _waiting_queries(url: str) -> int:
    engine = create_engine(url)
    with engine.connect() as conn:
        count = conn.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'cowrie-stats'"
                " AND state = 'active' AND wait_event_type = 'Lock'"
            )
        ).scalar_one()
    engine.dispose()
    return int(count)


def _wait_until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached")


def test_sigterm_drains_a_slow_call(pg_db: Database) -> None:
    port = _free_port()
    proc = _serve(pg_db.url, port)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    client = stats_pb2_grpc.CowrieStatsServiceStub(channel)
    with ThreadPoolExecutor(1) as pool, table_locked(pg_db.url, "rollups"):
        future: Future[Any] = pool.submit(
            client.GetSessionStats, stats_pb2.GetSessionStatsRequest(), timeout=20
        )
        _wait_until(lambda: _waiting_queries(pg_db.url) == 1)
        proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)  # the call is still in flight, the server is draining
        assert proc.poll() is None and not future.done()
    reply = future.result(timeout=10)  # the lock is gone: the call completes
    assert reply.total_sessions == 0
    assert proc.wait(timeout=20) == 0
    channel.close()


def test_deadline_cancels_the_query_on_postgresql(
    pg_db: Database, start_server: StartServer
) -> None:
    running = start_server(pg_db.settings(replica_urls=()))
    with table_locked(pg_db.url, "rollups"):
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            running.stub.GetSessionStats(stats_pb2.GetSessionStatsRequest(), timeout=0.5)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 2
        # The statement timeout cancelled the query on the server too.
        _wait_until(lambda: _waiting_queries(pg_db.url) == 0, timeout=3)


def test_excess_concurrent_calls_get_resource_exhausted(
    pg_db: Database, start_server: StartServer
) -> None:
    running = start_server(
        pg_db.settings(max_concurrent_rpcs=2, replica_urls=(), result_cache_entries=0)
    )
    with ThreadPoolExecutor(2) as pool, table_locked(pg_db.url, "rollups"):
        slow = [
            pool.submit(
                running.stub.GetSessionStats, stats_pb2.GetSessionStatsRequest(), timeout=20
            )
            for _ in range(2)
        ]
        _wait_until(lambda: _waiting_queries(pg_db.url) == 2)
        with pytest.raises(grpc.RpcError) as caught:
            running.stub.GetSensorStats(stats_pb2.GetSensorStatsRequest(), timeout=5)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert all(f.result(timeout=10).total_sessions == 0 for f in slow)


def test_in_process_stop_flips_health_before_draining(
    pg_db: Database, start_server: StartServer
) -> None:
    running: RunningServer = start_server(pg_db.settings(replica_urls=()))
    server = running.server
    with ThreadPoolExecutor(2) as pool, table_locked(pg_db.url, "rollups"):
        call = pool.submit(
            running.stub.GetSessionStats, stats_pb2.GetSessionStatsRequest(), timeout=20
        )
        _wait_until(lambda: _waiting_queries(pg_db.url) == 1)
        stopping = threading.Thread(target=server.stop, kwargs={"grace": 10})
        stopping.start()
        _wait_until(lambda: server._stopping.is_set())
        assert not server.update_health()
    assert call.result(timeout=10).total_sessions == 0
    stopping.join(timeout=15)
    assert not stopping.is_alive()


def test_deadline_stops_the_remaining_queries_of_a_call(loaded: Database) -> None:
    from cowrie_stats.db.routing import Router
    from cowrie_stats.deadline import Deadline
    from cowrie_stats.errors import DeadlineExceededError, translate

    router = Router(loaded.settings())

    def slow_work(conn: Any) -> None:
        conn.execute(text("SELECT 1"))
        time.sleep(0.3)  # the call's budget runs out between two statements
        conn.execute(text("SELECT 2"))

    try:
        with pytest.raises(Exception) as caught:  # noqa: PT011 - checked just below
            router.run_read(slow_work, Deadline.after(0.1))
        assert isinstance(translate(caught.value), DeadlineExceededError)
        assert router.run_read(lambda conn: conn.execute(text("SELECT 3")).scalar_one()) == 3
    finally:
        router.close()


def _one_more_session(directory: Path, session: str) -> Path:
    """A log with one new session from a new source address."""
    path = directory / f"{session}.json"
    event = {
        "eventid": "cowrie.session.connect",
        "session": session,
        "timestamp": "2026-11-20T12:00:00Z",
        "sensor": "sensor-eu-1",
        "src_ip": f"198.51.100.{len(session)}",
        "protocol": "ssh",
    }
    path.write_text(json.dumps(event) + "\n")
    return path


def test_result_cache_answers_repeats_and_is_never_stale(
    loaded: Database, start_server: StartServer, tmp_path: Path
) -> None:
    from cowrie_stats import metrics

    # Poll interval 0: every call reads the version in its own snapshot.
    running = start_server(loaded.settings(result_cache_entries=8, data_version_poll_interval=0))
    assert running.server.versions is None
    request = stats_pb2.GetSessionStatsRequest(bucket=stats_pb2.BUCKET_DAY)
    hits = metrics.CACHE_HITS._value.get()
    first = running.stub.GetSessionStats(request)
    assert running.stub.GetSessionStats(request) == first
    assert metrics.CACHE_HITS._value.get() == hits + 1
    loaded.ingest([_one_more_session(tmp_path, "late-one")])
    after = running.stub.GetSessionStats(request)
    assert after.total_sessions == first.total_sessions + 1
    assert after.unique_source_ips == first.unique_source_ips + 1


@contextmanager
def statements_on(engines: list[Any]) -> Iterator[list[str]]:
    """Every SQL statement the engines run while inside the block."""
    from sqlalchemy import event

    seen: list[str] = []

    def record(*args: Any) -> None:
        seen.append(str(args[2]))

    for engine in engines:
        event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", record)


def test_watched_version_hits_without_sql_and_follows_ingest(
    loaded: Database, start_server: StartServer, tmp_path: Path
) -> None:
    running = start_server(loaded.settings(data_version_poll_interval=0.1))
    router = running.server.router
    engines = [endpoint.engine for endpoint in (router.primary, *router.replicas)]
    request = stats_pb2.GetThreatStatsRequest(top_n=5)
    with statements_on(engines) as seen:
        first = running.stub.GetThreatStats(request)
    assert any("rollup_values" in sql for sql in seen)  # a miss queries
    with statements_on(engines) as seen:
        for _ in range(5):
            assert running.stub.GetThreatStats(request) == first
    # Only the version poll (and health pings) may have run.
    assert not [sql for sql in seen if "FROM" in sql.upper() and "data_version" not in sql]

    loaded.ingest([_one_more_session(tmp_path, "late-two")])
    deadline = time.monotonic() + 5
    while running.stub.GetThreatStats(request) == first:
        assert time.monotonic() < deadline, "the new data never showed"
        time.sleep(0.05)
    assert running.stub.GetThreatStats(request).unique_source_ips == first.unique_source_ips + 1


def test_recent_questions_are_answered_for_new_data_before_calls_see_it(
    loaded: Database, start_server: StartServer, tmp_path: Path
) -> None:
    from cowrie_stats import metrics

    running = start_server(loaded.settings(data_version_poll_interval=0.1))
    watch = running.server.versions
    assert watch is not None
    asked = [
        stats_pb2.GetSessionStatsRequest(bucket=stats_pb2.BUCKET_DAY),
        stats_pb2.GetSessionStatsRequest(),
    ]
    before = [running.stub.GetSessionStats(request) for request in asked]
    version = watch.current()
    loaded.ingest([_one_more_session(tmp_path, "late-warm")])
    deadline = time.monotonic() + 5
    while watch.current() == version:
        assert time.monotonic() < deadline, "the watcher never saw the ingest"
        time.sleep(0.02)
    misses = metrics.CACHE_MISSES._value.get()
    after = [running.stub.GetSessionStats(request) for request in asked]
    assert metrics.CACHE_MISSES._value.get() == misses  # both answered by the warm-up
    for old, new in zip(before, after, strict=True):
        assert new.total_sessions == old.total_sessions + 1


def test_warm_up_stops_at_a_database_failure(
    loaded: Database, start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    running = start_server(loaded.settings(data_version_poll_interval=60))
    running.stub.GetSessionStats(stats_pb2.GetSessionStatsRequest())
    running.server.router.primary.engine.dispose()
    Path(running.server.settings.database_url.removeprefix("sqlite:///")).unlink()
    # The data version table is gone with the file: every query now fails.
    caplog.set_level(logging.WARNING)
    servicer_warm = running.server.versions.before_publishing  # type: ignore[union-attr]
    servicer_warm(10**9)
    assert "cache warm-up stopped" in caplog.text


def test_answer_from_another_version_is_returned_not_cached(
    loaded: Database, start_server: StartServer, tmp_path: Path
) -> None:
    from cowrie_stats import metrics

    # A poll interval longer than the test: the watched version stays behind the ingest.
    # Primary reads bypass it.
    running = start_server(loaded.settings(data_version_poll_interval=60))
    request = stats_pb2.GetSessionStatsRequest()
    first = running.stub.GetSessionStats(request)
    loaded.ingest([_one_more_session(tmp_path, "late-three")])
    misses = metrics.CACHE_MISSES._value.get()
    hits = metrics.CACHE_HITS._value.get()
    # The cached answer of the watched version is still what a hit serves...
    assert running.stub.GetSessionStats(request) == first
    assert metrics.CACHE_HITS._value.get() == hits + 1
    # ...but a new question is computed in the newer snapshot and not filed
    # under the older version: both calls compute it.
    newer = stats_pb2.GetSessionStatsRequest(bucket=stats_pb2.BUCKET_DAY)
    for _ in range(2):
        assert running.stub.GetSessionStats(newer).total_sessions == first.total_sessions + 1
    assert metrics.CACHE_MISSES._value.get() == misses + 2
    # Calls that ask for the primary read the version in their own snapshot.
    primary = (("x-cowrie-read-from", "primary"),)
    fresh = running.stub.GetSessionStats(request, metadata=primary)
    assert fresh.total_sessions == first.total_sessions + 1


def test_both_cache_paths_share_answers(loaded: Database, start_server: StartServer) -> None:
    running = start_server(loaded.settings(data_version_poll_interval=60))
    request = stats_pb2.GetThreatStatsRequest(top_n=3)
    watched = running.stub.GetThreatStats(request)
    primary = (("x-cowrie-read-from", "primary"),)
    assert running.stub.GetThreatStats(request, metadata=primary) == watched
