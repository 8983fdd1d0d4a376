"""Parsing of the quirks real Cowrie logs contain, one case each, plus fuzzing."""

from __future__ import annotations

import contextlib
import json
import re
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cowrie_stats.ingest.parse import (
    MAX_DURATION_S,
    MAX_RAW_CHARS,
    MAX_TS_US,
    MIN_TS_US,
    UNFORESEEN,
    ParsedEvent,
    UnusableLineError,
    dead_letter_text,
    format_timestamp,
    normalise_ip,
    parse_line,
    parse_timestamp,
)

BASE = {
    "eventid": "cowrie.session.connect",
    "session": "abc123",
    "timestamp": "2024-04-03T00:30:59.123456Z",
    "sensor": "s1",
    "src_ip": "203.0.113.5",
}


def line(**fields: object) -> bytes:
    return json.dumps({**BASE, **fields}).encode()


def test_timestamps_with_offsets_are_the_same_instant() -> None:
    utc = parse_line(line(timestamp="2024-04-03T00:30:59Z"))
    offset = parse_line(line(timestamp="2024-04-03T02:30:59+0200"))
    colon = parse_line(line(timestamp="2024-04-03T02:30:59.000000+02:00"))
    assert utc is not None and offset is not None and colon is not None
    assert utc.ts_us == offset.ts_us == colon.ts_us
    assert utc.hash == offset.hash == colon.hash  # same event, counted once


def test_naive_timestamp_is_utc() -> None:
    assert parse_timestamp("2024-04-03T00:00:00") == parse_timestamp("2024-04-03T00:00:00Z")


def test_nul_padding_and_nul_in_strings_are_removed() -> None:
    raw = b"\x00\x00\x00" + line(username="ro\x00ot", eventid="cowrie.login.failed") + b"\x00"
    event = parse_line(raw)
    assert event is not None
    assert event.username == "root"
    assert "\\u0000" not in event.raw and "\x00" not in event.raw


def test_nul_only_line_is_blank() -> None:
    assert parse_line(b"\x00" * 100) is None
    assert parse_line(b"   \n") is None


def test_duration_forms() -> None:
    closed = {"eventid": "cowrie.session.closed"}
    as_float = parse_line(line(**closed, duration=1.5))
    as_string = parse_line(line(**closed, duration="301.8"))
    as_ms = parse_line(line(**closed, duration_ms=2500))
    missing = parse_line(line(**closed))
    garbage = parse_line(line(**closed, duration="n/a"))
    assert as_float is not None and as_float.duration_s == 1.5
    assert as_string is not None and as_string.duration_s == 301.8
    assert as_ms is not None and as_ms.duration_s == 2.5
    assert missing is not None and missing.duration_s is None
    assert garbage is not None and garbage.duration_s is None


def test_list_valued_message_is_kept() -> None:
    event = parse_line(line(eventid="cowrie.session.params", message=[]))
    assert event is not None and '"message":[]' in event.raw


def test_ipv6_is_canonical_and_hostnames_in_dst_ip_are_fine() -> None:
    event = parse_line(line(src_ip="2001:DB8:0:0::1", dst_ip="ip-who.com"))
    assert event is not None and event.src_ip == "2001:db8::1"
    assert normalise_ip("[::1]") == "::1"
    assert normalise_ip("not-an-ip") == "not-an-ip"
    assert normalise_ip("") is None


def test_protocol_only_on_connect() -> None:
    connect = parse_line(line(protocol="TELNET"))
    other = parse_line(line(eventid="cowrie.client.version", protocol="ssh", version="SSH-2.0-Go"))
    assert connect is not None and connect.protocol == "telnet"
    assert other is not None and other.protocol is None and other.client_version == "SSH-2.0-Go"


def test_download_without_url_and_with_empty_shasum() -> None:
    redirect = parse_line(line(eventid="cowrie.session.file_download", shasum="ab", destfile="x"))
    empty = parse_line(line(eventid="cowrie.session.file_download", shasum="", url="http://x/"))
    failed = parse_line(line(eventid="cowrie.session.file_download", url="http://x/"))
    assert redirect is not None and redirect.shasum == "ab" and redirect.url is None
    assert empty is not None and empty.shasum == ""
    assert failed is not None and failed.shasum is None


def test_cowrie_1x_names() -> None:
    event = parse_line(
        json.dumps(
            {
                "eventid": "KIPP0001",
                "session": "s",
                "timestamp": "2015-02-25T10:00:00.000000Z",
                "peerIP": "198.51.100.1",
            }
        )
    )
    assert event is not None
    assert event.eventid == "cowrie.session.connect" and event.src_ip == "198.51.100.1"
    version = parse_line(line(eventid="cowrie.client.version", version="'SSH-2.0-libssh'"))
    assert version is not None and version.client_version == "SSH-2.0-libssh"


def test_missing_sensor_uses_default_then_unknown() -> None:
    no_sensor = {k: v for k, v in BASE.items() if k != "sensor"}
    raw = json.dumps(no_sensor)
    given_sensor = parse_line(raw, default_sensor="honeypot-7")
    unknown = parse_line(raw)
    assert given_sensor is not None and given_sensor.sensor == "honeypot-7"
    assert unknown is not None and unknown.sensor == "unknown"
    assert given_sensor.hash != unknown.hash


def test_event_sensor_wins_over_default() -> None:
    event = parse_line(line(), default_sensor="other")
    assert event is not None and event.sensor == "s1"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"eventid": "cowrie.session.connect", "sess', "not valid JSON"),
        (b"[1, 2, 3]", "not an object"),
        (b"hello world", "not valid JSON"),
        (json.dumps({**BASE, "eventid": 5}).encode(), "eventid"),
        (json.dumps({k: v for k, v in BASE.items() if k != "session"}).encode(), "session"),
        (json.dumps({**BASE, "timestamp": "yesterday"}).encode(), "timestamp"),
        (json.dumps({**BASE, "timestamp": None}).encode(), "timestamp"),
    ],
)
def test_unusable_lines_have_reasons(raw: bytes, reason: str) -> None:
    with pytest.raises(UnusableLineError, match=reason):
        parse_line(raw)


def test_invalid_utf8_and_lone_surrogates_become_replacement_characters() -> None:
    raw = line(eventid="cowrie.command.input", input="x").replace(b'"x"', b'"\xff\xfe"')
    event = parse_line(raw)
    assert event is not None and event.command == "\ufffd\ufffd"
    surrogate = parse_line(
        line(eventid="cowrie.command.input").replace(b"}", b', "input": "\\ud800"}')
    )
    assert surrogate is not None and surrogate.command == "?"


def test_dead_letter_text_is_truncated_and_nul_free() -> None:
    text = dead_letter_text(b"\x00" + b"a" * (MAX_RAW_CHARS + 10))
    assert text.startswith("a") and text.endswith("[truncated]")
    assert len(text) < MAX_RAW_CHARS + 20


def parsed_or_reason(raw: bytes | str) -> ParsedEvent | None:
    """parse_line's answer, checked: storable as it is, or a reason a rule names."""
    try:
        event = parse_line(raw)
    except UnusableLineError as exc:
        reason = str(exc)
        reason.encode("utf-8")  # the reason is stored too
        if reason.startswith(UNFORESEEN):
            pytest.fail(f"no rule names this failure: {reason}")
        return None
    if event is not None:
        assert_storable(event)
    return event


def assert_storable(event: ParsedEvent) -> None:
    for name, value in event._asdict().items():
        if isinstance(value, str):
            assert "\x00" not in value, name
            value.encode("utf-8")  # strict: no lone surrogate reaches the database
    assert MIN_TS_US <= event.ts_us <= MAX_TS_US
    format_timestamp(event.ts_us)
    for port in (event.src_port, event.dst_port):
        assert port is None or 0 <= port <= 65_535
    assert event.duration_s is None or 0 <= event.duration_s <= MAX_DURATION_S
    assert len(event.hash) == 16


# Any JSON value, with lone surrogates, huge integers, deep nesting and odd floats.
ANY_TEXT = st.text(st.characters(codec=None), max_size=12)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**63, max_value=10**400)
    | st.floats()
    | ANY_TEXT
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(ANY_TEXT, children, max_size=3)
    ),
    max_leaves=12,
)
OFFSETS = st.timedeltas(min_value=timedelta(hours=-23, minutes=-59), max_value=timedelta(hours=23))
TIMESTAMPS = st.one_of(
    st.builds(
        lambda moment, offset: moment.replace(tzinfo=timezone(offset)).isoformat(),
        st.datetimes(),
        OFFSETS,
    ),
    st.datetimes().map(datetime.isoformat),
    ANY_TEXT,
    JSON_VALUES,
)
KNOWN_FIELDS = {
    "eventid": st.sampled_from(
        [
            "cowrie.session.connect",
            "cowrie.login.failed",
            "cowrie.login.success",
            "cowrie.command.input",
            "cowrie.session.file_download",
            "cowrie.session.closed",
            "cowrie.client.version",
            "KIPP0001",
        ]
    ),
    "session": ANY_TEXT,
    "timestamp": TIMESTAMPS,
    "sensor": JSON_VALUES,
    "src_ip": JSON_VALUES,
    "src_port": JSON_VALUES,
    "dst_port": JSON_VALUES,
    "protocol": JSON_VALUES,
    "username": JSON_VALUES,
    "password": JSON_VALUES,
    "input": JSON_VALUES,
    "shasum": JSON_VALUES,
    "url": JSON_VALUES,
    "outfile": JSON_VALUES,
    "duration": JSON_VALUES,
    "duration_ms": JSON_VALUES,
    "version": JSON_VALUES,
}


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_crash(raw: bytes) -> None:
    parsed_or_reason(raw)


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES)
def test_any_json_value_is_an_event_or_a_reason(value: object) -> None:
    parsed_or_reason(json.dumps(value))


@settings(max_examples=500, deadline=None)
@given(
    st.fixed_dictionaries(
        {"eventid": KNOWN_FIELDS["eventid"], "session": ANY_TEXT, "timestamp": TIMESTAMPS},
        optional={
            k: v for k, v in KNOWN_FIELDS.items() if k not in ("eventid", "session", "timestamp")
        },
    ),
    st.dictionaries(ANY_TEXT, JSON_VALUES, max_size=3),
)
def test_any_fields_of_an_event_are_stored_safely_or_dead_lettered(
    fields: dict[str, object], extra: dict[str, object]
) -> None:
    parsed_or_reason(json.dumps({**extra, **fields}))


def test_deep_nesting_is_refused_the_same_at_any_stack_depth() -> None:
    deep = json.dumps({**BASE, "x": [[[[0]]]]}).replace("[[[[0]]]]", "[" * 200 + "]" * 200)
    with pytest.raises(UnusableLineError, match="nested deeper than 128 levels"):
        parse_line(deep)
    shallow = json.dumps({**BASE, "x": [[[0]]]}).replace("[[[0]]]", "[" * 127 + "]" * 127)
    assert parse_line(shallow) is not None  # exactly 128 levels with the event object


def test_timestamps_outside_the_years_1_to_9999_are_refused() -> None:
    assert parse_timestamp("0001-01-01T00:00:00Z") == MIN_TS_US
    assert parse_timestamp("9999-12-31T23:59:59.999999Z") == MAX_TS_US
    for stamp in ("0001-01-01T00:59:59+01:00", "9999-12-31T23:00:00-01:00"):
        with pytest.raises(UnusableLineError, match="outside the years 1-9999"):
            parse_timestamp(stamp)


def test_ports_and_durations_that_do_not_fit_are_none() -> None:
    closed = {"eventid": "cowrie.session.closed"}
    for port in ("²", "١٢", "99999", "0x16", " 22 ", 22.5, True, 2**70, -1):
        event = parse_line(line(src_port=port))
        assert event is not None
        assert event.src_port == (22 if port == " 22 " else None)
    for duration in ("1e999", float("nan"), -1, 2**31, "inf"):
        event = parse_line(json.dumps({**BASE, **closed, "duration": duration}))
        assert event is not None and event.duration_s is None
    huge = parse_line(json.dumps({**BASE, **closed})[:-1] + ', "duration": 1' + "0" * 400 + "}")
    assert huge is not None and huge.duration_s is None


def test_an_unforeseen_failure_is_still_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(_fields: object) -> None:
        raise KeyError("a case no rule names")

    monkeypatch.setattr("cowrie_stats.ingest.parse._required", broken)
    with pytest.raises(UnusableLineError, match=re.escape(f"{UNFORESEEN}: KeyError")):
        parse_line(line())


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            ["eventid", "session", "timestamp", "sensor", "src_ip", "duration", "input"]
        ),
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20)),
    )
)
def test_random_objects_never_crash(fields: dict[str, object]) -> None:
    with contextlib.suppress(UnusableLineError):
        parse_line(json.dumps(fields))


def test_canonical_timestamps_are_kept_and_equal_the_formatted_form() -> None:
    from cowrie_stats.ingest.parse import format_timestamp

    canonical = parse_line(line(timestamp="2024-04-03T00:30:59.000000Z"))
    offset = parse_line(line(timestamp="2024-04-03T02:30:59+0200"))
    assert canonical is not None and offset is not None
    assert canonical.hash == offset.hash
    assert format_timestamp(canonical.ts_us) == "2024-04-03T00:30:59.000000Z"
    assert format_timestamp(-1) == "1969-12-31T23:59:59.999999Z"
