"""Server interceptors: access log and metrics for every call (and API keys)."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, NamedTuple

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from cowrie_stats import metrics
from cowrie_stats._gen.cowrie.stats.v1 import stats_pb2
from cowrie_stats.auth import CALLER, build_auth_interceptor
from cowrie_stats.errors import (
    REQUEST_ID,
    REQUEST_ID_HEADER,
    VIOLATED_FIELDS,
    FieldViolation,
    InvalidArgumentError,
    abort,
    request_id_of,
)
from cowrie_stats.guard import Handler, Interceptor
from cowrie_stats.periodic import Periodic
from cowrie_stats.servicer import DATA_LAG, DATA_LAG_HEADER
from cowrie_stats.settings import Settings

log = logging.getLogger("cowrie_stats.access")
SLOW_CALL_SECONDS = 1.0  # with COWRIE_STATS_ACCESS_LOG=errors, slower OK calls are logged too
FLUSH_INTERVAL_SECONDS = 0.05
MAX_PENDING_LINES = 100_000  # beyond this (handlers stuck), lines are counted and dropped
_MALFORMED = object()  # stands for a request whose bytes did not decode
MAX_LOGGED_METHOD_CHARS = 200  # a made-up method name is logged, cut to this

MethodLabels = tuple[str, str, str]  # grpc_type, grpc_service, grpc_method
UNKNOWN_METHOD: MethodLabels = ("unary", metrics.UNKNOWN, metrics.UNKNOWN)
SERVED: tuple[ServiceDescriptor, ...] = (
    stats_pb2.DESCRIPTOR.services_by_name["CowrieStatsService"],
    health_pb2.DESCRIPTOR.services_by_name["Health"],
    reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
)


def _grpc_type(client_streaming: bool, server_streaming: bool) -> str:
    if client_streaming:
        return "bidi_stream" if server_streaming else "client_stream"
    return "server_stream" if server_streaming else "unary"


def registered_methods(services: tuple[ServiceDescriptor, ...] = SERVED) -> dict[str, MethodLabels]:
    """Metric labels of every method the server registers, by full path ``/service/method``.

    Labels come from this table only: a path a caller makes up is counted as
    :data:`UNKNOWN_METHOD`, so strangers cannot add series to ``/metrics``.
    """
    return {
        f"/{service.full_name}/{method.name}": (
            _grpc_type(method.client_streaming, method.server_streaming),
            service.full_name,
            method.name,
        )
        for service in services
        for method in service.methods
    }


def loggable_method(method: str) -> str:
    """The method as the access log shows it: a made-up one cut to a bounded length."""
    if len(method) <= MAX_LOGGED_METHOD_CHARS:
        return method
    return f"{method[:MAX_LOGGED_METHOD_CHARS]}... ({len(method)} characters)"


class Call(NamedTuple):
    """What the access log says of one call."""

    when: float
    method: str
    code: str
    elapsed: float
    peer: str
    request_id: str
    caller: str | None = None
    data_lag: str | None = None
    violated_fields: tuple[str, ...] = ()


def _code_of(context: grpc.ServicerContext, failed: bool) -> grpc.StatusCode:
    code = context.code()  # type: ignore[attr-defined]
    if isinstance(code, grpc.StatusCode):
        return code
    return grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK


class AccessLog:
    """Access-log lines, handed to the logging handlers by a background thread.

    A serving thread only appends a tuple to a deque (no lock, no I/O). Writing
    each line from the serving thread made the threads queue on the handler's
    lock while its holder wrote (py-spy: 14 % of the server's samples in
    ``Handler.acquire`` under 32 clients). Lines keep the time of the call and
    their order; :meth:`close` writes what is left.
    """

    def __init__(self, interval: float = FLUSH_INTERVAL_SECONDS) -> None:
        self.interval = interval
        self.dropped = 0
        self._pending: deque[Call] = deque()
        self._flushing = threading.Lock()
        self._dropping = threading.Lock()  # only taken when lines are dropped
        self._flusher = Periodic("access-log", self.flush, interval, logger=log)

    def add(self, call: Call) -> None:
        if not log.isEnabledFor(logging.INFO):  # COWRIE_STATS_LOG_LEVEL above INFO
            return
        if len(self._pending) >= MAX_PENDING_LINES:
            with self._dropping:  # += is not atomic across threads
                self.dropped += 1
            return
        self._pending.append(call)

    def flush(self) -> None:
        with self._flushing:
            while self._pending:
                self._emit(self._pending.popleft())
            with self._dropping:
                dropped, self.dropped = self.dropped, 0
            if dropped:
                log.warning("access log lines dropped", extra={"lines": dropped})

    @staticmethod
    def _emit(call: Call) -> None:
        extra: dict[str, Any] = {
            "method": call.method,
            "code": call.code,
            "duration_ms": round(call.elapsed * 1000, 2),
            "peer": call.peer,
            "request_id": call.request_id,
        }
        if call.caller is not None:
            extra["api_key_name"] = call.caller
        if call.data_lag is not None:
            extra["data_lag_seconds"] = call.data_lag
        if call.violated_fields:
            extra["fields"] = ",".join(call.violated_fields)
        record = log.makeRecord(log.name, logging.INFO, __file__, 0, "rpc", (), None, extra=extra)
        record.created, record.msecs = call.when, (call.when - int(call.when)) * 1000
        log.handle(record)

    def start(self) -> None:
        self._flusher.start()

    def close(self) -> None:
        self._flusher.close()
        self.flush()


class AccessLogInterceptor(Interceptor):
    """Logs and counts unary calls; gives each a request id, sent back as a response header.

    A line has method, code, duration, peer address, request id, API key name,
    data lag and, for INVALID_ARGUMENT, the violated fields.

    It is the outermost interceptor, so calls refused by the API key check are
    logged and counted too. The key's name is read from :data:`auth.CALLER`,
    which the API key interceptor sets in the thread serving the call.
    ``mode`` is COWRIE_STATS_ACCESS_LOG: "all", "errors" (not OK, or slow) or "off".
    """

    def __init__(self, mode: str, lines: AccessLog) -> None:
        self.mode = mode
        self.lines = lines
        self.methods = registered_methods()

    def _worth_a_line(self, code: grpc.StatusCode, elapsed: float, lagging: bool) -> bool:
        if self.mode == "all":
            return True
        if self.mode == "off":
            return False
        return code is not grpc.StatusCode.OK or elapsed >= SLOW_CALL_SECONDS or lagging

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Handler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method
        labels = self.methods.get(method, UNKNOWN_METHOD)
        inner = handler.unary_unary

        def logged(request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            metrics.STARTED.labels(*labels).inc()
            failed = False
            request_id = request_id_of(context.invocation_metadata())
            tokens = [(var, var.set(value)) for var, value in _call_vars(request_id)]
            try:
                if request is _MALFORMED:
                    violation = FieldViolation("request", "the message does not decode")
                    abort(context, InvalidArgumentError([violation]))
                response = inner(request, context)
                context.send_initial_metadata(_response_headers(request_id))
                return response
            except BaseException:
                failed = True
                raise
            finally:
                self._record(method, labels, context, failed, time.perf_counter() - started)
                for var, token in tokens:
                    var.reset(token)

        return grpc.unary_unary_rpc_method_handler(
            logged,
            request_deserializer=_tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )

    def _record(
        self,
        method: str,
        labels: MethodLabels,
        context: grpc.ServicerContext,
        failed: bool,
        elapsed: float,
    ) -> None:
        """Count the call and, when the mode says so, queue its access-log line."""
        code = _code_of(context, failed)
        metrics.HANDLED.labels(*labels, code.name).inc()
        metrics.HANDLING.labels(*labels).observe(elapsed)
        lag = DATA_LAG.get()
        if self._worth_a_line(code, elapsed, lag is not None):
            call = Call(
                time.time(), loggable_method(method), code.name, elapsed, context.peer(),
                REQUEST_ID.get() or "", CALLER.get(), lag, VIOLATED_FIELDS.get(),
            )  # fmt: skip
            self.lines.add(call)


def _tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
    """``deserialize`` that keeps an undecodable request as :data:`_MALFORMED`.

    grpc answers INTERNAL when a request does not decode; it is the caller's
    fault, so the call goes on and answers INVALID_ARGUMENT instead.
    """

    def tolerant(raw: bytes) -> Any:
        try:
            return deserialize(raw) if deserialize else raw
        except DecodeError:
            return _MALFORMED

    return tolerant


def _call_vars(request_id: str) -> list[tuple[ContextVar[Any], Any]]:
    """The per-call context and its value at the start of a call.

    Pool threads are reused: the last call's caller, lag and fields are forgotten.
    """
    return [(CALLER, None), (DATA_LAG, None), (REQUEST_ID, request_id), (VIOLATED_FIELDS, ())]


def _response_headers(request_id: str) -> tuple[tuple[str, str], ...]:
    lag = DATA_LAG.get()
    headers = ((REQUEST_ID_HEADER, request_id),)
    return headers if lag is None else (*headers, (DATA_LAG_HEADER, lag))


def build_interceptors(settings: Settings, access_log: AccessLog) -> list[Interceptor]:
    """Access log first (outermost, so refused calls are logged), then API keys.

    Raises SettingsError when the API keys file is unreadable or malformed.
    """
    interceptors: list[Interceptor] = [AccessLogInterceptor(settings.access_log, access_log)]
    auth = build_auth_interceptor(settings.api_keys_file, settings.open_health_and_reflection)
    if auth is not None:
        interceptors.append(auth)
    return interceptors
