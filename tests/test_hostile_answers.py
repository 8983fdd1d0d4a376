"""Answers stay deliverable whatever attackers logged, and the result cache stays bounded.

A honeypot records what attackers write. Twenty passwords of a megabyte once made the
default GetThreatStats larger than the server sends, for every client, while the
access log and ``grpc_server_handled`` said OK; and the result cache, bounded by
entries and keyed by the request's raw bytes, grew by 600 MB from 100 calls that each
carried a 900 KB unknown field. Here a real log with such values is ingested and asked
over a real gRPC server, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import logging
import secrets
from pathlib import Path
from typing import Any

import grpc
import pytest
import reference
from conftest import Database, RunningServer, StartServer, access_lines
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from test_crosscheck import check_threat_stats

from cowrie_stats import SERVICE_NAME, metrics, query
from cowrie_stats._gen.cowrie.stats.v1 import stats_pb2
from cowrie_stats.cache import MAX_ENTRY_SHARE
from cowrie_stats.capping import MAX_TEXT_CHARS
from cowrie_stats.client import ResponseTooLargeError, StatsClient, text_value
from cowrie_stats.mcp_server import render

THREATS = "/cowrie.stats.v1.CowrieStatsService/GetThreatStats"
MEGABYTE = 1_000_000
PASSWORDS = 20
# The passwords share their first 1024 characters, so only the whole values order them.
SHARED_HEAD = "P" * MAX_TEXT_CHARS


def _password(k: int) -> str:
    """About a megabyte of UTF-8: ASCII, or three-byte characters (fewer code points)."""
    tail = "x" * MEGABYTE if k % 2 == 0 else "\u20ac" * (MEGABYTE // 3)
    return f"{SHARED_HEAD}{k:02d}{tail}"


def _username(k: int) -> str:
    """Short, or long with the credential separator's character around the cut."""
    return [
        "root",
        "\x01" * 1500 + str(k),  # stored escaped as \x01\x02: twice as long
        "u" * 2000 + "\x01\x01" + str(k),
        "\u00e9" * (MAX_TEXT_CHARS - 1) + "\x01" + "z" * 10 + str(k),
    ][k % 4]


def _line(session: str, second: int, **fields: Any) -> str:
    stamp = f"2026-11-20T10:{second // 60:02d}:{second % 60:02d}.000000Z"
    event = {"session": session, "timestamp": stamp, "sensor": "hostile", **fields}
    # Raw UTF-8: escaped, the three-byte passwords would pass the ingest's line limit.
    return json.dumps(event, ensure_ascii=False)


def write_hostile_log(path: Path) -> Path:
    """Twenty sessions, each with a password of a megabyte, long usernames, commands,
    source "IPs", shasums and URLs; some values used twice, for counts and ties."""
    long_command = "wget " + "A" * 300_000
    long_ip = "not-an-ip-" * 300
    lines = []
    for k in range(PASSWORDS):
        session = f"h{k:02d}"
        lines.append(
            _line(
                session,
                k * 2,
                eventid="cowrie.session.connect",
                src_ip=long_ip + str(k % 2),
                protocol="ssh",
            )
        )
        lines.append(
            _line(
                session,
                k * 2 + 1,
                eventid="cowrie.login.failed",
                username=_username(k),
                password=_password(k),
            )
        )
        lines.append(_line(session, k * 2 + 1, eventid="cowrie.command.input", input=long_command))
        lines.append(_line(session, k * 2 + 1, eventid="cowrie.command.input", input=f"id {k}"))
    for k in range(5):  # a second use of five passwords: counts 2 above the ties of 1
        lines.append(
            _line(
                "again",
                50 + k,
                eventid="cowrie.login.success",
                username="root",
                password=_password(k),
            )
        )
    lines.append(
        _line(
            "again",
            59,
            eventid="cowrie.session.file_download",
            shasum="f" * 3000,
            url="http://\u00e9.example/" + "\u00e9" * 4000,
        )
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def hostile_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_hostile_log(tmp_path_factory.mktemp("hostile") / "cowrie.json")


@pytest.fixture(scope="module")
def hostile_events(hostile_log: Path) -> list[reference.RefEvent]:
    return reference.load_events([hostile_log])


@pytest.fixture
def hostile_db(db: Database, hostile_log: Path) -> Database:
    summary = db.ingest([hostile_log])
    assert (summary.dead_lettered, summary.events_stored) == (0, 4 * PASSWORDS + 6)
    return db


@pytest.fixture
def hostile_sqlite(sqlite_db: Database, hostile_log: Path) -> Database:
    sqlite_db.ingest([hostile_log])
    return sqlite_db


# -- capped values ---------------------------------------------------------------------------


def test_default_threat_stats_answers_with_capped_values_and_exact_figures(
    hostile_db: Database,
    hostile_events: list[reference.RefEvent],
    start_server: StartServer,
) -> None:
    running = start_server(hostile_db.settings())  # the default send limit: 16 MiB
    got = check_threat_stats(running.stub, hostile_events, (None, None), top_n=10)
    assert got.ByteSize() < 200_000  # 40 MB of passwords, about 100 KB of answer
    passwords = [(p.value, p.value_truncated, p.value_length, p.count) for p in got.top_passwords]
    # Counts first, then the whole values: k = 0..4 twice, then 5..9 (never the shared head).
    assert [length for _, _, length, _ in passwords] == [len(_password(k)) for k in range(10)]
    assert all(value == SHARED_HEAD and cut for value, cut, _, _ in passwords)
    assert [count for *_, count in passwords] == [2] * 5 + [1] * 5
    by_length = {u.value_length: u for u in got.top_usernames}
    escaped = by_length[1501]  # "\x01" * 1500 + "1": stored twice as long, cut to 1024
    assert escaped.value == "\x01" * MAX_TEXT_CHARS and escaped.value_truncated
    # Every credential (bytewise, "\u00e9..." comes last): the cut next to the separator.
    every = check_threat_stats(running.stub, hostile_events, (None, None), top_n=100)
    assert len(every.top_credentials) == PASSWORDS + 5 - 2  # root with P0 and P4 twice
    credentials = {(c.username_length, c.password_length): c for c in every.top_credentials}
    boundary = credentials[(len(_username(3)), len(_password(3)))]
    assert boundary.username == "\u00e9" * (MAX_TEXT_CHARS - 1) + "\x01"
    assert boundary.username_truncated and boundary.password_truncated
    short = next(c for c in got.top_credentials if c.username == "root")
    assert not short.username_truncated and short.username_length == 4
    command = got.top_commands[0]
    assert (command.count, command.value_length, command.value_truncated) == (20, 300_005, True)
    assert len(command.value) == MAX_TEXT_CHARS
    download = got.top_downloads[0]
    assert (download.shasum_length, download.url_length) == (3000, 17 + 4000)
    assert download.shasum_truncated and download.url_truncated
    assert len(download.url) == MAX_TEXT_CHARS
    assert all(len(ip.value) == MAX_TEXT_CHARS for ip in got.top_source_ips)


# -- answers too large to send -------------------------------------------------------------


def _handled(code: str) -> float:
    labels = ("unary", SERVICE_NAME, THREATS.rsplit("/", 1)[1], code)
    return float(metrics.HANDLED.labels(*labels)._value.get())


def test_an_answer_over_the_send_limit_fails_as_resource_exhausted_and_is_recorded_so(
    hostile_sqlite: Database, start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    # 1 KiB requests, so 16 KiB answers: the capped answer is larger than that.
    running = start_server(hostile_sqlite.settings(max_message_bytes=1024))
    caplog.set_level(logging.INFO)
    ok, exhausted = _handled("OK"), _handled("RESOURCE_EXHAUSTED")
    misses = metrics.CACHE_MISSES._value.get()
    for _ in range(2):
        with pytest.raises(grpc.RpcError) as raised:
            running.stub.GetThreatStats(stats_pb2.GetThreatStatsRequest())
        error: Any = raised.value
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        status = rpc_status.from_call(error)
        assert status is not None
        info = error_details_pb2.ErrorInfo()
        status.details[0].Unpack(info)
        assert info.reason == "RESPONSE_TOO_LARGE"
        assert int(info.metadata["response_bytes"]) > int(info.metadata["max_response_bytes"])
        assert info.metadata["max_response_bytes"] == str(16 * 1024)
    # Recorded as what the caller got, never as OK; and not cached: both calls computed it.
    assert (_handled("OK"), _handled("RESOURCE_EXHAUSTED")) == (ok, exhausted + 2)
    assert metrics.CACHE_MISSES._value.get() == misses + 2
    assert running.server.cache is not None and running.server.cache.bytes == 0
    running.server.access_log.flush()
    codes = [(r.method, r.code) for r in access_lines(caplog)]  # type: ignore[attr-defined]
    assert codes == [(THREATS, "RESOURCE_EXHAUSTED")] * 2
    # A smaller question still answers.
    one = running.stub.GetThreatStats(stats_pb2.GetThreatStatsRequest(top_n=1))
    assert len(one.top_passwords) == 1
    with StatsClient(running.address) as client, pytest.raises(ResponseTooLargeError) as typed:
        client.get_threat_stats()
    assert not typed.value.retryable and typed.value.reason == "RESPONSE_TOO_LARGE"


# -- the result cache ----------------------------------------------------------------------


def _with_unknown_field(request: stats_pb2.GetThreatStatsRequest, size: int) -> bytes:
    """The request's bytes plus field 99 (length-delimited) of ``size`` random bytes."""
    payload = secrets.token_bytes(size)
    tag = (99 << 3) | 2
    return request.SerializeToString() + _varint(tag) + _varint(len(payload)) + payload


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


@pytest.fixture
def raw_threats(
    sqlite_db: Database, tmp_path: Path, start_server: StartServer
) -> tuple[RunningServer, Any]:
    sqlite_db.ingest_sample(tmp_path)
    running = start_server(sqlite_db.settings())
    call = running.channel.unary_unary(
        THREATS,
        request_serializer=None,  # the bytes as given
        response_deserializer=stats_pb2.GetThreatStatsResponse.FromString,
    )
    return running, call


def test_requests_that_differ_only_in_unknown_fields_share_one_small_entry(
    raw_threats: tuple[RunningServer, Any],
) -> None:
    running, call = raw_threats
    cache = running.server.cache
    assert cache is not None and cache.max_bytes == 16 * 1024 * 1024
    hits = metrics.CACHE_HITS._value.get()
    request = stats_pb2.GetThreatStatsRequest(top_n=5)
    answers = [call(_with_unknown_field(request, 900_000)) for _ in range(100)]
    assert answers == answers[:1] * 100
    assert len(cache) == 1
    assert cache.bytes == answers[0].ByteSize() + len(request.SerializeToString())
    assert metrics.CACHE_HITS._value.get() == hits + 99


def test_equivalent_requests_share_one_entry(raw_threats: tuple[RunningServer, Any]) -> None:
    running, _call = raw_threats
    sensors = ["sensor-us-1", "sensor-eu-1"]
    window = stats_pb2.TimeRange()
    window.start_time.FromJsonString("2026-11-20T00:00:00.000000001Z")  # under a microsecond
    variants = [
        stats_pb2.GetThreatStatsRequest(sensors=sensors),
        stats_pb2.GetThreatStatsRequest(sensors=[*reversed(sensors), sensors[0]], top_n=10),
        stats_pb2.GetThreatStatsRequest(sensors=sensors, time_range=stats_pb2.TimeRange()),
    ]
    answers = [running.stub.GetThreatStats(request) for request in variants]
    assert answers == answers[:1] * 3
    assert running.server.cache is not None and len(running.server.cache) == 1
    running.stub.GetThreatStats(stats_pb2.GetThreatStatsRequest(time_range=window))
    window.start_time.FromJsonString("2026-11-20T00:00:00Z")
    running.stub.GetThreatStats(stats_pb2.GetThreatStatsRequest(time_range=window))
    assert len(running.server.cache) == 2


def test_answers_larger_than_a_share_of_the_bound_are_not_cached(
    sqlite_db: Database, tmp_path: Path, start_server: StartServer
) -> None:
    sqlite_db.ingest_sample(tmp_path)
    bound = 4096
    running = start_server(sqlite_db.settings(result_cache_bytes=bound))
    cache = running.server.cache
    assert cache is not None and cache.max_entry_bytes == bound // MAX_ENTRY_SHARE
    misses = metrics.CACHE_MISSES._value.get()
    threats = [running.stub.GetThreatStats(stats_pb2.GetThreatStatsRequest()) for _ in range(2)]
    assert threats[0].ByteSize() > cache.max_entry_bytes
    assert metrics.CACHE_MISSES._value.get() == misses + 2 and len(cache) == 0
    sessions = running.stub.GetSessionStats(stats_pb2.GetSessionStatsRequest())
    assert sessions.ByteSize() < cache.max_entry_bytes
    assert len(cache) == 1 and 0 < cache.bytes <= bound


# -- what the clients show -------------------------------------------------------------------


def test_query_and_mcp_show_a_cut_value_as_cut(
    hostile_sqlite: Database,
    start_server: StartServer,
    in_process: Any,
) -> None:
    running = start_server(hostile_sqlite.settings())
    status, out, _ = in_process("query", "threats", "--target", running.address, "--top", "3")
    assert status == query.EXIT_OK
    passwords = out.split("top_passwords")[1].split("\n\n")[0]
    assert f"… ({len(_password(0)):,} chars)" in passwords
    assert "\u2026 (4 chars)" not in out  # values that are whole are shown as before
    status, wide, _ = in_process(
        "query", "threats", "--target", running.address, "--top", "1", "--max-width", "0"
    )
    assert f"{SHARED_HEAD}… ({len(_password(0)):,} chars)" in wide
    with StatsClient(running.address) as client:
        reply = client.get_threat_stats(top_n=1)
    password = text_value(reply.top_passwords[0], "value")
    assert (password.text, password.truncated, password.length) == (
        SHARED_HEAD,
        True,
        len(_password(0)),
    )
    sensor = text_value(client_sensor(running), "sensor")
    assert (sensor.text, sensor.truncated, sensor.length) == ("hostile", False, 7)
    summary = render.summary("GetThreatStats", reply)
    assert f"(cut by the server: {len(_password(0))} characters in all)" in summary
    assert "valueTruncated" not in summary and "valueLength" not in summary
    root = next(c for c in reply.top_credentials if c.username == "root")
    assert "usernameTruncated" not in summary and root.username_length == 4


def client_sensor(running: RunningServer) -> stats_pb2.SensorStats:
    return running.stub.GetSensorStats(stats_pb2.GetSensorStatsRequest()).sensors[0]
