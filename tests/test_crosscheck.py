"""Every RPC field equals the simple reference implementation, on real captures.

The captures in ../shared/data are real Cowrie logs (never copied here); the
demo sample adds several sensors, Telnet, IPv6 and every duration form.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import reference
from conftest import Database, StartServer, make_database
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import text

from cowrie_stats._gen.cowrie.stats.v1 import stats_pb2

HOUR = 3_600 * reference.US


def _ts(us: int) -> Timestamp:
    return Timestamp(seconds=us // reference.US, nanos=(us % reference.US) * 1000)


def _us(ts: Timestamp) -> int:
    return ts.seconds * reference.US + ts.nanos // 1000


def _time_range(start: int | None, end: int | None) -> stats_pb2.TimeRange:
    time_range = stats_pb2.TimeRange()
    if start is not None:
        time_range.start_time.CopyFrom(_ts(start))
    if end is not None:
        time_range.end_time.CopyFrom(_ts(end))
    return time_range


def _windows(events: list[reference.RefEvent]) -> list[tuple[int | None, int | None]]:
    """All time, open-ended halves, hour-aligned and ragged windows inside the data."""
    low = min(e.ts for e in events)
    high = max(e.ts for e in events)
    middle = (low + high) // 2
    aligned = middle - middle % HOUR
    return [
        (None, None),
        (middle, None),
        (None, middle),
        (aligned, aligned + 5 * HOUR),
        (low + 1_234_567, high - 7_654_321),
        (middle + 17, middle + 1_800 * reference.US),
    ]


def _ranked(values: Any) -> list[tuple[Any, ...]]:
    return [
        (
            v.value,
            v.value_truncated,
            v.value_length,
            v.count,
            v.sessions,
            _us(v.first_seen),
            _us(v.last_seen),
        )
        for v in values
    ]


def _credentials(got: stats_pb2.GetThreatStatsResponse) -> list[tuple[Any, ...]]:
    return [
        (
            c.username,
            c.username_truncated,
            c.username_length,
            c.password,
            c.password_truncated,
            c.password_length,
            c.attempts,
            c.successes,
        )
        for c in got.top_credentials
    ]


def _downloads(got: stats_pb2.GetThreatStatsResponse) -> list[tuple[Any, ...]]:
    return [
        (
            d.shasum,
            d.shasum_truncated,
            d.shasum_length,
            d.url,
            d.url_truncated,
            d.url_length,
            d.count,
            d.sessions,
        )
        for d in got.top_downloads
    ]


def _check_session_stats(
    stub: Any, events: list[reference.RefEvent], window: tuple[int | None, int | None]
) -> None:
    expected = reference.session_stats(events, *window)
    got = stub.GetSessionStats(stats_pb2.GetSessionStatsRequest(time_range=_time_range(*window)))
    for name, value in expected.items():
        actual = getattr(got, name)
        if isinstance(value, float):
            assert actual == pytest.approx(value, rel=1e-9, abs=1e-9), name
        elif isinstance(value, dict):
            assert dict(actual) == value, name
        else:
            assert actual == value, (name, window)


def check_threat_stats(
    stub: Any,
    events: list[reference.RefEvent],
    window: tuple[int | None, int | None],
    top_n: int = 25,
) -> stats_pb2.GetThreatStatsResponse:
    expected = reference.threat_stats(events, *window, top_n=top_n)
    got: stats_pb2.GetThreatStatsResponse = stub.GetThreatStats(
        stats_pb2.GetThreatStatsRequest(time_range=_time_range(*window), top_n=top_n)
    )
    for name in ("top_source_ips", "top_usernames", "top_passwords", "top_commands"):
        assert _ranked(getattr(got, name)) == expected[name], (name, window)
    assert _credentials(got) == expected["top_credentials"]
    assert _downloads(got) == expected["top_downloads"]
    for name in ("unique_source_ips", "unique_usernames", "unique_passwords"):
        assert getattr(got, name) == expected[name], name
    assert got.unique_download_hashes == expected["unique_download_hashes"]
    return got


def _check_sensor_stats(
    stub: Any, events: list[reference.RefEvent], window: tuple[int | None, int | None]
) -> None:
    expected = reference.sensor_stats(events, *window)
    got = stub.GetSensorStats(stats_pb2.GetSensorStatsRequest(time_range=_time_range(*window)))
    assert [s.sensor for s in got.sensors] == list(expected)
    assert got.total_sensors == len(expected)
    for sensor in got.sensors:
        want = expected[sensor.sensor]
        for name in (
            "sessions",
            "unique_source_ips",
            "events",
            "login_successes",
            "file_downloads",
        ):
            assert getattr(sensor, name) == want[name], (sensor.sensor, name, window)
        first = _us(sensor.first_seen) if sensor.HasField("first_seen") else None
        last = _us(sensor.last_seen) if sensor.HasField("last_seen") else None
        assert (first, last) == (want["first_seen"], want["last_seen"])


def _all_checks(stub: Any, events: list[reference.RefEvent]) -> None:
    for window in _windows(events):
        _check_session_stats(stub, events, window)
        check_threat_stats(stub, events, window)
        _check_sensor_stats(stub, events, window)


def test_every_field_matches_reference_on_captures(
    db: Database, captures: list[Path], start_server: StartServer
) -> None:
    summary = db.ingest(list(captures))
    assert summary.dead_lettered == 0
    events = reference.load_events(list(captures))
    assert summary.events_stored == len(events)
    running = start_server(db.settings())
    _all_checks(running.stub, events)
    # Deep enough to reach the captures' commands of over 1024 characters, cut and flagged.
    deep = check_threat_stats(running.stub, events, (None, None), top_n=1000)
    assert sorted(v.value_length for v in deep.top_commands if v.value_truncated) == [2147, 2152]


def test_every_field_matches_reference_on_sample_with_sensor_filter(
    db: Database, tmp_path: Path, start_server: StartServer
) -> None:
    sample = db.ingest_sample(tmp_path)
    events = reference.load_events([sample])
    running = start_server(db.settings())
    _all_checks(running.stub, events)
    subset = [e for e in events if e.sensor == "sensor-eu-1"]
    got = running.stub.GetSessionStats(stats_pb2.GetSessionStatsRequest(sensors=["sensor-eu-1"]))
    assert got.total_sessions == reference.session_stats(subset)["total_sessions"]
    assert got.login_attempts == reference.session_stats(subset)["login_attempts"]


def _straddling_log(path: Path, t0: int) -> None:
    """Sessions that use the same values before and after a window's start."""
    lines: list[dict[str, Any]] = []

    def add(sensor: str, session: str, seconds: float, eventid: str, **fields: Any) -> None:
        at = _ts(t0 + int(seconds * reference.US)).ToJsonString()
        lines.append(
            {"eventid": eventid, "timestamp": at, "session": session, "sensor": sensor} | fields
        )

    def login(sensor: str, session: str, seconds: float, user: str, password: str) -> None:
        add(sensor, session, seconds, "cowrie.login.failed", username=user, password=password)

    def command(sensor: str, session: str, seconds: float, text: str) -> None:
        add(sensor, session, seconds, "cowrie.command.input", input=text)

    def download(sensor: str, session: str, seconds: float, shasum: str, url: str = "") -> None:
        add(sensor, session, seconds, "cowrie.session.file_download", shasum=shasum, url=url)

    add("s1", "a", 0, "cowrie.session.connect", src_ip="10.0.0.1", protocol="ssh")
    login("s1", "a", 1, "root", "123456")
    command("s1", "a", 6, "uname -a")
    download("s1", "a", 7, "f" * 64, "http://older.example/x")
    command("s1", "a", 30, "uname -a")
    login("s1", "a", 31, "root", "123456")
    download("s1", "a", 40, "f" * 64)
    add("s1", "b", 20, "cowrie.session.connect", src_ip="10.0.0.2", protocol="ssh")
    login("s1", "b", 25, "root", "admin")
    command("s1", "b", 26, "uname -a")
    # Same time, two URLs: the greater by code point wins ("é" > "z", unlike in most locales).
    download("s1", "b", 27, "f" * 64, "http://z.example/x")
    download("s1", "b", 27, "f" * 64, "http://\u00e9.example/x")
    # A long session on another sensor that straddles every window start below.
    add("s2", "c", -3_600, "cowrie.session.connect", src_ip="10.0.0.3", protocol="telnet")
    login("s2", "c", -3_000, "root", "123456")
    command("s2", "c", -2_000, "uname -a")
    login("s2", "c", 50, "root", "root")
    command("s2", "c", 3_500, "uname -a")
    add("s2", "c", 3_600, "cowrie.session.closed", duration=7_200)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Newest first and in tiny batches: first uses arrive after later uses are stored.
    path.write_text("".join(json.dumps(line) + "\n" for line in reversed(lines)))


def test_sessions_that_used_a_value_before_the_window_count_once(
    db: Database, tmp_path: Path, start_server: StartServer
) -> None:
    t0 = 1_700_000_000 * reference.US
    log = tmp_path / "straddle" / "cowrie.json"
    _straddling_log(log, t0)
    db.ingest([log], batch_lines=2)
    events = reference.load_events([log])
    running = start_server(db.settings())
    second = reference.US
    for window in [
        (t0 + 10 * second, None),
        (t0 + 10 * second, t0 + 35 * second),
        (t0 + 6 * second, t0 + 7 * second),
        (t0 + 45 * second, t0 + 3_550 * second),
        (t0 - 2_500 * second, t0 + 28 * second),
        (None, t0 + 30 * second),
    ]:
        check_threat_stats(running.stub, events, window)
    got = running.stub.GetThreatStats(
        stats_pb2.GetThreatStatsRequest(time_range=_time_range(t0 + 10 * second, None))
    )
    # a (again at 31 s) and c (again at 50 s) used root before the window: once each.
    assert [(v.value, v.count, v.sessions) for v in got.top_usernames] == [("root", 3, 3)]
    on_s2 = running.stub.GetThreatStats(
        stats_pb2.GetThreatStatsRequest(
            time_range=_time_range(t0 + 10 * second, None), sensors=["s2"]
        )
    )
    expected = reference.threat_stats(events, t0 + 10 * second, None, sensors={"s2"})
    assert _ranked(on_s2.top_usernames) == expected["top_usernames"]
    assert _ranked(on_s2.top_commands) == expected["top_commands"]
    assert [(v.value, v.sessions) for v in on_s2.top_usernames] == [("root", 1)]
    assert [d.url for d in got.top_downloads] == ["http://\u00e9.example/x"]


# The test cluster is created with the C locale; production databases usually are not.
LANGUAGE_COLLATION = (
    "TEMPLATE template0 ENCODING 'UTF8' LOCALE_PROVIDER icu ICU_LOCALE 'en-US'"
    " LC_COLLATE 'C' LC_CTYPE 'C'"
)


def _tied_values_log(path: Path, t0: int) -> None:
    """One use of every value, so that every ranking is decided by its tie-break alone.

    The values sort differently by bytes ("Zed" < "_x" < "alpha" < "ed" < "éclair")
    and in English ("_x" < "alpha" < "éclair" < "ed" < "Zed"), as do the sensor
    names, the source IPs ("10.0.0.10" < "10.0.0.9" in both, "2001:db8::a" against
    "2001:db8::B") and the two URLs of one download at the same instant.
    """
    values = ["Zed", "_x", "alpha", "beta", "\u00e9clair", "ed", "Ed", "e-d"]
    sensors = ["Sensor-b", "_s", "sensor-a"]
    ips = ["10.0.0.9", "10.0.0.10", "2001:db8::a", "2001:db8::B", "192.0.2.1"]
    lines: list[dict[str, Any]] = []
    for n, value in enumerate(values):
        base = {"session": f"s{n}", "sensor": sensors[n % len(sensors)]}
        at = [_ts(t0 + (n * 60 + k) * reference.US).ToJsonString() for k in range(4)]
        lines += [
            base
            | {"eventid": "cowrie.session.connect", "timestamp": at[0], "protocol": "ssh"}
            | {"src_ip": ips[n % len(ips)]},
            base
            | {"eventid": "cowrie.login.failed", "timestamp": at[1]}
            | {"username": value, "password": value[::-1]},
            base | {"eventid": "cowrie.command.input", "timestamp": at[2], "input": value},
            base
            | {"eventid": "cowrie.session.file_download", "timestamp": at[3]}
            | {"shasum": f"{n:064x}", "url": f"http://{value}.example/"},
        ]
    same = {"session": "s0", "sensor": sensors[0], "shasum": "f" * 64}
    instant = _ts(t0 + 30 * reference.US).ToJsonString()
    for url in ("http://Z.example/x", "http://a.example/x"):
        lines.append(
            same | {"eventid": "cowrie.session.file_download", "timestamp": instant, "url": url}
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_ties_break_bytewise_on_a_database_with_a_language_collation(
    request: pytest.FixtureRequest, tmp_path: Path, start_server: StartServer
) -> None:
    database = make_database("postgresql", tmp_path, request, LANGUAGE_COLLATION)
    try:
        with database.engine.connect() as conn:
            assert conn.scalar(text("SELECT 'Zed' < '_x'")) is False  # really not bytewise
        log = tmp_path / "tied" / "cowrie.json"
        _tied_values_log(log, 1_700_000_000 * reference.US)
        database.ingest([log])
        events = reference.load_events([log])
        running = start_server(database.settings())
        _all_checks(running.stub, events)
        got = running.stub.GetThreatStats(stats_pb2.GetThreatStatsRequest(top_n=3))
        assert [v.value for v in got.top_usernames] == ["Ed", "Zed", "_x"]
        # Same shasum, same instant: the greater URL by bytes ("a" > "Z"; not in English).
        assert got.top_downloads[0].url == "http://a.example/x"
    finally:
        database.engine.dispose()
