"""Never-asked requests: what a dashboard's sliding "last N" panel or a new filter costs.

Every call is a question the server has not seen: the window's end, inside the
data, moves on by a second per call (and per client), so the result cache never
answers it. The server runs with its default settings (cache on, data version
polled), as callers meet it:

* one client, calling sequentially: the cold p50 of every RPC and window (1 hour,
  1 day, 30 days, all time up to the moving end), with and without a sensor filter,
  against the health check's p50 on the same server;
* 32 clients cycling through all of them at once: calls/s, p99, errors;
* growth: the one-client p50s against those on a database with a fifth of the events
  over the same span and sensors, as a ratio per scenario (5x the events).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from bench import generate
from bench.loadgen import run_load
from bench.query_bench import (
    RPCS,
    SHORT,
    WINDOWS,
    Scenario,
    Server,
    last_event_and_busiest_sensor,
    load,
    summarise,
)

SLIDE_US = 1_000_000
# The windows end this long before the last event and move on from there: a run of
# a few thousand calls per client stays inside the data.
END_BEFORE_LAST_US = 2 * 86_400_000_000

Plan = list[tuple[str, list[dict[str, Any]]]]


def sliding_scenarios(last_ts_us: int, sensor: str) -> list[Scenario]:
    end = last_ts_us - END_BEFORE_LAST_US + 123_456  # not on a minute's boundary
    out = []
    for method in RPCS:
        for window, width in WINDOWS.items():
            for filtered in (None, sensor):
                tag = "sensor" if filtered else "all-sensors"
                start = None if width is None else end - width
                out.append(
                    Scenario(
                        f"{SHORT[method]}/{window}/{tag}", method, window, filtered, start, end
                    )
                )
    return out


def _call(sc: Scenario) -> dict[str, Any]:
    request = sc.request()
    if sc.start_us is None and sc.end_us is not None:  # all time up to the moving end
        request["time_range"] = {"end_time": generate.rfc3339(sc.end_us)}
    return {"method": sc.method, "request": request, "slide_us": SLIDE_US}


def measure(
    target: str, chosen: list[Scenario], duration: float, clients: int, processes: int
) -> dict[str, Any]:
    """One client per scenario in turn, then ``clients`` on all of them mixed."""
    single: Plan = [("health/check", [{"method": "Check", "request": {}}])]
    single += [(sc.name, [_call(sc)]) for sc in chosen]
    one = summarise(run_load(target, single, duration=duration, clients=1, processes=1))
    mixed: Plan = [("mixed/sliding", [_call(sc) for sc in chosen])]
    many = summarise(
        run_load(target, mixed, duration=duration, clients=clients, processes=processes)
    )
    return {"one_client": one, "mixed": many["mixed/sliding"]}


def _database_figures(dsn: str) -> tuple[int, str, int]:
    with psycopg.connect(dsn) as conn:
        last, busiest = last_event_and_busiest_sensor(conn)
        row = conn.execute("SELECT count(*) FROM events").fetchone()
    assert row is not None
    return last, busiest, int(row[0])


def _measure_database(
    data: dict[str, Any],
    workdir: Path,
    name: str,
    chosen: list[Scenario],
    duration: float,
    clients: int,
    processes: int,
) -> dict[str, Any]:
    server = Server(data["url"], workdir, name)
    try:
        server.wait_serving()
        figures = measure(server.target, chosen, duration, clients, processes)
        figures["server_memory_mb"] = server.memory()
        return figures
    finally:
        server.stop()


def run(
    admin_url: str,
    app_url: str,
    workdir: Path,
    *,
    data: dict[str, Any],
    sessions: int,
    seed: int,
    duration: float,
    clients: int,
    processes: int,
    select: Callable[[str], bool] = lambda name: True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Sliding windows on ``data`` (the query bench's), and on a fifth of it for the growth.

    The smaller database holds a fifth of the sessions over the same span and sensors:
    the growth ratio is the p50 on ``data`` over the p50 on it, question by question.
    """
    last, busiest, events = _database_figures(data["dsn"])
    chosen = [sc for sc in sliding_scenarios(last, busiest) if select(sc.name)]
    log(f"sliding bench: {len(chosen)} never-asked scenarios, default server settings")
    full = _measure_database(data, workdir, "sliding", chosen, duration, clients, processes)
    log(f"sliding bench: growth, the same questions on {sessions // 5} sessions")
    small_data = load(admin_url, app_url, workdir, max(sessions // 5, 1), seed)
    _, _, small_events = _database_figures(small_data["dsn"])
    small = _measure_database(
        small_data, workdir, "sliding-fifth", chosen, duration, clients, processes
    )
    return {
        "events": events,
        "fifth_events": small_events,
        "scenarios": [sc.name for sc in chosen],
        "full": full,
        "fifth": small,
        "growth_p50": {
            sc.name: _ratio(
                full["one_client"][sc.name]["p50_ms"], small["one_client"][sc.name]["p50_ms"]
            )
            for sc in chosen
        },
    }


def _ratio(numerator: float, denominator: float) -> float:
    return round(numerator / denominator, 2) if denominator else 0.0
