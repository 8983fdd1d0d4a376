"""Read log sources (files, .gz, directories, stdin) in batches, resuming from cursors.

A file's cursor is keyed by a hash of its first line (decompressed), so a file
that grows, is renamed by rotation, or is gzipped after it was read resumes
where it stopped; a hash of the bytes just before the cursor guards against a
different file that happens to share the first line (it is read from the start).
The cursor is committed in the same transaction as the batch it covers: a run
killed at any point resumes with exactly the totals of an uninterrupted one.

Nothing a file holds stops the run: lines are read up to a length limit and
batches are bounded in bytes (memory stays flat), every unusable line is a dead
letter, a row the database refuses is isolated (store.py), and a file that
cannot be read to its end is recorded and left for the next file.

Large inputs are parsed in worker processes (``workers``) while this process
writes: batches are cut and committed exactly as in a serial run, in order, with
at most ``workers + 1`` batches parsed ahead so memory stays flat. The workers
start in the background as soon as a run is known to be large (from a file's
size, or from the lines read so far); until they are ready this process parses.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import multiprocessing
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

from sqlalchemy import Engine

from cowrie_stats import metrics
from cowrie_stats.ingest.batch import (
    DeadLetterRecord,
    Line,
    OverlongLine,
    ParsedBatch,
    parse_batch,
    worker_ready,
)
from cowrie_stats.ingest.parse import clean_text
from cowrie_stats.ingest.source import (
    DEFAULT_MAX_LINE_BYTES,
    READ_ERRORS,
    STDIN,
    TAIL_BYTES,
    ReadFailure,
    Source,
    batches,
    decompressed,
    discover,
    discover_sources,
    is_log_file,
    open_source,
    read_lines,
)
from cowrie_stats.ingest.store import store_batch
from cowrie_stats.ingest.summary import IngestSummary
from cowrie_stats.ingest.writer import CursorState, load_cursor

HEAD_BYTES = TAIL_BYTES
DEFAULT_BATCH_LINES = 5000
# A batch also ends at this many bytes of lines: lines near the length limit
# must not make a batch of 5,000 lines gigabytes large.
BATCH_BYTES = 16 << 20
# Below this many lines in one run, starting worker processes (about 0.3 s)
# costs more than it saves: tests and the demo sample never start them.
PARALLEL_AFTER_LINES = 50_000
# To tell from a file's size whether it holds that many lines: Cowrie lines are
# about 300 bytes, and gzip shrinks them about tenfold (a low guess is harmless:
# the count of lines read still starts the workers).
LINE_BYTES = 300
GZIP_RATIO = 10
STDIN_NAME = "<stdin>"

__all__ = ["STDIN", "IngestSummary", "Ingester", "discover", "is_log_file"]


def _head_hash(source: Source) -> bytes:
    stream, disk, _ = open_source(source)
    with disk, stream:
        head = stream.readline(HEAD_BYTES)
    return hashlib.sha256(head).digest()


def _tail_hash(tail: bytes) -> bytes:
    return hashlib.sha256(tail[-HEAD_BYTES:]).digest()


def describe_read_error(error: BaseException) -> str:
    """One line on why a file could not be read on: unreadable, or damaged gzip."""
    if isinstance(error, gzip.BadGzipFile | EOFError) or "decompressing" in str(error):
        return f"damaged gzip: {error}"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return f"{type(error).__name__}: {error}"


@dataclass
class _Pending:
    """A batch handed to the parser, with the cursor to commit once it is stored."""

    parsed: Future[ParsedBatch] | ParsedBatch
    cursor: CursorState | None
    disk_offset: int  # how far into the file on disk the batch's lines reach

    def result(self) -> ParsedBatch:
        return self.parsed.result() if isinstance(self.parsed, Future) else self.parsed


@dataclass
class _Position:
    """Where the stream stands after the lines read so far (complete lines only)."""

    offset: int
    line_no: int
    # None until a complete line is read: the cursor's own tail still stands then
    # (a run that reads only a line still being written must not forget it).
    last_line: bytes | None = None


class Ingester:
    """Streams sources into the database in batches of ``batch_lines`` lines."""

    def __init__(
        self,
        engine: Engine,
        default_sensor: str | None = None,
        batch_lines: int = DEFAULT_BATCH_LINES,
        progress: Callable[[IngestSummary], None] | None = None,
        workers: int = 0,
        parallel_after_lines: int = PARALLEL_AFTER_LINES,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    ) -> None:
        self.engine = engine
        self.default_sensor = default_sensor
        self.batch_lines = batch_lines
        self.progress = progress
        self.workers = workers
        self.parallel_after_lines = parallel_after_lines
        self.max_line_bytes = max_line_bytes
        self.summary = IngestSummary()
        self._started = time.monotonic()
        self._pool: Executor | None = None
        self._pool_ready: Future[None] | None = None
        self._lines_submitted = 0
        self.batches_parsed_in_workers = 0
        self.workers_started_after_lines: int | None = None

    def ingest(self, paths: Iterable[str], stdin: BinaryIO | None = None) -> IngestSummary:
        found = discover_sources(paths)
        self.summary.skipped.extend(found.skipped)
        self.summary.empty_paths.extend(found.empty)
        for path, reason in found.unreadable:
            self._file_failed(clean_text(path), 0, reason)
        sizes = [self._disk_size(source) for source in found.sources]
        self.summary.disk_bytes_total = None if None in sizes else sum(filter(None, sizes))
        try:
            for source, size in zip(found.sources, sizes, strict=True):
                self.summary.files += 1
                self.summary.sources.append(source.path)
                if source.path == STDIN:
                    self._ingest_stdin(stdin or sys.stdin.buffer)
                else:
                    self._ingest_file(source)
                self._report(self.summary.disk_bytes_done + (size or 0))
        finally:
            if self._pool is not None:
                self._pool.shutdown(cancel_futures=True)
                self._pool = self._pool_ready = None
        self.summary.seconds = time.monotonic() - self._started
        return self.summary

    @staticmethod
    def _disk_size(source: Source) -> int | None:
        if source.path == STDIN:
            return None
        try:
            return os.stat(source.path).st_size
        except OSError:
            return 0  # reported when it is opened

    def _ingest_stdin(self, stdin: BinaryIO) -> None:
        try:
            stream, _ = decompressed(stdin)
        except READ_ERRORS as exc:
            self._file_failed(STDIN_NAME, 0, describe_read_error(exc))
            return
        self._ingest_stream(stream, STDIN_NAME, None, None)

    def _ingest_file(self, source: Source) -> None:
        name = clean_text(source.path)  # file names need not be UTF-8; the database's text is
        try:
            head = _head_hash(source)
            stream, disk, compressed = open_source(source)
        except READ_ERRORS as exc:
            self._file_failed(name, 0, describe_read_error(exc))
            return
        with disk, stream:
            try:
                cursor = self._resume(source, stream, disk, compressed, head)
            except READ_ERRORS as exc:
                self._file_failed(name, 0, describe_read_error(exc))
                return
            self._ingest_stream(stream, name, cursor, disk)

    def _resume(
        self, source: Source, stream: BinaryIO, disk: BinaryIO, compressed: bool, head: bytes
    ) -> CursorState:
        """The file's cursor, with ``stream`` moved to it (to the start for a new file)."""
        with self.engine.connect() as conn:
            saved = load_cursor(conn, head)
        offset, line_no, tail = 0, 0, b""
        if saved is not None:
            skipped = _skip(stream, saved[0])
            if _tail_hash(skipped) == saved[2]:
                offset, line_no, tail = saved[0], saved[1], skipped
            else:
                stream.seek(0)  # same first line, other content: read it all
        stat = os.fstat(disk.fileno())
        size = stat.st_size * (GZIP_RATIO if compressed else 1)
        if (size - offset) // LINE_BYTES > self.parallel_after_lines:
            self.start_workers()
        return CursorState(
            head_hash=head,
            path=clean_text(os.path.abspath(source.path)),
            inode=stat.st_ino,
            compressed=compressed,
            offset=offset,
            line_no=line_no,
            tail_hash=_tail_hash(tail),
        )

    def _ingest_stream(
        self, stream: BinaryIO, source: str, cursor: CursorState | None, disk: BinaryIO | None
    ) -> None:
        # The cursor covers complete lines only: a last line without its newline
        # may still be being written, so it is read again next time.
        position = _Position(cursor.offset, cursor.line_no) if cursor else _Position(0, 0)
        done_before = self.summary.disk_bytes_done
        failure = ReadFailure()
        lines = read_lines(stream, self.max_line_bytes, failure)
        pending: deque[_Pending] = deque()
        for batch in batches(lines, self.batch_lines, BATCH_BYTES):
            first_line_no = position.line_no + 1
            self._advance(position, batch)
            parsed = self._parse(batch, source, first_line_no)
            reached = done_before + (disk.tell() if disk is not None else position.offset)
            pending.append(_Pending(parsed, _cursor_at(cursor, position), reached))
            # Ordered and bounded: write the oldest batch once enough are in flight.
            while len(pending) > self.workers:
                self._flush(pending.popleft(), source)
        while pending:
            self._flush(pending.popleft(), source)
        if failure.error is not None:  # what was read before the damage is stored above
            self._file_failed(source, position.line_no + 1, describe_read_error(failure.error))

    def _advance(self, position: _Position, lines: list[Line]) -> None:
        for line in lines:
            if isinstance(line, OverlongLine):
                self.summary.bytes_read += line.length
                if line.ended:
                    position.offset += line.length
                    position.line_no += 1
                    position.last_line = line.tail
                continue
            self.summary.bytes_read += len(line)
            if line.endswith(b"\n"):
                position.offset += len(line)
                position.line_no += 1
                position.last_line = line

    def _parse(
        self, lines: list[Line], source: str, first_line_no: int
    ) -> Future[ParsedBatch] | ParsedBatch:
        self._lines_submitted += len(lines)
        if self._lines_submitted > self.parallel_after_lines:
            self.start_workers()
        pool = self._ready_pool()
        if pool is None:
            return parse_batch(lines, source, first_line_no, self.default_sensor)
        self.batches_parsed_in_workers += 1
        return pool.submit(parse_batch, lines, source, first_line_no, self.default_sensor)

    def start_workers(self) -> Future[None] | None:
        """Start the parse workers (once, if any are configured) without waiting for them.

        Returns a future that is done when a worker has started and imported the
        parser; None when no workers are configured.
        """
        if self._pool is None and self.workers:
            # forkserver, not fork: this process holds database connections and
            # maybe threads (metrics server) that a forked child must not inherit.
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(["cowrie_stats.ingest.batch"])
            self._pool = ProcessPoolExecutor(self.workers, mp_context=context)
            self._pool_ready = self._pool.submit(worker_ready)
            self.workers_started_after_lines = self._lines_submitted
        return self._pool_ready

    def _ready_pool(self) -> Executor | None:
        """The parse workers once they can take work: a starting pool would stall the run."""
        if self._pool_ready is not None and self._pool_ready.done():
            return self._pool
        return None

    def _flush(self, pending: _Pending, source: str) -> None:
        batch = pending.result()
        stored = store_batch(self.engine, batch, pending.cursor, source)
        self.summary.add_batch(source, batch, stored)
        metrics.INGESTED_EVENTS.inc(stored.stored)
        metrics.INGEST_DUPLICATES.inc(stored.duplicates)
        metrics.INGEST_DEAD_LETTERED.inc(stored.dead_lettered)
        self._report(pending.disk_offset)

    def _report(self, disk_bytes_done: int) -> None:
        self.summary.disk_bytes_done = disk_bytes_done
        if self.progress is not None:
            self.summary.seconds = time.monotonic() - self._started
            self.progress(self.summary)

    def _file_failed(self, source: str, line_no: int, reason: str) -> None:
        """Record a file that could not be read (on): a dead letter, and in the summary."""
        record = DeadLetterRecord(source, line_no, f"file not read to its end: {reason}", "")
        store_batch(self.engine, ParsedBatch(dead=[record]), None, source)
        self.summary.file_failed(source, line_no, reason)


def _cursor_at(cursor: CursorState | None, position: _Position) -> CursorState | None:
    """The file's cursor moved to ``position``; None for stdin (nothing to resume)."""
    if cursor is None:
        return None
    if position.last_line is None:  # no complete line read: the cursor stands
        return cursor
    # The tail is the last complete line (at most HEAD_BYTES of it); on resume the
    # same bytes must precede the stored offset.
    return dataclasses.replace(
        cursor,
        offset=position.offset,
        line_no=position.line_no,
        tail_hash=_tail_hash(position.last_line),
    )


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
