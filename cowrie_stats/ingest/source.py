"""Where log lines come from: finding the files, opening them, reading bounded lines.

Everything here assumes hostile input. A line is read only up to a limit: the
rest of a longer line is skipped in chunks, never held, so memory stays flat
whatever a file (or a gzip bomb) holds. A file that cannot be read to its end
stops only that file: the lines read before the damage are handed over, and the
error is kept for the caller to record.
"""

from __future__ import annotations

import gzip
import io
import os
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from cowrie_stats.ingest.batch import Line, OverlongLine
from cowrie_stats.ingest.parse import MAX_RAW_CHARS

GZIP_MAGIC = b"\x1f\x8b"
STDIN = "-"
DEFAULT_MAX_LINE_BYTES = 1 << 20
SKIP_CHUNK = 1 << 20  # how much of an over-long line is read at a time while skipping it
TAIL_BYTES = 4096  # the end of a line that a cursor after it hashes
# What reading a damaged, truncated or unreadable file raises.
READ_ERRORS = (OSError, EOFError, zlib.error)


def is_log_file(path: Path) -> bool:
    """Cowrie JSON logs as found in a log directory: cowrie.json, rotations, .gz."""
    name = path.name
    return ".json" in name and not name.startswith(".")


@dataclass(frozen=True)
class Source:
    """A file to read; ``scanned`` files were found in a directory, not named by the operator."""

    path: str
    scanned: bool = False


@dataclass
class Discovery:
    """What the paths given on the command line expand to."""

    sources: list[Source] = field(default_factory=list)
    # (path, why it was not read): symlinks out of a scanned directory.
    skipped: list[tuple[str, str]] = field(default_factory=list)
    # (path, error): directories that could not be listed.
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    # Directories given that hold no log file.
    empty: list[str] = field(default_factory=list)


def discover_sources(paths: Iterable[str]) -> Discovery:
    """Expand directories recursively into their log files, in a stable order.

    A directory scan reads a symlink only when it points to a file inside the
    directory given (as that file, once); it never follows one that points out
    of it, nor a symlinked directory. Files named explicitly are read as given.
    """
    found = Discovery()
    for raw in paths:
        if raw != STDIN and Path(raw).is_dir():
            before = len(found.sources)
            _scan(Path(raw), found)
            if len(found.sources) == before:
                found.empty.append(raw)
        elif raw == STDIN or Path(raw).exists():
            found.sources.append(Source(raw))
        else:
            raise FileNotFoundError(f"no such file or directory: {raw}")
    return found


def discover(paths: Iterable[str]) -> Iterator[str]:
    """The paths of the files :func:`discover_sources` finds."""
    yield from (source.path for source in discover_sources(paths).sources)


def _scan(root: Path, found: Discovery) -> None:
    real_root = root.resolve()
    seen: set[str] = set()
    entries: list[tuple[str, Source]] = []

    def unlistable(error: OSError) -> None:
        found.unreadable.append((str(error.filename), f"cannot list directory: {error.strerror}"))

    for folder, dirs, files in os.walk(root, onerror=unlistable):
        for name in sorted(files + dirs):
            path = Path(folder, name)
            if not path.is_symlink():
                if name in files and is_log_file(path):
                    entries.append((str(path), Source(str(path), scanned=True)))
                continue
            target = path.resolve()
            if not target.is_relative_to(real_root):
                found.skipped.append((str(path), f"symlink to {target}, outside {root}"))
            elif target.is_file() and is_log_file(path):
                # Read as its target: a link and its target are one file, read once.
                entries.append((str(target), Source(str(target), scanned=True)))
    for key, source in sorted(entries, key=lambda entry: entry[0]):
        if key not in seen and not Path(key).is_symlink():
            seen.add(key)
            found.sources.append(source)


def open_source(source: Source) -> tuple[BinaryIO, BinaryIO, bool]:
    """(decompressed stream, the file on disk, whether it is gzip).

    A file found by a scan is opened without following a symlink put in its
    place since: what the scan decided is what is read.
    """
    flags = os.O_RDONLY | (os.O_NOFOLLOW if source.scanned else 0)
    disk = os.fdopen(os.open(source.path, flags), "rb")
    try:
        stream, compressed = decompressed(disk)
    except BaseException:
        disk.close()
        raise
    return stream, disk, compressed


def decompressed(raw: BinaryIO) -> tuple[BinaryIO, bool]:
    """``raw``, decompressed when it starts with the gzip magic bytes (files and pipes alike)."""
    head = raw.read(len(GZIP_MAGIC))
    if raw.seekable():
        raw.seek(0)
        replayed: BinaryIO = raw
    else:  # a pipe: hand the bytes read back in front of the rest
        replayed = io.BufferedReader(_Prefixed(head, raw))
    if head == GZIP_MAGIC:
        return gzip.GzipFile(fileobj=replayed, mode="rb"), True  # type: ignore[return-value]
    return replayed, False


class _Prefixed(io.RawIOBase):
    """``prefix`` then the rest of ``stream``: a pipe with its first bytes put back."""

    def __init__(self, prefix: bytes, stream: BinaryIO) -> None:
        self._prefix = prefix
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._prefix:
            data, self._prefix = self._prefix[: len(buffer)], self._prefix[len(buffer) :]
        else:
            read1 = getattr(self._stream, "read1", self._stream.read)
            data = read1(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class ReadFailure:
    """The error that stopped reading a stream, if any (set by :func:`read_lines`)."""

    def __init__(self) -> None:
        self.error: BaseException | None = None


def read_lines(stream: BinaryIO, limit: int, failure: ReadFailure) -> Iterator[Line]:
    """The stream's lines, each at most ``limit`` bytes; longer ones as :class:`OverlongLine`.

    A read error ends the lines (those before it were yielded) and is kept in
    ``failure``.
    """
    try:
        while line := stream.readline(limit):
            if len(line) < limit or line.endswith(b"\n"):
                yield line
                continue
            rest = _skip_line(stream)
            if rest is None:  # exactly ``limit`` bytes, the last line, no newline
                yield line
            else:
                length, tail, ended = rest
                tail = (line[-TAIL_BYTES:] + tail)[-TAIL_BYTES:]
                yield OverlongLine(limit + length, line[:MAX_RAW_CHARS], tail, ended, limit)
    except READ_ERRORS as exc:
        failure.error = exc


def _skip_line(stream: BinaryIO) -> tuple[int, bytes, bool] | None:
    """Read past the rest of the current line: (its length, its last bytes, whether it
    ended); None when there is no more."""
    length = 0
    tail = b""
    while chunk := stream.readline(SKIP_CHUNK):
        length += len(chunk)
        tail = (tail + chunk[-TAIL_BYTES:])[-TAIL_BYTES:]
        if chunk.endswith(b"\n"):
            return length, tail, True
    return (length, tail, False) if length else None


def batches(lines: Iterable[Line], max_lines: int, max_bytes: int) -> Iterator[list[Line]]:
    """``lines`` in lists of at most ``max_lines`` lines and about ``max_bytes`` bytes."""
    batch: list[Line] = []
    size = 0
    for line in lines:
        batch.append(line)
        size += len(line.head) if isinstance(line, OverlongLine) else len(line)
        if len(batch) >= max_lines or size >= max_bytes:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch
