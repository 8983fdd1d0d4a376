"""The messages and stubs of ``cowrie.stats.v1`` under a public, stable import name.

The generated modules live in ``cowrie_stats._gen`` (their layout follows protoc, not
us); callers import them from here instead::

    from cowrie_stats import api

    request = api.GetThreatStatsRequest(top_n=5, sensors=["sensor-eu-1"])

Most callers want :mod:`cowrie_stats.client`, which builds the requests itself.
"""

from __future__ import annotations

from cowrie_stats import SERVICE_NAME
from cowrie_stats._gen.cowrie.stats.v1.stats_pb2 import (
    BUCKET_DAY,
    BUCKET_HOUR,
    BUCKET_UNSPECIFIED,
    DESCRIPTOR,
    Bucket,
    Credential,
    Download,
    GetSensorStatsRequest,
    GetSensorStatsResponse,
    GetSessionStatsRequest,
    GetSessionStatsResponse,
    GetThreatStatsRequest,
    GetThreatStatsResponse,
    RankedValue,
    SensorStats,
    SessionBucket,
    TimeRange,
)
from cowrie_stats._gen.cowrie.stats.v1.stats_pb2_grpc import (
    CowrieStatsServiceServicer,
    CowrieStatsServiceStub,
)

__all__ = [
    "BUCKET_DAY",
    "BUCKET_HOUR",
    "BUCKET_UNSPECIFIED",
    "DESCRIPTOR",
    "SERVICE_NAME",
    "Bucket",
    "CowrieStatsServiceServicer",
    "CowrieStatsServiceStub",
    "Credential",
    "Download",
    "GetSensorStatsRequest",
    "GetSensorStatsResponse",
    "GetSessionStatsRequest",
    "GetSessionStatsResponse",
    "GetThreatStatsRequest",
    "GetThreatStatsResponse",
    "RankedValue",
    "SensorStats",
    "SessionBucket",
    "TimeRange",
]
