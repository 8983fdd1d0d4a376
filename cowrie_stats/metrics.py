"""Prometheus metrics (served on COWRIE_STATS_METRICS_PORT when set).

RPC metrics follow the go-grpc-prometheus names and labels and are fed by the
access log interceptor; their labels name only methods the server registers
(anything a stranger makes up is ``unknown``), so their series stay few.
Database metrics are read from the live routers when Prometheus scrapes
(:class:`DatabaseCollector`), so they are never stale and need no background
updater. Ingest counters live in the process that ingests.
"""

from __future__ import annotations

import gc
import logging
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import REGISTRY, Counter, Histogram, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from cowrie_stats.db.routing import Endpoint, Router

log = logging.getLogger(__name__)

# The label value of every method the server does not register.
UNKNOWN = "unknown"
RPC_LABELS = ("grpc_type", "grpc_service", "grpc_method")

# Each process exports only what it does: the serving metrics are registered by
# register_serving_metrics(), the ingest counters by register_ingest_counters() (an
# ingest process would show the calls it never serves as zeros, and the other way round).
STARTED = Counter("grpc_server_started", "RPCs started on the server.", RPC_LABELS, registry=None)
HANDLED = Counter(
    "grpc_server_handled",
    "RPCs completed on the server.",
    (*RPC_LABELS, "grpc_code"),
    registry=None,
)
HANDLING = Histogram(
    "grpc_server_handling_seconds",
    "Time to handle an RPC.",
    RPC_LABELS,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=None,
)
CACHE_HITS = Counter(
    "cowrie_stats_result_cache_hits", "Statistics answered from the result cache.", registry=None
)
CACHE_MISSES = Counter(
    "cowrie_stats_result_cache_misses", "Statistics computed by queries.", registry=None
)

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
_unregistered = {"serving": threading.Lock(), "ingest": threading.Lock()}


def _register_once(group: str, *collectors: Collector) -> None:
    if _unregistered[group].acquire(blocking=False):  # taken for good by the first call
        for collector in collectors:
            REGISTRY.register(collector)


def register_serving_metrics() -> None:
    """Export the RPC and result-cache metrics from this process (once)."""
    _register_once("serving", STARTED, HANDLED, HANDLING, CACHE_HITS, CACHE_MISSES)


def register_ingest_counters() -> None:
    """Export the ingest counters from this process (once; later calls do nothing)."""
    _register_once("ingest", INGESTED_EVENTS, INGEST_DUPLICATES, INGEST_DEAD_LETTERED)


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


# A connection that sends no complete request within this is closed, and at most
# this many are served at once (each holds a thread); the rest are closed at once.
IDLE_TIMEOUT_SECONDS = 10.0
MAX_CONNECTIONS = 16


class _QuietHandler(WSGIRequestHandler):
    """One request per connection, bounded in time by the server's idle timeout."""

    server: BoundedHTTPServer

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.idle_timeout)

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged."""


class BoundedHTTPServer(socketserver.ThreadingMixIn, WSGIServer):
    """prometheus_client's thread-per-connection server, with a bound on both.

    Its threads wait on a connection's first line without a timeout, so idle
    connections pile up one thread each: here a connection waits at most
    ``idle_timeout`` seconds, and past ``max_connections`` at once a new one is
    closed without a thread.
    """

    daemon_threads = True

    def __init__(self, address: tuple[str, int], max_connections: int, idle_timeout: float) -> None:
        infos = socket.getaddrinfo(*address, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        self.address_family, _, _, _, sockaddr = infos[0]
        self.idle_timeout = idle_timeout
        self.refused = 0
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__((str(sockaddr[0]), address[1]), _QuietHandler)
        self.set_app(make_wsgi_app(REGISTRY))

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread was started to give the slot back
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # What reaches here is the connection's (an idle peer timed out, a reset): the
        # application's own errors are answered 500 by wsgiref. Not worth a traceback.
        log.debug("metrics connection closed by an error", exc_info=True)


class MetricsServer:
    """The HTTP endpoint Prometheus scrapes (``/metrics``)."""

    def __init__(
        self,
        host: str,
        port: int,
        max_connections: int = MAX_CONNECTIONS,
        idle_timeout: float = IDLE_TIMEOUT_SECONDS,
    ) -> None:
        address = (host.strip().removeprefix("[").removesuffix("]"), port)
        self._httpd = BoundedHTTPServer(address, max_connections, idle_timeout)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="metrics-http", daemon=True
        )
        self._thread.start()
        self.port = int(self._httpd.server_port)

    @property
    def refused(self) -> int:
        """Connections closed at once because ``max_connections`` were open."""
        return self._httpd.refused

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


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
