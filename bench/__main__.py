"""``python -m bench`` (``make bench``): ingest and query benchmarks on a throwaway PostgreSQL.

Prints a table and writes a JSON report (default ``bench/results/<UTC timestamp>.json``).
Full size: ``--sessions 1000000`` (about 10M events, the default); a scaled-down run,
e.g. ``--sessions 50000``, finishes in minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import ingest_bench, query_bench, sliding
from testkit.pgcluster import PgCluster

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
# Bench-only PostgreSQL settings on top of the test harness defaults (fsync off etc.).
PG_CONF = {"shared_buffers": "256MB", "work_mem": "16MB", "max_wal_size": "2GB"}

TARGET_INGEST_EPS = 100_000
TARGET_COPY_RATIO = 1 / 3
TARGET_INGEST_RSS_MB = 200
TARGET_P99_MS = 25.0
TARGET_NAIVE_RATIO = 20.0
TARGET_HEALTH_RATIO = 3.0
TARGET_RPS = 2000
TARGET_SERVER_RSS_MB = 150
# Never-asked (sliding) requests against default settings.
TARGET_COLD_P50_MS = 25.0
TARGET_COLD_HEALTH_RATIO = 25.0
TARGET_COLD_RPS = 500
TARGET_COLD_P99_MS = 250.0
TARGET_GROWTH = 1.5
RSS_FLAT_TOLERANCE = 1.15  # large-file peak within 15 % of the small-file peak


def machine() -> dict[str, Any]:
    cpu = ""
    with Path("/proc/cpuinfo").open() as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    postgres = ""
    pg_bin = Path("/usr/lib/postgresql")
    versions = sorted(pg_bin.glob("*/bin/postgres")) if pg_bin.is_dir() else []
    if versions:
        out = subprocess.run([str(versions[-1]), "--version"], capture_output=True, text=True)
        postgres = out.stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gb": round(mem_kb / 2**20, 1),
        "python": platform.python_version(),
        "postgres": postgres,
        "kernel": platform.release(),
    }


def latency_targets(
    add: Callable[[str, float, float, bool], None],
    label: str,
    rows: list[dict[str, Any]],
    figures: list[dict[str, Any]],
) -> None:
    """The per-scenario latency targets over ``figures`` (one per row of ``rows``)."""
    add(f"stats p99 ms (worst), {label}", max(f["p99_ms"] for f in figures), TARGET_P99_MS, False)
    long_windows = [f for r, f in zip(rows, figures, strict=True) if r["window"] in ("30d", "all")]
    if long_windows:
        worst = min(f["naive_over_rpc_p50"] for f in long_windows)
        add(f"naive/rpc p50, 30d+all (worst), {label}", worst, TARGET_NAIVE_RATIO, True)
    worst_p50 = max(f["vs_health_p50"] for f in figures)
    add(f"stats p50 / health p50 (worst), {label}", worst_p50, TARGET_HEALTH_RATIO, False)


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target: measured value, limit, met or not (docs/performance.md lists them)."""
    out: list[dict[str, Any]] = []

    def add(name: str, value: float, limit: float, higher_is_better: bool) -> None:
        met = value >= limit if higher_is_better else value <= limit
        out.append({"target": name, "value": value, "limit": limit, "met": met})

    ingest = report.get("ingest")
    if ingest:
        add("ingest events/s", ingest["events_per_second"], TARGET_INGEST_EPS, True)
        add("ingest / COPY speed", ingest["copy_ratio"], round(TARGET_COPY_RATIO, 3), True)
        # The ingest process and its parse workers together (PSS): what the run occupies.
        memory = ingest["peak_tree_pss_mb"]
        add(
            "ingest peak memory MB (PSS, with workers)",
            max(memory.values()),
            TARGET_INGEST_RSS_MB,
            False,
        )
        add(
            "ingest memory large/small",
            round(memory["large"] / memory["small"], 3),
            RSS_FLAT_TOLERANCE,
            False,
        )
        add("re-ingest new rows", ingest["reingest_new_rows"], 0, False)
    query = report.get("query")
    if query:
        rows = query["scenarios"]
        cached = query["result_cache_on"]
        for label, figures, mixed in (
            ("cache off", rows, query["mixed"]),
            ("cache on", [r["cache_on"] for r in rows], cached["mixed"]),
        ):
            latency_targets(add, label, rows, figures)
            add(f"mixed stats RPC/s, {label}", mixed["calls_per_second"], TARGET_RPS, True)
        quiet = query["access_log_errors_only"]
        add(
            "mixed stats RPC/s, cache on, access log errors",
            quiet["mixed"]["calls_per_second"],
            TARGET_RPS,
            True,
        )
        add(
            "mixed p99 ms, cache on, access log errors",
            quiet["mixed"]["p99_ms"],
            TARGET_P99_MS,
            False,
        )
        errors = sum(r["errors"] + r["cache_on"]["errors"] for r in rows)
        errors += query["mixed"]["errors"] + cached["mixed"]["errors"] + cached["health"]["errors"]
        errors += quiet["mixed"]["errors"] + quiet["health"]["errors"]
        errors += query["mixed_during_ingest"]["errors"]
        add("errors", errors + query["health"]["errors"], 0, False)
        peak = max(query["server_memory_mb"]["VmHWM"], cached["server_memory_mb"]["VmHWM"])
        add("server peak RSS MB", peak, TARGET_SERVER_RSS_MB, False)
        if query.get("sliding"):
            sliding_targets(add, query["sliding"])
    return out


def sliding_targets(
    add: Callable[[str, float, float, bool], None], sliding: dict[str, Any]
) -> None:
    """The targets of never-asked requests (one client, 32 clients, growth with the data)."""
    one = sliding["full"]["one_client"]
    health = one["health/check"]["p50_ms"]
    worst = max(one[name]["p50_ms"] for name in sliding["scenarios"])
    add("never-asked p50 ms, 1 client (worst)", worst, TARGET_COLD_P50_MS, False)
    add(
        "never-asked p50 / health p50 (worst)",
        round(worst / health, 1) if health else 0.0,
        TARGET_COLD_HEALTH_RATIO,
        False,
    )
    mixed = sliding["full"]["mixed"]
    add("never-asked mixed RPC/s, 32 clients", mixed["calls_per_second"], TARGET_COLD_RPS, True)
    add("never-asked mixed p99 ms, 32 clients", mixed["p99_ms"], TARGET_COLD_P99_MS, False)
    add("never-asked errors", mixed["errors"], 0, False)
    add(
        "never-asked p50 growth, 5x events (worst)",
        max(sliding["growth_p50"].values()),
        TARGET_GROWTH,
        False,
    )


def sliding_table(sliding: dict[str, Any]) -> list[str]:
    full, fifth = sliding["full"]["one_client"], sliding["fifth"]["one_client"]
    health = full["health/check"]["p50_ms"]
    lines = [
        f"\nNEVER-ASKED REQUESTS ({sliding['events']} events; growth against"
        f" {sliding['fifth_events']}; default settings, every call a new window)",
        f"  {'scenario':<28}{'p50':>9}{'p95':>9}{'/health':>9}{'1/5 p50':>9}{'growth':>8}",
        f"  {'health/check':<28}{health:>9.2f}{full['health/check']['p95_ms']:>9.2f}",
    ]
    for name in sliding["scenarios"]:
        f = full[name]
        lines.append(
            f"  {name:<28}{f['p50_ms']:>9.2f}{f['p95_ms']:>9.2f}"
            f"{(f['p50_ms'] / health if health else 0):>9.1f}{fifth[name]['p50_ms']:>9.2f}"
            f"{sliding['growth_p50'][name]:>8.2f}"
        )
    mixed = sliding["full"]["mixed"]
    lines.append(
        f"  {'mixed, 32 clients':<28}{mixed['p50_ms']:>9.2f}{mixed['p95_ms']:>9.2f}"
        f"  {mixed['calls_per_second']:.0f} calls/s, p99 {mixed['p99_ms']:.1f} ms,"
        f" {mixed['errors']} errors"
    )
    memory = sliding["full"]["server_memory_mb"]
    lines.append(f"  server RSS peak {memory['VmHWM']} MB")
    return lines


def cache_on_table(query: dict[str, Any]) -> list[str]:
    """The same load against default settings: result cache on, data version polled."""
    cached = query["result_cache_on"]
    lines = [
        "\nRESULT CACHE ON (default settings)",
        f"  {'scenario':<28}{'calls/s':>9}{'p50':>9}{'p95':>9}{'p99':>9}{'err':>5}"
        f"{'/health':>8}{'naive/rpc':>10}",
    ]
    quiet = query["access_log_errors_only"]
    named = [("health/check", cached["health"]), ("mixed/all-stats", cached["mixed"])]
    named[1:1] = [(r["scenario"], r["cache_on"]) for r in query["scenarios"]]
    during = query["mixed_during_ingest"]
    named += [
        ("health, access log errors", quiet["health"]),
        ("mixed, access log errors", quiet["mixed"]),
        ("mixed, ingest running", during),
    ]
    for name, f in named:
        ratios = ""
        if "vs_health_p50" in f:
            ratios = f"{f['vs_health_p50']:>8.1f}{f['naive_over_rpc_p50']:>10.1f}"
        lines.append(
            f"  {name:<28}{f['calls_per_second']:>9.0f}{f['p50_ms']:>9.2f}"
            f"{f['p95_ms']:>9.2f}{f['p99_ms']:>9.2f}{f['errors']:>5}{ratios}"
        )
    memory = cached["server_memory_mb"]
    lines.append(f"  server RSS peak {memory['VmHWM']} MB (now {memory['VmRSS']} MB)")
    lines.append(
        f"  ingest running: {during['ingested_events']} events,"
        f" {during['versions_during_run']} new data versions,"
        f" ingest still running when the load ended: {during['ingest_outlasted_load']}"
    )
    return lines


def table(report: dict[str, Any]) -> str:
    lines: list[str] = []
    ingest = report.get("ingest")
    if ingest:
        lines.append(f"INGEST ({ingest['events']} events, {ingest['file_bytes'] / 1e6:.0f} MB)")
        for label, run in ingest["runs"].items():
            lines.append(
                f"  cowrie-stats ingest {label:<6} {run['events_in_file']:>9} ev "
                f"{run['events_per_second']:>10.0f} ev/s  peak RSS {run['peak_rss_mb']:.0f} MB"
                f"  with workers (PSS) {run['peak_tree_pss_mb']:.0f} MB"
            )
        dedup = ingest["reingest_new_file_same_events"]
        same = ingest["reingest_same_file"]
        lines.append(
            f"  re-ingest same file: {same['summary']['events_stored']} new;"
            f" same events, new file: {dedup['summary']['events_stored']} new"
            f" ({dedup['events_per_second']:.0f} ev/s)"
        )
        lines.append(
            f"  raw COPY             {ingest['copy']['events_per_second']:>10.0f} ev/s"
            f"   ingest/COPY = {ingest['copy_ratio']:.3f}"
        )
        floor = ingest["storage_floor"]
        lines.append(
            f"  storage floor, 1 connection  {floor['one_connection']['events_per_second']:>10.0f}"
            f" ev/s   ingest/floor = {ingest['floor_ratio']:.3f}"
        )
        lines.append(
            f"  storage floor, 2 connections {floor['two_connections']['events_per_second']:>10.0f}"
            " ev/s   (no client work at all)"
        )
        cpu = ingest["cpu_us_per_event"]
        lines.append(
            f"  CPU per event: ingest process {cpu['ingest_process']:.1f} µs, parse workers"
            f" {cpu['parse_workers']:.1f} µs, PostgreSQL {cpu['postgres']:.1f} µs ="
            f" {cpu['total']:.1f} µs: all cores busy would allow"
            f" {ingest['cpu_bound_events_per_second']:.0f} ev/s"
        )
    query = report.get("query")
    if query:
        data = query["data"]
        lines.append(
            f"\nQUERIES ({data['sessions']} sessions, {data['events']} events,"
            f" {query['clients']} clients, {query['duration_per_scenario_s']} s each)"
        )
        header = (
            f"  {'scenario':<28}{'calls/s':>9}{'p50':>9}{'p95':>9}{'p99':>9}{'err':>5}"
            f"{'/health':>8}{'1-client':>9}{'naive p50':>11}{'naive/rpc':>10}{'/1-cl':>7}"
        )
        lines.append(header)
        health = query["health"]
        lines.append(
            f"  {'health/check':<28}{health['calls_per_second']:>9.0f}{health['p50_ms']:>9.2f}"
            f"{health['p95_ms']:>9.2f}{health['p99_ms']:>9.2f}{health['errors']:>5}"
        )
        for r in query["scenarios"]:
            lines.append(
                f"  {r['scenario']:<28}{r['calls_per_second']:>9.0f}{r['p50_ms']:>9.2f}"
                f"{r['p95_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['errors']:>5}{r['vs_health_p50']:>8.1f}"
                f"{r['unloaded_p50_ms']:>9.1f}{r['naive_p50_ms']:>11.1f}"
                f"{r['naive_over_rpc_p50']:>10.1f}{r['naive_over_unloaded_rpc']:>7.1f}"
            )
        mixed = query["mixed"]
        lines.append(
            f"  {'mixed/all-stats':<28}{mixed['calls_per_second']:>9.0f}{mixed['p50_ms']:>9.2f}"
            f"{mixed['p95_ms']:>9.2f}{mixed['p99_ms']:>9.2f}{mixed['errors']:>5}"
        )
        memory = query["server_memory_mb"]
        lines.append(
            f"  server RSS peak {memory['VmHWM']} MB (now {memory['VmRSS']} MB); CPU share"
            f" server {query['server_cpu_share']}, load generator {query['loadgen_cpu_share']}"
        )
        lines.append(
            "  (ms; /health = p50 over health p50; 1-client = unloaded p50 of sequential calls;"
            " naive/rpc and /1-cl = naive p50 over loaded and unloaded RPC p50)"
        )
        lines.extend(cache_on_table(query))
        if query.get("sliding"):
            lines.extend(sliding_table(query["sliding"]))
    lines.append("\nTARGETS")
    for t in report["targets"]:
        mark = "met" if t["met"] else "NOT met"
        lines.append(f"  {t['target']:<34}{t['value']:>12} (limit {t['limit']})  {mark}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--events", type=int, default=200_000, help="ingest benchmark size")
    parser.add_argument(
        "--sessions", type=int, default=1_000_000, help="query benchmark size (sessions)"
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per load scenario")
    parser.add_argument("--clients", type=int, default=32, help="concurrent gRPC clients")
    parser.add_argument("--processes", type=int, default=2, help="load generator processes")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--scenarios", default="", help="regex: only matching query scenarios")
    parser.add_argument("--skip-ingest", action="store_true")
    parser.add_argument("--skip-query", action="store_true")
    parser.add_argument(
        "--skip-sliding", action="store_true", help="no never-asked (sliding window) scenarios"
    )
    parser.add_argument("--output", type=Path, help="JSON report path")
    parser.add_argument("--workdir", type=Path, help="where generated logs go (default: tmp)")
    return parser.parse_args(argv)


def run(args: argparse.Namespace, cluster: PgCluster | None = None) -> dict[str, Any]:
    """Run the selected benchmarks; starts (and tears down) a cluster unless given one."""
    own = cluster is None
    if cluster is None:
        cluster = PgCluster(replicas=0, extra_conf=PG_CONF)
        cluster.start()
    workdir = Path(tempfile.mkdtemp(prefix="cowrie-bench-", dir=args.workdir))
    started = time.monotonic()
    report: dict[str, Any] = {
        "started": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "postgres_conf": PG_CONF if own else "test harness defaults",
    }
    try:
        if not args.skip_ingest:
            print(f"ingest bench: {args.events} events", file=sys.stderr)
            report["ingest"] = ingest_bench.run(
                cluster.admin_url, cluster.primary_url, workdir, args.events, args.seed
            )
        if not args.skip_query:
            pattern = re.compile(args.scenarios)

            def select(name: str) -> bool:
                return bool(pattern.search(name))

            def log(text: str) -> None:
                print(text, file=sys.stderr)

            never_asked = functools.partial(
                sliding.run,
                cluster.admin_url,
                cluster.primary_url,
                workdir,
                sessions=args.sessions,
                seed=args.seed,
                duration=args.duration,
                clients=args.clients,
                processes=args.processes,
                select=select,
                log=log,
            )
            report["query"] = query_bench.run(
                cluster.admin_url,
                cluster.primary_url,
                workdir,
                sessions=args.sessions,
                seed=args.seed,
                duration=args.duration,
                clients=args.clients,
                processes=args.processes,
                select=select,
                log=log,
                on_loaded_data=None if args.skip_sliding else lambda data: never_asked(data=data),
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if own:
            cluster.teardown()
    report["seconds"] = round(time.monotonic() - started, 1)
    report["targets"] = targets(report)
    return report


def write_report(report: dict[str, Any], output: Path | None) -> Path:
    if output is None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        output = RESULTS / f"{stamp}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return output


def main(argv: Sequence[str] | None = None, cluster: PgCluster | None = None) -> int:
    """Run, print the table, write the JSON report; ``cluster``: reuse a started PgCluster."""
    args = parse_args(argv)
    report = run(args, cluster)
    report["command"] = " ".join(["python -m bench", *(sys.argv[1:] if argv is None else argv)])
    print(table(report))
    path = write_report(report, args.output)
    print(f"\nJSON report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
