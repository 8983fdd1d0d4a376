"""A batch's plan from its reads, without a database (cowrie_stats.ingest.plan)."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import Database
from sqlalchemy import text

from cowrie_stats.db.models import VALUE_KINDS
from cowrie_stats.ingest.bulk import ConnectionBusyError
from cowrie_stats.ingest.details import CommandRow, StoredFirstRow, Unflag
from cowrie_stats.ingest.operations import bulk_operations
from cowrie_stats.ingest.parse import COMMAND_INPUT, SESSION_CONNECT, ParsedEvent
from cowrie_stats.ingest.plan import (
    DETAIL_TABLES,
    BatchPlan,
    BatchReads,
    EventRow,
    event_rows,
    plan_batch,
)
from cowrie_stats.timeline import DAY

SENSOR_ID, SESSION_ID, IP_ID, UNAME_ID = 3, 7, 11, 12
INPUT, SRC_IP = VALUE_KINDS["input"], VALUE_KINDS["src_ip"]
DAY_PIECE = DAY.piece(100)


def _event(digest: int, eventid: str, ts_us: int, **fields: Any) -> ParsedEvent:
    return ParsedEvent(bytes([digest]) * 16, "s1", "abc", eventid, ts_us, "{}", **fields)


CONNECT = _event(1, SESSION_CONNECT, 100, src_ip="192.0.2.1", protocol="ssh")
LATE_UNAME = _event(2, COMMAND_INPUT, 200, src_ip="192.0.2.1", command="uname")
EARLY_UNAME = _event(3, COMMAND_INPUT, 150, src_ip="192.0.2.1", command="uname")


def _reads(**changes: Any) -> BatchReads:
    reads: dict[str, Any] = {
        "sensor_ids": {"s1": SENSOR_ID},
        "stored_sessions": {},
        "new_session_ids": [SESSION_ID],
        "stored_first": {table: [] for table in DETAIL_TABLES},
        "value_ids": {(SRC_IP, "192.0.2.1"): IP_ID, (INPUT, "uname"): UNAME_ID},
        "longest_known": {},
    }
    return BatchReads(**(reads | changes))


def _plan(fresh: list[ParsedEvent], reads: BatchReads) -> BatchPlan:
    return plan_batch(fresh, reads, event_rows(fresh, reads.sensor_ids))


def _uname_figures(plan: BatchPlan) -> list[int]:
    """(uses, first uses, first, last, successes) of "uname" on its day, as planned."""
    return plan.summary.values[(INPUT, DAY.id, DAY_PIECE, SENSOR_ID, UNAME_ID)]


def test_a_new_session_and_its_first_use() -> None:
    plan = _plan([LATE_UNAME, CONNECT], _reads())
    assert plan.events == [
        EventRow(LATE_UNAME.hash, SENSOR_ID, "abc", COMMAND_INPUT, 200, "{}"),
        EventRow(CONNECT.hash, SENSOR_ID, "abc", SESSION_CONNECT, 100, "{}"),
    ]
    [session] = plan.new_sessions
    assert plan.changed_sessions == []
    assert session["id"] == SESSION_ID
    assert (session["start_ts_us"], session["end_ts_us"]) == (100, 200)
    assert (session["events"], session["commands"], session["protocol"]) == (2, 1, "ssh")
    assert session["src_ip_id"] == IP_ID
    assert plan.details["commands"] == [
        CommandRow(LATE_UNAME.hash, SENSOR_ID, SESSION_ID, 200, "uname", UNAME_ID, True)
    ]
    assert plan.details["login_attempts"] == plan.details["downloads"] == []
    assert plan.unflags == {table: [] for table in DETAIL_TABLES}
    assert plan.longest_sessions == {SENSOR_ID: 100}
    assert _uname_figures(plan) == [1, 1, 200, 200, 0]


def test_an_earlier_use_in_a_later_batch_takes_the_stored_rows_flag() -> None:
    first = _plan([CONNECT, LATE_UNAME], _reads())
    [stored] = first.new_sessions
    stored_first = StoredFirstRow(SENSOR_ID, SESSION_ID, 200, LATE_UNAME.hash, ((UNAME_ID, True),))
    reads = _reads(
        stored_sessions={(SENSOR_ID, "abc"): stored},
        new_session_ids=[],
        stored_first={table: [] for table in DETAIL_TABLES} | {"commands": [stored_first]},
        longest_known=first.longest_sessions,
    )
    plan = _plan([EARLY_UNAME], reads)
    assert plan.new_sessions == []
    [session] = plan.changed_sessions
    assert (session["id"], session["events"], session["commands"]) == (SESSION_ID, 3, 2)
    assert (session["start_ts_us"], session["end_ts_us"]) == (100, 200)
    assert stored["commands"] == 1, "the stored row is read, never changed"
    assert plan.details["commands"] == [
        CommandRow(EARLY_UNAME.hash, SENSOR_ID, SESSION_ID, 150, "uname", UNAME_ID, True)
    ]
    assert plan.unflags["commands"] == [
        Unflag("input", "input_first", SENSOR_ID, UNAME_ID, 200, LATE_UNAME.hash)
    ]
    # One more use, and the day's first use moved rather than added.
    assert _uname_figures(plan) == [1, 0, 150, 150, 0]
    assert plan.longest_sessions == {}, "no longer than the span already known"


def test_a_later_use_in_a_later_batch_is_not_a_first_use() -> None:
    first = _plan([CONNECT, EARLY_UNAME], _reads())
    [stored] = first.new_sessions
    stored_first = StoredFirstRow(SENSOR_ID, SESSION_ID, 150, EARLY_UNAME.hash, ((UNAME_ID, True),))
    reads = _reads(
        stored_sessions={(SENSOR_ID, "abc"): stored},
        new_session_ids=[],
        stored_first={table: [] for table in DETAIL_TABLES} | {"commands": [stored_first]},
        longest_known=first.longest_sessions,
    )
    plan = _plan([LATE_UNAME], reads)
    assert plan.details["commands"] == [
        CommandRow(LATE_UNAME.hash, SENSOR_ID, SESSION_ID, 200, "uname", UNAME_ID, False)
    ]
    assert plan.unflags["commands"] == []
    assert _uname_figures(plan) == [1, 0, 200, 200, 0]
    assert plan.longest_sessions == {SENSOR_ID: 100}


def test_the_connection_refuses_other_work_while_the_events_are_copied(db: Database) -> None:
    """The plan's computation must not use the connection the background COPY holds.

    Refused on SQLite too, where the events are inserted before: a misuse fails
    whichever database the tests run on.
    """
    fresh = [CONNECT]
    with db.engine.begin() as conn:
        bulk = bulk_operations(conn)
        events = event_rows(fresh, {"s1": SENSOR_ID})

        def impure(rows: list[EventRow]) -> BatchPlan:
            bulk.execute(text("SELECT 1"))
            raise AssertionError("the connection was used during the COPY")

        with pytest.raises(ConnectionBusyError):
            bulk.apply(events, impure)
        conn.rollback()
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM events")).scalar() == 0
