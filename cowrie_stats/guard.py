"""Calls from strangers must not hold the server's threads.

In the sync gRPC server a unary handler's request is read on the thread that
runs the handler, and a stream's messages are sent by a thread that waits until
the peer's flow-control window takes them. A client that sends headers and
never the message, or never reads, held such a thread for ever; four of them
stopped every RPC. So the outermost interceptor, :class:`CallGuard`, turns
every handler into a request-streaming one and bounds each wait:

* a call refused from its metadata alone (no or a wrong API key) is refused at
  once, without reading its request; a call to an unknown method is refused by
  gRPC's poll thread (UNIMPLEMENTED) and never reaches a thread;
* the request message (and every message of a stream) must arrive within
  ``COWRIE_STATS_RECEIVE_TIMEOUT_SECONDS``, and every streamed response must be
  taken by the peer within it; otherwise the :class:`Watchdog` cancels the call
  (the client sees CANCELLED) and the thread is free again;
* the waiting happens on grpc's pool, sized to ``COWRIE_STATS_MAX_CONCURRENT_RPCS``,
  and only then does a statistics call take one of the ``COWRIE_STATS_MAX_WORKERS``
  work slots: health and reflection never wait behind database work, and a call
  waiting for its request holds no slot.

Refusals are logged by :data:`REFUSALS`: the first of each kind per interval
with its method, the rest as one count, never a line per call of an attacker.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import grpc

from cowrie_stats.tables import escape

if TYPE_CHECKING:  # grpc-stubs make these generic; the runtime classes are not
    Interceptor = grpc.ServerInterceptor[Any, Any]
    Handler = grpc.RpcMethodHandler[Any, Any]
else:
    Interceptor = grpc.ServerInterceptor
    Handler = grpc.RpcMethodHandler

log = logging.getLogger(__name__)

REFUSAL_LOG_INTERVAL_SECONDS = 60.0
MAX_LOGGED_METHOD_LENGTH = 200
#: Reasons a call was refused or ended, as logged.
NO_REQUEST_IN_TIME = "NO_REQUEST_IN_TIME"
UNKNOWN_METHOD = "UNKNOWN_METHOD"

#: Set by an inner interceptor whose handler refuses the call without reading it.
_REFUSING: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "cowrie_stats_refusing", default=False
)


def refuse_from_metadata() -> None:
    """Tell :class:`CallGuard` that the handler being built refuses the call unread.

    Interceptors run one after the other on grpc's poll thread, inside the
    call's own context, so the guard reads this right after its continuation.
    """
    _REFUSING.set(True)


def printable_method(method: str) -> str:
    """An attacker-chosen method name, safe for a log line."""
    return escape(method[:MAX_LOGGED_METHOD_LENGTH])


class RefusalLog:
    """Refused calls, logged at most once per kind per interval plus one count line."""

    def __init__(self, interval: float = REFUSAL_LOG_INTERVAL_SECONDS) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._since = time.monotonic()

    def refused(self, reason: str, method: str) -> None:
        with self._lock:
            summary = self._take_if_due()
            count = self._counts.get(reason, 0)
            self._counts[reason] = count + 1
        self._write(summary)
        if count == 0:
            log.warning(
                "refused a call",
                extra={"reason": reason, "method": printable_method(method)},
            )

    def flush(self, force: bool = False) -> None:
        """Write the count line of an interval that ended (any interval, ``force``)."""
        with self._lock:
            summary = self._take_if_due(force)
        self._write(summary)

    def _take_if_due(self, force: bool = False) -> dict[str, int]:
        now = time.monotonic()
        if not force and now - self._since < self.interval:
            return {}
        counts, self._counts, self._since = self._counts, {}, now
        return counts

    def _write(self, counts: dict[str, int]) -> None:
        if any(count > 1 for count in counts.values()):
            log.warning(
                "refused calls",
                extra={"refused": dict(sorted(counts.items())), "interval_seconds": self.interval},
            )


REFUSALS = RefusalLog()


class Alarm:
    """One armed wait; :meth:`disarm` once the message came (or went)."""

    __slots__ = ("context", "deadline", "disarmed", "fired")

    def __init__(self, deadline: float, context: grpc.RpcContext) -> None:
        self.deadline = deadline
        self.context = context
        self.disarmed = False
        self.fired = False

    def disarm(self) -> None:
        self.disarmed = True


class Watchdog:
    """Cancels the calls whose armed wait outlived ``seconds``: one thread for all.

    Every alarm lasts the same time, so they expire in the order they were
    armed and a deque is the whole schedule. Arming costs an append under a lock;
    disarmed alarms are dropped when their time comes.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._alarms: deque[Alarm] = deque()
        self._wake = threading.Condition(threading.Lock())
        self._closed = False
        self._thread: threading.Thread | None = None

    def arm(self, context: grpc.RpcContext) -> Alarm:
        alarm = Alarm(time.monotonic() + self.seconds, context)
        with self._wake:
            if self._closed:  # stopping: grpc cancels what is left itself
                return alarm
            self._alarms.append(alarm)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
                self._thread.start()
            elif len(self._alarms) == 1:
                self._wake.notify()
        return alarm

    def _run(self) -> None:
        while True:
            with self._wake:
                due = self._wait_for_due()
                if due is None:
                    return
            for alarm in due:
                alarm.context.cancel()  # type: ignore[no-untyped-call]

    def _wait_for_due(self) -> list[Alarm] | None:
        """The alarms that fire now (called with the lock held); None once closed."""
        while not self._closed:
            now = time.monotonic()
            due: list[Alarm] = []
            while self._alarms and self._alarms[0].deadline <= now:
                alarm = self._alarms.popleft()
                if not alarm.disarmed:
                    alarm.fired = True
                    due.append(alarm)
            if due:
                return due
            self._wake.wait(self._alarms[0].deadline - now if self._alarms else None)
        return None

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._alarms.clear()
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()


class CallGuard(Interceptor):
    """The outermost interceptor: early refusals, bounded waits, work slots (module doc)."""

    def __init__(
        self,
        watchdog: Watchdog,
        work_slots: threading.Semaphore | None = None,
        slotted_prefix: str = "",
    ) -> None:
        self.watchdog = watchdog
        self.work_slots = work_slots
        self.slotted_prefix = slotted_prefix

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Handler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        method = handler_call_details.method
        token = _REFUSING.set(False)
        try:
            handler = continuation(handler_call_details)
            refusing = _REFUSING.get()
        finally:
            _REFUSING.reset(token)
        if handler is None:  # grpc answers UNIMPLEMENTED from its poll thread
            REFUSALS.refused(UNKNOWN_METHOD, method)
            return None
        slotted = self.work_slots is not None and method.startswith(self.slotted_prefix)
        slots = self.work_slots if slotted and not refusing else None
        return _Guarded(self, method, handler, refusing, slots).handler()

    def receive(self, requests: Iterator[Any], context: grpc.ServicerContext, method: str) -> Any:
        """The next request, or the call ends (cancelled, half-closed, or not in time)."""
        alarm = self.watchdog.arm(context)
        try:
            return next(requests)
        except StopIteration:
            pass
        except grpc.RpcError:  # cancelled: by the client or by the alarm
            if alarm.fired:
                REFUSALS.refused(NO_REQUEST_IN_TIME, method)
            raise
        finally:
            alarm.disarm()
        if alarm.fired:
            REFUSALS.refused(NO_REQUEST_IN_TIME, method)
            context.abort(grpc.StatusCode.CANCELLED, "no request message in time")
        raise _HalfClosedError

    def bounded_requests(
        self, requests: Iterator[Any], context: grpc.ServicerContext, method: str
    ) -> Iterator[Any]:
        while True:
            try:
                request = self.receive(requests, context, method)
            except _HalfClosedError:
                return
            yield request

    def bounded_sends(
        self, responses: Iterator[Any], context: grpc.ServicerContext
    ) -> Iterator[Any]:
        """``responses``, each to be taken by the peer within the timeout.

        grpc asks for the next response only once the last one was sent, so the
        alarm armed before a ``yield`` is disarmed when the generator resumes.
        """
        for response in responses:
            alarm = self.watchdog.arm(context)
            try:
                yield response
            finally:
                alarm.disarm()


class _HalfClosedError(Exception):
    """The client closed its side before sending the awaited message."""


class _Guarded:
    """One method's handler, rebuilt as request-streaming around the original behavior."""

    def __init__(
        self,
        guard: CallGuard,
        method: str,
        inner: Handler,
        refusing: bool,
        slots: threading.Semaphore | None,
    ) -> None:
        self.guard = guard
        self.method = method
        self.inner = inner
        self.refusing = refusing
        self.slots = slots

    def handler(self) -> Handler:
        inner = self.inner
        serializers = {
            "request_deserializer": inner.request_deserializer,
            "response_serializer": inner.response_serializer,
        }
        if inner.unary_unary is not None:
            return grpc.stream_unary_rpc_method_handler(self.unary_unary, **serializers)
        if inner.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(self.stream_unary, **serializers)
        behavior = self.unary_stream if inner.unary_stream is not None else self.stream_stream
        if getattr(inner.unary_stream or inner.stream_stream, "experimental_non_blocking", False):
            behavior = self._non_blocking(behavior)
        return grpc.stream_stream_rpc_method_handler(behavior, **serializers)

    def _request(self, requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
        if self.refusing:
            return None  # the refusing behavior never looks at it
        try:
            return self.guard.receive(requests, context, self.method)
        except _HalfClosedError:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "expected exactly one request message")

    def unary_unary(self, requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
        request = self._request(requests, context)
        with self.slots if self.slots is not None else contextlib.nullcontext():
            assert self.inner.unary_unary is not None
            return self.inner.unary_unary(request, context)

    def stream_unary(self, requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
        assert self.inner.stream_unary is not None
        bounded = self.guard.bounded_requests(requests, context, self.method)
        return self.inner.stream_unary(bounded, context)

    def unary_stream(
        self, requests: Iterator[Any], context: grpc.ServicerContext, *send: Any
    ) -> Any:
        assert self.inner.unary_stream is not None
        request = self._request(requests, context)
        return self._responses(self.inner.unary_stream(request, context, *send), context, send)

    def stream_stream(
        self, requests: Iterator[Any], context: grpc.ServicerContext, *send: Any
    ) -> Any:
        assert self.inner.stream_stream is not None
        bounded = self.guard.bounded_requests(requests, context, self.method)
        return self._responses(self.inner.stream_stream(bounded, context, *send), context, send)

    def _responses(
        self, responses: Iterator[Any] | None, context: grpc.ServicerContext, send: tuple[Any, ...]
    ) -> Iterator[Any] | None:
        if send or responses is None:  # non-blocking: the behavior sends, bounded itself
            return responses
        return self.guard.bounded_sends(responses, context)

    @staticmethod
    def _non_blocking(behavior: Callable[..., Any]) -> Callable[..., Any]:
        def non_blocking(requests: Iterator[Any], context: grpc.ServicerContext, send: Any) -> Any:
            return behavior(requests, context, send)

        non_blocking.experimental_non_blocking = True  # type: ignore[attr-defined]
        return non_blocking
