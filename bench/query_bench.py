"""Query benchmark: the real server under concurrent gRPC load, against the naive GROUP BY.

1. Generate ``sessions`` sessions and load them with the real ``cowrie-stats ingest``.
2. Start the real server (``cowrie-stats serve`` subprocess, loopback, primary only) with its
   result cache turned off (``COWRIE_STATS_RESULT_CACHE_ENTRIES=0``): the load repeats the
   same few requests, so with the cache on nearly every call would be a cache hit and the
   figures would measure the cache, not the queries.
3. Drive every statistics RPC over the windows 1 hour, 1 day, 30 days and all time, with and
   without a sensor filter (the busiest sensor), with ``clients`` concurrent clients for
   ``duration`` seconds per scenario; the health Check RPC as the floor; and a mixed scenario
   cycling through every stats request (the throughput target). Then all of it again
   against a server with the default settings (result cache on, data version polled),
   reported apart: that measures the cache-hit path dashboards get, in steady state
   (each request is asked once before the timed load). Then health + mixed with the
   access log cut to failed and slow calls, and the mixed load while an ingest adds data.
4. The baseline: the same figures computed by naive GROUP BY queries straight over the raw
   ``events`` table (its JSON text cast to jsonb, no rollups, no per-session table, no
   per-event tables), timed sequentially on one connection.

Windows end at "now" = one second after the last event, not on an hour boundary, so the
partial hours at the edges are exercised as a dashboard asking for "the last N" would.
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from bench import generate
from bench.ingest_bench import REPO, cli_env, fresh_database, migrate, run_ingest
from bench.loadgen import LoadResult, Rpc, run_load

US_PER_HOUR = 3_600_000_000
WINDOWS: dict[str, int | None] = {
    "1h": US_PER_HOUR,
    "1d": 24 * US_PER_HOUR,
    "30d": 30 * 24 * US_PER_HOUR,
    "all": None,
}
RPCS = ("GetSessionStats", "GetThreatStats", "GetSensorStats")
SHORT = {"GetSessionStats": "session", "GetThreatStats": "threat", "GetSensorStats": "sensor"}
NAIVE_BUDGET_SECONDS = 3.0
NAIVE_MAX_REPS = 5
NAIVE_TIMEOUT_MS = 600_000
SERVER_START_TIMEOUT = 60.0
SINGLE_REPS = 3

LOGIN = "('cowrie.login.success', 'cowrie.login.failed')"
DOWNLOAD = "'cowrie.session.file_download'"


@dataclass(frozen=True)
class Scenario:
    name: str
    method: str
    window: str
    sensor: str | None
    start_us: int | None
    end_us: int | None

    def request(self) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if self.start_us is not None and self.end_us is not None:
            body["time_range"] = {
                "start_time": generate.rfc3339(self.start_us),
                "end_time": generate.rfc3339(self.end_us),
            }
        if self.sensor is not None:
            body["sensors"] = [self.sensor]
        if self.method == "GetThreatStats":
            body["top_n"] = 10
        return body


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of unsorted values; 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, int(-(-q * len(ordered) // 100)) - 1))
    return float(ordered[rank])


# -- data ------------------------------------------------------------------------------


def load(admin_url: str, app_url: str, workdir: Path, sessions: int, seed: int) -> dict[str, Any]:
    """Generate and ingest; returns url, dsn and the ingest figures."""
    url, dsn = fresh_database(admin_url, app_url, "bench_query")
    migrate(url)
    path = workdir / "query.json"
    started = time.monotonic()
    events = generate.write_file(path, sessions=sessions, seed=seed)
    generated = time.monotonic() - started
    ingest = run_ingest(url, path, events)
    path.unlink(missing_ok=True)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        row = conn.execute(
            "SELECT (SELECT count(*) FROM sessions), (SELECT count(*) FROM events),"
            " pg_database_size(current_database())"
        ).fetchone()
        last_ts_us, busiest = last_event_and_busiest_sensor(conn)
    assert row is not None
    return {
        "url": url,
        "dsn": dsn,
        "sessions": int(row[0]),
        "events": int(row[1]),
        "last_ts_us": last_ts_us,
        "database_mb": round(int(row[2]) / 2**20, 1),
        "busiest_sensor": busiest,
        "generate_seconds": round(generated, 2),
        "ingest": ingest.as_dict(),
    }


def last_event_and_busiest_sensor(conn: psycopg.Connection[Any]) -> tuple[int, str]:
    """What the scenarios are built from: the newest event's time, the sensor with most events."""
    row = conn.execute(
        "SELECT (SELECT max(ts_us) FROM events),"
        " (SELECT s.name FROM rollups r JOIN sensors s ON s.id = r.sensor_id"
        "  WHERE r.level = 2 GROUP BY s.name ORDER BY sum(r.events) DESC LIMIT 1)"
    ).fetchone()
    assert row is not None and row[0] is not None, "no events loaded"
    return int(row[0]), str(row[1])


def scenarios(last_ts_us: int, sensor: str) -> list[Scenario]:
    now = last_ts_us + 1_000_000
    out = []
    for method in RPCS:
        for window, width in WINDOWS.items():
            for filtered in (None, sensor):
                start = None if width is None else now - width
                end = None if width is None else now
                tag = "sensor" if filtered else "all-sensors"
                name = f"{SHORT[method]}/{window}/{tag}"
                out.append(Scenario(name, method, window, filtered, start, end))
    return out


# -- server ----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """``cowrie-stats serve`` in a subprocess on a free loopback port."""

    def __init__(self, url: str, workdir: Path, name: str, **settings: str) -> None:
        """``settings``: COWRIE_STATS_* variables (without the prefix) beyond the defaults."""
        self.port = _free_port()
        self.log_path = workdir / f"server-{name}.log"
        extra = {
            "COWRIE_STATS_GRPC_HOST": "127.0.0.1",
            "COWRIE_STATS_GRPC_PORT": str(self.port),
            "COWRIE_STATS_PROBE_PORT": "0",
        }
        extra |= {f"COWRIE_STATS_{key}": value for key, value in settings.items()}
        env = cli_env(url, **extra)
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cowrie_stats.cli", "serve"],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait_serving(self) -> None:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + SERVER_START_TIMEOUT
        with grpc.insecure_channel(self.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited: {self.log_path.read_text()[-2000:]}")
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
        raise RuntimeError("server did not report SERVING in time")

    def memory(self) -> dict[str, float]:
        """VmHWM (peak) and VmRSS of the server process, in MB."""
        out: dict[str, float] = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = round(int(value.split()[0]) / 1024, 1)
        return out

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def single_calls(
    target: str, chosen: Sequence[Scenario]
) -> tuple[dict[str, Any], dict[str, float]]:
    """Replies (to cross-check against the naive queries) and unloaded latency per scenario.

    Unloaded latency: median of SINGLE_REPS sequential calls from one client, after one
    warm-up call; it separates the cost of a call from queueing under load.
    """
    import grpc
    from google.protobuf import json_format

    out: dict[str, Any] = {}
    unloaded: dict[str, float] = {}
    with grpc.insecure_channel(target) as channel:
        for sc in chosen:
            rpc = Rpc.named(sc.method)
            call = rpc.stub(channel)
            request = rpc.request(sc.request())
            reply = call(request, timeout=120)
            out[sc.name] = json_format.MessageToDict(reply, preserving_proto_field_name=True)
            times = []
            for _ in range(SINGLE_REPS):
                started = time.perf_counter()
                call(request, timeout=120)
                times.append((time.perf_counter() - started) * 1000)
            unloaded[sc.name] = round(statistics.median(times), 2)
    return out, unloaded


# -- naive baseline ------------------------------------------------------------------------


def _where(sc: Scenario) -> tuple[str, dict[str, Any]]:
    clauses = ["true"]
    params: dict[str, Any] = {}
    if sc.start_us is not None:
        clauses.append("e.ts_us >= %(start)s")
        params["start"] = sc.start_us
    if sc.end_us is not None:
        clauses.append("e.ts_us < %(end)s")
        params["end"] = sc.end_us
    if sc.sensor is not None:
        clauses.append("s.name = %(sensor)s")
        params["sensor"] = sc.sensor
    return " AND ".join(clauses), params


def _events_cte(where: str) -> str:
    return (
        "WITH ev AS (SELECT e.sensor_id, s.name AS sensor, e.session, e.eventid, e.ts_us,"
        " e.raw::jsonb AS j FROM events e JOIN sensors s ON s.id = e.sensor_id"
        f" WHERE {where}) "
    )


def naive_sql(sc: Scenario) -> list[tuple[str, dict[str, Any]]]:
    """The statements a naive implementation would run for ``sc``."""
    where, params = _where(sc)
    ev = _events_cte(where)
    if sc.method == "GetSessionStats":
        sql = ev + (
            "SELECT count(*), count(DISTINCT src_ip), count(*) FILTER (WHERE ok > 0),"
            " sum(logins), sum(ok), count(*) FILTER (WHERE cmds > 0), sum(cmds), max(cmds),"
            " sum(downloads), avg(duration), count(duration),"
            " count(*) FILTER (WHERE protocol = 'ssh'),"
            " count(*) FILTER (WHERE protocol = 'telnet'),"
            " (SELECT count(DISTINCT j->>'shasum') FROM ev WHERE eventid = " + DOWNLOAD + ")"
            " FROM (SELECT sensor_id, session, min(j->>'src_ip') AS src_ip,"
            "   max(j->>'protocol') FILTER (WHERE eventid = 'cowrie.session.connect') AS protocol,"
            f"   count(*) FILTER (WHERE eventid IN {LOGIN}) AS logins,"
            "   count(*) FILTER (WHERE eventid = 'cowrie.login.success') AS ok,"
            "   count(*) FILTER (WHERE eventid = 'cowrie.command.input') AS cmds,"
            f"   count(*) FILTER (WHERE eventid = {DOWNLOAD} AND j ? 'shasum') AS downloads,"
            "   max(COALESCE((j->>'duration')::float, (j->>'duration_ms')::float / 1000))"
            "     FILTER (WHERE eventid = 'cowrie.session.closed') AS duration"
            " FROM ev GROUP BY sensor_id, session) per_session"
        )
        return [(sql, params)]
    if sc.method == "GetSensorStats":
        sql = ev + (
            "SELECT sensor, count(*), count(DISTINCT session), count(DISTINCT j->>'src_ip'),"
            " count(*) FILTER (WHERE eventid = 'cowrie.login.success'),"
            f" count(*) FILTER (WHERE eventid = {DOWNLOAD} AND j ? 'shasum'),"
            " min(ts_us), max(ts_us) FROM ev GROUP BY sensor ORDER BY sensor"
        )
        return [(sql, params)]

    def ranked(value: str, condition: str) -> str:
        return ev + (
            f"SELECT {value} AS v, count(*) AS n, count(DISTINCT session), min(ts_us),"
            f" max(ts_us) FROM ev WHERE {condition} AND {value} IS NOT NULL"
            f' GROUP BY v ORDER BY n DESC, ({value}) COLLATE "C" LIMIT 10'
        )

    def distinct(value: str, condition: str) -> str:
        return ev + f"SELECT count(DISTINCT {value}) FROM ev WHERE {condition}"

    login = f"eventid IN {LOGIN}"
    dl = f"eventid = {DOWNLOAD}"
    statements = [
        ranked("j->>'src_ip'", "eventid = 'cowrie.session.connect'"),
        ranked("j->>'username'", login),
        ranked("j->>'password'", login),
        ranked("j->>'input'", "eventid = 'cowrie.command.input'"),
        ev + "SELECT j->>'username' AS u, j->>'password' AS p, count(*) AS n,"
        " count(*) FILTER (WHERE eventid = 'cowrie.login.success') FROM ev"
        f" WHERE {login} GROUP BY u, p ORDER BY n DESC, u, p LIMIT 10",
        ranked("j->>'shasum'", dl),
        distinct("j->>'src_ip'", "true"),
        distinct("j->>'username'", login),
        distinct("j->>'password'", login),
        distinct("j->>'shasum'", dl),
    ]
    return [(sql, params) for sql in statements]


def run_naive(dsn: str, chosen: Sequence[Scenario]) -> dict[str, Any]:
    """Time each scenario's naive statements sequentially: median of up to a few runs."""
    out: dict[str, Any] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"SET statement_timeout = {NAIVE_TIMEOUT_MS}")
        for sc in chosen:
            times: list[float] = []
            first: list[Any] = []
            spent = 0.0
            while len(times) < NAIVE_MAX_REPS and (not times or spent < NAIVE_BUDGET_SECONDS):
                started = time.perf_counter()
                rows = [conn.execute(sql, params).fetchall() for sql, params in naive_sql(sc)]
                elapsed = time.perf_counter() - started
                times.append(elapsed)
                spent += elapsed
                first = first or rows
            out[sc.name] = {
                "p50_ms": round(statistics.median(times) * 1000, 2),
                "runs": len(times),
                "result": first,
            }
    return out


def _agree(sc: Scenario, rpc: dict[str, Any], naive: list[Any]) -> bool | None:
    """Do the event-level figures both sides count the same way agree?"""
    if sc.method == "GetSessionStats":
        row = naive[0][0]
        return bool(
            int(rpc.get("login_attempts", 0)) == int(row[3] or 0)
            and int(rpc.get("total_commands", 0)) == int(row[6] or 0)
            and int(rpc.get("file_downloads", 0)) == int(row[8] or 0)
        )
    if sc.method == "GetSensorStats":
        naive_events = {r[0]: int(r[1]) for r in naive[0]}
        rpc_events = {s["sensor"]: int(s.get("events", 0)) for s in rpc.get("sensors", [])}
        return all(rpc_events.get(k) == v for k, v in naive_events.items())
    users = [(r[0], int(r[1])) for r in naive[1]]
    rpc_users = [(u.get("value", ""), int(u["count"])) for u in rpc.get("top_usernames", [])]
    return users == rpc_users


# -- the benchmark ---------------------------------------------------------------------------


def summarise(result: LoadResult) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, sc in result.scenarios.items():
        lat = [v / 1000 for v in sc.latencies_us]
        out[name] = {
            "calls": len(lat),
            "calls_per_second": round(len(lat) / sc.seconds, 1) if sc.seconds else 0.0,
            "seconds": round(sc.seconds, 2),
            "p50_ms": round(percentile(lat, 50), 2),
            "p95_ms": round(percentile(lat, 95), 2),
            "p99_ms": round(percentile(lat, 99), 2),
            "max_ms": round(max(lat), 2) if lat else 0.0,
            "errors": sum(sc.errors.values()),
            "error_codes": dict(sc.errors),
        }
    return out


def _load_server(
    server: Server,
    plan: list[tuple[str, list[dict[str, Any]]]],
    duration: float,
    clients: int,
    processes: int,
    warm: Sequence[Scenario],
) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
    """``plan`` against ``server``, then stop it: per-scenario figures and its memory.

    Each of ``warm`` is asked once first: with the cache on, the timed load then
    measures the steady state (the cold cost of each request is the cache-off table).
    """
    try:
        server.wait_serving()
        single_calls(server.target, warm)
        figures = summarise(
            run_load(server.target, plan, duration=duration, clients=clients, processes=processes)
        )
        return figures, server.memory()
    finally:
        server.stop()


def _data_version(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT version FROM data_version").fetchone()
    assert row is not None
    return int(row[0])


def _mixed_during_ingest(
    data: dict[str, Any],
    workdir: Path,
    chosen: Sequence[Scenario],
    mixed: tuple[str, list[dict[str, Any]]],
    sessions: int,
    seed: int,
    duration: float,
    clients: int,
    processes: int,
) -> dict[str, Any]:
    """The mixed load while ``cowrie-stats ingest`` adds a tenth more sessions.

    Every ingest batch bumps the data version, so the cache keeps meeting new data:
    this is what a dashboard sees while sensors report, not the idle-data best case.
    """
    path = workdir / "more.json"
    events = generate.write_file(path, sessions=max(sessions // 10, 50), seed=seed + 1)
    versions_before = _data_version(data["dsn"])
    server = Server(data["url"], workdir, "during-ingest")
    try:
        server.wait_serving()
        single_calls(server.target, chosen)  # steady state before the data changes
        ingest = subprocess.Popen(
            [sys.executable, "-m", "cowrie_stats.cli", "ingest", "--json", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=cli_env(data["url"]),
            cwd=REPO,
        )
        try:
            figures = summarise(
                run_load(
                    server.target, [mixed], duration=duration, clients=clients, processes=processes
                )
            )
            still_running = ingest.poll() is None
        finally:
            ingest.wait()
    finally:
        server.stop()
    return {
        **figures[mixed[0]],
        "ingested_events": events,
        "ingest_outlasted_load": still_running,
        "versions_during_run": _data_version(data["dsn"]) - versions_before,
    }


def _ratio(numerator: float, denominator: float) -> float:
    return round(numerator / denominator, 2) if denominator else 0.0


def _ratios(figures: dict[str, Any], health: dict[str, Any], naive_p50: float) -> dict[str, Any]:
    """One scenario's load figures with its p50 against health's and the naive query's."""
    return {
        **figures,
        "vs_health_p50": _ratio(figures["p50_ms"], health["p50_ms"]),
        "naive_over_rpc_p50": _ratio(naive_p50, figures["p50_ms"]),
    }


def run(
    admin_url: str,
    app_url: str,
    workdir: Path,
    *,
    sessions: int,
    seed: int,
    duration: float,
    clients: int,
    processes: int,
    select: Callable[[str], bool] = lambda name: True,
    log: Callable[[str], None] = print,
    on_loaded_data: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The whole query benchmark; returns the JSON section.

    ``on_loaded_data`` runs last, on the loaded database's description (the
    never-asked sliding windows of bench/sliding.py); its result is ``sliding``.
    """
    log(f"query bench: generating and ingesting {sessions} sessions")
    data = load(admin_url, app_url, workdir, sessions, seed)
    chosen = [sc for sc in scenarios(data["last_ts_us"], data["busiest_sensor"]) if select(sc.name)]
    plan: list[tuple[str, list[dict[str, Any]]]] = [
        ("health/check", [{"method": "Check", "request": {}}])
    ]
    plan += [(sc.name, [{"method": sc.method, "request": sc.request()}]) for sc in chosen]
    plan.append(
        ("mixed/all-stats", [{"method": sc.method, "request": sc.request()} for sc in chosen])
    )
    server = Server(data["url"], workdir, "cache-off", RESULT_CACHE_ENTRIES="0")
    try:
        server.wait_serving()
        replies, unloaded = single_calls(server.target, chosen)
        log(f"query bench: {len(plan)} scenarios x {duration}s, {clients} clients")
        cpu_before = server.cpu_seconds()
        load_started = time.monotonic()
        load_result = run_load(
            server.target, plan, duration=duration, clients=clients, processes=processes
        )
        server_cpu = server.cpu_seconds() - cpu_before
        elapsed = time.monotonic() - load_started
        memory = server.memory()
    finally:
        server.stop()
    log("query bench: every scenario again, default settings (result cache on)")
    cached, memory_cached = _load_server(
        Server(data["url"], workdir, "defaults"), plan, duration, clients, processes, chosen
    )
    log("query bench: health and mixed again, access log of failed and slow calls only")
    quiet, _memory = _load_server(
        Server(data["url"], workdir, "access-log-errors", ACCESS_LOG="errors"),
        [plan[0], plan[-1]],
        duration,
        clients,
        processes,
        chosen,
    )
    log("query bench: naive baseline")
    naive = run_naive(data["dsn"], chosen)
    # Last: it adds data, and the naive answers above are checked against the replies.
    log("query bench: mixed scenario while an ingest runs (cache on, default settings)")
    during_ingest = _mixed_during_ingest(
        data, workdir, chosen, plan[-1], sessions, seed, duration, clients, processes
    )
    never_asked = None if on_loaded_data is None else on_loaded_data(data)
    rpc = summarise(load_result)
    rows = []
    for sc in chosen:
        naive_p50 = naive[sc.name]["p50_ms"]
        rows.append(
            {
                "scenario": sc.name,
                "method": sc.method,
                "window": sc.window,
                "sensor_filter": sc.sensor is not None,
                **_ratios(rpc[sc.name], rpc["health/check"], naive_p50),
                "unloaded_p50_ms": unloaded[sc.name],
                "naive_p50_ms": naive_p50,
                "naive_runs": naive[sc.name]["runs"],
                "naive_over_unloaded_rpc": _ratio(naive_p50, unloaded[sc.name]),
                "naive_agrees": _agree(sc, replies[sc.name], naive[sc.name]["result"]),
                "cache_on": _ratios(cached[sc.name], cached["health/check"], naive_p50),
            }
        )
    return {
        "data": {k: v for k, v in data.items() if k not in ("url", "dsn")},
        "clients": clients,
        "loadgen_processes": processes,
        "duration_per_scenario_s": duration,
        "health": rpc["health/check"],
        "mixed": rpc["mixed/all-stats"],
        "result_cache_on": {
            "health": cached["health/check"],
            "mixed": cached["mixed/all-stats"],
            "server_memory_mb": memory_cached,
        },
        "mixed_during_ingest": during_ingest,
        "access_log_errors_only": {
            "health": quiet["health/check"],
            "mixed": quiet["mixed/all-stats"],
        },
        "scenarios": rows,
        "sliding": never_asked,
        "server_memory_mb": memory,
        "server_cpu_share": round(server_cpu / elapsed, 2) if elapsed else 0.0,
        "loadgen_cpu_share": round(load_result.worker_cpu_seconds / elapsed, 2) if elapsed else 0.0,
    }
