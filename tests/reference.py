"""A deliberately simple second implementation of the statistics, for cross-checks.

Plain Python over raw Cowrie JSON lines, written from the counting rules and field
definitions of docs/api.md without reusing the service's parser, SQL or rollups.
"""

from __future__ import annotations

import gzip
import ipaddress
import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

US = 1_000_000
# docs/api.md: an answer carries at most this many characters of a value attackers wrote.
MAX_TEXT = 1024


def capped(value: str) -> tuple[str, bool, int]:
    """(the text an answer carries, whether it was cut, the whole length in code points)."""
    return value[:MAX_TEXT], len(value) > MAX_TEXT, len(value)


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items()}
    return value


def _ts_us(value: Any) -> int | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def _ip(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return value


def _duration(event: dict[str, Any]) -> int | None:
    """Whole microseconds (half up); unknown beyond 2**31 s (docs/api.md)."""
    for key, scale in (("duration", 1.0), ("duration_ms", 1000.0)):
        raw = event.get(key)
        if raw is None or isinstance(raw, bool):
            continue
        try:
            seconds = float(raw) / scale
        except (TypeError, ValueError):
            continue
        micros = math.floor(seconds * 1_000_000 + 0.5)
        return micros if 0 <= micros <= 2**31 * US else None
    return None


@dataclass
class RefEvent:
    sensor: str
    session: str
    eventid: str
    ts: int
    data: dict[str, Any]


def load_events(paths: list[Path], default_sensor: str = "unknown") -> list[RefEvent]:
    """Usable, distinct events of the files (order of files does not matter)."""
    seen: set[str] = set()
    events: list[RefEvent] = []
    for path in paths:
        opener = gzip.open if path.read_bytes()[:2] == b"\x1f\x8b" else open
        with opener(path, "rb") as handle:
            for raw in handle:
                text = raw.decode("utf-8", "replace").replace("\x00", "").strip()
                if not text:
                    continue
                try:
                    obj = json.loads(text)
                except ValueError:
                    continue
                if not isinstance(obj, dict):
                    continue
                obj = _clean(obj)
                ts = _ts_us(obj.get("timestamp"))
                if (
                    not isinstance(obj.get("eventid"), str)
                    or not isinstance(obj.get("session"), str)
                    or ts is None
                ):
                    continue
                sensor = obj.get("sensor") if isinstance(obj.get("sensor"), str) else None
                sensor = sensor or default_sensor
                identity = json.dumps(
                    dict(obj, timestamp=ts, sensor=sensor), sort_keys=True, ensure_ascii=False
                )
                if identity in seen:
                    continue
                seen.add(identity)
                events.append(RefEvent(sensor, obj["session"], obj["eventid"], ts, obj))
    return events


@dataclass
class RefSession:
    sensor: str
    start: int
    end: int
    src_ip: str | None = None
    protocol: str = "unknown"
    duration: int | None = None  # microseconds
    commands: int = 0
    login_successes: int = 0
    events: list[RefEvent] = field(default_factory=list)


def sessions_of(events: list[RefEvent]) -> dict[tuple[str, str], RefSession]:
    grouped: defaultdict[tuple[str, str], list[RefEvent]] = defaultdict(list)
    for e in events:
        grouped[(e.sensor, e.session)].append(e)
    sessions = {}
    for key, evs in grouped.items():
        evs.sort(key=lambda e: e.ts)
        s = RefSession(key[0], evs[0].ts, evs[-1].ts, events=evs)
        s.src_ip = next((_ip(e.data.get("src_ip")) for e in evs if _ip(e.data.get("src_ip"))), None)
        connects = [e for e in evs if e.eventid == "cowrie.session.connect"]
        if connects and connects[0].data.get("protocol") in ("ssh", "telnet"):
            s.protocol = connects[0].data["protocol"]
        closed = [e for e in evs if e.eventid == "cowrie.session.closed"]
        if closed:
            s.duration = _duration(closed[-1].data)
        s.commands = sum(e.eventid == "cowrie.command.input" for e in evs)
        s.login_successes = sum(e.eventid == "cowrie.login.success" for e in evs)
        sessions[key] = s
    return sessions


def _in(ts: int, start: int | None, end: int | None) -> bool:
    return (start is None or ts >= start) and (end is None or ts < end)


def is_download(e: RefEvent) -> bool:
    return e.eventid == "cowrie.session.file_download" and isinstance(e.data.get("shasum"), str)


def session_stats(
    events: list[RefEvent],
    start: int | None = None,
    end: int | None = None,
    sensors: set[str] | None = None,
) -> dict[str, Any]:
    evs = [e for e in events if (sensors is None or e.sensor in sensors) and _in(e.ts, start, end)]
    all_sessions = sessions_of([e for e in events if sensors is None or e.sensor in sensors])
    chosen = [s for s in all_sessions.values() if _in(s.start, start, end)]
    logins = [e for e in evs if e.eventid in ("cowrie.login.success", "cowrie.login.failed")]
    downloads = [e for e in evs if is_download(e)]
    durations = [s.duration for s in chosen if s.duration is not None]
    protocols = Counter({"ssh": 0, "telnet": 0, "unknown": 0})
    protocols.update(s.protocol for s in chosen)
    return {
        "total_sessions": len(chosen),
        "unique_source_ips": len({s.src_ip for s in chosen if s.src_ip is not None}),
        "sessions_with_login_success": sum(s.login_successes > 0 for s in chosen),
        "login_attempts": len(logins),
        "login_successes": sum(e.eventid == "cowrie.login.success" for e in logins),
        "login_failures": sum(e.eventid == "cowrie.login.failed" for e in logins),
        "sessions_with_commands": sum(s.commands > 0 for s in chosen),
        "total_commands": sum(e.eventid == "cowrie.command.input" for e in evs),
        "avg_commands_per_session": (
            sum(s.commands for s in chosen) / len(chosen) if chosen else 0.0
        ),
        "max_commands_per_session": max((s.commands for s in chosen), default=0),
        "file_downloads": len(downloads),
        "unique_download_hashes": len({e.data["shasum"] for e in downloads}),
        "avg_duration_seconds": sum(durations) / len(durations) / US if durations else 0.0,
        "sessions_with_duration": len(durations),
        "sessions_by_protocol": dict(protocols),
    }


def _rank(items: dict[str, tuple[int, set[Any], int, int]], top_n: int) -> list[tuple[Any, ...]]:
    """Ordered by the whole values, then each cut as answers cut it."""
    ordered = sorted(items.items(), key=lambda kv: (-kv[1][0], kv[0].encode()))
    return [(*capped(v), c, len(ss), lo, hi) for v, (c, ss, lo, hi) in ordered[:top_n]]


def _accumulate(pairs: list[tuple[str, Any, int]]) -> dict[str, tuple[int, set[Any], int, int]]:
    acc: dict[str, tuple[int, set[Any], int, int]] = {}
    for value, session, ts in pairs:
        count, sessions, lo, hi = acc.get(value, (0, set(), ts, ts))
        sessions.add(session)
        acc[value] = (count + 1, sessions, min(lo, ts), max(hi, ts))
    return acc


def key(e: RefEvent) -> tuple[str, str]:
    return (e.sensor, e.session)


def threat_stats(
    events: list[RefEvent],
    start: int | None = None,
    end: int | None = None,
    sensors: set[str] | None = None,
    top_n: int = 10,
) -> dict[str, Any]:
    evs = [e for e in events if (sensors is None or e.sensor in sensors) and _in(e.ts, start, end)]
    all_sessions = sessions_of([e for e in events if sensors is None or e.sensor in sensors])
    chosen = [(k, s) for k, s in all_sessions.items() if _in(s.start, start, end)]
    ips: dict[str, tuple[int, set[Any], int, int]] = {}
    for session_key, s in chosen:
        if s.src_ip is None:
            continue
        count, sess, lo, hi = ips.get(s.src_ip, (0, set(), s.start, s.end))
        sess.add(session_key)
        ips[s.src_ip] = (count + 1, sess, min(lo, s.start), max(hi, s.end))
    logins = [e for e in evs if e.eventid in ("cowrie.login.success", "cowrie.login.failed")]
    users = _accumulate(
        [
            (e.data["username"], key(e), e.ts)
            for e in logins
            if isinstance(e.data.get("username"), str)
        ]
    )
    passwords = _accumulate(
        [
            (e.data["password"], key(e), e.ts)
            for e in logins
            if isinstance(e.data.get("password"), str)
        ]
    )
    commands = _accumulate(
        [
            (e.data["input"] if isinstance(e.data.get("input"), str) else "", key(e), e.ts)
            for e in evs
            if e.eventid == "cowrie.command.input"
        ]
    )
    creds: dict[tuple[str, str], list[int]] = {}
    for e in logins:
        u, p = e.data.get("username"), e.data.get("password")
        if isinstance(u, str) and isinstance(p, str):
            entry = creds.setdefault((u, p), [0, 0])
            entry[0] += 1
            entry[1] += e.eventid == "cowrie.login.success"
    downloads: dict[str, list[Any]] = {}
    for e in sorted((e for e in evs if is_download(e)), key=lambda e: e.ts):
        found = downloads.setdefault(e.data["shasum"], [0, set(), "", -1])
        found[0] += 1
        found[1].add(key(e))
        url = e.data.get("url")
        if isinstance(url, str) and url and (e.ts, url) > (found[3], found[2]):
            found[2], found[3] = url, e.ts
    return {
        "top_source_ips": _rank(ips, top_n),
        "top_usernames": _rank(users, top_n),
        "top_passwords": _rank(passwords, top_n),
        "top_commands": _rank(commands, top_n),
        "top_credentials": [
            (*capped(u), *capped(p), n, ok)
            for (u, p), (n, ok) in sorted(
                creds.items(), key=lambda kv: (-kv[1][0], kv[0][0].encode(), kv[0][1].encode())
            )[:top_n]
        ],
        "top_downloads": [
            (*capped(sha), *capped(url), n, len(sess))
            for sha, (n, sess, url, _) in sorted(
                downloads.items(), key=lambda kv: (-kv[1][0], kv[0].encode())
            )[:top_n]
        ],
        "unique_source_ips": len(ips),
        "unique_usernames": len(users),
        "unique_passwords": len(passwords),
        "unique_download_hashes": len(downloads),
    }


def sensor_stats(
    events: list[RefEvent], start: int | None = None, end: int | None = None
) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = {}
    sessions = sessions_of(events)
    for name in sorted({e.sensor for e in events}, key=str.encode):
        evs = [e for e in events if e.sensor == name and _in(e.ts, start, end)]
        chosen = [s for s in sessions.values() if s.sensor == name and _in(s.start, start, end)]
        result[name] = {
            "sessions": len(chosen),
            "unique_source_ips": len({s.src_ip for s in chosen if s.src_ip}),
            "events": len(evs),
            "login_successes": sum(e.eventid == "cowrie.login.success" for e in evs),
            "file_downloads": sum(is_download(e) for e in evs),
            "first_seen": min((e.ts for e in evs), default=None),
            "last_seen": max((e.ts for e in evs), default=None),
        }
    return result
