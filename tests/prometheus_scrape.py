"""Scraping a real /metrics endpoint (in this process or a cowrie-stats subprocess)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

TIMEOUT = 5.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape(port: int) -> dict[str, Metric]:
    """The metric families of ``http://127.0.0.1:PORT/metrics`` by name (text format parsed)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=TIMEOUT) as reply:
        assert reply.status == 200
        text = reply.read().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def wait_for_metrics(port: int, timeout: float = 60) -> dict[str, Metric]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return scrape(port)
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@contextmanager
def cowrie_stats(*argv: str, **env: str) -> Iterator[subprocess.Popen[str]]:
    """``cowrie-stats ARGV`` as a subprocess (settings from ``env`` only), stopped by SIGTERM."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("COWRIE_STATS_")}
    clean |= {"COWRIE_STATS_ENV_FILE": "/dev/null", **env}
    process = subprocess.Popen(
        [sys.executable, "-m", "cowrie_stats.cli", *argv],
        env=clean,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
