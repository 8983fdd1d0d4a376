"""Ingest: idempotent, resumable, tolerant; on SQLite and the real PostgreSQL."""

from __future__ import annotations

import gzip
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import summaries_definition
from conftest import Database, make_database
from sqlalchemy import Engine, text

from cowrie_stats.db.models import FIRST_USE_FLAGS
from cowrie_stats.ingest.reader import Ingester, discover
from cowrie_stats.sample import write_sample

TABLES = ("events", "sessions", "login_attempts", "commands", "downloads", "sensors")


def snapshot(engine: Engine) -> dict[str, Any]:
    """Everything a count could depend on, independent of insertion order and ids."""
    with engine.connect() as conn:
        counts = {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one() for t in TABLES}
        sessions = sorted(
            tuple(row)
            for row in conn.execute(
                text(
                    "SELECT s.name, x.session, x.start_ts_us, x.end_ts_us, x.src_ip, x.protocol,"
                    " x.duration_us, x.events, x.login_attempts, x.login_successes, x.commands,"
                    " x.downloads, x.dst_port, x.client_version"
                    " FROM sessions x JOIN sensors s ON s.id = x.sensor_id"
                )
            )
        )
        flags = {
            f"{table}.{flag}": sorted(
                bytes(row[0]).hex()
                for row in conn.execute(text(f"SELECT event_hash FROM {table} WHERE {flag}"))
            )
            for table, pairs in FIRST_USE_FLAGS.items()
            for _, flag in pairs
        }
        longest = {
            str(name): int(span)
            for name, span in conn.execute(text("SELECT name, max_session_us FROM sensors"))
        }
    return {
        "counts": counts,
        "sessions": sessions,
        "first_use_flags": flags,
        "longest_sessions": longest,
        **summaries_definition.stored(engine),
    }


def assert_summaries_as_defined(engine: Engine) -> None:
    """The incrementally kept summaries equal their recomputation from the raw rows."""
    stored = summaries_definition.stored(engine)
    defined = summaries_definition.defined(engine)
    for part in ("rollups", "sets", "values"):
        assert stored[part] == defined[part], part


def first_use_flags_by_definition(engine: Engine) -> dict[str, list[str]]:
    """The rows each flag should mark: per (session, value) the first by (ts_us, event_hash)."""
    with engine.connect() as conn:
        return {
            f"{table}.{flag}": sorted(
                bytes(row[0]).hex()
                for row in conn.execute(
                    text(
                        f"SELECT event_hash FROM (SELECT event_hash, row_number() OVER"
                        f" (PARTITION BY session_id, {value} ORDER BY ts_us, event_hash) AS n"
                        f" FROM {table} WHERE {value} IS NOT NULL) ranked WHERE n = 1"
                    )
                )
            )
            for table, pairs in FIRST_USE_FLAGS.items()
            for value, flag in pairs
        }


def dead_letters(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                text("SELECT source, line_no, reason FROM dead_letters ORDER BY line_no")
            )
        ]


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    path = tmp_path / "logs" / "cowrie.json"
    write_sample(path)
    return path


def test_reingest_changes_nothing(db: Database, captures: list[Path]) -> None:
    first = db.ingest(list(captures))
    assert first.events_stored == first.lines_read
    before = snapshot(db.engine)
    again = db.ingest(list(captures))
    assert again.events_stored == 0
    assert snapshot(db.engine) == before


def test_same_events_under_another_name_or_gzipped(
    db: Database, sample: Path, tmp_path: Path
) -> None:
    db.ingest([sample])
    before = snapshot(db.engine)
    renamed = tmp_path / "cowrie.json.2026-11-20"
    shutil.copy(sample, renamed)
    zipped = tmp_path / "cowrie.json.2026-11-20.gz"
    zipped.write_bytes(gzip.compress(sample.read_bytes()))
    # The copy's head matches the stored cursor, so it is skipped without re-reading.
    summary = db.ingest([renamed, zipped])
    assert summary.events_stored == 0
    assert snapshot(db.engine) == before
    # Same events with a different first line: read again, all duplicates.
    shifted = tmp_path / "other-name.json"
    lines = sample.read_bytes().splitlines(keepends=True)
    shifted.write_bytes(b"\n" + b"".join(reversed(lines)))
    summary = db.ingest([shifted])
    assert summary.events_stored == 0
    assert summary.duplicates_skipped == len(lines)
    assert snapshot(db.engine) == before


def test_overlapping_rotations_and_any_order_give_the_same_totals(
    db: Database, request: pytest.FixtureRequest, sample: Path, tmp_path: Path
) -> None:
    lines = sample.read_bytes().splitlines(keepends=True)
    third = len(lines) // 3
    part_a = tmp_path / "rot" / "cowrie.json.2026-11-20"
    part_b = tmp_path / "rot" / "cowrie.json"
    part_a.parent.mkdir()
    part_a.write_bytes(b"".join(lines[: 2 * third]))
    part_b.write_bytes(b"".join(lines[third:]))  # overlaps the middle third
    db.ingest([part_b])  # newest first: sessions split across files arrive late
    db.ingest([part_a])
    stored = snapshot(db.engine)
    assert stored["first_use_flags"] == first_use_flags_by_definition(db.engine)
    assert_summaries_as_defined(db.engine)
    reference = make_database("sqlite", tmp_path / "ref", request)
    (tmp_path / "ref").mkdir(exist_ok=True)
    reference.ingest([sample])
    assert snapshot(db.engine) == snapshot(reference.engine)
    reference.engine.dispose()


def test_small_batches_give_the_same_totals(
    db: Database, sample: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    Ingester(db.engine, batch_lines=7).ingest([str(sample)])
    reference = make_database("sqlite", tmp_path, request)
    reference.ingest([sample])
    assert snapshot(db.engine) == snapshot(reference.engine)
    reference.engine.dispose()


def cursors(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        query = text('SELECT path, compressed, "offset", line_no, tail_hash FROM ingest_cursors')
        return sorted(tuple(row) for row in conn.execute(query))


def test_parallel_parse_stores_exactly_what_a_serial_run_stores(
    pg_db: Database, sample: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    # Bad, blank and truncated lines spread over many small batches, so that
    # several batches are in flight in the workers at once.
    lines = sample.read_bytes().splitlines(keepends=True)
    lines[10:10] = [b"not json\n", b"\n", b'{"eventid": "x", "session": "s"}\n']
    lines[500:500] = [b"[1, 2]\n", b"   \n"]
    log = tmp_path / "cowrie.json"
    log.write_bytes(b"".join(lines) + b'{"eventid": "cowrie.login.failed", "sess')
    parallel = Ingester(pg_db.engine, batch_lines=40, workers=2, parallel_after_lines=100)
    started = parallel.start_workers()
    assert started is not None
    started.result(timeout=60)  # ready before the first batch: every batch goes to them
    summary = parallel.ingest([str(log)])
    assert parallel.batches_parsed_in_workers > 20
    reference = make_database("sqlite", tmp_path, request)
    expected = Ingester(reference.engine, batch_lines=40).ingest([str(log)])
    assert replace(summary, seconds=0.0) == replace(expected, seconds=0.0)
    assert summary.dead_lettered == 4 and summary.blank_lines == 2
    assert snapshot(pg_db.engine) == snapshot(reference.engine)
    assert dead_letters(pg_db.engine) == dead_letters(reference.engine)
    assert cursors(pg_db.engine) == cursors(reference.engine)
    # Resuming in parallel reads nothing twice: the cursor stands after the last full line.
    again = Ingester(pg_db.engine, workers=2, parallel_after_lines=0).ingest([str(log)])
    assert again.lines_read == 1 and again.events_stored == 0
    reference.engine.dispose()


def test_parse_workers_load_neither_sqlalchemy_nor_psycopg(sqlite_db: Database) -> None:
    # A worker's memory is what it imports: the parser only (docs/performance.md).
    ingester = Ingester(sqlite_db.engine, workers=1)
    started = ingester.start_workers()
    assert started is not None
    started.result(timeout=60)
    pool = ingester._ready_pool()
    assert pool is not None
    try:
        loaded = pool.submit(eval, "sorted(__import__('sys').modules)").result(timeout=60)
    finally:
        pool.shutdown()
    assert "cowrie_stats.ingest.batch" in loaded
    roots = {name.split(".")[0] for name in loaded}
    assert not roots & {"sqlalchemy", "psycopg", "prometheus_client", "grpc"}
    assert not [name for name in loaded if name.startswith("cowrie_stats.db")]


def test_small_inputs_never_start_parse_workers(pg_db: Database, sample: Path) -> None:
    ingester = Ingester(pg_db.engine, workers=2)
    assert ingester.ingest([str(sample)]).events_stored > 0
    assert ingester.workers_started_after_lines is None
    assert ingester.batches_parsed_in_workers == 0


def test_a_large_file_starts_the_workers_before_its_first_line(
    sqlite_db: Database, sample: Path
) -> None:
    lines = sample.read_bytes().count(b"\n")
    # Its size says "more than parallel_after_lines": started before any line was parsed.
    ingester = Ingester(sqlite_db.engine, workers=1, parallel_after_lines=lines // 2)
    assert ingester.ingest([str(sample)]).lines_read == lines
    assert ingester.workers_started_after_lines == 0


def test_a_stream_starts_the_workers_once_enough_lines_were_read(
    sqlite_db: Database, sample: Path
) -> None:
    lines = sample.read_bytes()
    ingester = Ingester(sqlite_db.engine, batch_lines=100, workers=1, parallel_after_lines=300)
    ingester.ingest(["-"], stdin=io.BytesIO(lines))
    assert ingester.workers_started_after_lines == 400


def test_stdin_and_directories(db: Database, sample: Path, tmp_path: Path) -> None:
    summary = Ingester(db.engine).ingest(["-"], stdin=io.BytesIO(sample.read_bytes()))
    assert summary.events_stored == summary.lines_read > 0
    tree = tmp_path / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    shutil.copy(sample, tree / "a" / "cowrie.json")
    (tree / "a" / "b" / "cowrie.json.2026-11-19.gz").write_bytes(gzip.compress(sample.read_bytes()))
    (tree / "README.txt").write_text("not a log")
    found = list(discover([str(tree)]))
    assert sorted(Path(p).name for p in found) == ["cowrie.json", "cowrie.json.2026-11-19.gz"]
    assert db.ingest([tree]).events_stored == 0
    with pytest.raises(FileNotFoundError):
        list(discover([str(tmp_path / "missing")]))


def test_bad_lines_are_dead_lettered_with_reasons(db: Database, tmp_path: Path) -> None:
    good = {
        "eventid": "cowrie.session.connect",
        "session": "a1",
        "timestamp": "2024-01-01T00:00:00Z",
        "src_ip": "2001:db8::7",
        "protocol": "ssh",
        "sensor": "s",
    }
    log = tmp_path / "cowrie.json"
    log.write_bytes(
        json.dumps(good).encode()
        + b"\nnot json at all\n"
        + b"\x00\x00\x00\x00\n"
        + json.dumps({**good, "timestamp": "never"}).encode()
        + b"\n"
        + b'{"eventid": "cowrie.login.failed", "session": "a1", "timesta'
    )
    summary = db.ingest([log])
    assert summary.events_stored == 1
    assert summary.blank_lines == 1
    assert summary.dead_lettered == 3
    letters = dead_letters(db.engine)
    assert [(line, reason.split(":")[0]) for _, line, reason in letters] == [
        (2, "not valid JSON"),
        (4, "unparseable timestamp 'never'"),
        (5, "truncated last line (no newline)"),
    ]
    # The truncated line is read again later; once complete it is ingested.
    with log.open("ab") as out:
        out.write(b'mp": "2024-01-01T00:00:01Z", "sensor": "s", "username": "r", "password": ""}\n')
    summary = db.ingest([log])
    assert summary.lines_read == 1 and summary.events_stored == 1
    assert summary.dead_lettered == 0
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM login_attempts")).scalar_one() == 1
        assert conn.execute(text("SELECT src_ip FROM sessions")).scalar_one() == "2001:db8::7"
    assert db.ingest([log]).lines_read == 0  # nothing new, nothing re-read
    assert len(dead_letters(db.engine)) == 3  # re-reading never duplicates dead letters


def test_a_run_that_reads_only_an_unfinished_line_keeps_the_cursor(
    db: Database, sample: Path
) -> None:
    db.ingest([sample])
    event = {"eventid": "cowrie.session.connect", "session": "zz1", "sensor": "s"}
    line = json.dumps({**event, "timestamp": "2024-01-01T00:00:00Z"}).encode() + b"\n"
    with sample.open("ab") as out:
        out.write(line[:20])  # Cowrie is still writing this line
    assert db.ingest([sample]).lines_read == 1
    with sample.open("ab") as out:
        out.write(line[20:])
    # Only the finished line is read: the file before it is not read again.
    summary = db.ingest([sample])
    assert (summary.lines_read, summary.events_stored) == (1, 1)
    assert db.ingest([sample]).lines_read == 0


def test_hostile_strings_are_stored_intact(db: Database, tmp_path: Path) -> None:
    hostile = ["'; DROP TABLE sessions; --", 'quote " and \\ backslash', "ünïcödé ✓", "x" * 20_000]
    log = tmp_path / "cowrie.json"
    events = [
        {
            "eventid": "cowrie.command.input",
            "session": "h1",
            "timestamp": f"2024-01-01T00:00:0{i}Z",
            "input": value,
            "sensor": "s'; --",
        }
        for i, value in enumerate(hostile)
    ]
    log.write_text("\n".join(json.dumps(e) for e in events) + "\n")
    assert db.ingest([log]).events_stored == len(hostile)
    with db.engine.connect() as conn:
        stored = set(conn.execute(text("SELECT input FROM commands")).scalars())
        assert stored == set(hostile)
        assert conn.execute(text("SELECT name FROM sensors")).scalar_one() == "s'; --"


def _wait_for_rows(engine: Engine, minimum: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            if conn.execute(text("SELECT count(*) FROM events")).scalar_one() >= minimum:
                return
        time.sleep(0.02)


def test_kill_9_then_resume_gives_identical_totals(
    db: Database, captures: list[Path], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    big = tmp_path / "big" / "cowrie.json"
    big.parent.mkdir()
    with big.open("wb") as out:
        for capture in captures:
            opener = gzip.open if capture.suffix == ".gz" else open
            with opener(capture, "rb") as handle:
                shutil.copyfileobj(handle, out)
    env = {**os.environ, "COWRIE_STATS_DATABASE_URL": db.url, "COWRIE_STATS_LOG_LEVEL": "WARNING"}
    command = [
        sys.executable,
        "-m",
        "cowrie_stats.cli",
        "ingest",
        "--json",
        "--batch-lines",
        "300",
        str(big),
    ]
    rng = random.Random(1234)
    kills = 0
    for _ in range(3):
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _wait_for_rows(db.engine, 1, timeout=30)
        time.sleep(rng.uniform(0.05, 0.6))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=30)
    finished = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=300, check=True
    )
    assert json.loads(finished.stdout.strip().splitlines()[-1])["dead_lettered"] == 0
    clean = make_database("sqlite", tmp_path, request)
    clean.ingest([big])
    assert snapshot(db.engine) == snapshot(clean.engine)
    print(f"killed {kills} ingest runs with SIGKILL; totals identical to an uninterrupted run")
    clean.engine.dispose()


def test_earlier_uses_read_later_move_the_flags_and_daily_first_uses(
    db: Database, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    def login(session: str, minute: int, password: str) -> str:
        return json.dumps(
            {
                "eventid": "cowrie.login.failed",
                "timestamp": f"2026-11-20T00:{minute:02d}:00Z",
                "session": session,
                "sensor": "s1",
                "username": "root",
                "password": password,
            }
        )

    early = tmp_path / "logs" / "cowrie.json.2026-11-19"
    late = tmp_path / "logs" / "cowrie.json"
    early.parent.mkdir()
    early.write_text(f"{login('a', 10, 'x')}\n{login('b', 11, 'y')}\n")
    late.write_text(f"{login('a', 20, 'x')}\n{login('b', 21, 'y')}\n")
    db.ingest([late])  # the later uses are stored, and flagged, first
    db.ingest([early])  # both sessions' first uses of "root" move to the same day's rows
    stored = snapshot(db.engine)
    assert stored["first_use_flags"] == first_use_flags_by_definition(db.engine)
    assert_summaries_as_defined(db.engine)
    in_order = make_database("sqlite", tmp_path, request)
    in_order.ingest([early, late])
    assert snapshot(in_order.engine) == stored
    in_order.engine.dispose()
