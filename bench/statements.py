"""Where an uncached answer spends its time: each SQL statement of each scenario, timed.

``python -m bench.statements --sessions 300000`` loads that many generated sessions into a
throwaway PostgreSQL (as ``python -m bench`` does), or ``--dsn`` points at a database that
already holds data. For every query-bench scenario (``--scenarios`` filters by regex) it
answers the request once through the query layer, capturing the statements SQLAlchemy
sends, then re-runs each statement ``--repeat`` times on one connection and reports the
best time of each and of the whole call. Nothing is cached: this is the cold path.

Run it on two commits against the same ``--dsn`` to compare query changes back to back.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg
from google.protobuf import json_format
from sqlalchemy import Connection, Engine, event

from bench import query_bench
from cowrie_stats import queries, validation
from cowrie_stats._gen.cowrie.stats.v1 import stats_pb2
from cowrie_stats.db.engines import create_db_engine
from cowrie_stats.settings import Settings
from testkit.pgcluster import PgCluster

LIMITS = validation.Limits()
STATEMENT_LABEL_CHARS = 110


def _work(method: str, body: dict[str, Any]) -> Callable[[Connection], Any]:
    """The query-layer call the servicer makes for ``method`` with request ``body``."""
    request = json_format.ParseDict(body, getattr(stats_pb2, f"{method}Request")())
    if method == "GetSessionStats":
        filters, bucket_us = validation.session_request(request, LIMITS)
        return lambda conn: queries.session_stats(conn, filters, bucket_us)
    if method == "GetThreatStats":
        filters, top_n = validation.threat_request(request, LIMITS)
        return lambda conn: queries.threat_stats(conn, filters, top_n)
    filters, _ = validation.sensor_request(request, LIMITS)
    return lambda conn: queries.sensor_stats(conn, filters)


def _best_ms(run: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return round(best * 1000, 2)


def _statement_runner(conn: Connection, statement: str, parameters: Any) -> Callable[[], object]:
    return lambda: conn.exec_driver_sql(statement, parameters).all()


def profile(engine: Engine, scenario: query_bench.Scenario, repeat: int) -> dict[str, Any]:
    """The call's best time, then each of its statements' best time."""
    work = _work(scenario.method, scenario.request())
    captured: list[tuple[str, Any]] = []

    def capture(
        _conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool
    ) -> None:
        captured.append((statement, parameters))

    with engine.connect() as conn:
        event.listen(engine, "before_cursor_execute", capture)
        try:
            work(conn)
        finally:
            event.remove(engine, "before_cursor_execute", capture)
        calls = list(captured)
        total = _best_ms(lambda: work(conn), repeat)
        statements = []
        for statement, parameters in calls:
            ms = _best_ms(_statement_runner(conn, statement, parameters), repeat)
            label = " ".join(statement.split())[:STATEMENT_LABEL_CHARS]
            statements.append({"ms": ms, "statement": label})
    return {"scenario": scenario.name, "call_ms": total, "statements": statements}


def run(dsn_or_url: str, select: Callable[[str], bool], repeat: int) -> list[dict[str, Any]]:
    dsn = dsn_or_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(dsn) as conn:
        last_ts_us, busiest = query_bench.last_event_and_busiest_sensor(conn)
    chosen = [sc for sc in query_bench.scenarios(last_ts_us, busiest) if select(sc.name)]
    url = dsn.replace("postgresql://", "postgresql+psycopg://", 1)
    engine = create_db_engine(url, Settings(database_url=url))
    try:
        return [profile(engine, sc, repeat) for sc in chosen]
    finally:
        engine.dispose()


def table(results: Sequence[dict[str, Any]]) -> str:
    lines = []
    for result in results:
        lines.append(f"{result['scenario']}: {result['call_ms']:.1f} ms")
        lines.extend(f"  {s['ms']:9.1f} ms  {s['statement']}" for s in result["statements"])
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.statements", description=__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dsn", help="an existing database (libpq DSN or SQLAlchemy URL)")
    source.add_argument("--sessions", type=int, help="load this many sessions first")
    parser.add_argument("--scenarios", default="", help="regex: only matching scenarios")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each; the best counts")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output", type=Path, help="also write the results as JSON")
    args = parser.parse_args(argv)
    pattern = re.compile(args.scenarios)

    def select(name: str) -> bool:
        return bool(pattern.search(name))

    if args.dsn:
        results = run(args.dsn, select, args.repeat)
    else:
        from bench.__main__ import PG_CONF

        workdir = Path(tempfile.mkdtemp(prefix="cowrie-statements-"))
        cluster = PgCluster(replicas=0, extra_conf=PG_CONF)
        cluster.start()
        try:
            print(f"loading {args.sessions} sessions", file=sys.stderr)
            data = query_bench.load(
                cluster.admin_url, cluster.primary_url, workdir, args.sessions, args.seed
            )
            results = run(data["url"], select, args.repeat)
        finally:
            cluster.teardown()
            shutil.rmtree(workdir, ignore_errors=True)
    print(table(results))
    if args.output:
        args.output.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
