"""Time pieces: the UTC minutes, hours and days the summaries are kept for.

The ingest adds every event (and every session, by its start) to the piece that
holds it at each level; a query cuts its window into the fewest whole pieces,
coarsest first, plus at most two partial minutes at its edges, which are read
from the raw rows. A window of a year is then a few hundred pieces whatever
the data holds, and a window's edges are never longer than a minute::

    window      |--+----------+------------------------+-----------+--|
    raw edges   |--|                                               |--|
    minutes        |----------|                        |-----------|
    hours                     |--- days / hours ... ---|

Pieces nest (a day is 24 whole hours, an hour 60 whole minutes) and start at
the Unix epoch, which is a UTC midnight, so a piece index is ``ts_us // width``.
"""

from __future__ import annotations

from dataclasses import dataclass

US_PER_MINUTE = 60_000_000
US_PER_HOUR = 3_600_000_000
US_PER_DAY = 86_400_000_000


@dataclass(frozen=True)
class Level:
    """One width of pieces; ``id`` is what the summary tables store in ``level``."""

    id: int
    name: str
    width_us: int

    def piece(self, ts_us: int) -> int:
        return ts_us // self.width_us

    def start_of(self, piece: int) -> int:
        return piece * self.width_us


MINUTE = Level(0, "minute", US_PER_MINUTE)
HOUR = Level(1, "hour", US_PER_HOUR)
DAY = Level(2, "day", US_PER_DAY)
#: Finest first. Counters and distinct sets are kept at every level.
LEVELS = (MINUTE, HOUR, DAY)
LEVEL_BY_WIDTH = {level.width_us: level for level in LEVELS}


@dataclass(frozen=True)
class Span:
    """A half-open range of microseconds [start_us, end_us); None is unbounded."""

    start_us: int | None
    end_us: int | None


@dataclass(frozen=True)
class PieceRange:
    """Whole pieces ``first <= piece < end`` of one level (None: unbounded)."""

    level: Level
    first: int | None
    end: int | None

    @property
    def span(self) -> Span:
        return Span(
            None if self.first is None else self.level.start_of(self.first),
            None if self.end is None else self.level.start_of(self.end),
        )


@dataclass(frozen=True)
class Cut:
    """A window cut into whole pieces and the partial-minute edges left over."""

    pieces: tuple[PieceRange, ...]
    edges: tuple[Span, ...]


def _ceil(value: int, width: int) -> int:
    return -(-value // width) * width


def _floor(value: int, width: int) -> int:
    return value // width * width


def cut(span: Span, levels: tuple[Level, ...] = LEVELS) -> Cut:
    """The fewest whole pieces of ``levels`` (finest first) covering ``span``, and its edges.

    At each level the ends move inwards to the next coarser level's boundaries;
    what they pass over is whole pieces of this level. An unbounded end is
    covered by the coarsest level.
    """
    start, end = span.start_us, span.end_us
    finest = levels[0].width_us
    low = None if start is None else _ceil(start, finest)
    high = None if end is None else _floor(end, finest)
    if low is not None and high is not None and low >= high:
        return Cut((), (span,))  # inside one minute: all raw
    edges = []
    if start is not None and low is not None and start < low:
        edges.append(Span(start, low))
    if end is not None and high is not None and high < end:
        edges.append(Span(high, end))
    pieces: list[PieceRange] = []
    for index, level in enumerate(levels):
        coarser = levels[index + 1] if index + 1 < len(levels) else None
        if coarser is None:
            pieces.append(_range(level, low, high))
            break
        next_low = None if low is None else _ceil(low, coarser.width_us)
        next_high = None if high is None else _floor(high, coarser.width_us)
        if next_low is not None and next_high is not None and next_low >= next_high:
            pieces.append(_range(level, low, high))  # no whole coarser piece inside
            break
        if low is not None and next_low is not None and low < next_low:
            pieces.append(_range(level, low, next_low))
        if high is not None and next_high is not None and next_high < high:
            pieces.append(_range(level, next_high, high))
        low, high = next_low, next_high
    return Cut(tuple(p for p in pieces if not _empty(p)), tuple(edges))


def _range(level: Level, low: int | None, high: int | None) -> PieceRange:
    return PieceRange(
        level,
        None if low is None else low // level.width_us,
        None if high is None else high // level.width_us,
    )


def _empty(pieces: PieceRange) -> bool:
    return pieces.first is not None and pieces.end is not None and pieces.first >= pieces.end
