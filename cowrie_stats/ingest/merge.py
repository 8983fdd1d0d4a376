"""Merging a batch's events into the sessions they belong to (no database).

Every rule is order-independent -- the start and the fields set by "the first"
event take the minimum by (timestamp, event hash), the duration the last close
-- so the same events merged in any split and order give the same sessions.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cowrie_stats.db.models import SESSIONS, VALUE_KINDS
from cowrie_stats.ingest.parse import (
    CLIENT_VERSION,
    COMMAND_INPUT,
    FILE_DOWNLOAD,
    LOGIN_FAILED,
    LOGIN_SUCCESS,
    PROTOCOLS,
    SESSION_CLOSED,
    SESSION_CONNECT,
    ParsedEvent,
)

SESSION_COLUMNS = [c.name for c in SESSIONS.columns]
SESSION_STATE_COLUMNS = [c for c in SESSION_COLUMNS if c not in ("sensor_id", "session")]
# The order a batch is merged in: (ts_us, hash), as a C-level key function.
MERGE_ORDER = operator.attrgetter("ts_us", "hash")
SRC_IP = VALUE_KINDS["src_ip"]
# The parser already drops durations beyond 2**31 s; this keeps the integer in range.
MAX_DURATION_US = 2**31 * 1_000_000


@dataclass
class SessionRow:
    """A ``sessions`` row while a batch is merged into it, with the row as it was stored."""

    values: dict[str, Any]
    stored: Mapping[str, Any] | None = None  # None: new in this batch

    @property
    def is_new(self) -> bool:
        return self.stored is None


def new_session(sensor_id: int, session: str, session_id: int, e: ParsedEvent) -> SessionRow:
    values: dict[str, Any] = dict.fromkeys(SESSION_STATE_COLUMNS)
    values.update(
        id=session_id,
        sensor_id=sensor_id,
        session=session,
        start_ts_us=e.ts_us,
        start_hash=e.hash,
        end_ts_us=e.ts_us,
        protocol="unknown",
        events=0,
        login_attempts=0,
        login_successes=0,
        commands=0,
        downloads=0,
    )
    return SessionRow(values)


def duration_us(seconds: float | None) -> int | None:
    """Whole microseconds, half up (sums stay exact in any order); None when unknown."""
    if seconds is None:
        return None
    # floor(x + 0.5), not round(): the same arithmetic as migration 0007's SQL.
    micros = math.floor(seconds * 1_000_000 + 0.5)
    return micros if 0 <= micros <= MAX_DURATION_US else None


def _precedes(key: tuple[int, bytes], ts_us: int | None, digest: bytes | None) -> bool:
    """Whether the event ordered by ``key`` comes before the event (ts_us, digest), if any."""
    return ts_us is None or digest is None or key < (ts_us, digest)


def merge_event(
    v: dict[str, Any], e: ParsedEvent, value_ids: Mapping[tuple[int, str], int]
) -> None:
    """Fold one new event into its session's values; the result is independent of order.

    The hot loop of the writer (one call per event): plain dict stores, and the
    ordering keys of a field group are only read for the events that can set it.
    """
    ts_us, eventid = e.ts_us, e.eventid
    key = (ts_us, e.hash)
    if key < (v["start_ts_us"], v["start_hash"]):
        v["start_ts_us"], v["start_hash"] = key
    if ts_us > v["end_ts_us"]:
        v["end_ts_us"] = ts_us
    if e.src_ip is not None and _precedes(key, v["src_ip_ts_us"], v["src_ip_hash"]):
        v.update(
            src_ip=e.src_ip,
            src_ip_id=value_ids[(SRC_IP, e.src_ip)],
            src_port=e.src_port,
            src_ip_ts_us=ts_us,
            src_ip_hash=e.hash,
        )
    v["events"] += 1
    if eventid == SESSION_CONNECT:
        if _precedes(key, v["connect_ts_us"], v["connect_hash"]):
            protocol = e.protocol if e.protocol in PROTOCOLS else "unknown"
            v.update(
                protocol=protocol, dst_port=e.dst_port, connect_ts_us=ts_us, connect_hash=e.hash
            )
    elif eventid == SESSION_CLOSED:
        # The duration is the last close's (docs/api.md, counting rules).
        closed_ts, closed_hash = v["closed_ts_us"], v["closed_hash"]
        if closed_ts is None or closed_hash is None or key > (closed_ts, closed_hash):
            v.update(duration_us=duration_us(e.duration_s), closed_ts_us=ts_us, closed_hash=e.hash)
    elif eventid == CLIENT_VERSION:
        if _precedes(key, v["version_ts_us"], v["version_hash"]):
            v.update(client_version=e.client_version, version_ts_us=ts_us, version_hash=e.hash)
    elif eventid in (LOGIN_FAILED, LOGIN_SUCCESS):
        v["login_attempts"] += 1
        v["login_successes"] += eventid == LOGIN_SUCCESS
    elif eventid == COMMAND_INPUT:
        v["commands"] += 1
    elif eventid == FILE_DOWNLOAD and e.shasum is not None:
        v["downloads"] += 1
