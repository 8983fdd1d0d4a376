"""The CowrieStatsService servicer: validate, pick a read, call the query layer."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import grpc
from google.protobuf.message import Message
from sqlalchemy import Connection

from cowrie_stats import queries, validation
from cowrie_stats._gen.cowrie.stats.v1 import stats_pb2, stats_pb2_grpc
from cowrie_stats.cache import ResultCache
from cowrie_stats.db.routing import Router
from cowrie_stats.errors import rpc_errors

T = TypeVar("T")
READ_FROM_HEADER = "x-cowrie-read-from"


class CowrieStatsServicer(stats_pb2_grpc.CowrieStatsServiceServicer):
    """Answers the three statistics RPCs from the database behind ``router``."""

    def __init__(
        self,
        router: Router,
        limits: validation.Limits,
        default_deadline_seconds: float,
        cache: ResultCache | None = None,
    ) -> None:
        self.router = router
        self.limits = limits
        self.default_deadline_seconds = default_deadline_seconds
        self.cache = cache

    @rpc_errors
    def GetSessionStats(
        self, request: stats_pb2.GetSessionStatsRequest, context: grpc.ServicerContext
    ) -> stats_pb2.GetSessionStatsResponse:
        filters, bucket_us = validation.session_request(request, self.limits)
        return self._answer(
            context, request, lambda conn: queries.session_stats(conn, filters, bucket_us)
        )

    @rpc_errors
    def GetThreatStats(
        self, request: stats_pb2.GetThreatStatsRequest, context: grpc.ServicerContext
    ) -> stats_pb2.GetThreatStatsResponse:
        filters, top_n = validation.threat_request(request, self.limits)
        return self._answer(
            context, request, lambda conn: queries.threat_stats(conn, filters, top_n)
        )

    @rpc_errors
    def GetSensorStats(
        self, request: stats_pb2.GetSensorStatsRequest, context: grpc.ServicerContext
    ) -> stats_pb2.GetSensorStatsResponse:
        filters, stale_after_us = validation.sensor_request(request, self.limits)
        # `stale` depends on the clock, so it is applied after the (cacheable) figures.
        key = stats_pb2.GetSensorStatsRequest(
            time_range=request.time_range, sensors=request.sensors
        )
        snapshot = self._answer(context, key, lambda conn: queries.sensor_stats(conn, filters))
        return queries.with_staleness(snapshot, stale_after_us)

    def _answer(
        self, context: grpc.ServicerContext, key: Message, work: Callable[[Connection], T]
    ) -> T:
        """Run ``work`` on a read connection, behind the result cache when there is one."""
        remaining = context.time_remaining()
        timeout = self.default_deadline_seconds
        if remaining is not None:
            timeout = min(remaining, timeout)
        metadata = dict(context.invocation_metadata())
        prefer_primary = metadata.get(READ_FROM_HEADER, "").lower() == "primary"
        if self.cache is not None:
            work = self._cached(self.cache, key, work, timeout)
        return self.router.run_read(work, timeout, prefer_primary=prefer_primary)

    @staticmethod
    def _cached(
        cache: ResultCache, key: Message, work: Callable[[Connection], T], timeout: float
    ) -> Callable[[Connection], T]:
        """``work`` answered from the cache when the same request met the same data."""

        def cached(conn: Connection) -> T:
            version_key = (
                type(key).__name__,
                key.SerializeToString(deterministic=True),
                queries.data_version(conn),
            )
            return cache.get_or_compute(version_key, lambda: work(conn), timeout)

        return cached
