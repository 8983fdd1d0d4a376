"""Honeypot activity series: right per sensor, one read per scrape storm, and owned.

The values scraped from a real server equal what tests/reference.py counts in
the events; the serving process exports them and not the ingest counters, and a
watching ingest exports its counters and not them.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any

import reference
from conftest import Database, StartServer
from prometheus_client.metrics_core import Metric
from prometheus_scrape import cowrie_stats, free_port, scrape, wait_for_metrics
from sqlalchemy import event

from cowrie_stats.activity import ActivityCollector
from cowrie_stats.db.routing import Router
from cowrie_stats.sample import write_sample
from cowrie_stats.settings import Settings

FIGURES = {
    "cowrie_stats_sensor_sessions": "sessions",
    "cowrie_stats_sensor_login_attempts": "logins",
    "cowrie_stats_sensor_login_successes": "successes",
    "cowrie_stats_sensor_commands": "commands",
    "cowrie_stats_sensor_downloads": "downloads",
}


def expected(events: list[reference.RefEvent]) -> dict[str, dict[str, float]]:
    """Per family, per sensor, the value the events give."""
    counts: dict[str, Counter[str]] = {name: Counter() for name in FIGURES.values()}
    for e in events:
        logins = ("cowrie.login.failed", "cowrie.login.success")
        counts["logins"][e.sensor] += e.eventid in logins
        counts["successes"][e.sensor] += e.eventid == "cowrie.login.success"
        counts["commands"][e.sensor] += e.eventid == "cowrie.command.input"
        counts["downloads"][e.sensor] += reference.is_download(e)
    for session in reference.sessions_of(events).values():
        counts["sessions"][session.sensor] += 1
    sensors = {e.sensor for e in events}
    values = {
        family: {sensor: float(counts[name][sensor]) for sensor in sensors}
        for family, name in FIGURES.items()
    }
    values["cowrie_stats_sensor_last_event_timestamp_seconds"] = {
        sensor: max(e.ts for e in events if e.sensor == sensor) / reference.US for sensor in sensors
    }
    return values


def by_sensor(families: dict[str, Metric], name: str) -> dict[str, float]:
    return {s.labels["sensor"]: s.value for s in families[name].samples}


def test_scraped_activity_equals_the_reference_per_sensor(
    db: Database, tmp_path: Path, start_server: StartServer
) -> None:
    sample = db.ingest_sample(tmp_path)
    port = free_port()
    start_server(db.settings(metrics_port=port, replica_urls=()))
    families = scrape(port)
    for name, values in expected(reference.load_events([sample])).items():
        assert families[name].type == "gauge"
        assert by_sensor(families, name) == values, name
    assert families["cowrie_stats_sensors"].samples[0].value == 3
    assert families["cowrie_stats_activity_up"].samples[0].value == 1


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _samples(collector: ActivityCollector) -> dict[tuple[str, str], float]:
    return {
        (s.name, s.labels.get("sensor", "")): s.value
        for family in collector.collect()
        for s in family.samples
    }


def _count_reads(router: Router) -> list[str]:
    reads: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        if "rollups" in statement:
            reads.append(statement)

    event.listen(router.primary.engine, "before_cursor_execute", note)
    return reads


def test_a_scrape_storm_costs_one_read_and_a_failure_is_a_series(
    sqlite_db: Database, tmp_path: Path
) -> None:
    sqlite_db.ingest_sample(tmp_path)
    router = Router(sqlite_db.settings())
    clock = FakeClock()
    collector = ActivityCollector(cache_seconds=5, max_sensors=2, clock=clock)
    collector._router = router  # attached without the global registry
    reads = _count_reads(router)
    try:
        storm = [threading.Thread(target=_samples, args=(collector,)) for _ in range(16)]
        for thread in storm:
            thread.start()
        for thread in storm:
            thread.join()
        assert len(reads) == 1
        first = _samples(collector)
        assert len(reads) == 1 and first[("cowrie_stats_sensors", "")] == 3
        # The busiest two sensors only, as bounded.
        assert len([k for k in first if k[0] == "cowrie_stats_sensor_sessions"]) == 2
        clock.now = 5.0
        assert _samples(collector) == first and len(reads) == 2
    finally:
        router.close()


def test_a_failed_read_is_up_zero_until_it_answers_again(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'unmigrated.db'}"  # no tables: every read fails
    router = Router(Settings(database_url=url))
    clock = FakeClock()
    collector = ActivityCollector(cache_seconds=5, clock=clock)
    collector._router = router
    reads = _count_reads(router)
    try:
        assert _samples(collector) == {("cowrie_stats_activity_up", ""): 0.0}
        tried = len(reads)  # one read may try the endpoint twice (a broken connection)
        assert tried >= 1
        assert _samples(collector) == {("cowrie_stats_activity_up", ""): 0.0}
        assert len(reads) == tried  # the failure is kept for the cache time too
        collector.detach(router)
        assert _samples(collector) == {}
    finally:
        router.close()


def test_each_process_exports_only_its_own_metrics(sqlite_db: Database, tmp_path: Path) -> None:
    sqlite_db.ingest_sample(tmp_path)
    env = {"COWRIE_STATS_DATABASE_URL": sqlite_db.url, "COWRIE_STATS_METRICS_HOST": "127.0.0.1"}
    serve_port, ingest_port = free_port(), free_port()
    with cowrie_stats(
        "serve", COWRIE_STATS_GRPC_PORT="0", COWRIE_STATS_METRICS_PORT=str(serve_port), **env
    ):
        served = wait_for_metrics(serve_port)
    assert by_sensor(served, "cowrie_stats_sensor_sessions")["sensor-eu-1"] > 0
    assert not [name for name in served if name.startswith("cowrie_stats_ingest_")]
    assert "grpc_server_handled" in served and "cowrie_stats_result_cache_hits" in served

    again = tmp_path / "again" / "cowrie.json"
    events = write_sample(again, seed=11)
    with again.open("a") as log:
        log.write("not json\n")
    with cowrie_stats(
        "ingest", "--watch", "60", "--json", str(again),
        COWRIE_STATS_METRICS_PORT=str(ingest_port), **env,
    ) as ingest:  # fmt: skip
        assert ingest.stdout is not None
        ingest.stdout.readline()  # the first pass is done
        ingested = wait_for_metrics(ingest_port)
    counted = {name: f.samples[0].value for name, f in ingested.items() if f.samples}
    assert counted["cowrie_stats_ingest_events_stored"] == events
    assert counted["cowrie_stats_ingest_duplicates_skipped"] == 0
    assert counted["cowrie_stats_ingest_dead_lettered"] == 1
    assert not [name for name in ingested if name.startswith("cowrie_stats_sensor")]
    serving_only = ("grpc_server_", "cowrie_stats_result_cache_")
    assert not [name for name in ingested if name.startswith(serving_only)]
