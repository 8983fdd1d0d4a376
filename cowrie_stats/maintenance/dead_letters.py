"""The lines ingest could not use: list them, retry them with today's parser, purge old ones.

A retried line that parses now is stored like any ingested event -- sessions,
per-event rows and summaries in the same transaction -- and its dead letter is
deleted in that transaction too, so a retry killed half-way leaves every line
either a dead letter or an event, never both or neither. Lines that still do not
parse stay as they are.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, select

from cowrie_stats.db.models import DEAD_LETTERS
from cowrie_stats.ingest.parse import ParsedEvent, UnusableLineError, parse_line
from cowrie_stats.ingest.store import row_rejection
from cowrie_stats.ingest.writer import BatchWriter

RETRY_PAGE = 500  # dead letters per retry transaction


@dataclass(frozen=True)
class Filter:
    """Which dead letters: received at or after ``since_us`` and before ``before_us``
    (ingest time, µs), with ``reason`` in their reason (any case); None: any."""

    since_us: int | None = None
    before_us: int | None = None
    reason: str | None = None

    def clauses(self) -> list[Any]:
        d = DEAD_LETTERS.c
        clauses: list[Any] = []
        if self.since_us is not None:
            clauses.append(d.created_ts_us >= self.since_us)
        if self.before_us is not None:
            clauses.append(d.created_ts_us < self.before_us)
        if self.reason:
            clauses.append(d.reason.icontains(self.reason, autoescape=True))
        return clauses


@dataclass(frozen=True)
class DeadLetter:
    id: int
    received_us: int
    source: str
    line_no: int
    reason: str
    line: str


def count(conn: Connection, which: Filter) -> int:
    query = select(func.count()).select_from(DEAD_LETTERS).where(*which.clauses())
    return int(conn.scalar(query) or 0)


def newest(conn: Connection, which: Filter, limit: int) -> list[DeadLetter]:
    """Up to ``limit`` dead letters matching ``which``, the most recently stored first."""
    d = DEAD_LETTERS.c
    query = (
        select(d.id, d.created_ts_us, d.source, d.line_no, d.reason, d.raw)
        .where(*which.clauses())
        .order_by(d.id.desc())
        .limit(limit)
    )
    return [DeadLetter(*row) for row in conn.execute(query)]


def purge(engine: Engine, which: Filter) -> int:
    """Delete the dead letters matching ``which``; returns how many went."""
    with engine.begin() as conn:
        return int(conn.execute(delete(DEAD_LETTERS).where(*which.clauses())).rowcount)


@dataclass
class RetryReport:
    retried: int = 0  # dead letters read again
    usable: int = 0  # of them, lines that are events now (their dead letters are gone)
    events_stored: int = 0  # events new to the database
    duplicates: int = 0  # events stored already (a line completed and read again, ...)
    unusable: int = 0  # lines that still are no event (they stay)
    rejected: int = 0  # events the database still refuses (they stay)

    def to_dict(self) -> dict[str, int]:
        return dict(vars(self))


def retry(engine: Engine, which: Filter, default_sensor: str | None = None) -> RetryReport:
    """Parse the matching dead letters again; store and remove those that are events now."""
    report = RetryReport()
    for page in _pages(engine, which):
        report.retried += len(page)
        usable: list[tuple[int, ParsedEvent]] = []
        for letter_id, raw in page:
            try:
                event = parse_line(raw, default_sensor)
            except UnusableLineError:
                event = None
            if event is None:  # still unusable, or no line kept (a file that failed)
                report.unusable += 1
            else:
                usable.append((letter_id, event))
        _store(engine, usable, report)
    return report


def _pages(engine: Engine, which: Filter) -> Iterator[list[tuple[int, str]]]:
    """The matching (id, line) pairs in pages, oldest first (by id, so deletions don't skip)."""
    d = DEAD_LETTERS.c
    after = 0
    while True:
        with engine.connect() as conn:
            page = [
                (int(letter_id), raw)
                for letter_id, raw in conn.execute(
                    select(d.id, d.raw)
                    .where(d.id > after, *which.clauses())
                    .order_by(d.id)
                    .limit(RETRY_PAGE)
                )
            ]
        if not page:
            return
        yield page
        after = page[-1][0]


def _store(engine: Engine, usable: list[tuple[int, ParsedEvent]], report: RetryReport) -> None:
    """Store the events and delete their dead letters, in one transaction.

    When the database refuses a row, each is tried alone: the refused ones stay.
    """
    if not usable:
        return
    try:
        _store_together(engine, usable, report)
        return
    except Exception as error:
        if row_rejection(error) is None:
            raise
    for one in usable:
        try:
            _store_together(engine, [one], report)
        except Exception as error:
            if row_rejection(error) is None:
                raise
            report.rejected += 1


def _store_together(
    engine: Engine, usable: list[tuple[int, ParsedEvent]], report: RetryReport
) -> None:
    with engine.begin() as conn:
        result = BatchWriter(conn).write([event for _, event in usable])
        ids = [letter_id for letter_id, _ in usable]
        conn.execute(delete(DEAD_LETTERS).where(DEAD_LETTERS.c.id.in_(ids)))
    report.usable += len(usable)
    report.events_stored += result.stored
    report.duplicates += result.duplicates
