"""Dead letters: listed safely, retried with today's parser, purged when old.

A retried line that parses now is stored exactly as an ingest would store it
(the database afterwards equals one that ingested the good lines), and its dead
letter goes in the same transaction; what still fails stays.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import summaries_definition
from conftest import Database, make_database
from sqlalchemy import text
from test_hostile_ingest import _reject_poison
from test_ingest import snapshot

from cowrie_stats.maintenance.dead_letters import Filter, RetryReport, count, newest, purge, retry

T0 = "2026-11-20T10:00:0{}.000000Z"


def _line(n: int, **fields: object) -> str:
    base = {"eventid": "cowrie.session.connect", "session": "s1", "sensor": "dl"}
    return json.dumps(base | {"timestamp": T0.format(n), "src_ip": "192.0.2.1"} | fields)


GOOD = _line(0)
POISON = _line(1, eventid="cowrie.command.input", input="poison")
OLD_PARSER = _line(3, eventid="cowrie.login.failed", username="root", password="x")


def _remember_as_dead(db: Database, raw: str, reason: str, line_no: int) -> None:
    """A dead letter as an older parser, which refused this line, left it."""
    digest = hashlib.blake2b(raw.encode(), digest_size=16).digest()
    with db.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO dead_letters (source, line_no, reason, raw, raw_hash, created_ts_us)"
                " VALUES ('old.json', :line_no, :reason, :raw, :digest, 1)"
            ),
            {"reason": reason, "raw": raw, "digest": digest, "line_no": line_no},
        )


def _undo_poison(db: Database) -> None:
    with db.engine.begin() as conn:
        if db.kind == "postgresql":
            conn.execute(text("ALTER TABLE commands DROP CONSTRAINT no_poison"))
        else:
            conn.execute(text("DROP TRIGGER no_poison"))


def _reasons(db: Database) -> list[str]:
    with db.engine.connect() as conn:
        return [letter.reason for letter in newest(conn, Filter(), 100)]


def test_retry_stores_what_parses_now_and_keeps_the_rest(
    db: Database, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    _reject_poison(db)
    log = tmp_path / "cowrie.json"
    log.write_text(f"{GOOD}\n{POISON}\nnot json\n")
    db.ingest([log])
    _remember_as_dead(db, OLD_PARSER, "unparseable timestamp (an older parser)", 1)
    _remember_as_dead(db, GOOD, "unparseable timestamp (an older parser)", 2)  # read since
    assert len(_reasons(db)) == 4

    first = retry(db.engine, Filter())
    # The old parser's refusals are events now (one of them stored already); the poison
    # is still refused by the database and "not json" is still no event.
    assert first == RetryReport(
        retried=4, usable=2, events_stored=1, duplicates=1, unusable=1, rejected=1
    )
    assert sorted(_reasons(db))[0].startswith("not valid JSON")
    assert any(r.startswith("rejected by the database") for r in _reasons(db))
    assert summaries_definition.stored(db.engine) == summaries_definition.defined(db.engine)

    _undo_poison(db)
    second = retry(db.engine, Filter(reason="REJECTED"))
    assert second == RetryReport(retried=1, usable=1, events_stored=1)
    assert [r[:14] for r in _reasons(db)] == ["not valid JSON"]

    clean_log = tmp_path / "clean" / "cowrie.json"
    clean_log.parent.mkdir()
    clean_log.write_text(f"{GOOD}\n{POISON}\n{OLD_PARSER}\n")
    clean = make_database(db.kind, clean_log.parent, request)
    clean.ingest([clean_log])
    assert snapshot(db.engine) == snapshot(clean.engine)
    clean.engine.dispose()


def test_filters_and_purge(sqlite_db: Database, tmp_path: Path) -> None:
    log = tmp_path / "bad.json"
    log.write_text("not json\n[1]\n{}\n")
    sqlite_db.ingest([log])
    with sqlite_db.engine.begin() as conn:
        conn.execute(text("UPDATE dead_letters SET created_ts_us = 100 * line_no"))
        assert count(conn, Filter(reason="NOT valid json")) == 1
        assert count(conn, Filter(reason="%")) == 0  # LIKE wildcards are plain text
        assert count(conn, Filter(since_us=200)) == 2
        assert [d.line_no for d in newest(conn, Filter(before_us=300), 5)] == [2, 1]
        assert [d.line_no for d in newest(conn, Filter(), 1)] == [3]
    assert purge(sqlite_db.engine, Filter(before_us=250)) == 2
    assert len(_reasons(sqlite_db)) == 1
