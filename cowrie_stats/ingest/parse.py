"""Turn one raw Cowrie log line into a normalised event, or a reason it is unusable.

Rules (docs/api.md, counting rules): NULs are removed from all text first; an
event is usable when it is a JSON object with a string ``eventid``, a string
``session`` and a parseable ``timestamp`` inside the years 1-9999 (UTC); two
events are the same when their content is equal after NUL removal with
timestamps compared as instants.

Every line is written by attackers, so :func:`parse_line` raises nothing but
:class:`UnusableLineError`, and what it returns is always storable: text is
valid UTF-8 without lone surrogates, integers fit their columns, nesting is
bounded (the same limit in every process, so parallel runs count the same).
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import orjson

# Bytes of an event's identity hash (blake2b of its canonical JSON); the tables'
# hash columns are sized from it. Defined here, not in the models, so that the
# parse workers never import SQLAlchemy.
HASH_BYTES = 16

UNKNOWN_SENSOR = "unknown"
# Session ids and sensor names identify rows (they are part of index keys): Cowrie's are
# a dozen characters; longer ones come from forged logs and could not be indexed.
MAX_KEY_CHARS = 256
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
NAIVE_EPOCH = datetime(1970, 1, 1)
US = timedelta(microseconds=1)
# The instants a timestamp may name: those of google.protobuf.Timestamp, which
# the API answers with (0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999Z).
MIN_TS_US = (datetime(1, 1, 1) - NAIVE_EPOCH) // US
MAX_TS_US = (datetime(9999, 12, 31, 23, 59, 59, 999_999) - NAIVE_EPOCH) // US
# Deeper JSON is dead-lettered: far beyond any Cowrie event, and below the
# depth where orjson (255) or Python's recursion limit would decide instead.
MAX_JSON_DEPTH = 128
MAX_PORT = 65_535
# Longer "durations" (68 years) are not Cowrie sessions; their sum could overflow.
MAX_DURATION_S = 2**31 - 1
MAX_IP_CHARS = 64  # longer src_ip text is no address: kept verbatim, never cached
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
    """The line cannot become an event; the message is the dead-letter reason.

    ``sensor`` is the sensor the line names (or the default one), when it is a
    JSON object: its dead letter then counts in that sensor's summary.
    """

    def __init__(self, reason: str, sensor: str | None = None) -> None:
        super().__init__(reason)
        self.sensor = sensor


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
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise UnusableLineError(f"unparseable timestamp {_excerpt(value)}") from None
    # Naive arithmetic: an offset can move year 1 or 9999 out of datetime's range.
    delta = moment.replace(tzinfo=None) - NAIVE_EPOCH - (moment.utcoffset() or timedelta())
    ts_us = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    if not MIN_TS_US <= ts_us <= MAX_TS_US:
        raise UnusableLineError(f"timestamp {_excerpt(value)} is outside the years 1-9999 (UTC)")
    return ts_us


def _excerpt(value: str) -> str:
    """The start of an attacker's string, quoted and storable, for a dead-letter reason."""
    return repr(clean_text(value[:64]))


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
    if len(value) > MAX_IP_CHARS:  # no address; and the cache must not hold it
        return clean_text(value)
    return _canonical_ip(value)


@functools.lru_cache(maxsize=65536)  # attackers repeat: most lookups are hits
def _canonical_ip(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value.strip().strip("[]")))
    except ValueError:
        return clean_text(value)


def _port(value: Any) -> int | None:
    """A port number (0-65535, or its ASCII decimal text); anything else is no port."""
    if isinstance(value, str):
        text = value.strip()
        # isdecimal() alone also admits "²"-like and non-ASCII digits.
        if not (text.isascii() and text.isdecimal() and len(text) <= 5):
            return None
        value = int(text)
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 0 <= value <= MAX_PORT else None


def _seconds(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: integers past 1e308
        return None
    return seconds if 0 <= seconds <= MAX_DURATION_S else None  # also refuses NaN


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


def clean_text(text: str) -> str:
    """``text`` with lone surrogates (JSON escapes, undecodable file names) as "?".

    No UTF-8 database can store them.
    """
    if text.isascii():
        return text
    return text.encode("utf-8", errors="replace").decode("utf-8")


def parse_line(line: bytes | str, default_sensor: str | None = None) -> ParsedEvent | None:
    """Parse one line. ``None`` for a blank line; raises :class:`UnusableLineError` otherwise."""
    try:
        return _parse(line, default_sensor)
    except UnusableLineError:
        raise
    except Exception as exc:  # a case no rule foresaw must still not stop the ingest
        raise UnusableLineError(f"{UNFORESEEN}: {type(exc).__name__}: {exc}"[:200]) from exc


# Prefix of the reason of a line that failed in a way no rule names (the fuzz
# tests fail on it: each such case deserves its own rule).
UNFORESEEN = "unusable line (unforeseen parse failure)"


def _parse(line: bytes | str, default_sensor: str | None) -> ParsedEvent | None:
    text = _decode(line).replace("\x00", "").strip()
    if not text:
        return None
    obj = _loads(text)
    if not isinstance(obj, dict):
        raise UnusableLineError(f"JSON value is a {type(obj).__name__}, not an object")
    # Brackets (also those inside strings) bound the depth: most lines need no walk.
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH and _depth(obj) > MAX_JSON_DEPTH:
        raise UnusableLineError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    # Raw NULs are gone already; inside strings they can only come from escapes.
    fields: dict[str, Any] = strip_nul(obj) if "\\u0000" in text else obj
    for old, new in LEGACY_FIELDS.items():
        if old in fields and new not in fields:
            fields[new] = fields.pop(old)
    return _build_event(fields, default_sensor)


def _depth(value: Any) -> int:
    """How deeply lists and objects nest in ``value`` (a scalar is 0), without recursion."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, level)
            if level <= MAX_JSON_DEPTH:  # deeper is already too deep
                stack.extend((child, level + 1) for child in item)
    return deepest


def _loads(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        pass  # lone surrogates or integers beyond 64 bits: the json module takes those
    try:
        return json.loads(text)
    except RecursionError:
        raise UnusableLineError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:  # also integers of more than 4,300 digits
        raise UnusableLineError(f"not valid JSON: {str(exc)[:120]}") from None


def _canonical(identity: dict[str, Any]) -> bytes:
    """Canonical UTF-8 JSON of an event: sorted keys, compact; the dedup identity."""
    try:
        return orjson.dumps(identity, option=orjson.OPT_SORT_KEYS)
    except (TypeError, orjson.JSONEncodeError):
        text = json.dumps(identity, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return text.encode("utf-8", errors="replace")


def _build_event(fields: dict[str, Any], default_sensor: str | None) -> ParsedEvent:
    sensor = fields.get("sensor")
    if not isinstance(sensor, str) or sensor == "":
        sensor = default_sensor or UNKNOWN_SENSOR
    if len(sensor) > MAX_KEY_CHARS:
        raise UnusableLineError(
            f"sensor name of {len(sensor)} characters is longer than {MAX_KEY_CHARS}"
        )
    try:
        eventid, session, ts_us = _required(fields)
    except UnusableLineError as exc:
        raise UnusableLineError(str(exc), clean_text(sensor)) from None
    eventid = LEGACY_EVENTIDS.get(eventid, eventid)
    stamp = canonical_timestamp(fields["timestamp"], ts_us)
    identity = dict(fields, eventid=eventid, sensor=sensor, timestamp=stamp)
    canonical = _canonical(identity)
    return ParsedEvent(
        hash=hashlib.blake2b(canonical, digest_size=HASH_BYTES).digest(),
        sensor=clean_text(sensor),
        session=clean_text(session),
        eventid=clean_text(eventid),
        ts_us=ts_us,
        raw=canonical.decode("utf-8"),
        **_details(eventid, fields),
    )


def _required(fields: dict[str, Any]) -> tuple[str, str, int]:
    """The eventid, session and timestamp every usable event has."""
    eventid = fields.get("eventid")
    if not isinstance(eventid, str):
        raise UnusableLineError("eventid is missing or not a string")
    session = fields.get("session")
    if not isinstance(session, str):
        raise UnusableLineError("session is missing or not a string")
    if len(session) > MAX_KEY_CHARS:
        raise UnusableLineError(
            f"session id of {len(session)} characters is longer than {MAX_KEY_CHARS}"
        )
    return eventid, session, parse_timestamp(fields.get("timestamp"))


def _details(eventid: str, fields: dict[str, Any]) -> dict[str, Any]:
    """The per-eventid fields the statistics read."""
    details: dict[str, Any] = {
        "src_ip": normalise_ip(fields.get("src_ip")),
        "src_port": _port(fields.get("src_port")),
    }
    if eventid == SESSION_CONNECT:
        protocol = _text(fields.get("protocol"))
        details["protocol"] = protocol.lower() if protocol else None
        details["dst_port"] = _port(fields.get("dst_port"))
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
    return clean_text(value) if isinstance(value, str) else None


def dead_letter_text(line: bytes | str) -> str:
    """What a dead-letter record keeps of a line: NUL-free text, truncated."""
    text = clean_text(_decode(line).replace("\x00", ""))
    return text if len(text) <= MAX_RAW_CHARS else text[:MAX_RAW_CHARS] + "…[truncated]"
