"""The Prometheus endpoint of a real server, scraped over HTTP after real RPCs."""

from __future__ import annotations

import gc
import socket
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from conftest import Database, RunningServer, StartServer
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from cowrie_stats import metrics
from cowrie_stats._gen.cowrie.stats.v1 import stats_pb2
from cowrie_stats.auth import key_line
from cowrie_stats.db.routing import Endpoint, Router

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
# The go-grpc-prometheus labels of GetSensorStats.
SENSOR_STATS = {
    "grpc_type": "unary",
    "grpc_service": "cowrie.stats.v1.CowrieStatsService",
    "grpc_method": "GetSensorStats",
}
TIMEOUT = 5.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=TIMEOUT) as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("text/plain")
        text = reply.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def _with_metrics(start_server: StartServer, db: Database, **overrides: object) -> RunningServer:
    running = start_server(db.settings(metrics_port=_free_port(), **overrides))
    assert running.server.metrics_server is not None
    return running


def test_rpc_counters_and_histogram_after_ok_and_not_found(
    sqlite_db: Database, start_server: StartServer
) -> None:
    running = _with_metrics(start_server, sqlite_db)
    port = running.server.metrics_server.port  # type: ignore[union-attr]
    before = _scrape(port)

    for _ in range(3):
        running.stub.GetSensorStats(stats_pb2.GetSensorStatsRequest(), timeout=TIMEOUT)
    for _ in range(2):
        with pytest.raises(grpc.RpcError) as caught:
            running.stub.GetSensorStats(
                stats_pb2.GetSensorStatsRequest(sensors=["no-such-sensor"]), timeout=TIMEOUT
            )
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND

    after = _scrape(port)

    def delta(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    method = SENSOR_STATS
    assert delta("grpc_server_started_total", **method) == 5
    assert delta("grpc_server_handled_total", **method, grpc_code="OK") == 3
    assert delta("grpc_server_handled_total", **method, grpc_code="NOT_FOUND") == 2
    assert delta("grpc_server_handling_seconds_count", **method) == 5
    assert delta("grpc_server_handling_seconds_bucket", **method, le="+Inf") == 5
    assert delta("grpc_server_handling_seconds_sum", **method) > 0

    # Pool gauges of the SQLite primary: connections went back to the pool.
    endpoint = running.server.router.primary.name
    pool = {"endpoint": endpoint, "role": "primary"}
    assert _value(after, "cowrie_stats_db_pool_checked_out", **pool) == 0
    assert _value(after, "cowrie_stats_db_pool_idle", **pool) >= 1
    assert _value(after, "cowrie_stats_db_pool_size", **pool) >= 1
    assert ("cowrie_stats_reads_on_primary", ()) in after


def test_refused_calls_are_counted_as_unauthenticated(
    sqlite_db: Database, start_server: StartServer, tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    keys.write_text(key_line("grafana", "k" * 32) + "\n", encoding="utf-8")
    keys.chmod(0o600)  # the server refuses keys others can read
    running = _with_metrics(start_server, sqlite_db, api_keys_file=str(keys))
    port = running.server.metrics_server.port  # type: ignore[union-attr]
    before = _scrape(port)
    with pytest.raises(grpc.RpcError):
        running.stub.GetSensorStats(stats_pb2.GetSensorStatsRequest(), timeout=TIMEOUT)
    running.stub.GetSensorStats(
        stats_pb2.GetSensorStatsRequest(), metadata=(("x-api-key", "k" * 32),), timeout=TIMEOUT
    )
    after = _scrape(port)
    for code in ("UNAUTHENTICATED", "OK"):
        labels = {**SENSOR_STATS, "grpc_code": code}
        got = _value(after, "grpc_server_handled_total", **labels)
        assert got - _value(before, "grpc_server_handled_total", **labels) == 1


def test_pool_and_replica_gauges_are_read_at_scrape_time(sqlite_db: Database) -> None:
    """Collector view of a router with a (simulated) lagging replica and a busy pool."""
    router = Router(sqlite_db.settings())
    collector = metrics.DatabaseCollector()
    try:
        # A replica endpoint as the router keeps it; its state is what the
        # background checks would have recorded.
        replica = Endpoint(
            "replica-1", router.primary.engine, is_primary=False, healthy=False, lag_seconds=42.5
        )
        router.replicas.append(replica)
        collector.track(router)
        with router.primary.engine.connect():
            samples = {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for family in collector.collect()
                for s in family.samples
            }
        primary = (("endpoint", router.primary.name), ("role", "primary"))
        assert samples[("cowrie_stats_db_pool_checked_out", primary)] == 1
        assert samples[("cowrie_stats_replica_healthy", (("replica", "replica-1"),))] == 0
        assert samples[("cowrie_stats_replica_lag_seconds", (("replica", "replica-1"),))] == 42.5
        assert samples[("cowrie_stats_reads_on_primary", ())] == 1

        replica.healthy, replica.lag_seconds = True, 0.0
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in collector.collect()
            for s in family.samples
        }
        assert samples[("cowrie_stats_db_pool_checked_out", primary)] == 0
        assert samples[("cowrie_stats_replica_healthy", (("replica", "replica-1"),))] == 1
        assert samples[("cowrie_stats_reads_on_primary", ())] == 0

        collector.untrack(router)
        assert all(not family.samples for family in collector.collect())
    finally:
        router.replicas.clear()
        router.close()


def test_metrics_endpoint_is_off_by_default_and_stops_with_the_server(
    sqlite_db: Database, start_server: StartServer
) -> None:
    running = start_server(sqlite_db.settings())
    assert running.server.metrics_server is None

    port = _free_port()
    running = start_server(sqlite_db.settings(metrics_port=port))
    assert _scrape(port)
    running.server.stop(grace=0)
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1)


def _gc_pauses_observed(generation: int) -> float:
    value = REGISTRY.get_sample_value(
        "cowrie_stats_gc_pause_seconds_count", {"generation": str(generation)}
    )
    return value or 0.0


def test_gc_pauses_are_timed_per_generation_while_installed() -> None:
    pauses = metrics.GcPauses()
    before = _gc_pauses_observed(2)
    pauses.install()
    pauses.install()  # once only
    try:
        gc.collect()
        assert _gc_pauses_observed(2) == before + 1
    finally:
        pauses.remove()
    pauses.remove()  # removing twice is harmless
    gc.collect()
    assert _gc_pauses_observed(2) == before + 1
