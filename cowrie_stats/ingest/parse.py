"""Turn one raw Cowrie log line into a normalised event, or a reason it is unusable.

Rules (shared/COUNTING.md): NULs are removed from all text first; an event is
usable when it is a JSON object with a string ``eventid``, a string ``session``
and a parseable ``timestamp``; two events are the same when their content is
equal after NUL removal with timestamps compared as instants.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import json
import math
import re
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import orjson

# Bytes of an event's identity hash (blake2b of its canonical JSON); the tables'
# hash columns are sized from it. Defined here, not in the models, so that the
# parse workers never import SQLAlchemy.
HASH_BYTES = 16

UNKNOWN_SENSOR = "unknown"
MAX_RAW_CHARS = 8192  # how much of an unusable line the dead-letter record keeps
LOGIN_SUCCESS = "cowrie.login.success"
LOGIN_FAILED = "cowrie.login.failed"
COMMAND_INPUT = "cowrie.command.input"
FILE_DOWNLOAD = "cowrie.session.file_download"
SESSION_CONNECT = "cowrie.session.connect"
SESSION_CLOSED = "cowrie.session.closed"
CLIENT_VERSION = "cowrie.client.version"
PROTOCOLS = ("ssh", "telnet")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
CANONICAL_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")

# Cowrie 1.x / kippo-era names of fields we read, mapped to today's names.
LEGACY_FIELDS = {
    "peerIP": "src_ip",
    "peerPort": "src_port",
    "hostIP": "dst_ip",
    "hostPort": "dst_port",
}
# Cowrie 1.x numbered event ids (KIPP/COW codes) whose meaning is certain from
# their "format" text in old logs; other numbered ids are stored as they are.
LEGACY_EVENTIDS = {
    "KIPP0001": SESSION_CONNECT,
    "COW0001": SESSION_CONNECT,
    "KIPP0002": LOGIN_SUCCESS,
    "COW0002": LOGIN_SUCCESS,
    "KIPP0003": LOGIN_FAILED,
    "COW0003": LOGIN_FAILED,
    "KIPP0009": CLIENT_VERSION,
    "COW0009": CLIENT_VERSION,
    "KIPP0011": SESSION_CLOSED,
    "COW0011": SESSION_CLOSED,
}


class ParsedEvent(NamedTuple):
    """A usable event with the fields the statistics need, already normalised.

    A named tuple rather than a frozen dataclass: built about twice as fast, and
    unpickled about four times as fast (the parse workers send these back).
    """

    hash: bytes
    sensor: str
    session: str
    eventid: str
    ts_us: int
    raw: str  # canonical JSON of the cleaned event
    src_ip: str | None = None
    src_port: int | None = None
    dst_port: int | None = None
    protocol: str | None = None
    username: str | None = None
    password: str | None = None
    command: str | None = None
    shasum: str | None = None
    url: str | None = None
    outfile: str | None = None
    duration_s: float | None = None
    client_version: str | None = None


class UnusableLineError(ValueError):
    """The line cannot become an event; the message is the dead-letter reason."""


def strip_nul(value: Any) -> Any:
    """Remove NUL characters from every string inside a JSON value."""
    if isinstance(value, str):
        return value.replace("\x00", "") if "\x00" in value else value
    if isinstance(value, list):
        return [strip_nul(item) for item in value]
    if isinstance(value, dict):
        return {strip_nul(key): strip_nul(item) for key, item in value.items()}
    return value


def parse_timestamp(value: Any) -> int:
    """Microseconds since the epoch (UTC) of an ISO 8601 timestamp; naive means UTC."""
    if not isinstance(value, str):
        raise UnusableLineError("timestamp is missing or not a string")
    text = value.strip()
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UnusableLineError(f"unparseable timestamp {value[:64]!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def format_timestamp(ts_us: int) -> str:
    """Canonical text of an instant: ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` in UTC."""
    moment = EPOCH + timedelta(microseconds=ts_us)
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T{moment.hour:02d}:"
        f"{moment.minute:02d}:{moment.second:02d}.{moment.microsecond:06d}Z"
    )


def canonical_timestamp(text: str, ts_us: int) -> str:
    """``text`` when it is already canonical (most Cowrie logs), else its canonical form."""
    return text if CANONICAL_TIMESTAMP.fullmatch(text) else format_timestamp(ts_us)


def normalise_ip(value: Any) -> str | None:
    """Canonical text of an IPv4/IPv6 address; non-IP strings are kept verbatim."""
    if not isinstance(value, str) or value == "":
        return None
    return _canonical_ip(value)


@functools.lru_cache(maxsize=65536)  # attackers repeat: most lookups are hits
def _canonical_ip(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value.strip().strip("[]")))
    except ValueError:
        return value


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if -(2**31) <= value < 2**31 else None
    if isinstance(value, str) and value.strip().isdigit():
        return _int_or_none(int(value.strip()))
    return None


def _seconds(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def session_duration(fields: dict[str, Any]) -> float | None:
    """``duration`` (number or numeric string, seconds) or ``duration_ms`` / 1000."""
    seconds = _seconds(fields.get("duration"))
    if seconds is not None:
        return seconds
    millis = _seconds(fields.get("duration_ms"))
    return None if millis is None else millis / 1000.0


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _client_version(value: Any) -> str | None:
    text = _str_or_none(value)
    # Cowrie 1.x logged the banner as a Python repr: "'SSH-2.0-...'".
    if text and len(text) >= 2 and text[0] == text[-1] == "'":
        return text[1:-1]
    return text


def _decode(line: bytes | str) -> str:
    if isinstance(line, str):
        return line
    # Invalid UTF-8 is kept as U+FFFD rather than losing the whole event.
    return line.decode("utf-8", errors="replace")


def _clean_surrogates(text: str) -> str:
    # JSON may carry lone surrogate escapes that no UTF-8 database can store.
    if text.isascii():
        return text
    return text.encode("utf-8", errors="replace").decode("utf-8")


def parse_line(line: bytes | str, default_sensor: str | None = None) -> ParsedEvent | None:
    """Parse one line. ``None`` for a blank line; raises :class:`UnusableLineError` otherwise."""
    text = _decode(line).replace("\x00", "").strip()
    if not text:
        return None
    obj = _loads(text)
    if not isinstance(obj, dict):
        raise UnusableLineError(f"JSON value is a {type(obj).__name__}, not an object")
    # Raw NULs are gone already; inside strings they can only come from escapes.
    fields: dict[str, Any] = strip_nul(obj) if "\\u0000" in text else obj
    for old, new in LEGACY_FIELDS.items():
        if old in fields and new not in fields:
            fields[new] = fields.pop(old)
    return _build_event(fields, default_sensor)


def _loads(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        pass  # lone surrogates or integers beyond 64 bits: the json module takes those
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise UnusableLineError(f"not valid JSON: {str(exc)[:120]}") from None


def _canonical(identity: dict[str, Any]) -> bytes:
    """Canonical UTF-8 JSON of an event: sorted keys, compact; the dedup identity."""
    try:
        return orjson.dumps(identity, option=orjson.OPT_SORT_KEYS)
    except (TypeError, orjson.JSONEncodeError):
        text = json.dumps(identity, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return text.encode("utf-8", errors="replace")


def _build_event(fields: dict[str, Any], default_sensor: str | None) -> ParsedEvent:
    eventid = fields.get("eventid")
    if not isinstance(eventid, str):
        raise UnusableLineError("eventid is missing or not a string")
    session = fields.get("session")
    if not isinstance(session, str):
        raise UnusableLineError("session is missing or not a string")
    ts_us = parse_timestamp(fields.get("timestamp"))
    sensor = fields.get("sensor")
    if not isinstance(sensor, str) or sensor == "":
        sensor = default_sensor or UNKNOWN_SENSOR
    eventid = LEGACY_EVENTIDS.get(eventid, eventid)
    stamp = canonical_timestamp(fields["timestamp"], ts_us)
    identity = dict(fields, eventid=eventid, sensor=sensor, timestamp=stamp)
    canonical = _canonical(identity)
    return ParsedEvent(
        hash=hashlib.blake2b(canonical, digest_size=HASH_BYTES).digest(),
        sensor=_clean_surrogates(sensor),
        session=_clean_surrogates(session),
        eventid=_clean_surrogates(eventid),
        ts_us=ts_us,
        raw=canonical.decode("utf-8"),
        **_details(eventid, fields),
    )


def _details(eventid: str, fields: dict[str, Any]) -> dict[str, Any]:
    """The per-eventid fields the statistics read."""
    details: dict[str, Any] = {
        "src_ip": normalise_ip(fields.get("src_ip")),
        "src_port": _int_or_none(fields.get("src_port")),
    }
    if eventid == SESSION_CONNECT:
        protocol = _str_or_none(fields.get("protocol"))
        details["protocol"] = protocol.lower() if protocol else None
        details["dst_port"] = _int_or_none(fields.get("dst_port"))
    elif eventid in (LOGIN_SUCCESS, LOGIN_FAILED):
        details["username"] = _text(fields.get("username"))
        details["password"] = _text(fields.get("password"))
    elif eventid == COMMAND_INPUT:
        details["command"] = _text(fields.get("input")) or ""
    elif eventid == FILE_DOWNLOAD:
        details["shasum"] = _text(fields.get("shasum"))
        details["url"] = _text(fields.get("url"))
        details["outfile"] = _text(fields.get("outfile"))
    elif eventid == SESSION_CLOSED:
        details["duration_s"] = session_duration(fields)
    elif eventid == CLIENT_VERSION:
        details["client_version"] = _text(_client_version(fields.get("version")))
    return details


def _text(value: Any) -> str | None:
    return _clean_surrogates(value) if isinstance(value, str) else None


def dead_letter_text(line: bytes | str) -> str:
    """What a dead-letter record keeps of a line: NUL-free text, truncated."""
    text = _clean_surrogates(_decode(line).replace("\x00", ""))
    return text if len(text) <= MAX_RAW_CHARS else text[:MAX_RAW_CHARS] + "…[truncated]"
