"""Read log sources (files, .gz, directories, stdin) in batches, resuming from cursors.

A file's cursor is keyed by a hash of its first line (decompressed), so a file
that grows, is renamed by rotation, or is gzipped after it was read resumes
where it stopped; a hash of the bytes just before the cursor guards against a
different file that happens to share the first line (it is read from the start).
The cursor is committed in the same transaction as the batch it covers: a run
killed at any point resumes with exactly the totals of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import Engine

from cowrie_stats import metrics
from cowrie_stats.ingest.parse import (
    ParsedEvent,
    UnusableLineError,
    dead_letter_text,
    parse_line,
)
from cowrie_stats.ingest.writer import BatchWriter, CursorState, DeadLetterRecord, load_cursor

HEAD_BYTES = 4096
DEFAULT_BATCH_LINES = 5000
GZIP_MAGIC = b"\x1f\x8b"
STDIN = "-"


@dataclass
class IngestSummary:
    """Totals of one ingest run, printed as one JSON line."""

    files: int = 0
    lines_read: int = 0
    events_stored: int = 0
    duplicates_skipped: int = 0
    dead_lettered: int = 0
    blank_lines: int = 0
    bytes_read: int = 0
    seconds: float = 0.0
    sources: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        data = asdict(self)
        data.pop("sources")
        data["seconds"] = round(self.seconds, 3)
        return json.dumps(data, sort_keys=True)


def is_log_file(path: Path) -> bool:
    """Cowrie JSON logs as found in a log directory: cowrie.json, rotations, .gz."""
    name = path.name
    return ".json" in name and not name.startswith(".")


def discover(paths: Iterable[str]) -> Iterator[str]:
    """Expand directories recursively into their log files, in a stable order."""
    for raw in paths:
        if raw == STDIN:
            yield raw
            continue
        path = Path(raw)
        if path.is_dir():
            yield from (str(p) for p in sorted(path.rglob("*")) if p.is_file() and is_log_file(p))
        elif path.exists():
            yield raw
        else:
            raise FileNotFoundError(f"no such file or directory: {raw}")


def _open(path: str) -> tuple[BinaryIO, bool]:
    raw = open(path, "rb")  # noqa: SIM115 - closed by the caller
    compressed = raw.read(2) == GZIP_MAGIC
    raw.seek(0)
    if compressed:
        return gzip.GzipFile(fileobj=raw, mode="rb"), True  # type: ignore[return-value]
    return raw, False


def _head_hash(path: str) -> bytes:
    stream, _ = _open(path)
    with stream:
        head = stream.readline(HEAD_BYTES)
    return hashlib.sha256(head).digest()


def _tail_hash(tail: bytes) -> bytes:
    return hashlib.sha256(tail[-HEAD_BYTES:]).digest()


@dataclass
class _Batch:
    events: list[ParsedEvent] = field(default_factory=list)
    dead: list[DeadLetterRecord] = field(default_factory=list)
    lines: int = 0


class Ingester:
    """Streams sources into the database in batches of ``batch_lines`` lines."""

    def __init__(
        self,
        engine: Engine,
        default_sensor: str | None = None,
        batch_lines: int = DEFAULT_BATCH_LINES,
        progress: Callable[[IngestSummary], None] | None = None,
    ) -> None:
        self.engine = engine
        self.default_sensor = default_sensor
        self.batch_lines = batch_lines
        self.progress = progress
        self.summary = IngestSummary()
        self._started = time.monotonic()

    def ingest(self, paths: Iterable[str], stdin: BinaryIO | None = None) -> IngestSummary:
        for path in discover(paths):
            self.summary.files += 1
            self.summary.sources.append(path)
            if path == STDIN:
                self._ingest_stream(stdin or sys.stdin.buffer, "<stdin>", None)
            else:
                self._ingest_file(path)
        self.summary.seconds = time.monotonic() - self._started
        return self.summary

    def _ingest_file(self, path: str) -> None:
        head = _head_hash(path)
        with self.engine.connect() as conn:
            saved = load_cursor(conn, head)
        stream, compressed = _open(path)
        with stream:
            offset, line_no, tail = 0, 0, b""
            if saved is not None:
                skipped = _skip(stream, saved[0])
                if _tail_hash(skipped) == saved[2]:
                    offset, line_no, tail = saved[0], saved[1], skipped
                else:
                    stream.seek(0)  # same first line, other content: read it all
            cursor = CursorState(
                head_hash=head,
                path=os.path.abspath(path),
                inode=os.stat(path).st_ino,
                compressed=compressed,
                offset=offset,
                line_no=line_no,
                tail_hash=_tail_hash(tail),
            )
            self._ingest_stream(stream, path, cursor)

    def _ingest_stream(self, stream: BinaryIO, source: str, cursor: CursorState | None) -> None:
        # The cursor covers complete lines only: a last line without its newline
        # may still be being written, so it is read again next time.
        offset = cursor.offset if cursor else 0
        line_no = cursor.line_no if cursor else 0
        last_line = b""
        batch = _Batch()
        for line in stream:
            complete = line.endswith(b"\n")
            self._parse_into(batch, line, source, line_no + 1, complete)
            self.summary.bytes_read += len(line)
            if complete:
                offset += len(line)
                line_no += 1
                last_line = line
            if batch.lines >= self.batch_lines:
                self._flush(batch, cursor, offset, line_no, last_line)
                batch = _Batch()
        self._flush(batch, cursor, offset, line_no, last_line)

    def _parse_into(
        self, batch: _Batch, line: bytes, source: str, line_no: int, complete: bool
    ) -> None:
        batch.lines += 1
        self.summary.lines_read += 1
        try:
            event = parse_line(line, self.default_sensor)
        except UnusableLineError as exc:
            reason = str(exc) if complete else f"truncated last line (no newline): {exc}"
            batch.dead.append(DeadLetterRecord(source, line_no, reason, dead_letter_text(line)))
            return
        if event is None:
            self.summary.blank_lines += 1
        else:
            batch.events.append(event)

    def _flush(
        self,
        batch: _Batch,
        cursor: CursorState | None,
        offset: int,
        line_no: int,
        last_line: bytes,
    ) -> None:
        if not batch.lines:
            return
        state = None
        if cursor is not None:
            # The tail is the last complete line (at most HEAD_BYTES of it); on
            # resume the same bytes must precede the stored offset.
            tail = last_line if last_line else b""
            state = dataclasses.replace(
                cursor, offset=offset, line_no=line_no, tail_hash=_tail_hash(tail)
            )
        with self.engine.begin() as conn:
            result = BatchWriter(conn).write(batch.events, batch.dead, state)
        self.summary.events_stored += result.stored
        self.summary.duplicates_skipped += result.duplicates
        self.summary.dead_lettered += result.dead_lettered
        metrics.INGESTED_EVENTS.inc(result.stored)
        metrics.INGEST_DUPLICATES.inc(result.duplicates)
        metrics.INGEST_DEAD_LETTERED.inc(result.dead_lettered)
        if self.progress is not None:
            self.summary.seconds = time.monotonic() - self._started
            self.progress(self.summary)


def _skip(stream: BinaryIO, offset: int) -> bytes:
    """Move to ``offset``; returns the last line before it (what the cursor hashed)."""
    if offset <= 0:
        return b""
    window = 2 * HEAD_BYTES
    if isinstance(stream, io.BufferedReader | io.FileIO):
        start = max(0, offset - window)
        stream.seek(start)
        before = stream.read(offset - start)
    else:
        before = b""
        remaining = offset
        while remaining:
            chunk = stream.read(min(remaining, 1 << 20))
            if not chunk:
                break
            remaining -= len(chunk)
            before = (before + chunk)[-window:]
    return _last_line(before)


def _last_line(data: bytes) -> bytes:
    """The last newline-terminated line of ``data`` (possibly cut at its start)."""
    if not data.endswith(b"\n"):
        return b"\x00"  # the offset is not at a line end: never matches a stored tail
    cut = data.rfind(b"\n", 0, len(data) - 1)
    return data[cut + 1 :]
