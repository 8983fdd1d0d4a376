"""Honeypot activity as Prometheus series, read from the summaries when Prometheus scrapes.

Per sensor: all-time sessions, login attempts and successes, commands and
downloads (sums of the day-level summaries, cowrie_stats.queries.activity) and
the time of its last event. They are gauges, not counters: a prune or the
retention lowers them (docs/operations.md).

``serve`` attaches its router when metrics are on, so only the process that
serves exports them. A scrape reads through that router -- replicas first -- with
a short deadline, and an answer (or a failure) is kept for a few seconds, so a
storm of scrapes costs one query. When the read fails, the sensor series are
left out and ``cowrie_stats_activity_up`` is 0.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from cowrie_stats.deadline import Deadline
from cowrie_stats.queries.activity import FleetActivity, fleet_activity

if TYPE_CHECKING:
    from cowrie_stats.db.routing import Router

log = logging.getLogger(__name__)
CACHE_SECONDS = 5.0
READ_TIMEOUT_SECONDS = 2.0
# Series per figure at most: sensor names come from the logs, and every name is a series.
MAX_SENSORS = 1000
SENSOR_FIGURES = {
    "sessions": ("cowrie_stats_sensor_sessions", "Sessions of the sensor, by their start."),
    "login_attempts": ("cowrie_stats_sensor_login_attempts", "Login attempts on the sensor."),
    "login_successes": ("cowrie_stats_sensor_login_successes", "Successful logins."),
    "commands": ("cowrie_stats_sensor_commands", "Commands entered on the sensor."),
    "downloads": ("cowrie_stats_sensor_downloads", "File downloads (with a shasum)."),
}
LAST_EVENT = "cowrie_stats_sensor_last_event_timestamp_seconds"


class ActivityCollector(Collector):
    """The per-sensor activity gauges of the attached router, cached for ``cache_seconds``."""

    def __init__(
        self,
        cache_seconds: float = CACHE_SECONDS,
        timeout_seconds: float = READ_TIMEOUT_SECONDS,
        max_sensors: int = MAX_SENSORS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cache_seconds = cache_seconds
        self.timeout_seconds = timeout_seconds
        self.max_sensors = max_sensors
        self._clock = clock
        self._router: Router | None = None
        self._lock = threading.Lock()  # one read at a time; the others wait for its answer
        self._answer: FleetActivity | None = None
        self._read_at: float | None = None
        self._registered = False

    def attach(self, router: Router) -> None:
        """Export the activity read through ``router`` (registered on first use)."""
        with self._lock:
            self._router = router
            self._read_at = None
            if not self._registered:
                REGISTRY.register(self)
                self._registered = True

    def detach(self, router: Router) -> None:
        with self._lock:
            if self._router is router:
                self._router = None

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(self._families())  # names only: registering must not query

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            if self._router is None:
                return iter(())
            answer = self._read(self._router)
        families = self._families()
        up, known, last, *figures = families
        up.add_metric([], 0.0 if answer is None else 1.0)
        if answer is not None:
            known.add_metric([], answer.known_sensors)
            for sensor in answer.sensors:
                last.add_metric([sensor.name], sensor.last_event_us / 1_000_000)
                for family, name in zip(figures, SENSOR_FIGURES, strict=True):
                    family.add_metric([sensor.name], sensor.totals[name])
        return iter(families)

    def _read(self, router: Router) -> FleetActivity | None:
        """The cached answer, or a new one once it is older than ``cache_seconds``."""
        now = self._clock()
        if self._read_at is not None and now - self._read_at < self.cache_seconds:
            return self._answer
        try:
            answer: FleetActivity | None = router.run_read(
                partial(fleet_activity, limit=self.max_sensors),
                Deadline.after(self.timeout_seconds),
            )
        except Exception as error:  # a scrape must still answer: the failure is a series
            if self._answer is not None or self._read_at is None:
                log.warning("activity metrics not read: %s: %s", type(error).__name__, error)
            answer = None
        self._answer, self._read_at = answer, now
        return answer

    @staticmethod
    def _families() -> list[GaugeMetricFamily]:
        sensor = ["sensor"]
        return [
            GaugeMetricFamily(
                "cowrie_stats_activity_up",
                "1 when the last read of the activity series answered, 0 when it failed.",
            ),
            GaugeMetricFamily("cowrie_stats_sensors", "Sensors known to the database."),
            GaugeMetricFamily(LAST_EVENT, "Unix time of the sensor's last event.", labels=sensor),
            *(
                GaugeMetricFamily(name, f"{text} All time, less what was pruned.", labels=sensor)
                for name, text in SENSOR_FIGURES.values()
            ),
        ]


ACTIVITY = ActivityCollector()
