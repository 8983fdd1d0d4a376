"""Smoke run of the benchmark harness (bench/) at a tiny size: it runs and reports, 0 errors.

Speed is not asserted here: that is what ``make bench`` and docs/performance.md are for.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import Database

from bench import __main__ as bench_main
from testkit.pgcluster import PgCluster

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(420)]

SESSION_KEYS = {"calls", "calls_per_second", "p50_ms", "p95_ms", "p99_ms", "errors"}


def test_bench_harness_smoke(
    pg_cluster: PgCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "report.json"
    argv = ["--events", "2000", "--sessions", "200", "--duration", "0.2", "--clients", "8"]
    argv += ["--output", str(output), "--workdir", str(tmp_path)]
    assert bench_main.main(argv, cluster=pg_cluster) == 0
    printed = capsys.readouterr().out
    assert "\nTARGETS\n" in printed

    report = json.loads(output.read_text())
    assert {"machine", "ingest", "query", "targets", "command", "seconds"} <= set(report)

    ingest = report["ingest"]
    assert ingest["events"] == 2000
    assert ingest["runs"]["large"]["summary"]["events_stored"] == 2000
    assert ingest["reingest_new_rows"] == 0
    assert ingest["reingest_new_file_same_events"]["summary"]["duplicates_skipped"] == 2000
    assert ingest["copy"]["rows"] == 2000
    assert ingest["events_per_second"] > 0 and ingest["copy_ratio"] > 0
    # The floor loads exactly the rows the ingest stored, both ways.
    for load in ingest["storage_floor"].values():
        assert load["events_loaded"] == 2000 and load["events_per_second"] > 0
    assert ingest["floor_ratio"] > 0
    # CPU is accounted for the ingest, its workers and its PostgreSQL backend (sampled
    # every 0.1 s: at this size the backend may end between two samples).
    cpu = ingest["cpu_us_per_event"]
    assert cpu["ingest_process"] > 0 and cpu["postgres"] >= 0
    assert cpu["total"] >= cpu["ingest_process"] + cpu["postgres"]
    assert ingest["cpu_bound_events_per_second"] > 0
    assert set(ingest["peak_rss_mb"]) == {"small", "large"}
    # The sampled tree includes the ingest process itself: never less than a Python process.
    assert all(mb > 10 for mb in ingest["peak_tree_pss_mb"].values())

    query = report["query"]
    assert query["data"]["sessions"] == 200
    assert query["health"]["errors"] == 0 and query["health"]["calls"] > 0
    assert query["mixed"]["errors"] == 0 and query["mixed"]["calls"] > 0
    cached = query["result_cache_on"]
    assert cached["mixed"]["errors"] == 0 and cached["mixed"]["calls"] > 0
    during = query["mixed_during_ingest"]
    assert during["errors"] == 0 and during["calls"] > 0 and during["versions_during_run"] > 0
    quiet = query["access_log_errors_only"]
    assert quiet["mixed"]["errors"] == 0 and quiet["mixed"]["calls"] > 0
    rows = query["scenarios"]
    assert len(rows) == 3 * 4 * 2  # RPCs x windows x (with, without sensor filter)
    for row in rows:
        assert set(row) >= SESSION_KEYS, row["scenario"]
        assert row["errors"] == 0, row
        assert row["calls"] > 0, row["scenario"]
        assert row["naive_p50_ms"] > 0, row["scenario"]
        assert row["naive_agrees"] is True, row["scenario"]
        assert row["cache_on"]["errors"] == 0 and row["cache_on"]["calls"] > 0, row
    assert query["server_memory_mb"]["VmHWM"] > 0
    sliding = query["sliding"]
    assert len(sliding["scenarios"]) == 3 * 4 * 2 and sliding["fifth_events"] < sliding["events"]
    for name in sliding["scenarios"]:
        for part in ("full", "fifth"):
            figures = sliding[part]["one_client"][name]
            assert figures["calls"] > 0 and figures["errors"] == 0, (part, name)
        assert sliding["growth_p50"][name] > 0
    assert sliding["full"]["mixed"]["errors"] == 0 and sliding["full"]["mixed"]["calls"] > 0
    assert "NEVER-ASKED REQUESTS" in printed
    names = {t["target"] for t in report["targets"]}
    assert names >= {
        "ingest events/s",
        "mixed stats RPC/s, cache off",
        "mixed stats RPC/s, cache on",
        "never-asked p50 growth, 5x events (worst)",
    }


def test_statement_profile_times_every_statement_of_a_cold_call(
    pg_db: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench import statements
    from cowrie_stats.ingest.reader import Ingester
    from cowrie_stats.sample import write_sample

    write_sample(tmp_path / "cowrie.json")
    Ingester(pg_db.engine).ingest([str(tmp_path / "cowrie.json")])
    output = tmp_path / "statements.json"
    argv = ["--dsn", pg_db.url, "--scenarios", "^(threat|sensor)/all/", "--repeat", "1"]
    assert statements.main([*argv, "--output", str(output)]) == 0
    results = json.loads(output.read_text())
    assert [r["scenario"] for r in results] == [
        "threat/all/all-sensors",
        "threat/all/sensor",
        "sensor/all/all-sensors",
        "sensor/all/sensor",
    ]
    for result in results:
        assert result["call_ms"] > 0 and len(result["statements"]) >= 2
        assert all(s["statement"].startswith(("SELECT", "WITH")) for s in result["statements"])
    assert "threat/all/all-sensors:" in capsys.readouterr().out
