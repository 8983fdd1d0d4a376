"""``cowrie-stats prune``, ``dead-letters`` and the retention of ``ingest``, as run by hand."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import Database, Run
from sqlalchemy import Engine, text

from cowrie_stats.db.engines import create_db_engine
from cowrie_stats.db.schema import upgrade
from cowrie_stats.settings import Settings


def _session(sensor: str, session: str, at: datetime) -> str:
    lines = [
        {"eventid": "cowrie.session.connect", "src_ip": "198.51.100.9", "protocol": "ssh"},
        {"eventid": "cowrie.login.failed", "username": "root", "password": "1234"},
        {"eventid": "cowrie.command.input", "input": "uname -a"},
    ]
    return "".join(
        json.dumps(
            {
                "session": session,
                "sensor": sensor,
                "timestamp": (at + timedelta(seconds=n)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            }
            | line
        )
        + "\n"
        for n, line in enumerate(lines)
    )


def _counts(engine: Engine) -> tuple[int, int, int]:
    with engine.connect() as conn:
        return (
            conn.execute(text("SELECT count(*) FROM sessions")).scalar_one(),
            conn.execute(text("SELECT count(*) FROM events")).scalar_one(),
            conn.execute(text("SELECT count(*) FROM dead_letters")).scalar_one(),
        )


@pytest.fixture
def database(tmp_path: Path) -> Database:
    url = f"sqlite:///{tmp_path / 'ops.db'}"
    engine = create_db_engine(url, Settings(database_url=url), writer=True)
    upgrade(engine)
    return Database("sqlite", url, None, engine)


def test_prune_is_a_dry_run_until_yes(database: Database, tmp_path: Path, in_process: Run) -> None:
    log = tmp_path / "cowrie.json"
    old = datetime(2026, 1, 5, 10, tzinfo=UTC)
    log.write_text(_session("old\x1b[2J", "a", old) + _session("new", "b", old + timedelta(40)))
    database.ingest([log])
    url = {"COWRIE_STATS_DATABASE_URL": database.url}
    status, out, _ = in_process("prune", "--before", "2026-02-01", **url)
    assert status == 0 and _counts(database.engine) == (2, 6, 0)
    assert "would delete" in out and "sessions" in out and "dry run (1 days" in out
    assert "old\\x1b[2J" in out and "\x1b" not in out  # a sensor name is escaped
    status, out, _ = in_process("prune", "--before", "2026-02-01", "--json", **url)
    planned = json.loads(out)
    assert planned["dry_run"] is True and planned["before"] == "2026-02-01T00:00:00Z"
    assert (planned["sessions"], planned["events"], planned["commands"]) == (1, 3, 1)
    status, out, _ = in_process("prune", "--before", "2026-02-01", "--yes", "--json", **url)
    done = json.loads(out)
    assert done == planned | {"dry_run": False}
    assert _counts(database.engine) == (1, 3, 0)
    status, out, _ = in_process("prune", "--sensor", "new", "--yes", **url)
    assert status == 0 and "deleted" in out and "done in 1 transactions" in out
    assert _counts(database.engine) == (0, 0, 0)


def test_prune_mistakes_are_one_line(database: Database, in_process: Run) -> None:
    url = {"COWRIE_STATS_DATABASE_URL": database.url}
    assert in_process("prune", **url)[0] == 2
    status, _, err = in_process("prune", "--sensor", "nope", **url)
    assert (status, err.strip()) == (1, "cowrie-stats prune: unknown sensor: nope")
    status, _, err = in_process("dead-letters", "--purge", **url)
    assert (status, err.strip()) == (2, "cowrie-stats dead-letters: --purge needs --before TIME")
    with pytest.raises(SystemExit) as failed:
        in_process("prune", "--before", "last tuesday", **url)
    assert failed.value.code == 2


def test_dead_letters_listed_escaped_retried_and_purged(
    database: Database, tmp_path: Path, in_process: Run
) -> None:
    log = tmp_path / "cowrie.json"
    hostile = '{"eventid": "x", "session": "s", "timestamp": "\\u001b[2J now"}\n'
    log.write_text("not json\n" + hostile + _session("s1", "a", datetime(2026, 11, 1, tzinfo=UTC)))
    database.ingest([log])
    url = {"COWRIE_STATS_DATABASE_URL": database.url}
    status, out, _ = in_process("dead-letters", **url)
    assert status == 0 and "2 shown of 2 matching" in out
    assert "unparseable timestamp '\\x1b[2J now'" in out and "\x1b" not in out
    status, out, _ = in_process("dead-letters", "--json", "--reason", "timestamp", **url)
    [letter] = [json.loads(line) for line in out.splitlines()]
    assert letter["line"] == hostile and letter["line_no"] == 2
    assert in_process("dead-letters", "--since", "1h", "--limit", "1", **url)[1].count("\n") == 4
    status, out, _ = in_process("dead-letters", "--retry", "--json", **url)
    assert json.loads(out)["unusable"] == 2
    status, out, _ = in_process("dead-letters", "--retry", **url)
    assert "retried" in out and "unusable" in out
    status, out, _ = in_process("dead-letters", "--purge", "--before", "2030-01-01", **url)
    assert "dry run: 2 dead letters would be deleted" in out and _counts(database.engine)[2] == 2
    status, out, _ = in_process("dead-letters", "--purge", "--before", "1d", "--yes", **url)
    assert "deleted 0 dead letters" in out
    status, out, _ = in_process(
        "dead-letters", "--purge", "--before", "2030-01-01", "--yes", "--json", **url
    )
    assert json.loads(out) == {"dry_run": False, "dead_letters": 2}


def _recent_and_old(log: Path, now: datetime) -> None:
    log.write_text(
        _session("s1", "old", now - timedelta(days=10))
        + _session("s1", "older", now - timedelta(days=30))
        + _session("s1", "recent", now - timedelta(hours=1))
    )


def test_ingest_applies_the_retention_after_its_pass(
    database: Database, tmp_path: Path, in_process: Run
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    _recent_and_old(logs / "cowrie.json", datetime.now(UTC))
    env = {"COWRIE_STATS_DATABASE_URL": database.url, "COWRIE_STATS_RETENTION_DAYS": "3"}
    status, out, _ = in_process("ingest", "--json", str(logs), **env)
    assert status == 0 and json.loads(out)["events_stored"] == 9
    assert _counts(database.engine) == (1, 3, 0)


def test_every_watch_pass_applies_the_retention(database: Database, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    now = datetime.now(UTC)
    (logs / "cowrie.json").write_text(_session("s1", "recent", now - timedelta(hours=1)))
    env = {
        **os.environ,
        "COWRIE_STATS_DATABASE_URL": database.url,
        "COWRIE_STATS_RETENTION_DAYS": "3",
        "COWRIE_STATS_ENV_FILE": "/dev/null",
    }
    command = [sys.executable, "-m", "cowrie_stats.cli", "ingest", "--watch", "0.2", str(logs)]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        proc.stdout.readline()  # the first pass's summary
        _recent_and_old(logs / "later.json", now)
        deadline = time.monotonic() + 60
        with database.engine.connect() as conn:
            while time.monotonic() < deadline:
                files = conn.execute(text("SELECT count(*) FROM ingest_cursors")).scalar_one()
                conn.rollback()
                if files == 2 and _counts(database.engine) == (1, 3, 0):
                    break
                time.sleep(0.1)
        # The later file was read (its cursor is stored) and its old sessions pruned again.
        assert (files, _counts(database.engine)) == (2, (1, 3, 0))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert proc.returncode == 0
