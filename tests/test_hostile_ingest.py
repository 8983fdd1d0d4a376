"""Hostile input: every poison line and damaged file known to have stopped the ingest.

Each is replayed against SQLite and the real PostgreSQL. The run must go on,
count exactly (checked against tests/reference.py where it can read the input),
dead-letter what it cannot use with a reason, and exit with the documented
status. Exit statuses come from the CLI run as a subprocess.
"""

from __future__ import annotations

import ctypes
import gzip
import io
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
import reference
from conftest import Database, make_database
from sqlalchemy import Engine, text
from test_ingest import snapshot

from cowrie_stats.ingest.reader import Ingester
from cowrie_stats.ingest.report import ProgressBar, print_problems, print_tables
from cowrie_stats.sample import write_sample

BASE = {"eventid": "cowrie.session.connect", "sensor": "s1", "protocol": "ssh"}


def event(session: str, second: int, **fields: Any) -> bytes:
    stamp = f"2024-05-01T00:{second // 60 % 60:02d}:{second % 60:02d}Z"
    return json.dumps({**BASE, "session": session, "timestamp": stamp, **fields}).encode()


def poison_lines() -> dict[str, tuple[bytes, str | None]]:
    """Lines that each once stopped the ingest: (line, the start of its reason or None)."""
    closed = event("p4", 4, eventid="cowrie.session.closed")
    return {
        "non-ASCII digit port": (event("p1", 1, src_port="²", dst_port="٢٢"), None),
        "year 1 with an offset": (
            event("p2", 2, timestamp="0001-01-01T00:00:00+01:00"),
            "timestamp '0001-01-01T00:00:00+01:00' is outside the years 1-9999 (UTC)",
        ),
        "year 9999 with an offset": (
            event("p3", 3, timestamp="9999-12-31T23:30:00-01:00"),
            "timestamp '9999-12-31T23:30:00-01:00' is outside the years 1-9999 (UTC)",
        ),
        "duration 10**400": (closed[:-1] + b', "duration": 1' + b"0" * 400 + b"}", None),
        "1,000-deep nesting": (
            event("p5", 5)[:-1] + b', "x": ' + b"[" * 1000 + b"]" * 1000 + b"}",
            "JSON nested deeper than 128 levels",
        ),
        "lone surrogates": (
            event("p6", 6, eventid="cowrie.login.failed")[:-1]
            + b', "src_ip": "\\ud800", "username": "\\udfff", "sensor": "s\\ud83d"}',
            None,
        ),
        "5,000-digit integer": (event("p7", 7)[:-1] + b', "n": ' + b"7" * 5000 + b"}", "not valid"),
        "port out of range": (event("p8", 8, src_port=70000, dst_port=-1), None),
    }


def write_log(path: Path, lines: list[bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def dead_letters(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        query = text(
            "SELECT source, line_no, reason, raw FROM dead_letters ORDER BY source, line_no"
        )
        return [tuple(row) for row in conn.execute(query)]


def scalar(engine: Engine, sql: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(text(sql)).scalar()


def cli(
    db_url: str, *args: str, cwd: Path, stdin: bytes = b"", drop_read_override: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run ``cowrie-stats ARGS``; an operator error must never show a traceback."""
    env = {**os.environ, "COWRIE_STATS_DATABASE_URL": db_url, "COWRIE_STATS_LOG_LEVEL": "WARNING"}
    done = subprocess.run(
        [sys.executable, "-m", "cowrie_stats.cli", *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        timeout=300,
        env=env,
        preexec_fn=_without_read_override if drop_read_override else None,
    )
    result = subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def _without_read_override() -> None:
    # As root, permission bits bind only without CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH:
    # dropped from the bounding set, the exec'd ingest reads files like any user.
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_poison_lines_are_dead_lettered_or_stored_and_the_run_goes_on(
    db: Database, tmp_path: Path
) -> None:
    poison = poison_lines()
    lines: list[bytes] = []
    expected_dead: dict[int, str] = {}
    for index, (line, reason) in enumerate(poison.values()):
        lines += [event(f"g{index}", 10 + index, src_ip=f"198.51.100.{index}"), line]
        if reason is not None:
            expected_dead[len(lines)] = reason
    log = write_log(tmp_path / "logs" / "cowrie.json", lines)
    summary = db.ingest([log])
    assert (summary.lines_read, summary.dead_lettered) == (len(lines), len(expected_dead))
    assert summary.events_stored == len(lines) - len(expected_dead)
    letters = {line_no: reason for _, line_no, reason, _ in dead_letters(db.engine)}
    assert sorted(letters) == sorted(expected_dead)
    for line_no, start in expected_dead.items():
        assert letters[line_no].startswith(start)
    with db.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT session, src_ip, src_port, dst_port, duration_us FROM sessions")
        )
        sessions = {row[0]: row[1:] for row in rows}
        assert conn.execute(text("SELECT username FROM login_attempts")).scalar_one() == "?"
        assert set(conn.execute(text("SELECT name FROM sensors")).scalars()) == {"s1", "s?"}
    assert sessions["p1"] == (None, None, None, None)  # "²" and "٢٢" are no ports
    assert sessions["p8"][1:3] == (None, None)  # neither are 70000 and -1
    assert sessions["p4"][3] is None  # a duration of 10**400 seconds is none
    assert sessions["p6"][0] == "?"  # the lone surrogate, replaced
    # The reference reads the good lines and the first poison (it has no rule for the others).
    readable = [*lines[0::2], poison["non-ASCII digit port"][0]]
    events = reference.load_events([write_log(tmp_path / "ref" / "cowrie.json", readable)])
    with db.engine.connect() as conn:
        stored = conn.execute(
            text(
                "SELECT s.name, e.session, e.ts_us FROM events e"
                " JOIN sensors s ON s.id = e.sensor_id"
                " WHERE e.session LIKE 'g%' OR e.session = 'p1'"
            )
        )
        assert sorted(tuple(row) for row in stored) == sorted(
            (e.sensor, e.session, e.ts) for e in events
        )
    assert db.ingest([log]).lines_read == 0  # the cursor covers every line: nothing re-read


def test_over_long_lines_are_skipped_with_their_length_and_first_bytes(
    db: Database, tmp_path: Path
) -> None:
    limit = 4096
    long_line = event("l1", 1, input="A" * 10_000)
    lines = [event("a", 0), long_line, event("b", 2), b"x" * (limit - 1)]
    log = write_log(tmp_path / "cowrie.json", lines)
    with log.open("ab") as out:
        out.write(b"y" * 3 * limit)  # an over-long last line still being written
    summary = db.ingest([log], max_line_bytes=limit)
    assert (summary.lines_read, summary.events_stored, summary.dead_lettered) == (5, 2, 3)
    letters = dead_letters(db.engine)
    assert letters[0][1:3] == (
        2,
        f"line of {len(long_line) + 1} bytes is longer than the limit of {limit} bytes"
        " (COWRIE_STATS_INGEST_MAX_LINE_BYTES): skipped",
    )
    assert letters[0][3] == long_line[:limit].decode()  # the first bytes
    assert letters[1][2].startswith("not valid JSON")  # exactly the limit: read
    assert letters[2][2].startswith(f"truncated last line (no newline): line of {3 * limit} bytes")
    with log.open("ab") as out:
        out.write(b"\n" + event("c", 3) + b"\n")
    again = db.ingest([log], max_line_bytes=limit)  # resumes after the last complete line
    assert (again.lines_read, again.events_stored, again.dead_lettered) == (2, 1, 1)
    assert db.ingest([log], max_line_bytes=limit).lines_read == 0


def _gzip(lines: list[bytes]) -> bytes:
    return gzip.compress(b"".join(line + b"\n" for line in lines), mtime=0)


def _complete_lines(damaged: bytes) -> int:
    """How many whole lines a decompressor gets out of ``damaged`` before it fails."""
    inflate = zlib.decompressobj(31)
    data = b""
    try:
        for start in range(0, len(damaged), 512):
            data += inflate.decompress(damaged[start : start + 512])
    except zlib.error:
        pass
    return data.count(b"\n")


def test_damaged_gzip_files_keep_what_was_read_and_the_run_goes_on(
    db: Database, tmp_path: Path
) -> None:
    def lines(file: int) -> list[bytes]:  # each file its own events (and first line)
        return [event(f"z{file}-{i}", i, src_ip=f"203.0.113.{i % 250}") for i in range(3000)]

    logs = tmp_path / "logs"
    logs.mkdir()
    whole = _gzip(lines(1))
    truncated = whole[: len(whole) // 2]
    (logs / "cowrie.json.1.gz").write_bytes(truncated)
    corrupt = bytearray(_gzip(lines(2)))
    corrupt[len(corrupt) // 2 : len(corrupt) // 2 + 64] = bytes(64)
    (logs / "cowrie.json.2.gz").write_bytes(bytes(corrupt))
    (logs / "cowrie.json.3.gz").write_bytes(b"\x1f\x8b not gzip at all\n")
    write_log(logs / "cowrie.json.4", [event("after", 1)])
    summary = db.ingest([logs])
    kept = _complete_lines(truncated)
    assert 0 < kept < 3000
    assert [(Path(f.path).name, f.line_no) for f in summary.failed_files] == [
        ("cowrie.json.1.gz", kept + 1),
        ("cowrie.json.2.gz", summary.by_file[str(logs / "cowrie.json.2.gz")].lines_read + 1),
        ("cowrie.json.3.gz", 0),
    ]
    assert summary.failed_files[0].reason == (
        "damaged gzip: Compressed file ended before the end-of-stream marker was reached"
    )
    assert all(f.reason.startswith("damaged gzip: ") for f in summary.failed_files)
    assert summary.exit_code == 3
    assert summary.by_file[str(logs / "cowrie.json.4")].events_stored == 1
    stored = scalar(db.engine, "SELECT count(*) FROM events")
    assert (
        stored
        == summary.events_stored
        == kept + summary.by_file[str(logs / "cowrie.json.2.gz")].events_stored + 1
    )
    letters = dead_letters(db.engine)  # also the garbage the corrupt part inflated to
    records = [r for r in letters if r[2].startswith("file not read to its end")]
    assert len(records) == 3
    again = db.ingest([logs])  # the damage is still there, and still reported; nothing twice
    assert (again.events_stored, len(again.failed_files)) == (0, 3)
    assert dead_letters(db.engine) == letters


def test_an_unreadable_file_is_reported_by_name_and_the_others_are_read(
    db: Database, tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    write_log(logs / "cowrie.json", [event("r1", 1)])
    secret = write_log(logs / "cowrie.json.1", [event("r2", 2)])
    secret.chmod(0)  # like Cowrie's 0640 logs, read by a user outside the group
    write_log(logs / "cowrie.json.2", [event("r3", 3)])
    root = os.geteuid() == 0
    result = cli(db.url, "ingest", "--json", str(logs), cwd=tmp_path, drop_read_override=root)
    assert result.returncode == 3, result.stderr
    assert f"{secret}: not read to its end: Permission denied" in result.stderr
    summary = json.loads(result.stdout)
    assert (summary["events_stored"], summary["files"]) == (2, 3)
    assert summary["failed_files"] == [
        {"line_no": 0, "path": str(secret), "reason": "Permission denied"}
    ]
    assert [r[:3] for r in dead_letters(db.engine)] == [
        (str(secret), 0, "file not read to its end: Permission denied")
    ]


def _reject_poison(db: Database) -> None:
    """A constraint of the test database that refuses one value: a real row-level error."""
    with db.engine.begin() as conn:
        if db.kind == "postgresql":
            conn.execute(
                text("ALTER TABLE commands ADD CONSTRAINT no_poison CHECK (input <> 'poison')")
            )
        else:
            conn.execute(
                text(
                    "CREATE TRIGGER no_poison BEFORE INSERT ON commands WHEN NEW.input = 'poison'"
                    " BEGIN SELECT RAISE(ABORT, 'poison refused'); END"
                )
            )


def _poisoned_sample(tmp_path: Path, every: int) -> tuple[Path, Path, list[int]]:
    """The demo log with a refused command every ``every`` lines; also the log without them."""
    sample = tmp_path / "sample" / "cowrie.json"
    write_sample(sample)
    clean = sample.read_bytes().splitlines()
    lines: list[bytes] = []
    poisoned: list[int] = []
    for index, line in enumerate(clean):
        if index % every == every // 2:
            lines.append(event(f"x{index}", index, eventid="cowrie.command.input", input="poison"))
            poisoned.append(len(lines))
        lines.append(line)
    return write_log(tmp_path / "logs" / "cowrie.json", lines), sample, poisoned


def test_rows_the_database_refuses_are_isolated_and_the_rest_is_stored(
    db: Database, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    _reject_poison(db)
    log, clean, poisoned = _poisoned_sample(tmp_path, every=97)
    summary = db.ingest([log], batch_lines=50)
    assert summary.dead_lettered == len(poisoned) > 10
    assert summary.events_stored == summary.lines_read - len(poisoned)
    letters = dead_letters(db.engine)
    assert [r[1] for r in letters] == poisoned
    said = "CheckViolation: new row for relation" if db.kind == "postgresql" else "poison refused"
    assert all(r[2].startswith("rejected by the database: ") and said in r[2] for r in letters)
    assert all(json.loads(r[3])["input"] == "poison" for r in letters)
    reference_db = make_database("sqlite", tmp_path, request)
    reference_db.ingest([clean])
    assert snapshot(db.engine) == snapshot(reference_db.engine)
    reference_db.engine.dispose()
    assert db.ingest([log]).lines_read == 0
    assert len(dead_letters(db.engine)) == len(poisoned)


def test_an_index_entry_over_the_btree_limit_is_a_dead_letter(
    pg_db: Database, tmp_path: Path
) -> None:
    with pg_db.engine.begin() as conn:  # an index of the test: the schema's own are the lead's
        conn.execute(text("CREATE INDEX test_wide_input ON commands (input)"))
    wide = secrets.token_urlsafe(6000)  # incompressible: over the 2,704-byte btree limit
    log = write_log(
        tmp_path / "cowrie.json",
        [
            event("w", i, eventid="cowrie.command.input", input=wide if i == 3 else "ls")
            for i in range(6)
        ],
    )
    summary = pg_db.ingest([log])
    assert (summary.events_stored, summary.dead_lettered) == (5, 1)
    (letter,) = dead_letters(pg_db.engine)
    assert letter[1] == 4
    assert letter[2].startswith("rejected by the database: ProgramLimitExceeded: index row")


def test_a_run_killed_while_isolating_resumes_to_identical_totals(
    pg_db: Database, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    _reject_poison(pg_db)
    log, _, poisoned = _poisoned_sample(tmp_path, every=31)
    command = [sys.executable, "-m", "cowrie_stats.cli", "ingest", "--json", "--batch-lines", "40"]
    env = {**os.environ, "COWRIE_STATS_DATABASE_URL": pg_db.url}
    rng = random.Random(99)
    kills = 0
    for _ in range(3):
        proc = subprocess.Popen([*command, str(log)], env=env, stdout=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.8, 2.5))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=30)
    subprocess.run([*command, str(log)], env=env, capture_output=True, timeout=300, check=True)
    uninterrupted = make_database("sqlite", tmp_path, request)
    _reject_poison(uninterrupted)
    uninterrupted.ingest([log], batch_lines=40)
    assert snapshot(pg_db.engine) == snapshot(uninterrupted.engine)
    lines = [r[1] for r in dead_letters(pg_db.engine)]
    assert lines == [r[1] for r in dead_letters(uninterrupted.engine)] == poisoned
    print(f"killed {kills} runs while they isolated refused rows; totals identical")
    uninterrupted.engine.dispose()


MEMORY_LIMIT_KB = 300 * 1024


def test_a_gzip_bomb_is_read_in_flat_memory(sqlite_db: Database, tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.json.gz"
    deflate = zlib.compressobj(1, zlib.DEFLATED, 31)
    huge_lines = 600
    with bomb.open("wb") as out:
        out.write(deflate.compress(event("b1", 1) + b"\n"))
        chunk = b"a" * (1 << 20)
        for _ in range(2048):  # one line of 2 GiB
            out.write(deflate.compress(chunk))
        out.write(deflate.compress(b"\n"))
        for _ in range(huge_lines):  # and many lines just under the limit
            out.write(deflate.compress(b"{" * ((1 << 20) - 1) + b"\n"))
        out.write(deflate.compress(event("b2", 2) + b"\n"))
        out.write(deflate.flush())
    assert bomb.stat().st_size < 20 << 20
    script = (
        "import sys\n"
        "from cowrie_stats.cli import main\n"
        "if __name__ == '__main__':\n"
        "    status = main(sys.argv[1:])\n"
        "    peak = [l for l in open('/proc/self/status') if l.startswith('VmHWM')]\n"
        "    print(peak[0].split()[1], file=sys.stderr)\n"
        "    sys.exit(status)\n"
    )
    runner = tmp_path / "peak.py"
    runner.write_text(script)
    env = {**os.environ, "COWRIE_STATS_DATABASE_URL": sqlite_db.url}
    done = subprocess.run(
        [sys.executable, str(runner), "ingest", "--json", str(bomb)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["events_stored"], summary["dead_lettered"]) == (2, 1 + huge_lines)
    peak_kb = int(done.stderr.split()[-1])
    print(
        f"gzip bomb of {bomb.stat().st_size >> 20} MiB, 2.6 GiB of lines:"
        f" peak RSS {peak_kb >> 10} MiB"
    )
    assert peak_kb < MEMORY_LIMIT_KB


def test_directory_scans_follow_no_symlink_out_of_the_directory(
    sqlite_db: Database, tmp_path: Path
) -> None:
    outside = write_log(tmp_path / "private" / "secret.json", [event("leak", 1)])
    logs = tmp_path / "logs"
    inside = write_log(logs / "cowrie.json", [event("in", 1)])
    (logs / "link-out.json").symlink_to(outside)
    (logs / "link-in.json").symlink_to(inside)
    (logs / "dir-out.json").symlink_to(outside.parent, target_is_directory=True)
    summary = sqlite_db.ingest([logs])
    assert summary.sources == [str(inside)]  # the inside link is the same file, read once
    assert sorted(Path(p).name for p, _ in summary.skipped) == ["dir-out.json", "link-out.json"]
    assert scalar(sqlite_db.engine, "SELECT count(*) FROM events") == 1
    named = sqlite_db.ingest([logs / "link-out.json"])  # named on the command line: read
    assert named.events_stored == 1
    err = io.StringIO()
    print_problems(summary, err)
    assert (
        f"skipped {logs / 'link-out.json'}: symlink to {outside}, outside {logs}" in err.getvalue()
    )


def test_file_names_that_are_not_utf8_are_stored_readably(db: Database, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    name = os.fsdecode(b"cowrie\xff.json")
    (logs / name).write_bytes(b"not json\n" + event("u", 1) + b"\n")
    summary = db.ingest([logs])
    assert (summary.events_stored, summary.dead_lettered) == (1, 1)
    ((source, *_),) = dead_letters(db.engine)
    assert source == str(logs / "cowrie\ufffd.json").replace("\ufffd", "?")


def test_operator_errors_get_one_line_and_a_status(sqlite_db: Database, tmp_path: Path) -> None:
    url = sqlite_db.url
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no logs here")
    for path in ("empty", "notes"):
        result = cli(url, "ingest", path, cwd=tmp_path)
        assert result.returncode == 1
        assert f"no log files in {path} (a directory scan reads" in result.stderr
    missing = cli(url, "ingest", "nope.json", cwd=tmp_path)
    assert (missing.returncode, missing.stderr.strip()) == (
        1,
        "cowrie-stats: no such file or directory: nope.json",
    )
    options = [["--watch", value] for value in ("-1", "0", "nan")]
    options += [["--batch-lines", value] for value in ("0", "-5", "1000001", "many")]
    for option in options:
        result = cli(url, "ingest", *option, "empty", cwd=tmp_path)
        assert result.returncode == 2 and f"argument {option[0]}:" in result.stderr
    binary = tmp_path / "binary.json"
    binary.write_bytes(bytes(range(256)) * 64 + b"\n" + os.urandom(4096))
    result = cli(url, "ingest", "--json", str(binary), cwd=tmp_path)
    assert result.returncode == 4
    assert "every line read was dead-lettered; the first reasons:" in result.stderr
    assert f"  {binary}:1: not valid JSON" in result.stderr


def test_gzip_on_stdin_is_recognised(db: Database, tmp_path: Path) -> None:
    sample = tmp_path / "cowrie.json"
    write_sample(sample)
    piped = cli(
        db.url, "ingest", "--json", "-", cwd=tmp_path, stdin=gzip.compress(sample.read_bytes())
    )
    assert piped.returncode == 0, piped.stderr
    assert json.loads(piped.stdout)["events_stored"] == 1289
    damaged = gzip.compress(b"".join(event(f"t{i}", i) + b"\n" for i in range(2000)))
    cut = cli(db.url, "ingest", "--json", "-", cwd=tmp_path, stdin=damaged[: len(damaged) // 2])
    assert cut.returncode == 3
    assert "<stdin>: not read to its end" in cut.stderr
    assert json.loads(cut.stdout)["events_stored"] == _complete_lines(damaged[: len(damaged) // 2])


def test_a_role_that_may_not_write_gets_one_line(pg_db: Database, tmp_path: Path) -> None:
    from testkit.pgcluster import READER_USER

    cluster = pg_db.url.rsplit("@", 1)[1]
    log = write_log(tmp_path / "cowrie.json", [event("ro", 1)])
    with pg_db.engine.begin() as conn:  # as the owner: the reader may read, like the api
        conn.execute(text(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {READER_USER}"))
        conn.execute(text("DROP ROLE IF EXISTS test_no_grants"))
        conn.execute(text("CREATE ROLE test_no_grants LOGIN"))
    read_only = cli(
        f"postgresql+psycopg://{READER_USER}@{cluster}", "ingest", str(log), cwd=tmp_path
    )
    assert read_only.returncode == 1
    assert read_only.stderr.count("\n") == 1
    assert read_only.stderr.startswith(f"cowrie-stats: the database role '{READER_USER}'")
    assert "ReadOnlySqlTransaction: cannot execute" in read_only.stderr
    no_grants = cli(
        f"postgresql+psycopg://test_no_grants@{cluster}", "ingest", str(log), cwd=tmp_path
    )
    assert no_grants.returncode == 1 and no_grants.stderr.count("\n") == 1
    assert "'test_no_grants'" in no_grants.stderr
    assert "InsufficientPrivilege: permission denied for table" in no_grants.stderr


def test_summary_per_file_and_per_sensor(sqlite_db: Database, tmp_path: Path) -> None:
    first = write_log(
        tmp_path / "a" / "cowrie.json",
        [
            event("s", 1),
            event("s", 2, sensor="s2"),
            b'{"sensor": "s2"}',
            b"[]",
            event("s", 3, sensor="s2"),
        ],
    )
    second = write_log(tmp_path / "b" / "cowrie.json", [event("s", 2, sensor="s2"), event("t", 9)])
    summary = Ingester(sqlite_db.engine, batch_lines=2).ingest([str(first), str(second)])
    data = json.loads(summary.to_json())
    assert data["by_sensor"] == [
        {
            "sensor": "s1",
            "events_stored": 2,
            "duplicates_skipped": 0,
            "dead_lettered": 0,
            "first_event": "2024-05-01T00:00:01.000000Z",
            "last_event": "2024-05-01T00:00:09.000000Z",
        },
        {
            "sensor": "s2",
            "events_stored": 2,
            "duplicates_skipped": 1,
            "dead_lettered": 1,  # the object naming s2; "[]" names no sensor
            "first_event": "2024-05-01T00:00:02.000000Z",
            "last_event": "2024-05-01T00:00:03.000000Z",
        },
    ]
    assert [
        (f["path"], f["lines_read"], f["events_stored"], f["dead_lettered"])
        for f in data["by_file"]
    ] == [
        (str(first), 5, 3, 2),
        (str(second), 2, 1, 0),
    ]
    assert data["exit_code"] == 0 and data["first_dead_letters"][0]["line_no"] == 3
    tables = io.StringIO()
    print_tables(summary, tables)
    assert "2 files, 7 lines, 4 events stored, 1 duplicates, 2 dead letters" in tables.getvalue()
    bar = io.StringIO()
    ingester = Ingester(sqlite_db.engine, progress=ProgressBar(bar, refresh_seconds=0))
    ingester.ingest([str(first), str(second)])
    assert "100%" in bar.getvalue()


def test_watching_a_directory_without_logs_yet_waits_for_them(
    sqlite_db: Database, tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    env = {**os.environ, "COWRIE_STATS_DATABASE_URL": sqlite_db.url}
    command = [sys.executable, "-m", "cowrie_stats.cli", "ingest", "--json", "--watch", "0.2"]
    proc = subprocess.Popen(
        [*command, str(logs)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert json.loads(proc.stdout.readline())["files"] == 0  # the first pass found nothing
    write_log(logs / "cowrie.json", [event("late", 1)])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not scalar(
        sqlite_db.engine, "SELECT count(*) FROM events"
    ):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert f"cowrie-stats: no log files in {logs} yet" in err
    assert sum(json.loads(line)["events_stored"] for line in out.splitlines()) == 1


def test_values_of_any_length_are_stored_and_counted_exactly(
    db: Database, tmp_path: Path, start_server: Any
) -> None:
    # Incompressible text longer than a PostgreSQL btree entry may be (2,704 bytes): once
    # part of an index key, such a command stopped the PostgreSQL ingest for good.
    rng = random.Random(5)
    dropper = "echo " + "".join(
        rng.choices("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/", k=20_000)
    )
    password = secrets.token_hex(8_000)
    lines = [
        event("v1", 1, eventid="cowrie.login.failed", username="root", password=password),
        event("v1", 2, eventid="cowrie.command.input", input=dropper),
        event("v2", 3, eventid="cowrie.login.failed", username=password, password=password),
        event("v2", 4, eventid="cowrie.command.input", input=dropper),
    ]
    summary = db.ingest([write_log(tmp_path / "cowrie.json", lines)])
    assert (summary.events_stored, summary.dead_lettered) == (4, 0)
    from cowrie_stats._gen.cowrie.stats.v1 import stats_pb2

    reply = start_server(db.settings()).stub.GetThreatStats(stats_pb2.GetThreatStatsRequest())
    # Answers carry the first 1024 characters of each, flagged, with the whole length.
    cut_dropper, cut_password = dropper[:1024], password[:1024]
    assert [
        (c.value, c.value_truncated, c.value_length, c.count, c.sessions)
        for c in reply.top_commands
    ] == [(cut_dropper, True, len(dropper), 2, 2)]
    assert [(p.value, p.value_length, p.count) for p in reply.top_passwords] == [
        (cut_password, len(password), 2)
    ]
    assert reply.unique_usernames == 2
    assert [
        (c.username, c.username_length, c.password, c.password_length, c.attempts)
        for c in reply.top_credentials
    ] == [
        (cut_password, len(password), cut_password, len(password), 1),
        ("root", 4, cut_password, len(password), 1),
    ]


def test_session_ids_and_sensor_names_too_long_to_index_are_dead_letters(
    db: Database, tmp_path: Path
) -> None:
    lines = [
        event("s" * 3000, 1),
        event("ok", 2, sensor="n" * 3000),
        event("ok", 3),
    ]
    summary = db.ingest([write_log(tmp_path / "cowrie.json", lines)])
    assert (summary.events_stored, summary.dead_lettered) == (1, 2)
    reasons = sorted(reason for _, _, reason, _ in dead_letters(db.engine))
    assert reasons[0].startswith("sensor name of 3000 characters is longer than 256")
    assert reasons[1].startswith("session id of 3000 characters is longer than 256")
