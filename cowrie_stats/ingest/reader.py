"""Read log sources (files, .gz, directories, stdin) in batches, resuming from cursors.

A file's cursor is keyed by a hash of its first line (decompressed), so a file
that grows, is renamed by rotation, or is gzipped after it was read resumes
where it stopped; a hash of the bytes just before the cursor guards against a
different file that happens to share the first line (it is read from the start).
The cursor is committed in the same transaction as the batch it covers: a run
killed at any point resumes with exactly the totals of an uninterrupted one.

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
import json
import multiprocessing
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import Engine

from cowrie_stats import metrics
from cowrie_stats.ingest.batch import ParsedBatch, parse_batch, worker_ready
from cowrie_stats.ingest.values import ValueIds
from cowrie_stats.ingest.writer import BatchWriter, CursorState, load_cursor

HEAD_BYTES = 4096
DEFAULT_BATCH_LINES = 5000
# Below this many lines in one run, starting worker processes (about 0.3 s)
# costs more than it saves: tests and the demo sample never start them.
PARALLEL_AFTER_LINES = 50_000
# To tell from a file's size whether it holds that many lines: Cowrie lines are
# about 300 bytes, and gzip shrinks them about tenfold (a low guess is harmless:
# the count of lines read still starts the workers).
LINE_BYTES = 300
GZIP_RATIO = 10
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
class _Pending:
    """A batch handed to the parser, with the cursor to commit once it is stored."""

    parsed: Future[ParsedBatch] | ParsedBatch
    cursor: CursorState | None

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
    ) -> None:
        self.engine = engine
        self.default_sensor = default_sensor
        self.batch_lines = batch_lines
        self.progress = progress
        self.workers = workers
        self.parallel_after_lines = parallel_after_lines
        self.summary = IngestSummary()
        self._values = ValueIds()  # dictionary ids, cached across the run's batches
        self._started = time.monotonic()
        self._pool: Executor | None = None
        self._pool_ready: Future[None] | None = None
        self._lines_submitted = 0
        self.batches_parsed_in_workers = 0
        self.workers_started_after_lines: int | None = None

    def ingest(self, paths: Iterable[str], stdin: BinaryIO | None = None) -> IngestSummary:
        try:
            for path in discover(paths):
                self.summary.files += 1
                self.summary.sources.append(path)
                if path == STDIN:
                    self._ingest_stream(stdin or sys.stdin.buffer, "<stdin>", None)
                else:
                    self._ingest_file(path)
        finally:
            if self._pool is not None:
                self._pool.shutdown(cancel_futures=True)
                self._pool = self._pool_ready = None
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
            stat = os.stat(path)
            size = stat.st_size * (GZIP_RATIO if compressed else 1)
            if (size - offset) // LINE_BYTES > self.parallel_after_lines:
                self.start_workers()
            cursor = CursorState(
                head_hash=head,
                path=os.path.abspath(path),
                inode=stat.st_ino,
                compressed=compressed,
                offset=offset,
                line_no=line_no,
                tail_hash=_tail_hash(tail),
            )
            self._ingest_stream(stream, path, cursor)

    def _ingest_stream(self, stream: BinaryIO, source: str, cursor: CursorState | None) -> None:
        # The cursor covers complete lines only: a last line without its newline
        # may still be being written, so it is read again next time.
        position = _Position(cursor.offset, cursor.line_no) if cursor else _Position(0, 0)
        pending: deque[_Pending] = deque()
        for lines in _batches(stream, self.batch_lines):
            first_line_no = position.line_no + 1
            self._advance(position, lines)
            parsed = self._parse(lines, source, first_line_no)
            pending.append(_Pending(parsed, _cursor_at(cursor, position)))
            # Ordered and bounded: write the oldest batch once enough are in flight.
            while len(pending) > self.workers:
                self._flush(pending.popleft())
        while pending:
            self._flush(pending.popleft())

    def _advance(self, position: _Position, lines: list[bytes]) -> None:
        for line in lines:
            self.summary.bytes_read += len(line)
            if line.endswith(b"\n"):
                position.offset += len(line)
                position.line_no += 1
                position.last_line = line

    def _parse(
        self, lines: list[bytes], source: str, first_line_no: int
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

    def _flush(self, pending: _Pending) -> None:
        batch = pending.result()
        self.summary.lines_read += batch.lines
        self.summary.blank_lines += batch.blank
        with self.engine.begin() as conn:
            result = BatchWriter(conn, self._values).write(batch.events, batch.dead, pending.cursor)
        self.summary.events_stored += result.stored
        self.summary.duplicates_skipped += result.duplicates
        self.summary.dead_lettered += result.dead_lettered
        metrics.INGESTED_EVENTS.inc(result.stored)
        metrics.INGEST_DUPLICATES.inc(result.duplicates)
        metrics.INGEST_DEAD_LETTERED.inc(result.dead_lettered)
        if self.progress is not None:
            self.summary.seconds = time.monotonic() - self._started
            self.progress(self.summary)


def _batches(stream: BinaryIO, size: int) -> Iterator[list[bytes]]:
    """The stream's lines in lists of ``size`` (the last list may be shorter)."""
    batch: list[bytes] = []
    for line in stream:
        batch.append(line)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


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
