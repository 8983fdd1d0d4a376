"""The end of every subcommand's ``--help``: the variables it reads, exit statuses, an example.

Variables are named in full, so a test can check each against .env.example.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    Subcommands = argparse._SubParsersAction[argparse.ArgumentParser]

ENV_NOTE = "(defaults and details: .env.example; a private ./.env is read too)"
DATABASE_ENV = """\
  COWRIE_STATS_DATABASE_URL / _FILE        primary database (default
                                           sqlite:///var/cowrie-stats.db, relative to the
                                           working directory)
  COWRIE_STATS_DATABASE_PASSWORD / _FILE   password put into the database URLs
  COWRIE_STATS_DB_CONNECT_TIMEOUT          seconds to wait for a connection
  COWRIE_STATS_LOG_FORMAT, COWRIE_STATS_LOG_LEVEL    text or json; DEBUG..ERROR
"""
SERVE_ENV = (
    DATABASE_ENV
    + """\
  COWRIE_STATS_REPLICA_URLS / _FILE        read replicas, comma-separated
  COWRIE_STATS_GRPC_HOST, COWRIE_STATS_GRPC_PORT    listen address ([::], 50051)
  COWRIE_STATS_API_KEYS_FILE               hashed API keys: calls need a key
  COWRIE_STATS_OPEN_HEALTH_AND_REFLECTION  health and reflection without a key
  COWRIE_STATS_PROBE_PORT                  health-only listener for probes, no key (50052; 0 off)
  COWRIE_STATS_TLS_CERT_FILE, COWRIE_STATS_TLS_KEY_FILE, COWRIE_STATS_TLS_CLIENT_CA_FILE
  COWRIE_STATS_METRICS_PORT, COWRIE_STATS_METRICS_HOST    Prometheus /metrics
  COWRIE_STATS_ACCESS_LOG                  all, errors or off
  tuning: COWRIE_STATS_MAX_WORKERS, COWRIE_STATS_MAX_CONCURRENT_RPCS,
    COWRIE_STATS_MAX_MESSAGE_BYTES, COWRIE_STATS_DEFAULT_DEADLINE_SECONDS,
    COWRIE_STATS_SHUTDOWN_GRACE_SECONDS, COWRIE_STATS_MAX_REPLICA_LAG,
    COWRIE_STATS_REPLICA_CHECK_INTERVAL, COWRIE_STATS_DB_POOL_SIZE,
    COWRIE_STATS_DB_MAX_OVERFLOW, COWRIE_STATS_DB_POOL_RECYCLE,
    COWRIE_STATS_RESULT_CACHE_ENTRIES, COWRIE_STATS_RESULT_CACHE_BYTES,
    COWRIE_STATS_DATA_VERSION_POLL_INTERVAL,
    COWRIE_STATS_MAX_SENSORS_PER_REQUEST, COWRIE_STATS_MAX_WINDOW_DAYS
  hostile clients: COWRIE_STATS_RECEIVE_TIMEOUT_SECONDS, COWRIE_STATS_MAX_HEALTH_WATCHERS,
    COWRIE_STATS_MAX_CONNECTION_IDLE_SECONDS, COWRIE_STATS_MAX_CONNECTION_AGE_SECONDS,
    COWRIE_STATS_MAX_CONNECTION_AGE_GRACE_SECONDS
"""
)
NONE = "  (none)"
EXIT_CODES = "exit status: 0 done, 1 runtime failure (named), 2 configuration or usage error"


def client_environment(*extra: str) -> str:
    """The variables of `query` and `healthcheck` (and ``extra`` rows first)."""
    from cowrie_stats.client import ClientSettings

    rows = [*extra, *(f"  {n:<40} {m}" for n, m in ClientSettings.VARIABLES.items())]
    return "\n".join(rows)


def epilog(environment: str, example: str, exits: str = EXIT_CODES) -> str:
    return f"environment {ENV_NOTE}:\n{environment.rstrip()}\n\n{exits}\n\nexample:\n  {example}"


def subcommand(
    sub: Subcommands,
    name: str,
    summary: str,
    description: str,
    ending: tuple[str, str] | tuple[str, str, str],
    **options: object,
) -> argparse.ArgumentParser:
    """A subcommand whose help ends in (variables, example[, exit statuses])."""
    return sub.add_parser(
        name,
        help=summary,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=epilog(*ending),
        **options,  # type: ignore[arg-type]
    )
