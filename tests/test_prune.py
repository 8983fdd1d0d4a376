"""prune: whole sessions go, every figure stays exact, a killed prune finishes on a rerun.

After a prune the summaries equal their definition over the remaining raw rows
(tests/summaries_definition.py), the first-use flags and the sensors' bounds are
right, and every RPC answers what tests/reference.py computes from the events of
the sessions that remain -- on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import reference
import summaries_definition
from conftest import Database, StartServer, make_database
from sqlalchemy import Engine, text
from test_crosscheck import _all_checks, _straddling_log
from test_ingest import first_use_flags_by_definition, snapshot

from cowrie_stats.maintenance.prune import (
    PruneReport,
    Selection,
    UnknownSensorError,
    plan,
    prune,
    retention_cutoff,
)
from cowrie_stats.sample import write_sample

US = 1_000_000
START = datetime(2026, 9, 1, tzinfo=UTC)
# Inside the data, on no piece boundary: sessions straddle it.
CUTOFF = START + timedelta(days=20, hours=7, seconds=13, microseconds=5)
CUTOFF_US = int(CUTOFF.timestamp()) * US + 5


def _us(moment: datetime) -> int:
    return int(moment.timestamp()) * US + moment.microsecond


def _retired_sensor_log(path: Path) -> None:
    """A sensor whose only session ended long before the cutoff."""
    at = START + timedelta(days=2)
    lines: list[dict[str, object]] = [
        {"eventid": "cowrie.session.connect", "src_ip": "192.0.2.200", "protocol": "ssh"},
        {"eventid": "cowrie.login.failed", "username": "root", "password": "toor"},
        {"eventid": "cowrie.session.closed", "duration": 3},
    ]
    with path.open("w", encoding="utf-8") as out:
        for n, line in enumerate(lines):
            stamp = (at + timedelta(seconds=n)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            base: dict[str, object] = {"session": "r1", "sensor": "retired", "timestamp": stamp}
            out.write(json.dumps(base | line) + "\n")


@pytest.fixture
def logs(tmp_path: Path) -> list[Path]:
    """A month of three sensors, sessions straddling the cutoff, and a retired sensor."""
    month = tmp_path / "logs" / "cowrie.json"
    write_sample(month, seed=3, sessions=180, start=START, every_s=4 * 3600)
    straddle = tmp_path / "logs" / "straddle.json"
    _straddling_log(straddle, CUTOFF_US)
    retired = tmp_path / "logs" / "retired.json"
    _retired_sensor_log(retired)
    return [month, straddle, retired]


def remaining_events(logs: list[Path], before_us: int | None, sensor: str | None) -> list[Any]:
    """The reference events of the sessions a prune keeps."""
    events = reference.load_events(logs)
    sessions = reference.sessions_of(events)

    def kept(e: reference.RefEvent) -> bool:
        session = sessions[(e.sensor, e.session)]
        ends_before = before_us is None or session.end < before_us
        return not (ends_before and sensor in (None, e.sensor))

    return [e for e in events if kept(e)]


def sensors_by_definition(events: list[Any]) -> dict[str, tuple[int, int, int]]:
    """name -> (first event, last event, longest session) of the events."""
    spans: dict[str, list[int]] = defaultdict(list)
    for e in events:
        spans[e.sensor].append(e.ts)
    longest: dict[str, int] = defaultdict(int)
    for session in reference.sessions_of(events).values():
        longest[session.sensor] = max(longest[session.sensor], session.end - session.start)
    return {name: (min(ts), max(ts), longest[name]) for name, ts in spans.items()}


def stored_sensors(engine: Engine) -> dict[str, tuple[int, int, int]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT name, first_ts_us, last_ts_us, max_session_us FROM sensors")
        )
        return {name: (first, last, longest) for name, first, last, longest in rows}


def data_version(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT version FROM data_version")).scalar_one())


def assert_exact(db: Database, events: list[Any]) -> None:
    """Raw rows, flags, summaries and sensors are those of exactly ``events``."""
    with db.engine.connect() as conn:
        stored_events = conn.execute(text("SELECT count(*) FROM events")).scalar_one()
        stored_sessions = conn.execute(text("SELECT count(*) FROM sessions")).scalar_one()
    assert stored_events == len(events)
    assert stored_sessions == len(reference.sessions_of(events))
    assert summaries_definition.stored(db.engine) == summaries_definition.defined(db.engine)
    assert snapshot(db.engine)["first_use_flags"] == first_use_flags_by_definition(db.engine)
    assert stored_sensors(db.engine) == sensors_by_definition(events)


def test_before_deletes_whole_sessions_and_keeps_every_figure_exact(
    db: Database, logs: list[Path], start_server: StartServer
) -> None:
    db.ingest(logs)
    version = data_version(db.engine)
    selection = Selection(before_us=CUTOFF_US)
    with db.engine.connect() as conn:
        planned = plan(conn, selection)
    done = prune(db.engine, selection)
    assert done.to_dict() == planned.to_dict()
    assert planned.sessions > 100 and planned.sensors_removed == ["retired"]
    assert 19 <= planned.days <= 21  # a transaction per day of session starts
    kept = remaining_events(logs, CUTOFF_US, None)
    assert done.events == len(reference.load_events(logs)) - len(kept)
    assert_exact(db, kept)
    assert data_version(db.engine) >= version + done.days
    # The session that straddles the cutoff (sensor s2, one hour before to one after) stays.
    assert "s2" in stored_sensors(db.engine)
    _all_checks(start_server(db.settings()).stub, kept)
    # Nothing is left to do: a second prune deletes nothing and changes nothing.
    assert prune(db.engine, selection).to_dict() == PruneReport().to_dict()


def test_sensor_deletes_the_sensor_and_everything_of_it(
    db: Database, logs: list[Path], start_server: StartServer
) -> None:
    db.ingest(logs)
    with db.engine.connect() as conn:
        sensor_id = conn.execute(text("SELECT id FROM sensors WHERE name = 'sensor-us-1'")).one()[0]
    done = prune(db.engine, Selection(sensor="sensor-us-1"))
    assert done.sensors_removed == ["sensor-us-1"] and done.sessions == 60
    with db.engine.connect() as conn:
        for table in ("events", "sessions", "login_attempts", "commands", "downloads", "rollups"):
            left = f"SELECT count(*) FROM {table} WHERE sensor_id = :s"
            assert conn.execute(text(left), {"s": sensor_id}).scalar_one() == 0, table
    kept = remaining_events(logs, None, "sensor-us-1")
    assert_exact(db, kept)
    _all_checks(start_server(db.settings()).stub, kept)
    with db.engine.connect() as conn, pytest.raises(UnknownSensorError):
        plan(conn, Selection(sensor="sensor-us-1"))


def test_sensor_and_before_together(db: Database, logs: list[Path]) -> None:
    db.ingest(logs)
    done = prune(db.engine, Selection(CUTOFF_US, "sensor-eu-1"))
    assert done.sessions > 0 and done.sensors_removed == []
    assert_exact(db, remaining_events(logs, CUTOFF_US, "sensor-eu-1"))


def test_dead_letters_stored_before_the_cutoff_go_with_a_prune_of_every_sensor(
    sqlite_db: Database, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("not json\n[1]\n{}\n")
    sqlite_db.ingest([bad])
    with sqlite_db.engine.begin() as conn:
        conn.execute(text("UPDATE dead_letters SET created_ts_us = :t WHERE line_no < 3"), {"t": 5})
    assert prune(sqlite_db.engine, Selection(sensor=None, before_us=6)).dead_letters == 2
    with sqlite_db.engine.connect() as conn:
        assert conn.execute(text("SELECT line_no FROM dead_letters")).scalars().all() == [3]


def test_a_selection_needs_a_time_or_a_sensor() -> None:
    with pytest.raises(ValueError, match="a time, a sensor or both"):
        Selection()


def test_retention_cutoff_is_a_utc_midnight() -> None:
    now = datetime(2026, 12, 2, 7, 21, tzinfo=UTC)
    assert retention_cutoff(90, now) == _us(datetime(2026, 9, 3, tzinfo=UTC))
    assert retention_cutoff(0, now) == _us(datetime(2026, 12, 2, tzinfo=UTC))


# -- killed half-way -------------------------------------------------------------------------


def _prune_command(db: Database) -> tuple[list[str], dict[str, str]]:
    before = CUTOFF.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    env = {
        **os.environ,
        "COWRIE_STATS_DATABASE_URL": db.url,
        "COWRIE_STATS_LOG_LEVEL": "DEBUG",
        "COWRIE_STATS_LOG_FORMAT": "json",
        "COWRIE_STATS_ENV_FILE": "/dev/null",
    }
    command = [sys.executable, "-m", "cowrie_stats.cli", "prune", "--before", before, "--yes"]
    return command, env


def _kill_after_days(command: list[str], env: dict[str, str], days: int) -> int:
    """Run the prune and SIGKILL it once it logged ``days`` committed days; the days seen."""
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    assert proc.stderr is not None
    seen = 0
    for line in proc.stderr:
        if line.startswith("{") and json.loads(line)["message"] == "pruned a day":
            seen += 1
            if seen == days:
                proc.send_signal(signal.SIGKILL)
                break
    proc.wait(timeout=60)
    return seen


def test_a_killed_prune_run_again_ends_like_an_uninterrupted_one(
    db: Database, logs: list[Path], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    db.ingest(logs)
    command, env = _prune_command(db)
    assert _kill_after_days(command, env, 2) == 2
    # Stopped half-way, and consistent: two days went, the summaries are exact.
    with db.engine.connect() as conn:
        left = plan(conn, Selection(before_us=CUTOFF_US))
    assert left.sessions > 0 and left.days >= 10
    assert summaries_definition.stored(db.engine) == summaries_definition.defined(db.engine)
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr

    (tmp_path / "whole").mkdir()
    whole = make_database(db.kind, tmp_path / "whole", request)
    whole.ingest(logs)
    prune(whole.engine, Selection(before_us=CUTOFF_US))
    assert snapshot(db.engine) == snapshot(whole.engine)
    assert stored_sensors(db.engine) == stored_sensors(whole.engine)
    whole.engine.dispose()


def test_real_captures_pruned_in_the_middle_answer_like_the_reference(
    db: Database, captures: list[Path], start_server: StartServer
) -> None:
    db.ingest(captures)
    times = sorted(e.ts for e in reference.load_events(captures))
    middle = times[len(times) // 2] + 1
    done = prune(db.engine, Selection(before_us=middle))
    assert done.sessions > 0
    kept = remaining_events(captures, middle, None)
    assert_exact(db, kept)
    _all_checks(start_server(db.settings()).stub, kept)
