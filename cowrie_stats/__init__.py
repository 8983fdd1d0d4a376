"""cowrie-stats: exact statistics over Cowrie honeypot logs, served over gRPC."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cowrie-stats")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

SERVICE_NAME = "cowrie.stats.v1.CowrieStatsService"
