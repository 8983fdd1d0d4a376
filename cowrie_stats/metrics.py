"""Prometheus metrics (served on COWRIE_STATS_METRICS_PORT when set).

RPC metrics follow the go-grpc-prometheus names and are fed by the access log
interceptor. Database metrics are read from the live routers when Prometheus
scrapes (:class:`DatabaseCollector`), so they are never stale and need no
background updater. Ingest counters live in the process that ingests.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from cowrie_stats.db.routing import Endpoint, Router

STARTED = Counter("grpc_server_started", "RPCs started on the server.", ["grpc_method"])
HANDLED = Counter(
    "grpc_server_handled", "RPCs completed on the server.", ["grpc_method", "grpc_code"]
)
HANDLING = Histogram(
    "grpc_server_handling_seconds",
    "Time to handle an RPC.",
    ["grpc_method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

# Incremented by the ingest (cowrie_stats.ingest), exported only by the process that
# ingests: registered by register_ingest_counters() (a serving process would show zeros).
INGESTED_EVENTS = Counter(
    "cowrie_stats_ingest_events_stored", "Events stored by ingest.", registry=None
)
INGEST_DUPLICATES = Counter(
    "cowrie_stats_ingest_duplicates_skipped",
    "Events skipped by ingest as already stored.",
    registry=None,
)
INGEST_DEAD_LETTERED = Counter(
    "cowrie_stats_ingest_dead_lettered",
    "Log lines ingest could not parse (dead letters).",
    registry=None,
)
_ingest_unregistered = threading.Lock()  # taken, for good, by the one registration


def register_ingest_counters() -> None:
    """Export the ingest counters from this process (once; later calls do nothing)."""
    if _ingest_unregistered.acquire(blocking=False):
        for counter in (INGESTED_EVENTS, INGEST_DUPLICATES, INGEST_DEAD_LETTERED):
            REGISTRY.register(counter)


class DatabaseCollector(Collector):
    """Pool, replica health and lag gauges of the tracked routers, read at scrape time."""

    def __init__(self) -> None:
        self._routers: list[Router] = []
        self._lock = threading.Lock()

    def track(self, router: Router) -> None:
        with self._lock:
            if router not in self._routers:
                self._routers.append(router)

    def untrack(self, router: Router) -> None:
        with self._lock:
            if router in self._routers:
                self._routers.remove(router)

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(self._families())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            routers = list(self._routers)
        families = self._families()
        checked_out, idle, size, healthy, lag, on_primary = families
        for router in routers:
            for endpoint in [router.primary, *router.replicas]:
                labels = [endpoint.name, "primary" if endpoint.is_primary else "replica"]
                pool = _pool_counts(endpoint)
                if pool is not None:
                    checked_out.add_metric(labels, pool[0])
                    idle.add_metric(labels, pool[1])
                    size.add_metric(labels, pool[2])
            for replica in router.replicas:
                healthy.add_metric([replica.name], 1.0 if replica.healthy else 0.0)
                lag.add_metric([replica.name], replica.lag_seconds)
            on_primary.add_metric([], 1.0 if router.reads_on_primary else 0.0)
        return iter(families)

    @staticmethod
    def _families() -> list[GaugeMetricFamily]:
        pool_labels = ["endpoint", "role"]
        return [
            GaugeMetricFamily(
                "cowrie_stats_db_pool_checked_out",
                "Database connections in use.",
                labels=pool_labels,
            ),
            GaugeMetricFamily(
                "cowrie_stats_db_pool_idle",
                "Open database connections waiting in the pool.",
                labels=pool_labels,
            ),
            GaugeMetricFamily(
                "cowrie_stats_db_pool_size",
                "Configured pool size (connections kept open).",
                labels=pool_labels,
            ),
            GaugeMetricFamily(
                "cowrie_stats_replica_healthy",
                "1 when the read replica answers and its lag is within the limit.",
                labels=["replica"],
            ),
            GaugeMetricFamily(
                "cowrie_stats_replica_lag_seconds",
                "Replay lag of the read replica at its last check.",
                labels=["replica"],
            ),
            GaugeMetricFamily(
                "cowrie_stats_reads_on_primary",
                "1 when replicas are configured but none is healthy, so reads go to the primary.",
            ),
        ]


def _pool_counts(endpoint: Endpoint) -> tuple[int, int, int] | None:
    """(checked out, idle, size) of a QueuePool; None for pools that do not count."""
    pool = endpoint.engine.pool
    try:
        return (
            int(pool.checkedout()),  # type: ignore[attr-defined]
            int(pool.checkedin()),  # type: ignore[attr-defined]
            int(pool.size()),  # type: ignore[attr-defined]
        )
    except AttributeError:  # StaticPool (in-memory SQLite) keeps no counts
        return None


DATABASE = DatabaseCollector()
REGISTRY.register(DATABASE)


class MetricsServer:
    """The HTTP endpoint Prometheus scrapes (``/metrics``)."""

    def __init__(self, host: str, port: int) -> None:
        self._httpd: WSGIServer
        self._thread: threading.Thread
        self._httpd, self._thread = start_http_server(port, addr=host)
        self.port = int(self._httpd.server_port)

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


CACHE_HITS = Counter("cowrie_stats_result_cache_hits", "Statistics answered from the result cache.")
CACHE_MISSES = Counter("cowrie_stats_result_cache_misses", "Statistics computed by queries.")

GC_PAUSE = Histogram(
    "cowrie_stats_gc_pause_seconds",
    "Time spent in Python's cyclic garbage collector per collection (all threads stop).",
    ["generation"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
)


class GcPauses:
    """Times every collection of the cyclic garbage collector into :data:`GC_PAUSE`.

    A collection holds the GIL, so its length is added to every call in flight.
    """

    def __init__(self) -> None:
        self._started = 0.0
        self._children = [GC_PAUSE.labels(str(generation)) for generation in range(3)]

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self._children[info["generation"]].observe(time.perf_counter() - self._started)

    def install(self) -> None:
        if self not in gc.callbacks:
            gc.callbacks.append(self)

    def remove(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)


GC_PAUSES = GcPauses()
