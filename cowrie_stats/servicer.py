"""The CowrieStatsService servicer: validate, pick a read, call the query layer.

Every answer is measured once, when it is computed: the result cache counts its
bytes, and an answer larger than the server may send fails here with
RESOURCE_EXHAUSTED (RESPONSE_TOO_LARGE). Left to the transport, it would fail
after the handler returned, so the access log and the metrics would call it OK.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import Connection

from cowrie_stats import queries, validation
from cowrie_stats._gen.cowrie.stats.v1 import stats_pb2, stats_pb2_grpc
from cowrie_stats.cache import DataVersionWatch, ResultCache
from cowrie_stats.db.lag import describe_lag
from cowrie_stats.db.routing import Answer, Router
from cowrie_stats.deadline import Deadline
from cowrie_stats.errors import ResponseTooLargeError, rpc_errors
from cowrie_stats.queries.sensors import SensorSnapshot

T = TypeVar("T")
M = TypeVar("M", bound=Message)
log = logging.getLogger(__name__)
READ_FROM_HEADER = "x-cowrie-read-from"
# Set on answers from a replica beyond COWRIE_STATS_MAX_REPLICA_LAG: how old the data may be.
DATA_LAG_HEADER = "x-cowrie-data-lag-seconds"
DATA_LAG: ContextVar[str | None] = ContextVar("cowrie_stats_data_lag", default=None)
# After an ingest, the most recently asked questions are answered again for the new
# data version before calls see it: at most this many, for at most this long.
WARM_MAX_REQUESTS = 32
WARM_BUDGET_SECONDS = 30.0
# grpc's default send limit; the server passes its own (server.send_limit).
DEFAULT_MAX_RESPONSE_BYTES = 4 * 1024 * 1024
# Setting `stale` adds 2 bytes to a sensor's entry and at most 1 to its length prefix.
STALE_FLAG_BYTES = 3
RequestKey = tuple[str, bytes]
StatsRequest = (
    stats_pb2.GetSessionStatsRequest
    | stats_pb2.GetThreatStatsRequest
    | stats_pb2.GetSensorStatsRequest
)


@dataclass(frozen=True)
class Sized(Generic[T]):
    """An answer and its serialized bytes (at most these, for a sensor snapshot)."""

    value: T
    size: int


def measured(message: M) -> Sized[M]:
    return Sized(message, message.ByteSize())


def measured_snapshot(snapshot: SensorSnapshot) -> Sized[SensorSnapshot]:
    response = snapshot.response
    return Sized(snapshot, response.ByteSize() + STALE_FLAG_BYTES * len(response.sensors))


def _timestamp(us: int) -> Timestamp:
    seconds, micros = divmod(us, 1_000_000)
    return Timestamp(seconds=seconds, nanos=micros * 1000)


def request_key(normalised: StatsRequest, filters: validation.Filters) -> RequestKey:
    """The cache key of a validated request: its type and deterministic bytes.

    ``normalised`` is a new request with the other fields as validated (top_n 10
    for 0, say); the window and the sorted sensors are added from ``filters``.
    Nothing else of the caller's message (unknown fields, sub-microsecond times,
    an empty time_range, sensor order and repeats) makes another key.
    """
    window = filters.window
    if window.start_us is not None:
        normalised.time_range.start_time.CopyFrom(_timestamp(window.start_us))
    if window.end_us is not None:
        normalised.time_range.end_time.CopyFrom(_timestamp(window.end_us))
    normalised.sensors.extend(sorted(filters.sensors))
    return type(normalised).__name__, normalised.SerializeToString(deterministic=True)


class CowrieStatsServicer(stats_pb2_grpc.CowrieStatsServiceServicer):
    """Answers the three statistics RPCs from the database behind ``router``."""

    def __init__(
        self,
        router: Router,
        limits: validation.Limits,
        default_deadline_seconds: float,
        cache: ResultCache | None = None,
        versions: DataVersionWatch | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        self.router = router
        self.limits = limits
        self.default_deadline_seconds = default_deadline_seconds
        self.cache = cache
        self.versions = versions
        self.max_response_bytes = max_response_bytes
        # Recently asked cacheable requests, newest last, with the work that answers them.
        self._recent: OrderedDict[RequestKey, Callable[[Connection], Any]] = OrderedDict()
        self._recent_lock = threading.Lock()

    @rpc_errors
    def GetSessionStats(
        self, request: stats_pb2.GetSessionStatsRequest, context: grpc.ServicerContext
    ) -> stats_pb2.GetSessionStatsResponse:
        filters, bucket_us = validation.session_request(request, self.limits)
        key = request_key(stats_pb2.GetSessionStatsRequest(bucket=request.bucket), filters)
        answer = self._answer(
            context, key, lambda conn: measured(queries.session_stats(conn, filters, bucket_us))
        )
        return self._deliverable(answer)

    @rpc_errors
    def GetThreatStats(
        self, request: stats_pb2.GetThreatStatsRequest, context: grpc.ServicerContext
    ) -> stats_pb2.GetThreatStatsResponse:
        filters, top_n = validation.threat_request(request, self.limits)
        key = request_key(stats_pb2.GetThreatStatsRequest(top_n=top_n), filters)
        answer = self._answer(
            context, key, lambda conn: measured(queries.threat_stats(conn, filters, top_n))
        )
        return self._deliverable(answer)

    @rpc_errors
    def GetSensorStats(
        self, request: stats_pb2.GetSensorStatsRequest, context: grpc.ServicerContext
    ) -> stats_pb2.GetSensorStatsResponse:
        filters, stale_after_us = validation.sensor_request(request, self.limits)
        # `stale` depends on the clock, so it is applied after the (cacheable) figures.
        key = request_key(stats_pb2.GetSensorStatsRequest(), filters)
        snapshot = self._answer(
            context, key, lambda conn: measured_snapshot(queries.sensor_stats(conn, filters))
        )
        return queries.with_staleness(self._deliverable(snapshot), stale_after_us)

    def _deliverable(self, answer: Sized[T]) -> T:
        """The answer, unless it is too large to send (then RESOURCE_EXHAUSTED, here)."""
        if answer.size > self.max_response_bytes:
            raise ResponseTooLargeError(answer.size, self.max_response_bytes)
        return answer.value

    def _keepable(self, answer: Answer[Sized[Any]]) -> bool:
        return answer.value.size <= self.max_response_bytes

    def _answer(
        self,
        context: grpc.ServicerContext,
        request_key: RequestKey,
        work: Callable[[Connection], Sized[T]],
    ) -> Sized[T]:
        """Run ``work`` on a read connection, behind the result cache when there is one."""
        deadline = Deadline.of_call(context, self.default_deadline_seconds)
        metadata = dict(context.invocation_metadata())
        prefer_primary = metadata.get(READ_FROM_HEADER, "").lower() == "primary"
        if self.cache is None:
            answer = self.router.read(work, deadline, prefer_primary=prefer_primary)
        else:
            known = None if prefer_primary or self.versions is None else self.versions.current()
            if known is None:
                answer = self._cached_in_snapshot(request_key, work, deadline, prefer_primary)
            else:
                self._remember(request_key, work)
                answer = self._cached_at(known, request_key, work, deadline)
        report_lag(answer.lag_seconds)
        return answer.value

    def _remember(self, request_key: RequestKey, work: Callable[[Connection], Any]) -> None:
        with self._recent_lock:
            self._recent[request_key] = work
            self._recent.move_to_end(request_key)
            while len(self._recent) > WARM_MAX_REQUESTS:
                self._recent.popitem(last=False)

    def warm(self, version: int) -> None:
        """Answer the recently asked requests for ``version`` into the cache.

        Sequential, in the version watcher's thread: the extra load is one query
        at a time, however many callers wait for the new data.
        """
        with self._recent_lock:
            recent = list(reversed(self._recent.items()))
        budget = Deadline.after(WARM_BUDGET_SECONDS)
        for request_key, work in recent:
            if budget.expired or (self.versions is not None and self.versions.stopping):
                return
            try:
                self._cached_at(version, request_key, work, budget)
            except Exception as error:  # callers will meet it themselves; stop here
                log.warning("cache warm-up stopped", extra={"error": type(error).__name__})
                return

    def _cached_in_snapshot(
        self,
        request_key: RequestKey,
        work: Callable[[Connection], Sized[T]],
        deadline: Deadline,
        prefer_primary: bool,
    ) -> Answer[Sized[T]]:
        """Exact: the version is read in the same snapshot as the figures would be.

        A cached answer is exact for its version wherever it was computed; how
        old that version is, is the lag of the endpoint this call read it from.
        """
        cache = self.cache
        assert cache is not None

        def cached(conn: Connection) -> Answer[Sized[T]]:
            versioned_key = (request_key, queries.data_version(conn))
            return cache.get_or_compute(
                versioned_key,
                lambda: Answer(work(conn)),
                deadline,
                keep=self._keepable,
                size_of=lambda answer: entry_bytes(request_key, answer),
            )

        answer = self.router.read(cached, deadline, prefer_primary=prefer_primary)
        return Answer(answer.value.value, answer.lag_seconds)

    def _cached_at(
        self,
        known: int,
        request_key: RequestKey,
        work: Callable[[Connection], Sized[T]],
        deadline: Deadline,
    ) -> Answer[Sized[T]]:
        """Answer for the watched version ``known``; a hit touches no database.

        A miss computes in whatever snapshot it gets. The answer is kept only if
        that snapshot has version ``known`` (a lagging replica or a newer ingest
        would otherwise file an answer under the wrong version) and came from
        current data (the watch reads only current data, so a hit has no lag);
        it is returned either way, with its lag, as an uncached call would be.
        """
        cache = self.cache
        assert cache is not None
        snapshot_versions: list[int] = []  # of each attempt: a read may retry elsewhere

        def versioned(conn: Connection) -> Sized[T]:
            snapshot_versions.append(queries.data_version(conn))
            return work(conn)

        return cache.get_or_compute(
            (request_key, known),
            lambda: self.router.read(versioned, deadline),
            deadline,
            keep=lambda answer: (
                snapshot_versions[-1] == known
                and answer.lag_seconds is None
                and self._keepable(answer)
            ),
            size_of=lambda answer: entry_bytes(request_key, answer),
        )


def entry_bytes(request_key: RequestKey, answer: Answer[Sized[Any]]) -> int:
    """What a cache entry holds: the answer's serialized bytes and its request key's."""
    return answer.value.size + len(request_key[1])


def report_lag(lag_seconds: float | None) -> None:
    """Tell the caller and the access log that a lagging replica answered.

    The access-log interceptor sends it as the ``x-cowrie-data-lag-seconds`` response
    header, with the request id (initial metadata is sent once per call).
    """
    if lag_seconds is not None:
        DATA_LAG.set(describe_lag(lag_seconds))
