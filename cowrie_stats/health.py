"""grpc.health.v1.Health that strangers can neither block nor deadlock.

grpc_health's bundled servicer sends Watch updates while holding the lock that
``Check`` and the end-of-call callbacks (run on grpc's poll thread) need, and
it re-sends every status that is set. One watcher with a flow-control window
of 0 then held that lock for ever, every ``Check`` waited behind it, and a storm
of cancelled watchers deadlocked grpc's event thread. Here:

* ``Check`` copies one status under a lock held for a dictionary read;
* a status is pushed to watchers only when it changes;
* nothing is sent while a lock is held: each watcher has at most one sending
  thread, which takes the latest status under the watcher's lock and sends
  without it; a send the peer does not take within the receive timeout cancels
  that watcher (the :class:`~cowrie_stats.guard.Watchdog`);
* at most ``COWRIE_STATS_MAX_HEALTH_WATCHERS`` watch at once; the end of a call
  removes its watcher (a callback that only takes the short lock);
* on shutdown every watcher gets NOT_SERVING and its stream is ended, so open
  watchers do not hold the drain.

The wire protocol is grpc.health.v1's, so grpcurl, grpc_health_probe and
Kubernetes gRPC probes work unchanged.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from cowrie_stats.guard import REFUSALS, Watchdog

Status = Any  # a health_pb2.HealthCheckResponse.ServingStatus value
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
TOO_MANY_WATCHERS = "TOO_MANY_HEALTH_WATCHERS"


class _Watcher:
    """One Watch stream: the status to send next and who is sending it."""

    def __init__(
        self, send: Callable[[Any], None], context: grpc.ServicerContext, watchdog: Watchdog
    ) -> None:
        self._send = send
        self._context = context
        self._watchdog = watchdog
        self._lock = threading.Lock()
        self._pending: Status | None = None
        self._sent: Status | None = None
        self._sending = False
        self._finishing = False
        self._closed = False

    def offer(self, status: Status | None = None, finish: bool = False) -> bool:
        """Queue ``status`` (and/or the end); True when the caller must start :meth:`deliver`."""
        with self._lock:
            if self._closed:
                return False
            if status is not None:
                self._pending = status
            self._finishing = self._finishing or finish
            if self._sending:
                return False
            self._sending = True
            return True

    def close(self) -> None:
        with self._lock:
            self._closed = True

    def deliver(self) -> None:
        """Send until nothing is pending; only one thread at a time runs this."""
        while True:
            with self._lock:
                status, self._pending = self._pending, None
                if status == self._sent:
                    status = None
                finish = status is None and self._finishing and not self._closed
                if (status is None and not finish) or self._closed:
                    self._sending = False
                    return
                if finish:
                    self._closed = True
            alarm = self._watchdog.arm(self._context)
            try:
                self._send(None if finish else health_pb2.HealthCheckResponse(status=status))
            finally:
                alarm.disarm()
            self._sent = status


class HealthServicer:
    """Health statuses by service name, for ``Check`` and ``Watch``."""

    def __init__(self, watchdog: Watchdog, max_watchers: int) -> None:
        self.max_watchers = max_watchers
        self._watchdog = watchdog
        self._lock = threading.Lock()  # never held while sending
        self._statuses: dict[str, Status] = {}
        self._watchers: dict[str, set[_Watcher]] = {}
        self._watching = 0
        self._shutting_down = False

    @property
    def watching(self) -> int:
        """Open Watch streams."""
        with self._lock:
            return self._watching

    def set(self, service: str, status: Status) -> None:
        """Record ``status``; watchers of ``service`` hear of it if it changed."""
        with self._lock:
            if self._shutting_down or self._statuses.get(service) == status:
                return
            self._statuses[service] = status
            starting = [w for w in self._watchers.get(service, ()) if w.offer(status)]
        self._start(starting)

    def enter_graceful_shutdown(self) -> None:
        """NOT_SERVING for every service, to every watcher, whose streams then end."""
        with self._lock:
            if self._shutting_down:
                return
            self._shutting_down = True
            for service in self._statuses:
                self._statuses[service] = NOT_SERVING
            starting = [
                watcher
                for service, watchers in self._watchers.items()
                for watcher in watchers
                if watcher.offer(self._statuses.get(service), finish=True)
            ]
        self._start(starting)

    @staticmethod
    def _start(watchers: list[_Watcher]) -> None:
        for watcher in watchers:
            threading.Thread(target=watcher.deliver, name="health-watch", daemon=True).start()

    def Check(  # noqa: N802 - the gRPC method name
        self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        with self._lock:
            status = self._statuses.get(request.service)
        if status is None:
            context.set_code(grpc.StatusCode.NOT_FOUND)
            context.set_details(f"unknown service {request.service[:100]!r}")
            return health_pb2.HealthCheckResponse()
        return health_pb2.HealthCheckResponse(status=status)

    def List(  # noqa: N802 - the gRPC method name
        self, request: health_pb2.HealthListRequest, context: grpc.ServicerContext
    ) -> health_pb2.HealthListResponse:
        with self._lock:
            statuses = dict(self._statuses)
        reply = health_pb2.HealthListResponse()
        for service, status in statuses.items():
            reply.statuses[service].status = status
        return reply

    def Watch(  # noqa: N802 - the gRPC method name
        self,
        request: health_pb2.HealthCheckRequest,
        context: grpc.ServicerContext,
        send_response_callback: Callable[[Any], None],
    ) -> None:
        """Registers the watcher and has the current status sent; returns at once.

        Non-blocking (grpc passes ``send_response_callback``): the stream holds no
        thread of grpc's pool while it is open.
        """
        service = request.service
        watcher = _Watcher(send_response_callback, context, self._watchdog)
        with self._lock:
            if self._watching >= self.max_watchers:
                full = True
            else:
                full = False
                self._watching += 1
                self._watchers.setdefault(service, set()).add(watcher)
                watcher.offer(self._statuses.get(service, SERVICE_UNKNOWN), self._shutting_down)
        if full:
            REFUSALS.refused(TOO_MANY_WATCHERS, "/grpc.health.v1.Health/Watch")
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many health watchers")
        if not context.add_callback(lambda: self._forget(service, watcher)):
            self._forget(service, watcher)  # the call ended already
            return
        self._start([watcher])  # a peer that reads nothing holds that thread, not this one

    def _forget(self, service: str, watcher: _Watcher) -> None:
        watcher.close()
        with self._lock:
            watchers = self._watchers.get(service)
            if watchers is not None and watcher in watchers:
                watchers.discard(watcher)
                self._watching -= 1
                if not watchers:
                    del self._watchers[service]


HealthServicer.Watch.experimental_non_blocking = True  # type: ignore[attr-defined]
