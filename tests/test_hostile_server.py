"""Clients that try to pin or deadlock the server, against real servers on loopback.

* half-open calls (headers, never the request message), more than there are workers;
* a health watcher whose HTTP/2 flow-control window is 0 and that never reads;
* a storm of Watch streams opened and cancelled at once;
* the probe listener, refusals logged rate-limited, SIGTERM with all of it held.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from conftest import Database, RunningServer, StartServer
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cowrie_stats import SERVICE_NAME
from cowrie_stats._gen.cowrie.stats.v1 import stats_pb2
from cowrie_stats.auth import key_line
from cowrie_stats.guard import REFUSALS
from cowrie_stats.settings import Settings

KEY = "hostile-tests-key-0123456789"
RECEIVE_TIMEOUT = 1.5
REAL_METHOD = f"/{SERVICE_NAME}/GetSensorStats"
UNKNOWN_METHOD = f"/{SERVICE_NAME}/NoSuchMethod"
WATCH = "/grpc.health.v1.Health/Watch"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _keys(tmp_path: Path) -> Path:
    path = tmp_path / "api-keys"
    path.write_text(key_line("tests", KEY) + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path


def _settings(db: Database, tmp_path: Path, keys: bool, **overrides: Any) -> Settings:
    extra: dict[str, Any] = {"api_keys_file": str(_keys(tmp_path))} if keys else {}
    return db.settings(receive_timeout_seconds=RECEIVE_TIMEOUT, **extra, **overrides)


def _key(keys: bool) -> tuple[tuple[str, str], ...]:
    return (("x-api-key", KEY),) if keys else ()


# -- hostile clients -----------------------------------------------------------------------


class HalfOpen:
    """Calls that send their headers and never a request message."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.channel = channel
        self._release = threading.Event()
        self.calls: list[tuple[float, grpc.Future[Any]]] = []
        self.ended: dict[int, float] = {}

    def _silence(self) -> Iterator[bytes]:
        self._release.wait()
        return
        yield b""  # pragma: no cover - never reached: a generator that sends nothing

    def open(self, method: str, count: int, metadata: Sequence[tuple[str, str]] = ()) -> None:
        call = self.channel.stream_unary(
            method, request_serializer=None, response_deserializer=None
        )
        for _ in range(count):
            opened = time.monotonic()
            future = call.future(self._silence(), metadata=tuple(metadata), timeout=30)
            future.add_done_callback(self._note_end)
            self.calls.append((opened, future))

    def _note_end(self, future: grpc.Future[Any]) -> None:
        self.ended[id(future)] = time.monotonic()

    def outcomes(self) -> list[tuple[grpc.StatusCode, float]]:
        """(code, seconds from opening to the end) of every call."""
        ended: list[tuple[grpc.StatusCode, float]] = []
        for opened, future in self.calls:
            with pytest.raises(grpc.RpcError) as caught:
                future.result(timeout=15)
            ended.append((caught.value.code(), self.ended[id(future)] - opened))
        return ended

    def close(self) -> None:
        self._release.set()
        for _, future in self.calls:
            future.cancel()


class ZeroWindowWatcher:
    """A raw HTTP/2 client: flow-control window 0, a health Watch, then never reads."""

    def __init__(self, port: int, service: str = "") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
        self.sock.sendall(self.conn.data_to_send())
        self._settle()
        request = health_pb2.HealthCheckRequest(service=service).SerializeToString()
        stream = self.conn.get_next_available_stream_id()
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", WATCH),
            (":authority", f"127.0.0.1:{port}"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
        self.conn.send_headers(stream, headers)
        frame = b"\x00" + len(request).to_bytes(4, "big") + request
        self.conn.send_data(stream, frame, end_stream=True)
        self.sock.sendall(self.conn.data_to_send())
        # From here on nothing is read: the server's messages can never be sent.

    def _settle(self) -> None:
        """Exchange SETTINGS (ours acknowledged, theirs acknowledged), as any client does."""
        acknowledged = False
        while not acknowledged:
            for event in self.conn.receive_data(self.sock.recv(65536)):
                acknowledged = acknowledged or isinstance(event, h2.events.SettingsAcknowledged)
            self.sock.sendall(self.conn.data_to_send())

    def close(self) -> None:
        self.sock.close()


@contextmanager
def hostile(closing: Callable[[], None]) -> Iterator[None]:
    """Whatever the test does, the hostile client lets go at the end."""
    try:
        yield
    finally:
        closing()


def _answers_within(seconds: float, call: Callable[[], Any]) -> Any:
    started = time.monotonic()
    reply = call()
    assert time.monotonic() - started < seconds
    return reply


def _check(channel: grpc.Channel, metadata: Sequence[tuple[str, str]] = ()) -> Any:
    stub = health_pb2_grpc.HealthStub(channel)
    request = health_pb2.HealthCheckRequest(service=SERVICE_NAME)
    return stub.Check(request, metadata=tuple(metadata), timeout=1).status


def _still_answers(running: RunningServer, keys: bool) -> None:
    """Health and a real statistics call answer within a second each."""
    assert _answers_within(1.0, lambda: _check(running.channel)) == SERVING
    reply = _answers_within(
        1.0,
        lambda: running.stub.GetSensorStats(
            stats_pb2.GetSensorStatsRequest(), metadata=_key(keys), timeout=1
        ),
    )
    assert reply.total_sensors == 0


# -- half-open calls -----------------------------------------------------------------------


@pytest.mark.parametrize("keys", [False, True], ids=["open", "keys"])
def test_half_open_calls_pin_nothing_and_end_at_the_receive_timeout(
    sqlite_db: Database, start_server: StartServer, tmp_path: Path, keys: bool
) -> None:
    running = start_server(_settings(sqlite_db, tmp_path, keys))
    crowd = running.server.settings.max_workers + 2
    attacker = HalfOpen(running.channel)
    with hostile(attacker.close):
        attacker.open(REAL_METHOD, crowd, _key(keys))
        attacker.open(UNKNOWN_METHOD, crowd, _key(keys))
        if keys:
            attacker.open(REAL_METHOD, crowd)  # no key
            attacker.open(UNKNOWN_METHOD, crowd)
        time.sleep(0.3)  # every call has reached the server
        _still_answers(running, keys)
        outcomes = attacker.outcomes()
    waited, unknown = outcomes[:crowd], outcomes[crowd : 2 * crowd]
    for code, seconds in waited:  # ended by the server, not by the 30 s deadline
        assert code == grpc.StatusCode.CANCELLED
        assert RECEIVE_TIMEOUT - 0.1 < seconds < RECEIVE_TIMEOUT + 2
    refused = unknown + outcomes[2 * crowd :]
    expected = [grpc.StatusCode.UNIMPLEMENTED] * crowd
    if keys:
        expected += [grpc.StatusCode.UNAUTHENTICATED] * 2 * crowd
    assert [code for code, _ in refused] == expected
    assert all(seconds < 1.0 for _, seconds in refused)  # from the metadata alone
    _still_answers(running, keys)


def test_a_request_that_arrives_in_time_is_answered(
    sqlite_db: Database, start_server: StartServer, tmp_path: Path
) -> None:
    running = start_server(_settings(sqlite_db, tmp_path, keys=False))
    call = running.channel.stream_unary(
        REAL_METHOD,
        request_serializer=stats_pb2.GetSensorStatsRequest.SerializeToString,
        response_deserializer=stats_pb2.GetSensorStatsResponse.FromString,
    )

    def slow_request() -> Iterator[stats_pb2.GetSensorStatsRequest]:
        time.sleep(RECEIVE_TIMEOUT / 2)
        yield stats_pb2.GetSensorStatsRequest()

    assert call(slow_request(), timeout=10).total_sensors == 0
    with pytest.raises(grpc.RpcError) as caught:  # half-closed without a message
        call(iter(()), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_silent_streams_end_at_the_receive_timeout(
    sqlite_db: Database, start_server: StartServer, tmp_path: Path
) -> None:
    """Reflection streams: each message must arrive in time, each answer be taken."""
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    running = start_server(_settings(sqlite_db, tmp_path, keys=False))
    reflection = reflection_pb2_grpc.ServerReflectionStub(running.channel)
    release = threading.Event()

    def one_then_silence() -> Iterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")
        release.wait()

    started = time.monotonic()
    answers = reflection.ServerReflectionInfo(one_then_silence(), timeout=30)
    try:
        first = next(answers)
        assert SERVICE_NAME in {s.name for s in first.list_services_response.service}
        with pytest.raises(grpc.RpcError) as caught:
            next(answers)
        assert caught.value.code() == grpc.StatusCode.CANCELLED
        assert time.monotonic() - started < RECEIVE_TIMEOUT + 2
    finally:
        release.set()


# -- health watchers -----------------------------------------------------------------------


def _wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_a_zero_window_watcher_blocks_no_check(
    sqlite_db: Database, start_server: StartServer, tmp_path: Path
) -> None:
    running = start_server(_settings(sqlite_db, tmp_path, keys=True))
    health = running.server.health
    watchers = [ZeroWindowWatcher(running.server.port, SERVICE_NAME) for _ in range(3)]
    with contextlib.ExitStack() as held:
        for watcher in watchers:
            held.callback(watcher.close)
        _wait_until(lambda: health.watching == len(watchers))
        # Status changes are pushed while the watchers cannot take them.
        for status in (NOT_SERVING, SERVING, NOT_SERVING, SERVING):
            health.set(SERVICE_NAME, status)
            for _ in range(running.server.settings.max_workers + 2):
                assert _answers_within(1.0, lambda: _check(running.channel)) == status
        _still_answers(running, keys=True)
        # A watcher that takes nothing is cancelled once a send waited the receive timeout.
        _wait_until(lambda: health.watching == 0, timeout=RECEIVE_TIMEOUT * 3)
    _still_answers(running, keys=True)


def test_watch_pushes_changes_only_and_is_bounded(
    sqlite_db: Database, start_server: StartServer, tmp_path: Path
) -> None:
    running = start_server(_settings(sqlite_db, tmp_path, keys=False, max_health_watchers=2))
    health = running.server.health
    stub = health_pb2_grpc.HealthStub(running.channel)
    request = health_pb2.HealthCheckRequest(service=SERVICE_NAME)
    first = stub.Watch(request, timeout=30)
    second = stub.Watch(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=30)
    try:
        assert next(first).status == SERVING
        assert next(second).status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        with pytest.raises(grpc.RpcError) as caught:
            next(stub.Watch(request, timeout=5))
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        for status in (SERVING, SERVING, NOT_SERVING, NOT_SERVING, SERVING):
            health.set(SERVICE_NAME, status)  # the health loop re-sets it every 2 s too
        assert [next(first).status, next(first).status] == [NOT_SERVING, SERVING]
        listed = stub.List(health_pb2.HealthListRequest(), timeout=5)
        assert listed.statuses[SERVICE_NAME].status == SERVING
        with pytest.raises(grpc.RpcError) as caught:
            stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        first.cancel()
        second.cancel()
    _wait_until(lambda: health.watching == 0)


def _storm(channel: grpc.Channel, count: int) -> None:
    """``count`` Watch streams, cancelled at once or after their first answer."""
    stub = health_pb2_grpc.HealthStub(channel)

    def one(number: int) -> None:
        call = stub.Watch(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=30)
        if number % 2:
            with contextlib.suppress(grpc.RpcError):  # refused: the watchers are all taken
                next(call)
        call.cancel()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(count)))


def test_a_storm_of_cancelled_watchers_leaves_nothing_behind(
    sqlite_db: Database, start_server: StartServer, tmp_path: Path
) -> None:
    running = start_server(_settings(sqlite_db, tmp_path, keys=False))
    health = running.server.health
    _storm(running.channel, 300)
    _still_answers(running, keys=False)
    _wait_until(lambda: health.watching == 0)
    health.set(SERVICE_NAME, NOT_SERVING)  # statuses still change and reach Check
    assert _check(running.channel) == NOT_SERVING


# -- a real process: SIGTERM with all of it held --------------------------------------------


def _serve(db: Database, tmp_path: Path, port: int, probe_port: int) -> subprocess.Popen[bytes]:
    env = {
        "COWRIE_STATS_DATABASE_URL": db.url,
        "COWRIE_STATS_GRPC_HOST": "127.0.0.1",
        "COWRIE_STATS_GRPC_PORT": str(port),
        "COWRIE_STATS_PROBE_PORT": str(probe_port),
        "COWRIE_STATS_API_KEYS_FILE": str(_keys(tmp_path)),
        "COWRIE_STATS_OPEN_HEALTH_AND_REFLECTION": "false",
        "COWRIE_STATS_RECEIVE_TIMEOUT_SECONDS": str(RECEIVE_TIMEOUT),
        "COWRIE_STATS_SHUTDOWN_GRACE_SECONDS": "8",
        "COWRIE_STATS_LOG_FORMAT": "json",
        "PATH": "/usr/bin:/bin",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "cowrie_stats.cli", "serve"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    with grpc.insecure_channel(f"127.0.0.1:{probe_port}") as probe:
        deadline = time.monotonic() + 30
        while True:
            try:
                if _check(probe) == SERVING:
                    return proc
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise AssertionError(proc.communicate()[0].decode())
            time.sleep(0.2)


def test_sigterm_drains_with_half_open_calls_and_zero_window_watchers_held(
    sqlite_db: Database, tmp_path: Path
) -> None:
    port, probe_port = _free_port(), _free_port()
    proc = _serve(sqlite_db, tmp_path, port, probe_port)
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        probe = grpc.insecure_channel(f"127.0.0.1:{probe_port}")
        _storm(channel, 200)  # refused without a key: each ends at once
        _storm(probe, 200)
        watchers = [ZeroWindowWatcher(port), ZeroWindowWatcher(probe_port, SERVICE_NAME)]
        attacker = HalfOpen(channel)
        attacker.open(REAL_METHOD, 6, _key(True))
        attacker.open(UNKNOWN_METHOD, 6)
        time.sleep(0.3)
        assert _answers_within(1.0, lambda: _check(probe)) == SERVING
        assert _answers_within(1.0, lambda: _check(channel, _key(True))) == SERVING
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=20)[0].decode()
        assert proc.returncode == 0, output
        assert time.monotonic() - started < 8 + 2  # within the grace period
        assert '"stopped"' in output
        attacker.close()
        for watcher in watchers:
            watcher.close()
        channel.close()
        probe.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- the probe listener --------------------------------------------------------------------


def test_probe_listener_answers_health_without_a_key(
    sqlite_db: Database, start_server: StartServer, tmp_path: Path
) -> None:
    settings = _settings(
        sqlite_db, tmp_path, keys=True, open_health_and_reflection=False, probe_port=_free_port()
    )
    running = start_server(settings)
    with pytest.raises(grpc.RpcError) as caught:
        _check(running.channel)  # the main port demands a key, for health too
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert _check(running.channel, _key(True)) == SERVING
    assert running.server.probe_port == settings.probe_port
    with grpc.insecure_channel(f"127.0.0.1:{running.server.probe_port}") as probe:
        assert _check(probe) == SERVING
        with pytest.raises(grpc.RpcError) as caught:  # health only: no statistics there
            probe.unary_unary(REAL_METHOD, request_serializer=None, response_deserializer=None)(
                b"", metadata=_key(True), timeout=5
            )
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
        running.server.stop(grace=1)
        with pytest.raises(grpc.RpcError):
            _check(probe)


def test_probe_port_taken_is_one_clear_error(
    sqlite_db: Database, start_server: StartServer, tmp_path: Path
) -> None:
    from cowrie_stats.server import StatsServer

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = StatsServer(sqlite_db.settings(probe_port=port))
        with pytest.raises(OSError, match="COWRIE_STATS_PROBE_PORT"):
            server.start()


def test_healthcheck_asks_the_probe_listener(
    sqlite_db: Database,
    start_server: StartServer,
    tmp_path: Path,
    in_process: Callable[..., tuple[int, str, str]],
) -> None:
    settings = _settings(
        sqlite_db, tmp_path, keys=True, open_health_and_reflection=False, probe_port=_free_port()
    )
    running = start_server(settings)
    port, probe_port = str(running.server.port), str(running.server.probe_port)
    assert in_process("healthcheck", "--probe", COWRIE_STATS_PROBE_PORT=probe_port)[:2] == (
        0,
        "SERVING\n",
    )
    refused = in_process("healthcheck", COWRIE_STATS_GRPC_PORT=port)
    assert refused[0] != 0 and "UNAUTHENTICATED" in refused[2].upper()
    key_file = tmp_path / "client-key"
    key_file.write_text(KEY + "\n", encoding="utf-8")
    key_file.chmod(0o600)  # a secret file others can read is refused
    status = in_process(
        "healthcheck", COWRIE_STATS_GRPC_PORT=port, COWRIE_STATS_API_KEY_FILE=str(key_file)
    )
    assert status[:2] == (0, "SERVING\n")
    # With the probe listener off, --probe asks the main port.
    assert in_process("healthcheck", "--probe", COWRIE_STATS_PROBE_PORT="0")[0] == 0


# -- refusals are logged rate-limited ------------------------------------------------------


def test_refusals_are_logged_once_then_counted(
    sqlite_db: Database,
    start_server: StartServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    running = start_server(_settings(sqlite_db, tmp_path, keys=True))
    caplog.set_level(logging.WARNING, logger="cowrie_stats.guard")
    calls = 40
    for _ in range(calls):
        for method, metadata in (
            (REAL_METHOD, ()),
            (REAL_METHOD, (("x-api-key", "wrong-key-wrong-key"),)),
            (UNKNOWN_METHOD + "\x1b[31m", _key(True)),
        ):
            call = running.channel.unary_unary(
                method, request_serializer=None, response_deserializer=None
            )
            with pytest.raises(grpc.RpcError):
                call(b"", metadata=metadata, timeout=5)
    lines = [r for r in caplog.records if r.name == "cowrie_stats.guard"]
    firsts = sorted(r.reason for r in lines if r.msg == "refused a call")  # type: ignore[attr-defined]
    assert firsts == ["API_KEY_INVALID", "API_KEY_MISSING", "UNKNOWN_METHOD"]
    (unknown,) = [r for r in lines if getattr(r, "reason", None) == "UNKNOWN_METHOD"]
    assert "\x1b" not in unknown.method  # type: ignore[attr-defined]
    assert not [r for r in lines if r.msg == "refused calls"]  # the interval is not over
    REFUSALS.flush(force=True)
    (summary,) = [r for r in caplog.records if r.msg == "refused calls"]
    assert summary.refused == {  # type: ignore[attr-defined]
        "API_KEY_INVALID": calls,
        "API_KEY_MISSING": calls,
        "UNKNOWN_METHOD": calls,
    }
    assert "wrong-key" not in caplog.text
