"""What one ingest batch changes in the summaries, and storing it.

:class:`SummaryChanges` is computed without a connection from the batch's new
events, its sessions before and after the merge and its flagged detail rows;
:func:`store_summaries` then applies it. Every rule is order-independent (sums,
minimum/maximum, unions, and recomputation where a share must be taken back),
so any split of the logs into files and batches gives the same summaries, and
the same summaries as a recomputation from the raw rows (tests/test_summaries.py).

Event figures go to the pieces holding the events; session figures to the
pieces holding each session's start, as the session stands after the batch: a
session that a batch changes gives back its old share and adds its new one.
Changes are gathered per minute and rolled up to hours and days here, so the
per-event work is one dictionary lookup whatever the number of levels.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from pyroaring import BitMap
from sqlalchemy import Table

from cowrie_stats.db.models import (
    EVENT_COUNTERS,
    ROLLUP_COMBINE,
    ROLLUP_SETS,
    ROLLUP_VALUES,
    ROLLUPS,
    SESSION_COUNTERS,
    VALUE_KINDS,
    Rule,
)
from cowrie_stats.ingest.details import CommandRow, DownloadRow, LoginRow
from cowrie_stats.ingest.parse import (
    COMMAND_INPUT,
    FILE_DOWNLOAD,
    LOGIN_FAILED,
    LOGIN_SUCCESS,
    ParsedEvent,
)
from cowrie_stats.timeline import DAY, HOUR, LEVELS, MINUTE, Level


class SummaryStore(Protocol):
    """What storing the summaries needs of the database (the ingest's bulk operations)."""

    def upsert(
        self,
        table: Table,
        keys: Sequence[str],
        rules: Mapping[str, Rule],
        rows: Sequence[Sequence[Any]],
    ) -> None: ...

    def stored_sets(
        self, keys: Sequence[tuple[int, int, int, int]]
    ) -> dict[tuple[int, int, int, int], bytes]: ...

    def delete_values(self, keys: Sequence[tuple[int, int, int, int, int]]) -> None: ...

    def max_session_commands(self, sensor_id: int, low: int, high: int) -> int: ...

    def session_ips(self, sensor_id: int, low: int, high: int) -> list[int]: ...

    def source_ip_figures(
        self, sensor_id: int, ip: int, low: int, high: int
    ) -> tuple[int, int, int, int, int] | None: ...


VALUE_RULES: dict[str, Rule] = {
    "uses": "add",
    "first_uses": "add",
    "first_ts_us": "min",
    "last_ts_us": "max",
    "successes": "add",
}
PIECE_KEY = ("level", "piece", "sensor_id")
#: Levels each summary is kept at (finest first): counters at every level; the
#: distinct sets from hours (a minute's bitmaps cost more to keep than the raw rows
#: of a partial hour cost to read); the rankings' per-value figures per day.
SET_LEVELS: tuple[Level, ...] = (HOUR, DAY)
VALUE_LEVELS: tuple[Level, ...] = (DAY,)
#: Distinct sets: source IPs of sessions (by start) and these values of events.
EVENT_SET_KINDS = frozenset(VALUE_KINDS[value] for value in ("username", "password", "shasum"))
SRC_IP = VALUE_KINDS["src_ip"]
CREDENTIAL = VALUE_KINDS["credential"]

# Field positions of the per-event tables' named rows (cowrie_stats.ingest.details).
_FIELD_AT = {
    table: {name: at for at, name in enumerate(row._fields)}
    for table, row in (
        ("login_attempts", LoginRow),
        ("commands", CommandRow),
        ("downloads", DownloadRow),
    )
}

PieceKey = tuple[int, int, int]  # (level id, piece, sensor_id)
SetKey = tuple[int, int, int, int]  # (kind, level id, piece, sensor_id)
ValueKey = tuple[int, int, int, int, int]  # (kind, level id, piece, sensor_id, value_id)


# The order of a Counters list and of a rollups row: the sums first, so that merging
# two is one C-level map over that slice.
FIGURES = [
    *(name for name, rule in ROLLUP_COMBINE.items() if rule == "add"),
    *(name for name, rule in ROLLUP_COMBINE.items() if rule != "add"),
]
ROLLUP_RULES: dict[str, Rule] = {name: ROLLUP_COMBINE[name] for name in FIGURES}
_SUMS = sum(1 for rule in ROLLUP_COMBINE.values() if rule == "add")
_SMALLEST = [i for i, name in enumerate(FIGURES) if ROLLUP_COMBINE[name] == "min"]
_LARGEST = [i for i, name in enumerate(FIGURES) if ROLLUP_COMBINE[name] == "max"]
EVENTS, LOGINS, SUCCESSES, COMMANDS, DOWNLOADS = (FIGURES.index(n) for n in EVENT_COUNTERS)
FIRST, LAST, MOST_COMMANDS = (
    FIGURES.index(n) for n in ("first_ts_us", "last_ts_us", "max_session_commands")
)
SESSION_AT = [FIGURES.index(name) for name in SESSION_COUNTERS]

# One piece's change in ``rollups``, as a list in FIGURES order.
Counters = list[Any]


def new_counters() -> Counters:
    counters: Counters = [0] * len(FIGURES)
    counters[FIRST] = counters[LAST] = None
    return counters


def merge_counters(into: Counters, other: Counters) -> None:
    into[:_SUMS] = map(operator.add, into[:_SUMS], other[:_SUMS])
    for i in _SMALLEST:
        if other[i] is not None and (into[i] is None or other[i] < into[i]):
            into[i] = other[i]
    for i in _LARGEST:
        if other[i] is not None and (into[i] is None or other[i] > into[i]):
            into[i] = other[i]


def session_share(values: Mapping[str, Any]) -> tuple[int, ...]:
    """A session's part of the session figures, in SESSION_COUNTERS order."""
    commands = values["commands"]
    duration = values["duration_us"]
    return (
        1,
        int(values["login_successes"] > 0),
        int(commands > 0),
        commands,
        int(duration is not None),
        duration or 0,
        int(values["protocol"] == "ssh"),
        int(values["protocol"] == "telnet"),
    )


def _coarser(level: Level, finer: Level, piece: int) -> int:
    return finer.start_of(piece) // level.width_us


def _left(levels: Iterable[Level], old_ts: int, new_ts: int) -> list[Level]:
    """The levels at which a start moved from ``old_ts`` to ``new_ts`` changes piece."""
    return [level for level in levels if level.piece(old_ts) != level.piece(new_ts)]


def _joined(known: list[int] | None, figures: list[int]) -> list[int]:
    """Two changes of one ranking entry as one: counts add, times widen."""
    if known is None:
        return figures
    return [
        known[0] + figures[0],
        known[1] + figures[1],
        min(known[2], figures[2]),
        max(known[3], figures[3]),
        known[4] + figures[4],
    ]


class SummaryChanges:
    """A batch's changes to ``rollups``, ``rollup_sets`` and ``rollup_values``."""

    def __init__(self) -> None:
        self.minutes: dict[PieceKey, Counters] = {}
        self.max_to_recompute: set[PieceKey] = set()
        self.set_additions: dict[SetKey, set[int]] = {}
        self.sets_to_rebuild: set[SetKey] = set()
        self.values: dict[ValueKey, list[int]] = {}
        self.values_to_rebuild: set[ValueKey] = set()

    def _minute(self, sensor_id: int, minute: int) -> Counters:
        key = (MINUTE.id, minute, sensor_id)
        counters = self.minutes.get(key)
        if counters is None:
            counters = self.minutes[key] = new_counters()
        return counters

    def _add_to_set(self, kind: int, sensor_id: int, ts_us: int, value_id: int) -> None:
        finest = SET_LEVELS[0]
        key = (kind, finest.id, ts_us // finest.width_us, sensor_id)
        members = self.set_additions.get(key)
        if members is None:
            members = self.set_additions[key] = set()
        members.add(value_id)

    # -- events ------------------------------------------------------------------------

    def add_events(self, events: Iterable[ParsedEvent], sensor_ids: Mapping[str, int]) -> None:
        """Count new events into the event figures of their minutes."""
        width = MINUTE.width_us
        for e in events:
            ts_us = e.ts_us
            counters = self._minute(sensor_ids[e.sensor], ts_us // width)
            counters[EVENTS] += 1
            if counters[FIRST] is None or ts_us < counters[FIRST]:
                counters[FIRST] = ts_us
            if counters[LAST] is None or ts_us > counters[LAST]:
                counters[LAST] = ts_us
            eventid = e.eventid
            if eventid == LOGIN_SUCCESS:
                counters[LOGINS] += 1
                counters[SUCCESSES] += 1
            elif eventid == LOGIN_FAILED:
                counters[LOGINS] += 1
            elif eventid == COMMAND_INPUT:
                counters[COMMANDS] += 1
            elif eventid == FILE_DOWNLOAD and e.shasum is not None:
                counters[DOWNLOADS] += 1

    def add_detail_rows(
        self, table: str, rows: Iterable[Any], pairs: Sequence[tuple[str, str]]
    ) -> None:
        """Count flagged rows of a per-event table (named tuples) into sets and values.

        ``pairs`` are the table's (value column, first-use flag) pairs. One of the
        ingest's hot loops (a pass per row and value): lookups bound to locals.
        """
        value_level, set_level = VALUE_LEVELS[0], SET_LEVELS[0]
        value_width, set_width = value_level.width_us, set_level.width_us
        values, additions = self.values, self.set_additions
        for value, flag in pairs:
            kind = VALUE_KINDS[value]
            in_sets = kind in EVENT_SET_KINDS
            id_at, flag_at = _FIELD_AT[table][f"{value}_id"], _FIELD_AT[table][flag]
            for row in rows:
                value_id = row[id_at]
                if value_id is None:
                    continue
                ts_us, sensor_id = row.ts_us, row.sensor_id
                if in_sets:
                    set_key = (kind, set_level.id, ts_us // set_width, sensor_id)
                    members = additions.get(set_key)
                    if members is None:
                        members = additions[set_key] = set()
                    members.add(value_id)
                key = (kind, value_level.id, ts_us // value_width, sensor_id, value_id)
                figures = values.get(key)
                if figures is None:
                    values[key] = [1, int(row[flag_at]), ts_us, ts_us, 0]
                    continue
                figures[0] += 1
                figures[1] += row[flag_at]
                if ts_us < figures[2]:
                    figures[2] = ts_us
                elif ts_us > figures[3]:
                    figures[3] = ts_us

    def _use(
        self,
        kind: int,
        piece: int,
        sensor_id: int,
        value_id: int,
        ts_us: int,
        first: int,
        success: int = 0,
    ) -> None:
        key = (kind, VALUE_LEVELS[0].id, piece, sensor_id, value_id)
        figures = self.values.get(key)
        if figures is None:
            self.values[key] = [1, first, ts_us, ts_us, success]
            return
        figures[0] += 1
        figures[1] += first
        if ts_us < figures[2]:
            figures[2] = ts_us
        elif ts_us > figures[3]:
            figures[3] = ts_us
        figures[4] += success

    def add_credentials(self, rows: Iterable[Any]) -> None:
        """Count login rows (named tuples) into the credential pairs' uses and successes."""
        finest = VALUE_LEVELS[0]
        for row in rows:
            if row.credential_id is not None:
                piece = finest.piece(row.ts_us)
                self._use(
                    CREDENTIAL,
                    piece,
                    row.sensor_id,
                    row.credential_id,
                    row.ts_us,
                    0,
                    int(row.success),
                )

    def unflag(self, value_column: str, sensor_id: int, value_id: int, ts_us: int) -> None:
        """A stored row at ``ts_us`` lost its first-use flag for the value."""
        finest = VALUE_LEVELS[0]
        key = (VALUE_KINDS[value_column], finest.id, finest.piece(ts_us), sensor_id, value_id)
        figures = self.values.get(key)
        if figures is None:
            # Nothing new in that piece yet: the times are the stored row's, inside its range.
            self.values[key] = [0, -1, ts_us, ts_us, 0]
        else:
            figures[1] -= 1

    # -- sessions ------------------------------------------------------------------------

    def add_session(self, old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> None:
        """Move a session's share from where it stood (``old``, None if new) to where it stands."""
        width = MINUTE.width_us
        sensor_id, new_start = new["sensor_id"], new["start_ts_us"]
        new_share = session_share(new)
        if old is not None:
            old_start = old["start_ts_us"]
            old_share = session_share(old)
            if old_start // width != new_start // width or old_share != new_share:
                self._add_share(sensor_id, old_start // width, old_share, -1)
                if old["commands"]:
                    for level in _left(LEVELS, old_start, new_start):
                        self.max_to_recompute.add((level.id, level.piece(old_start), sensor_id))
                self._add_share(sensor_id, new_start // width, new_share, 1)
        else:
            self._add_share(sensor_id, new_start // width, new_share, 1)
        counters = self._minute(sensor_id, new_start // width)
        if new["commands"] > counters[MOST_COMMANDS]:
            counters[MOST_COMMANDS] = new["commands"]
        self._session_ip(old, new)

    def _add_share(self, sensor_id: int, minute: int, share: Sequence[int], sign: int) -> None:
        counters = self._minute(sensor_id, minute)
        for at, value in zip(SESSION_AT, share, strict=True):
            counters[at] += sign * value

    def _session_ip(self, old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> None:
        """Keep the source-IP sets and the source IPs' ranking entries of the session's pieces.

        A session that moved (another IP, or a start in another piece) gives its
        use back where it was and adds it where it is; where it left a piece,
        the piece's entry is recounted from the sessions, since the times of the
        others sharing the IP are not known here.
        """
        sensor_id, new_ip, new_start = new["sensor_id"], new["src_ip_id"], new["start_ts_us"]
        old_ip = None if old is None else old["src_ip_id"]
        if old is not None and old_ip is not None:
            old_start = old["start_ts_us"]
            for level in SET_LEVELS + VALUE_LEVELS:
                if old_ip == new_ip and level.piece(old_start) == level.piece(new_start):
                    continue
                # Another session of the piece may share the IP: recount, don't remove.
                if level in SET_LEVELS:
                    self.sets_to_rebuild.add((SRC_IP, level.id, level.piece(old_start), sensor_id))
                if level in VALUE_LEVELS:
                    key = (SRC_IP, level.id, level.piece(old_start), sensor_id, old_ip)
                    self.values_to_rebuild.add(key)
        finest = SET_LEVELS[0]
        moved = (
            old is None
            or old_ip != new_ip
            or finest.piece(old["start_ts_us"]) != finest.piece(new_start)
        )
        if new_ip is not None and moved:
            self._add_to_set(SRC_IP, sensor_id, new_start, new_ip)
        old_key = None if old is None or old_ip is None else self._ip_key(old)
        new_key = None if new_ip is None else self._ip_key(new)
        if old is not None and old_key is not None and old_key != new_key:
            self._add_ip_use(old_key, -1, old)
        if new_key is not None:
            self._add_ip_use(new_key, int(old_key != new_key), new)

    @staticmethod
    def _ip_key(session: Mapping[str, Any]) -> ValueKey:
        finest = VALUE_LEVELS[0]
        piece = finest.piece(session["start_ts_us"])
        return (SRC_IP, finest.id, piece, session["sensor_id"], session["src_ip_id"])

    def _add_ip_use(self, key: ValueKey, uses: int, session: Mapping[str, Any]) -> None:
        figures = [uses, uses, session["start_ts_us"], session["end_ts_us"], 0]
        self.values[key] = _joined(self.values.get(key), figures)

    # -- rolled up to every level -----------------------------------------------------------

    def rollup_rows(self) -> list[tuple[Any, ...]]:
        pieces: dict[PieceKey, Counters] = dict(self.minutes)
        for (_, minute, sensor_id), counters in self.minutes.items():
            for level in LEVELS[1:]:
                key = (level.id, _coarser(level, MINUTE, minute), sensor_id)
                coarse = pieces.get(key)
                if coarse is None:
                    coarse = pieces[key] = new_counters()
                merge_counters(coarse, counters)
        return [(*key, *counters) for key, counters in sorted(pieces.items())]

    def set_additions_by_level(self) -> dict[SetKey, set[int]]:
        finest = SET_LEVELS[0]
        additions: dict[SetKey, set[int]] = {}
        for (kind, _, piece, sensor_id), members in self.set_additions.items():
            for level in SET_LEVELS:
                key = (kind, level.id, _coarser(level, finest, piece), sensor_id)
                if key not in self.sets_to_rebuild:
                    additions.setdefault(key, set()).update(members)
        return additions

    def value_rows(self) -> list[tuple[Any, ...]]:
        finest, coarser = VALUE_LEVELS[0], VALUE_LEVELS[1:]
        rows: dict[ValueKey, list[int]] = dict(self.values)
        for (kind, _, piece, sensor_id, value_id), figures in self.values.items():
            for level in coarser:
                key = (
                    kind,
                    level.id,
                    finest.start_of(piece) // level.width_us,
                    sensor_id,
                    value_id,
                )
                rows[key] = _joined(rows.get(key), list(figures))
        return [
            (*key, *figures)
            for key, figures in sorted(rows.items())
            if key not in self.values_to_rebuild
        ]


def store_summaries(bulk: SummaryStore, changes: SummaryChanges) -> None:
    """Apply ``changes``; the batch's sessions must be stored already (recounts read them)."""
    bulk.upsert(ROLLUPS, PIECE_KEY, ROLLUP_RULES, changes.rollup_rows())
    _recompute_max_commands(bulk, sorted(changes.max_to_recompute))
    _store_sets(bulk, changes)
    keys = ("kind", *PIECE_KEY, "value_id")
    bulk.upsert(ROLLUP_VALUES, keys, VALUE_RULES, changes.value_rows())
    recounted = []
    for kind, level_id, piece, sensor_id, ip in sorted(changes.values_to_rebuild):
        low, high = _piece_bounds(level_id, piece)
        figures = bulk.source_ip_figures(sensor_id, ip, low, high)
        recounted.append(((kind, level_id, piece, sensor_id, ip), figures))
    bulk.upsert(
        ROLLUP_VALUES,
        keys,
        dict.fromkeys(VALUE_RULES, "replace"),
        [(*key, *figures) for key, figures in recounted if figures is not None],
    )
    bulk.delete_values([key for key, figures in recounted if figures is None])


def _piece_bounds(level_id: int, piece: int) -> tuple[int, int]:
    level = LEVELS[level_id]
    return level.start_of(piece), level.start_of(piece + 1)


def _recompute_max_commands(bulk: SummaryStore, keys: Sequence[PieceKey]) -> None:
    rows = []
    for level_id, piece, sensor_id in keys:
        low, high = _piece_bounds(level_id, piece)
        rows.append((level_id, piece, sensor_id, bulk.max_session_commands(sensor_id, low, high)))
    bulk.upsert(ROLLUPS, PIECE_KEY, {"max_session_commands": "replace"}, rows)


def _store_sets(bulk: SummaryStore, changes: SummaryChanges) -> None:
    additions = changes.set_additions_by_level()
    stored = bulk.stored_sets(sorted(additions))
    rows = []
    for key, members in sorted(additions.items()):
        bitmap = BitMap.deserialize(stored[key]) if key in stored else BitMap()
        bitmap.update(members)
        rows.append((*key, bitmap.serialize()))
    for kind, level_id, piece, sensor_id in sorted(changes.sets_to_rebuild):
        low, high = _piece_bounds(level_id, piece)
        ips = BitMap(bulk.session_ips(sensor_id, low, high))
        rows.append((kind, level_id, piece, sensor_id, ips.serialize()))
    bulk.upsert(ROLLUP_SETS, ("kind", *PIECE_KEY), {"members": "replace"}, rows)
