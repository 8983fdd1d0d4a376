"""One batch of log lines, parsed: the work a parse worker process does.

Kept apart from the reader and the writer so that a worker process imports only
the parser (standard library and orjson), not SQLAlchemy, psycopg or the
metrics: each parse worker and the forkserver it is forked from then start at
about 17 MB instead of about 50 MB (measured VmRSS after import).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from cowrie_stats.ingest.parse import (
    ParsedEvent,
    UnusableLineError,
    dead_letter_text,
    parse_line,
)

UNFINISHED = "truncated last line (no newline)"


class OverlongLine(NamedTuple):
    """A line longer than the limit: only its length and first bytes were kept."""

    length: int
    head: bytes
    tail: bytes  # its last bytes: a cursor after the line hashes them
    ended: bool  # it has its newline (else it is the last line, maybe still being written)
    limit: int

    @property
    def reason(self) -> str:
        return (
            f"line of {self.length} bytes is longer than the limit of {self.limit} bytes"
            " (COWRIE_STATS_INGEST_MAX_LINE_BYTES): skipped"
        )


# A line as the reader hands it over: its bytes, or what was kept of an over-long one.
Line = bytes | OverlongLine


@dataclass(frozen=True)
class DeadLetterRecord:
    """A line that could not be used, where it was and why.

    ``sensor`` is the sensor the line names, when it is known (for the summary).
    """

    source: str
    line_no: int
    reason: str
    raw: str
    sensor: str | None = None


@dataclass
class SensorSpan:
    """A sensor's usable events in a batch: how many, and their first and last instant."""

    events: int
    first_ts_us: int
    last_ts_us: int


@dataclass
class ParsedBatch:
    """One batch of lines after parsing: what the writer stores, and the blank lines.

    ``line_nos[i]`` is the line ``events[i]`` came from: an event the database
    rejects is dead-lettered under it.
    """

    events: list[ParsedEvent] = field(default_factory=list)
    line_nos: list[int] = field(default_factory=list)
    dead: list[DeadLetterRecord] = field(default_factory=list)
    sensors: dict[str, SensorSpan] = field(default_factory=dict)
    lines: int = 0
    blank: int = 0
    unfinished: int = 0  # dead letters that are a last line without its newline


def parse_batch(
    lines: list[Line], source: str, first_line_no: int, default_sensor: str | None
) -> ParsedBatch:
    """Parse consecutive lines, the first being line ``first_line_no`` of ``source``.

    A pure function of its arguments, so it runs the same in a worker process.
    Only the last line of a stream can lack its newline: it may still be being
    written, and its dead letter says so.
    """
    batch = ParsedBatch(lines=len(lines))
    for line_no, line in enumerate(lines, first_line_no):
        try:
            if isinstance(line, OverlongLine):
                raise UnusableLineError(line.reason)
            event = parse_line(line, default_sensor)
        except UnusableLineError as exc:
            batch.dead.append(_dead_letter(line, source, line_no, exc))
            batch.unfinished += batch.dead[-1].reason.startswith(UNFINISHED)
            continue
        if event is None:
            batch.blank += 1
        else:
            batch.events.append(event)
            batch.line_nos.append(line_no)
    batch.sensors = sensor_spans(batch.events)
    return batch


def _dead_letter(line: Line, source: str, line_no: int, exc: UnusableLineError) -> DeadLetterRecord:
    reason = str(exc)
    if isinstance(line, OverlongLine):
        raw, ended = line.head, line.ended
    else:
        raw, ended = line, line.endswith(b"\n")
    if not ended:
        reason = f"{UNFINISHED}: {exc}"
    return DeadLetterRecord(source, line_no, reason, dead_letter_text(raw), exc.sensor)


def sensor_spans(events: list[ParsedEvent]) -> dict[str, SensorSpan]:
    """Per sensor, its events' count and time span (computed in the worker, off the writer)."""
    spans: dict[str, SensorSpan] = {}
    for e in events:
        span = spans.get(e.sensor)
        if span is None:
            spans[e.sensor] = SensorSpan(1, e.ts_us, e.ts_us)
            continue
        span.events += 1
        if e.ts_us < span.first_ts_us:
            span.first_ts_us = e.ts_us
        elif e.ts_us > span.last_ts_us:
            span.last_ts_us = e.ts_us
    return spans


def worker_ready() -> None:
    """Nothing: a parse worker that runs it has started and imported the parser."""
