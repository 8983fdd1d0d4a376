"""The CowrieStatsService servicer: validate, pick a read, call the query layer."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar, cast

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
        return self._read(
            context, self._cached(request, lambda c: queries.session_stats(c, filters, bucket_us))
        )

    @rpc_errors
    def GetThreatStats(
        self, request: stats_pb2.GetThreatStatsRequest, context: grpc.ServicerContext
    ) -> stats_pb2.GetThreatStatsResponse:
        filters, top_n = validation.threat_request(request, self.limits)
        return self._read(
            context, self._cached(request, lambda c: queries.threat_stats(c, filters, top_n))
        )

    @rpc_errors
    def GetSensorStats(
        self, request: stats_pb2.GetSensorStatsRequest, context: grpc.ServicerContext
    ) -> stats_pb2.GetSensorStatsResponse:
        filters, stale_after_us = validation.sensor_request(request, self.limits)
        # Not cached: `stale` depends on the clock, not only on the data.
        return self._read(context, lambda conn: queries.sensor_stats(conn, filters, stale_after_us))

    def _cached(
        self, request: Message, work: Callable[[Connection], T]
    ) -> Callable[[Connection], T]:
        """``work`` behind the result cache, keyed by request and data version."""
        cache = self.cache
        if cache is None:
            return work

        def cached(conn: Connection) -> T:
            key = (
                type(request).__name__,
                request.SerializeToString(deterministic=True),
                queries.data_version(conn),
            )
            hit = cache.get(key)
            if hit is not None:
                return cast(T, hit)
            result = work(conn)
            cache.put(key, result)
            return result

        return cached

    def _read(self, context: grpc.ServicerContext, work: Callable[[Connection], T]) -> T:
        remaining = context.time_remaining()
        timeout = min(remaining, self.default_deadline_seconds) if remaining else None
        metadata = dict(context.invocation_metadata())
        prefer_primary = metadata.get(READ_FROM_HEADER, "").lower() == "primary"
        return self.router.run_read(
            work, timeout or self.default_deadline_seconds, prefer_primary=prefer_primary
        )
