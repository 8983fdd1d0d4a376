"""Prometheus metrics (served on COWRIE_STATS_METRICS_PORT when set)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
REPLICA_HEALTHY = Gauge(
    "cowrie_stats_replica_healthy", "1 when the replica is healthy.", ["replica"]
)
REPLICA_LAG = Gauge(
    "cowrie_stats_replica_lag_seconds", "Replication lag of the replica.", ["replica"]
)
READS_ON_PRIMARY = Gauge("cowrie_stats_reads_on_primary", "1 when no replica is healthy.")
INGESTED_EVENTS = Counter("cowrie_stats_ingest_events_stored", "Events stored by ingest.")
