"""What one ingest run did: totals, per file and per sensor, and what went wrong.

``cowrie-stats ingest`` prints it as one JSON object (``--json``) or as tables,
and takes its exit status from it.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from cowrie_stats.ingest.batch import DeadLetterRecord, ParsedBatch
from cowrie_stats.ingest.parse import format_timestamp

# Exit statuses of a run that finished (see `cowrie-stats ingest --help`).
EXIT_OK = 0
EXIT_FILES_FAILED = 3  # some file could not be read to its end
EXIT_NOTHING_USABLE = 4  # every line read was dead-lettered
# Sensor names come from the logs: past this many in one run, the rest are
# summed into one figure, so that the summary stays small whatever the input.
MAX_SENSORS_LISTED = 1000
FIRST_DEAD_LETTERS = 5


@dataclass
class Tally:
    """Figures of one file or one sensor in a run."""

    lines_read: int = 0
    events_stored: int = 0
    duplicates_skipped: int = 0
    dead_lettered: int = 0
    first_ts_us: int | None = None
    last_ts_us: int | None = None

    def spans(self, first_ts_us: int, last_ts_us: int) -> None:
        if self.first_ts_us is None or first_ts_us < self.first_ts_us:
            self.first_ts_us = first_ts_us
        if self.last_ts_us is None or last_ts_us > self.last_ts_us:
            self.last_ts_us = last_ts_us

    def to_dict(self, lines: bool) -> dict[str, Any]:
        data: dict[str, Any] = {
            "events_stored": self.events_stored,
            "duplicates_skipped": self.duplicates_skipped,
            "dead_lettered": self.dead_lettered,
            "first_event": _instant(self.first_ts_us),
            "last_event": _instant(self.last_ts_us),
        }
        if lines:
            data["lines_read"] = self.lines_read
        return data


@dataclass
class StoredBatch:
    """What the database made of a batch: stored, duplicates, rejected (now dead letters)."""

    stored: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    stored_by_sensor: dict[str, int] = field(default_factory=dict)
    rejected: list[DeadLetterRecord] = field(default_factory=list)


@dataclass
class FileFailure:
    path: str
    line_no: int  # the line reading stopped at (0: the file could not be opened)
    reason: str


@dataclass
class IngestSummary:
    """Totals of one ingest run."""

    files: int = 0
    lines_read: int = 0
    events_stored: int = 0
    duplicates_skipped: int = 0
    dead_lettered: int = 0
    blank_lines: int = 0
    bytes_read: int = 0
    seconds: float = 0.0
    sources: list[str] = field(default_factory=list)
    by_file: dict[str, Tally] = field(default_factory=dict)
    by_sensor: dict[str, Tally] = field(default_factory=dict)
    other_sensors: Tally | None = None  # sensors past MAX_SENSORS_LISTED
    failed_files: list[FileFailure] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why)
    empty_paths: list[str] = field(default_factory=list)  # directories without a log file
    first_dead_letters: list[DeadLetterRecord] = field(default_factory=list)
    # Dead letters that are a last line still being written: no sign of bad input.
    unfinished_lines: int = 0
    # Progress in bytes of the files on disk (compressed where they are); the
    # total is None when a stream of unknown size (stdin) is read.
    disk_bytes_done: int = 0
    disk_bytes_total: int | None = 0

    def add_batch(self, source: str, batch: ParsedBatch, stored: StoredBatch) -> None:
        self.lines_read += batch.lines
        self.blank_lines += batch.blank
        self.unfinished_lines += batch.unfinished
        self.events_stored += stored.stored
        self.duplicates_skipped += stored.duplicates
        self.dead_lettered += stored.dead_lettered
        tally = self.by_file.setdefault(source, Tally())
        tally.lines_read += batch.lines
        tally.events_stored += stored.stored
        tally.duplicates_skipped += stored.duplicates
        tally.dead_lettered += stored.dead_lettered
        for record in [*batch.dead, *stored.rejected]:
            if len(self.first_dead_letters) < FIRST_DEAD_LETTERS:
                self.first_dead_letters.append(record)
            if record.sensor is not None:
                self._sensor(record.sensor).dead_lettered += 1
        # Events the database rejected were read, but are neither stored nor duplicates.
        rejected = Counter(record.sensor for record in stored.rejected)
        for name, span in batch.sensors.items():
            tally.spans(span.first_ts_us, span.last_ts_us)
            sensor = self._sensor(name)
            sensor.spans(span.first_ts_us, span.last_ts_us)
            fresh = stored.stored_by_sensor.get(name, 0)
            sensor.events_stored += fresh
            sensor.duplicates_skipped += span.events - fresh - rejected.get(name, 0)

    def _sensor(self, name: str) -> Tally:
        tally = self.by_sensor.get(name)
        if tally is not None:
            return tally
        if len(self.by_sensor) < MAX_SENSORS_LISTED:
            return self.by_sensor.setdefault(name, Tally())
        if self.other_sensors is None:
            self.other_sensors = Tally()
        return self.other_sensors

    def file_failed(self, path: str, line_no: int, reason: str) -> None:
        self.failed_files.append(FileFailure(path, line_no, reason))
        self.by_file.setdefault(path, Tally())

    @property
    def nothing_usable(self) -> bool:
        """Every complete line read was dead-lettered (a binary file, the wrong format...)."""
        usable = self.events_stored + self.duplicates_skipped
        return usable == 0 and self.dead_lettered > self.unfinished_lines

    @property
    def exit_code(self) -> int:
        if self.failed_files:
            return EXIT_FILES_FAILED
        if self.nothing_usable:
            return EXIT_NOTHING_USABLE
        return EXIT_OK

    def to_json(self) -> str:
        """One JSON object: the totals (the keys of earlier versions), then the details."""
        data: dict[str, Any] = {
            "files": self.files,
            "lines_read": self.lines_read,
            "events_stored": self.events_stored,
            "duplicates_skipped": self.duplicates_skipped,
            "dead_lettered": self.dead_lettered,
            "blank_lines": self.blank_lines,
            "bytes_read": self.bytes_read,
            "seconds": round(self.seconds, 3),
            "by_file": [
                {"path": path, **tally.to_dict(lines=True)} for path, tally in self.by_file.items()
            ],
            "by_sensor": [
                {"sensor": name, **tally.to_dict(lines=False)}
                for name, tally in sorted(self.by_sensor.items())
            ],
            "failed_files": [vars(failure) for failure in self.failed_files],
            "skipped": [{"path": path, "reason": why} for path, why in self.skipped],
            "first_dead_letters": [
                {"source": r.source, "line_no": r.line_no, "reason": r.reason}
                for r in self.first_dead_letters
            ],
            "exit_code": self.exit_code,
        }
        if self.other_sensors is not None:
            data["other_sensors"] = self.other_sensors.to_dict(lines=False)
        return json.dumps(data, sort_keys=True)


def _instant(ts_us: int | None) -> str | None:
    return None if ts_us is None else format_timestamp(ts_us)
