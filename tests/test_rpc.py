"""The three RPCs on hand-built event sets with known answers, and their validation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from conftest import Database, RunningServer, StartServer
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from cowrie_stats._gen.cowrie.stats.v1 import stats_pb2

DAY = "2024-04-03"


def ev(
    eventid: str, session: str, clock: str, sensor: str = "alpha", **fields: Any
) -> dict[str, Any]:
    return {
        "eventid": eventid,
        "session": session,
        "timestamp": f"{DAY}T{clock}Z",
        "sensor": sensor,
        **fields,
    }


# Session s1 (alpha, ssh, 203.0.113.1): 2 failed + 1 success login, 3 commands, 1 download.
# Session s2 (alpha, telnet, 203.0.113.2): 1 failed login, no commands, duration "4.5".
# Session s3 (beta, no connect event, IPv6): 1 command, duration_ms 2000.
# Session s4 (beta, ssh, 203.0.113.1) starts 10:00: 1 success, download without url.
EVENTS = [
    ev("cowrie.session.connect", "s1", "00:00:00", src_ip="203.0.113.1", protocol="ssh"),
    ev(
        "cowrie.login.failed", "s1", "00:00:01", src_ip="203.0.113.1", username="root", password="a"
    ),
    ev(
        "cowrie.login.failed", "s1", "00:00:02", src_ip="203.0.113.1", username="root", password="b"
    ),
    ev(
        "cowrie.login.success",
        "s1",
        "00:00:03",
        src_ip="203.0.113.1",
        username="admin",
        password="a",
    ),
    ev("cowrie.command.input", "s1", "00:00:04", src_ip="203.0.113.1", input="uname -a"),
    ev("cowrie.command.input", "s1", "00:00:05", src_ip="203.0.113.1", input="ls"),
    ev("cowrie.command.input", "s1", "01:00:00", src_ip="203.0.113.1", input="ls"),
    ev(
        "cowrie.session.file_download",
        "s1",
        "01:00:01",
        src_ip="203.0.113.1",
        shasum="f00",
        url="http://a/x",
        outfile="dl/f00",
    ),
    ev("cowrie.session.closed", "s1", "01:00:02", src_ip="203.0.113.1", duration=3602.0),
    ev("cowrie.session.connect", "s2", "00:30:00", src_ip="203.0.113.2", protocol="telnet"),
    ev(
        "cowrie.login.failed", "s2", "00:30:01", src_ip="203.0.113.2", username="root", password="a"
    ),
    ev("cowrie.session.closed", "s2", "00:30:04.5", src_ip="203.0.113.2", duration="4.5"),
    ev("cowrie.command.input", "s3", "02:00:00", "beta", src_ip="2001:db8::1", input="ls"),
    ev("cowrie.session.closed", "s3", "02:00:02", "beta", src_ip="2001:db8::1", duration_ms=2000),
    ev("cowrie.session.connect", "s4", "10:00:00", "beta", src_ip="203.0.113.1", protocol="ssh"),
    ev(
        "cowrie.login.success",
        "s4",
        "10:00:01",
        "beta",
        src_ip="203.0.113.1",
        username="root",
        password="a",
    ),
    ev(
        "cowrie.session.file_download",
        "s4",
        "10:00:02",
        "beta",
        src_ip="203.0.113.1",
        shasum="f00",
        destfile="/tmp/x",
    ),
]


def ts(clock: str, day: str = DAY) -> Timestamp:
    stamp = Timestamp()
    stamp.FromJsonString(f"{day}T{clock}Z")
    return stamp


def window(start: str | None, end: str | None) -> stats_pb2.TimeRange:
    time_range = stats_pb2.TimeRange()
    if start:
        time_range.start_time.CopyFrom(ts(start))
    if end:
        time_range.end_time.CopyFrom(ts(end))
    return time_range


@pytest.fixture
def server(db: Database, tmp_path: Path, start_server: StartServer) -> RunningServer:
    log = tmp_path / "cowrie.json"
    log.write_text("\n".join(json.dumps(e) for e in EVENTS) + "\n")
    assert db.ingest([log]).events_stored == len(EVENTS)
    return start_server(db.settings())


def test_session_stats_all_time(server: RunningServer) -> None:
    got = server.stub.GetSessionStats(stats_pb2.GetSessionStatsRequest())
    assert got.total_sessions == 4
    assert got.unique_source_ips == 3
    assert got.sessions_with_login_success == 2
    assert (got.login_attempts, got.login_successes, got.login_failures) == (5, 2, 3)
    assert got.sessions_with_commands == 2
    assert got.total_commands == 4
    assert got.avg_commands_per_session == pytest.approx(4 / 4)
    assert got.max_commands_per_session == 3
    assert (got.file_downloads, got.unique_download_hashes) == (2, 1)
    assert got.sessions_with_duration == 3
    assert got.avg_duration_seconds == pytest.approx((3602.0 + 4.5 + 2.0) / 3)
    assert dict(got.sessions_by_protocol) == {"ssh": 2, "telnet": 1, "unknown": 1}
    assert list(got.buckets) == []


def test_window_edges_are_start_inclusive_end_exclusive(server: RunningServer) -> None:
    # [00:30:00, 02:00:00): s2 starts at the inclusive edge, s3 at the exclusive one.
    got = server.stub.GetSessionStats(
        stats_pb2.GetSessionStatsRequest(time_range=window("00:30:00", "02:00:00"))
    )
    assert got.total_sessions == 1
    assert got.login_attempts == 1  # only s2's; s1's are before 00:30
    assert got.total_commands == 1  # s1's command at 01:00:00 is an event in the window
    assert got.file_downloads == 1
    assert got.avg_commands_per_session == 0.0  # s2 has none; s1 started before the window
    # The same instant written with an offset selects the same window.
    offset = stats_pb2.TimeRange()
    offset.start_time.FromJsonString(f"{DAY}T02:30:00+02:00")
    offset.end_time.FromJsonString(f"{DAY}T04:00:00+02:00")
    again = server.stub.GetSessionStats(stats_pb2.GetSessionStatsRequest(time_range=offset))
    assert again == got


def test_hourly_buckets_are_contiguous(server: RunningServer) -> None:
    got = server.stub.GetSessionStats(
        stats_pb2.GetSessionStatsRequest(
            time_range=window("00:00:00", "03:00:00"), bucket=stats_pb2.BUCKET_HOUR
        )
    )
    rows = [
        (
            b.start_time.ToJsonString(),
            b.sessions,
            b.unique_source_ips,
            b.login_attempts,
            b.total_commands,
        )
        for b in got.buckets
    ]
    assert rows == [
        (f"{DAY}T00:00:00Z", 2, 2, 4, 2),
        (f"{DAY}T01:00:00Z", 0, 0, 0, 1),
        (f"{DAY}T02:00:00Z", 1, 1, 0, 1),
    ]


def test_daily_buckets_unbounded_use_the_data_range(server: RunningServer) -> None:
    got = server.stub.GetSessionStats(stats_pb2.GetSessionStatsRequest(bucket=stats_pb2.BUCKET_DAY))
    assert [(b.start_time.ToJsonString(), b.sessions) for b in got.buckets] == [
        (f"{DAY}T00:00:00Z", 4)
    ]


def test_sensor_filter(server: RunningServer) -> None:
    got = server.stub.GetSessionStats(stats_pb2.GetSessionStatsRequest(sensors=["beta"]))
    assert got.total_sessions == 2
    assert dict(got.sessions_by_protocol) == {"ssh": 1, "telnet": 0, "unknown": 1}
    assert got.unique_source_ips == 2


def test_threat_stats_rankings_and_ties(server: RunningServer) -> None:
    got = server.stub.GetThreatStats(stats_pb2.GetThreatStatsRequest())
    assert [(v.value, v.count, v.sessions) for v in got.top_source_ips] == [
        ("203.0.113.1", 2, 2),
        ("2001:db8::1", 1, 1),
        ("203.0.113.2", 1, 1),  # tie on count: bytewise "2001..." < "203..."
    ]
    first = got.top_source_ips[0]
    assert (first.first_seen.ToJsonString(), first.last_seen.ToJsonString()) == (
        f"{DAY}T00:00:00Z",
        f"{DAY}T10:00:02Z",
    )
    assert [(v.value, v.count, v.sessions) for v in got.top_usernames] == [
        ("root", 4, 3),
        ("admin", 1, 1),
    ]
    assert [(v.value, v.count) for v in got.top_passwords] == [("a", 4), ("b", 1)]
    assert [(v.value, v.count, v.sessions) for v in got.top_commands] == [
        ("ls", 3, 2),
        ("uname -a", 1, 1),
    ]
    assert [(c.username, c.password, c.attempts, c.successes) for c in got.top_credentials] == [
        ("root", "a", 3, 1),
        ("admin", "a", 1, 1),
        ("root", "b", 1, 0),
    ]
    assert [(d.shasum, d.url, d.count, d.sessions) for d in got.top_downloads] == [
        ("f00", "http://a/x", 2, 2)
    ]
    assert (got.unique_source_ips, got.unique_usernames, got.unique_passwords) == (3, 2, 2)
    assert got.unique_download_hashes == 1


def test_top_n_bounds(server: RunningServer) -> None:
    one = server.stub.GetThreatStats(stats_pb2.GetThreatStatsRequest(top_n=1))
    assert len(one.top_usernames) == 1 and one.unique_usernames == 2
    full = server.stub.GetThreatStats(stats_pb2.GetThreatStatsRequest(top_n=1000))
    assert len(full.top_commands) == 2


def test_sensor_stats(server: RunningServer) -> None:
    got = server.stub.GetSensorStats(stats_pb2.GetSensorStatsRequest())
    assert got.total_sensors == 2
    alpha, beta = got.sensors
    assert (alpha.sensor, alpha.sessions, alpha.unique_source_ips, alpha.events) == (
        "alpha",
        2,
        2,
        12,
    )
    assert (alpha.login_successes, alpha.file_downloads) == (1, 1)
    assert (beta.sensor, beta.sessions, beta.events, beta.login_successes) == ("beta", 2, 5, 1)
    assert alpha.first_seen.ToJsonString() == f"{DAY}T00:00:00Z"
    assert beta.last_seen.ToJsonString() == f"{DAY}T10:00:02Z"
    assert alpha.stale and beta.stale  # 2024 is long ago
    fresh = server.stub.GetSensorStats(
        stats_pb2.GetSensorStatsRequest(stale_after=Duration(seconds=100 * 365 * 86400))
    )
    assert not any(s.stale for s in fresh.sensors)


def test_silent_sensor_is_listed_with_zeros(server: RunningServer) -> None:
    got = server.stub.GetSensorStats(
        stats_pb2.GetSensorStatsRequest(time_range=window("09:00:00", "11:00:00"))
    )
    alpha, beta = got.sensors
    assert (alpha.sensor, alpha.sessions, alpha.events) == ("alpha", 0, 0)
    assert not alpha.HasField("first_seen")
    assert (beta.sessions, beta.events, beta.file_downloads) == (1, 3, 1)


def test_empty_database(db: Database, start_server: StartServer) -> None:
    running = start_server(db.settings())
    got = running.stub.GetSessionStats(
        stats_pb2.GetSessionStatsRequest(bucket=stats_pb2.BUCKET_DAY)
    )
    assert got.total_sessions == 0 and got.avg_duration_seconds == 0.0 and not got.buckets
    assert dict(got.sessions_by_protocol) == {"ssh": 0, "telnet": 0, "unknown": 0}
    assert running.stub.GetSensorStats(stats_pb2.GetSensorStatsRequest()).total_sensors == 0
    threats = running.stub.GetThreatStats(stats_pb2.GetThreatStatsRequest())
    assert not threats.top_source_ips and threats.unique_usernames == 0


def _violations(error: grpc.RpcError) -> dict[str, str]:
    status = rpc_status.from_call(cast(grpc.Call, error))
    assert status is not None
    found: dict[str, str] = {}
    for detail in status.details:
        bad_request = error_details_pb2.BadRequest()
        assert detail.Unpack(bad_request)
        found.update({v.field: v.description for v in bad_request.field_violations})
    return found


@pytest.mark.parametrize(
    ("call", "request_message", "fields"),
    [
        (
            "GetSessionStats",
            stats_pb2.GetSessionStatsRequest(time_range=window("02:00:00", "01:00:00")),
            {"time_range.end_time"},
        ),
        (
            "GetSessionStats",
            stats_pb2.GetSessionStatsRequest(bucket=stats_pb2.Bucket.ValueType(7)),
            {"bucket"},
        ),
        ("GetThreatStats", stats_pb2.GetThreatStatsRequest(top_n=1001), {"top_n"}),
        (
            "GetThreatStats",
            stats_pb2.GetThreatStatsRequest(top_n=-1, sensors=[""]),
            {"top_n", "sensors[0]"},
        ),
        (
            "GetSensorStats",
            stats_pb2.GetSensorStatsRequest(stale_after=Duration(seconds=-5)),
            {"stale_after"},
        ),
        (
            "GetSessionStats",
            stats_pb2.GetSessionStatsRequest(
                time_range=stats_pb2.TimeRange(
                    start_time=Timestamp(seconds=0), end_time=Timestamp(seconds=10**9 * 4)
                ),
                bucket=stats_pb2.BUCKET_HOUR,
            ),
            {"time_range", "bucket"},
        ),
    ],
)
def test_invalid_arguments_list_field_violations(
    server: RunningServer, call: str, request_message: Any, fields: set[str]
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        getattr(server.stub, call)(request_message)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(_violations(caught.value)) == fields


def test_unknown_sensor_is_not_found_with_error_info(server: RunningServer) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        server.stub.GetThreatStats(stats_pb2.GetThreatStatsRequest(sensors=["alpha", "nope"]))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "nope" in (caught.value.details() or "")
    status = rpc_status.from_call(cast(grpc.Call, caught.value))
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert (info.reason, info.domain, dict(info.metadata)) == (
        "SENSOR_NOT_FOUND",
        "cowrie-stats",
        {"sensors": "nope"},
    )
