"""Build, start and gracefully stop the gRPC server.

Synchronous ``grpc.server`` with a thread pool: the work per call is a few
short SQL queries that release the GIL while waiting on the database, and on
2 cores the thread pool measured faster than grpc.aio for this workload.
Waiting for a client (its request, its reading of a stream) happens on grpc's
pool, sized to the concurrent-call limit and bounded by the receive timeout;
at most ``max_workers`` statistics calls do work at once (cowrie_stats.guard).
A second listener on the probe port serves only health, without API keys.
"""

from __future__ import annotations

import gc
import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from types import FrameType
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from cowrie_stats import SERVICE_NAME, metrics
from cowrie_stats._gen.cowrie.stats.v1 import stats_pb2, stats_pb2_grpc
from cowrie_stats.activity import ACTIVITY
from cowrie_stats.cache import DataVersionWatch, ResultCache
from cowrie_stats.db.routing import Router
from cowrie_stats.db.schema import check_schema
from cowrie_stats.deadline import Deadline
from cowrie_stats.guard import REFUSALS, CallGuard, Watchdog
from cowrie_stats.health import HealthServicer
from cowrie_stats.interceptors import AccessLog, build_interceptors
from cowrie_stats.periodic import Periodic
from cowrie_stats.queries import data_version
from cowrie_stats.servicer import CowrieStatsServicer
from cowrie_stats.settings import Settings
from cowrie_stats.validation import Limits

log = logging.getLogger(__name__)
HEALTH_CHECK_INTERVAL_SECONDS = 2.0
HEALTH_JOIN_SECONDS = 5.0  # a health check contacts endpoints with a 2 s connect timeout
#: Calls the probe listener takes at once besides its watchers (it answers health only).
PROBE_CALLS_BEYOND_WATCHERS = 8


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def send_limit(settings: Settings) -> int:
    """Bytes of the largest answer the server sends (the servicer refuses larger ones)."""
    return 16 * settings.max_message_bytes


def server_options(settings: Settings) -> list[tuple[str, Any]]:
    return [
        # No connection holds resources for ever: idle ones close, old ones are asked to
        # go (GOAWAY) and closed after the grace; clients reconnect transparently.
        ("grpc.max_connection_idle_ms", _ms(settings.max_connection_idle_seconds)),
        ("grpc.max_connection_age_ms", _ms(settings.max_connection_age_seconds)),
        ("grpc.max_connection_age_grace_ms", _ms(settings.max_connection_age_grace_seconds)),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", send_limit(settings)),
        # Two servers must never silently share a port.
        ("grpc.so_reuseport", 0),
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


def _credentials(settings: Settings) -> grpc.ServerCredentials | None:
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    key = Path(settings.tls_key_file).read_bytes()
    cert = Path(settings.tls_cert_file).read_bytes()
    client_ca = (
        Path(settings.tls_client_ca_file).read_bytes() if settings.tls_client_ca_file else None
    )
    return grpc.ssl_server_credentials(
        [(key, cert)],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def _result_cache(settings: Settings) -> ResultCache | None:
    if settings.result_cache_entries and settings.result_cache_bytes:
        return ResultCache(settings.result_cache_entries, settings.result_cache_bytes)
    return None


class StatsServer:
    """The running service: gRPC server, health reporting and database router."""

    def __init__(self, settings: Settings, router: Router | None = None) -> None:
        metrics.register_serving_metrics()
        self.settings = settings
        self.router = router or Router(settings)
        self.watchdog = Watchdog(settings.receive_timeout_seconds)
        self.health = HealthServicer(self.watchdog, settings.max_health_watchers)
        self._stopping = threading.Event()
        self._health_checks = Periodic(
            "db-health", self._check_health, HEALTH_CHECK_INTERVAL_SECONDS, logger=log
        )
        self.access_log = AccessLog()
        guard = CallGuard(
            self.watchdog, threading.BoundedSemaphore(settings.max_workers), f"/{SERVICE_NAME}/"
        )
        # Threads wait here for clients, not for work: one per call that may be open.
        self.server = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=settings.max_concurrent_rpcs, thread_name_prefix="grpc"
            ),
            interceptors=[guard, *build_interceptors(settings, self.access_log)],
            options=server_options(settings),
            maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
        )
        self.probe_server = self._probe_server() if settings.probe_port else None
        self.cache = _result_cache(settings)
        servicer = CowrieStatsServicer(
            self.router,
            Limits(settings.max_sensors_per_request, settings.max_window_days),
            settings.default_deadline_seconds,
            self.cache,
            max_response_bytes=send_limit(settings),
        )
        self.versions = self._version_watch(servicer)
        self._add_services(servicer)
        self.port = 0
        self.probe_port = 0
        self.metrics_server: metrics.MetricsServer | None = None

    def _version_watch(self, servicer: CowrieStatsServicer) -> DataVersionWatch | None:
        """What tells the cached answers from stale ones, if the cache is on and polls."""
        interval = self.settings.data_version_poll_interval
        if self.cache is None or interval <= 0:
            return None
        watch = DataVersionWatch(
            lambda: self.router.run_read(data_version, Deadline.after(interval)),
            interval,
            before_publishing=servicer.warm,
        )
        servicer.versions = watch
        return watch

    def _add_services(self, servicer: CowrieStatsServicer) -> None:
        """The statistics, health and reflection services on the main port."""
        stats_pb2_grpc.add_CowrieStatsServiceServicer_to_server(servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = (
            stats_pb2.DESCRIPTOR.services_by_name["CowrieStatsService"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        )
        reflection.enable_server_reflection(names, self.server)

    def _probe_server(self) -> grpc.Server:
        """Health only, no API keys, plaintext: what kubelet and container probes can call."""
        calls = self.settings.max_health_watchers + PROBE_CALLS_BEYOND_WATCHERS
        server = grpc.server(
            # A thread per call that may be open, as on the main port: waiting for a
            # silent client never makes a probe wait for a thread.
            futures.ThreadPoolExecutor(max_workers=calls, thread_name_prefix="probe"),
            interceptors=[CallGuard(self.watchdog)],
            options=server_options(self.settings),
            maximum_concurrent_rpcs=calls,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        return server

    def _bind(self) -> None:
        address = f"{self.settings.grpc_host}:{self.settings.grpc_port}"
        credentials = _credentials(self.settings)
        try:
            if credentials is None:
                self.port = self.server.add_insecure_port(address)
            else:
                self.port = self.server.add_secure_port(address, credentials)
        except RuntimeError as error:  # grpc's way of saying the port is taken
            raise OSError(f"cannot bind {address}: is another server using the port?") from error
        if self.probe_server is not None:
            probe = f"{self.settings.grpc_host}:{self.settings.probe_port}"
            try:
                self.probe_port = self.probe_server.add_insecure_port(probe)
            except RuntimeError as error:
                raise OSError(
                    f"cannot bind the probe port {probe} (COWRIE_STATS_PROBE_PORT): "
                    "is another server using it?"
                ) from error

    def start(self) -> int:
        """Check the schema, bind, start serving; returns the bound port."""
        check_schema(self.router.primary.engine)
        self._bind()
        REFUSALS.flush(force=True)  # a new server starts a new interval
        self.router.start()
        if self.versions is not None:
            self.versions.start()
        self.update_health()
        metrics.DATABASE.track(self.router)
        if self.settings.metrics_port:
            host = self.settings.metrics_host
            self.metrics_server = metrics.MetricsServer(host, self.settings.metrics_port)
            ACTIVITY.attach(self.router)  # the honeypot activity series, from this router
            log.info("metrics", extra={"address": f"{host}:{self.metrics_server.port}"})
        self.access_log.start()
        self.server.start()
        if self.probe_server is not None:
            self.probe_server.start()
        self._health_checks.start()
        address = f"{self.settings.grpc_host}:{self.settings.grpc_port}"
        log.info("serving", extra={"address": address, "port": self.port})
        if self.probe_server is not None:
            log.info("serving health for probes", extra={"port": self.probe_port})
        return self.port

    def update_health(self) -> bool:
        """SERVING when the database answers, NOT_SERVING otherwise."""
        if self._stopping.is_set():
            return False
        answers = self.router.ping()
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if answers
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE_NAME):
            self.health.set(name, status)
        return answers

    def _check_health(self) -> None:
        self.update_health()
        REFUSALS.flush()

    def stop(self, grace: float | None = None) -> None:
        """Flip health to NOT_SERVING, let in-flight calls finish, then stop."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._health_checks.stop()  # joined below, once the calls have drained
        self.health.enter_graceful_shutdown()
        grace = self.settings.shutdown_grace_seconds if grace is None else grace
        log.info("shutting down", extra={"grace_seconds": grace})
        # Both listeners drain at once; probes see NOT_SERVING until the end.
        servers = [self.server] if self.probe_server is None else [self.server, self.probe_server]
        for stopped in [server.stop(grace) for server in servers]:
            stopped.wait()
        self.watchdog.close()
        REFUSALS.flush(force=True)
        self.access_log.close()
        if self.metrics_server is not None:
            self.metrics_server.stop()
        metrics.DATABASE.untrack(self.router)
        ACTIVITY.detach(self.router)
        if self.versions is not None:
            self.versions.close()
        self._health_checks.close(timeout=HEALTH_JOIN_SECONDS)  # it must not use a closed router
        self.router.close()

    def wait(self) -> None:
        self.server.wait_for_termination()


def freeze_startup_objects() -> int:
    """Exempt everything built so far from the cyclic GC; returns how many objects.

    After start-up the process holds about 86,000 long-lived objects (SQLAlchemy,
    protobuf, grpc, the schema). Each full collection walked all of them while every
    thread waited: 35-44 ms pauses under load, against about 2 ms once they are
    frozen (docs/performance.md). They live as long as the process anyway.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def serve(settings: Settings, on_started: Callable[[int], None] | None = None) -> int:
    """Run until SIGTERM or SIGINT; returns the process exit code."""
    server = StatsServer(settings)
    server.start()
    log.info("startup objects frozen", extra={"objects": freeze_startup_objects()})
    metrics.GC_PAUSES.install()  # after the freeze's own full collection
    if on_started is not None:
        on_started(server.port)
    done = threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s", signal.Signals(signum).name)
        done.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    while not done.wait(0.5):
        pass
    started = time.monotonic()
    server.stop()
    log.info("stopped", extra={"drain_seconds": round(time.monotonic() - started, 3)})
    return 0
