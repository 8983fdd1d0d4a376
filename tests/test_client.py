"""The public Python client (cowrie_stats.client) and message names (cowrie_stats.api).

Every call goes to a real server on loopback: requests built by the client must get
the same answers as hand-built requests on the raw stub, and every failure must arrive
as the typed error its status stands for.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from certs import Pki, make_pki
from conftest import REPO, Database, StartServer
from demo_server import Demo, demo_server, tls_settings
from google.protobuf import duration_pb2, timestamp_pb2
from grpc_health.v1 import health, health_pb2_grpc
from sqlalchemy import create_engine, text

from cowrie_stats import api, client
from cowrie_stats._gen.cowrie.stats.v1 import stats_pb2
from cowrie_stats.auth import key_line
from cowrie_stats.client import (
    AccessDeniedError,
    ClientSettings,
    DeadlineExceededError,
    FieldViolation,
    InvalidRequestError,
    NotFoundError,
    ServerError,
    ServerUnreachableError,
    ServiceUnavailableError,
    StatsClient,
    StatsError,
)
from cowrie_stats.settings import SettingsError
from testkit.pgcluster import PgCluster

KEY = "client-test-key-0123456789abcdef"
DAY = datetime(2026, 11, 20, tzinfo=UTC)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    with demo_server(tmp_path_factory.mktemp("client")) as running:
        yield running


@pytest.fixture
def stats(demo: Demo) -> Iterator[StatsClient]:
    with StatsClient(demo.target, timeout=10) as opened:
        yield opened


def _stamp(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _raw(demo: Demo) -> api.CowrieStatsServiceStub:
    return api.CowrieStatsServiceStub(grpc.insecure_channel(demo.target))


def test_api_exports_every_message_and_enum_of_the_contract() -> None:
    names = set(stats_pb2.DESCRIPTOR.message_types_by_name) | set(
        stats_pb2.DESCRIPTOR.enum_types_by_name
    )
    assert names <= set(api.__all__), "add new messages to cowrie_stats/api.py"
    assert api.GetSessionStatsRequest is stats_pb2.GetSessionStatsRequest
    assert api.DESCRIPTOR.services_by_name["CowrieStatsService"].full_name == api.SERVICE_NAME


def test_each_rpc_has_one_client_method() -> None:
    for method in api.DESCRIPTOR.services_by_name["CowrieStatsService"].methods:
        snake = re.sub(r"(?<!^)(?=[A-Z])", "_", method.name).lower()
        assert callable(getattr(StatsClient, snake, None)), f"StatsClient.{snake} is missing"


def test_session_stats_match_a_hand_built_request(demo: Demo, stats: StatsClient) -> None:
    window = stats_pb2.TimeRange(start_time=_stamp(DAY), end_time=_stamp(DAY + timedelta(days=1)))
    expected = _raw(demo).GetSessionStats(
        stats_pb2.GetSessionStatsRequest(
            time_range=window, sensors=["sensor-eu-1"], bucket=stats_pb2.BUCKET_HOUR
        ),
        timeout=10,
    )
    answer = stats.get_session_stats(
        start=DAY, end=DAY + timedelta(days=1), sensors=["sensor-eu-1"], bucket="hour"
    )
    assert answer == expected
    assert len(answer.buckets) == 24 and answer.total_sessions > 0
    assert stats.get_session_stats().total_sessions == 240  # all time, all sensors


def test_since_is_a_window_back_from_end(demo: Demo, stats: StatsClient) -> None:
    end = DAY + timedelta(hours=12)
    by_since = stats.get_threat_stats(since=timedelta(hours=6), end=end, top_n=3)
    by_bounds = stats.get_threat_stats(start=end - timedelta(hours=6), end=end, top_n=3)
    assert by_since == by_bounds
    assert len(by_since.top_source_ips) == 3
    # A window ending now, rounded up to the second, holds none of the 2026-11 demo.
    start, end_now = client.window_bounds(since=timedelta(minutes=15))
    assert end_now is not None and start == end_now - timedelta(minutes=15)
    assert end_now.microsecond == 0 and end_now >= datetime.now(UTC) - timedelta(seconds=1)


def test_sensor_stats_with_stale_after(demo: Demo, stats: StatsClient) -> None:
    expected = _raw(demo).GetSensorStats(
        stats_pb2.GetSensorStatsRequest(
            sensors=["sensor-us-1"], stale_after=duration_pb2.Duration(seconds=3600 * 24 * 3650)
        ),
        timeout=10,
    )
    answer = stats.get_sensor_stats(sensors=["sensor-us-1"], stale_after=timedelta(days=3650))
    assert answer == expected
    assert answer.total_sensors == 1 and not answer.sensors[0].stale
    assert stats.get_sensor_stats(stale_after=timedelta(hours=1)).sensors[0].stale


def test_read_from_primary_and_health(stats: StatsClient) -> None:
    assert stats.get_sensor_stats(read_from_primary=True).total_sensors == 3
    assert stats.check_health() == "SERVING"
    assert stats.check_health("") == "SERVING"


def test_windows_must_be_timezone_aware_and_unambiguous() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        client.time_range(start=datetime(2026, 11, 20))
    with pytest.raises(ValueError, match="either since or start"):
        client.time_range(since=timedelta(hours=1), start=DAY)
    with pytest.raises(ValueError, match="positive"):
        client.time_range(since=timedelta())
    assert client.time_range() is None
    only_end = client.time_range(end=DAY)
    assert only_end is not None and not only_end.HasField("start_time")


# -- errors --------------------------------------------------------------------------------


def test_invalid_request_lists_every_field_violation(stats: StatsClient) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        stats.get_threat_stats(sensors=[""], top_n=5000)
    error = caught.value
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT and not error.retryable
    assert error.field_violations == (
        FieldViolation("sensors[0]", "sensor names are 1..256 characters, no NUL"),
        FieldViolation("top_n", "top_n must be 1..1000 (0 means 10)"),
    )
    assert str(error) == (
        "INVALID_ARGUMENT: sensors[0]: sensor names are 1..256 characters, no NUL; "
        "top_n: top_n must be 1..1000 (0 means 10)"
    )


def test_unknown_sensor_is_not_found_with_reason_and_metadata(stats: StatsClient) -> None:
    with pytest.raises(NotFoundError) as caught:
        stats.get_sensor_stats(sensors=["sensor-eu-1", "no-such-sensor"])
    error = caught.value
    assert (error.reason, error.domain) == ("SENSOR_NOT_FOUND", "cowrie-stats")
    assert error.metadata == {"sensors": "no-such-sensor"}
    assert str(error).startswith("NOT_FOUND SENSOR_NOT_FOUND: ")
    assert str(error).endswith("(sensors=no-such-sensor)")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_nothing_listening_is_unreachable() -> None:
    with StatsClient(f"127.0.0.1:{_closed_port()}", timeout=5) as nowhere:
        with pytest.raises(ServerUnreachableError) as caught:
            nowhere.get_session_stats()
        with pytest.raises(ServerUnreachableError):
            nowhere.check_health()
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE and caught.value.retryable


def test_a_peer_that_never_speaks_grpc_is_unreachable_not_slow() -> None:
    # It accepts TCP and says nothing: the deadline passes before any connection is READY.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        mute = StatsClient(f"127.0.0.1:{silent.getsockname()[1]}", timeout=1)
        with mute, pytest.raises(ServerUnreachableError) as caught:
            mute.get_sensor_stats()
    assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_a_deadline_on_a_live_connection_is_deadline_exceeded(stats: StatsClient) -> None:
    stats.check_health()  # connected
    with pytest.raises(DeadlineExceededError) as caught:
        stats.get_threat_stats(top_n=1000, timeout=0.000_001)
    assert caught.value.retryable


def test_api_keys(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(key_line("tests", KEY) + "\n", encoding="utf-8")
    keys.chmod(0o600)  # the server refuses keys others can read
    with demo_server(tmp_path, api_keys_file=str(keys), open_health_and_reflection=False) as demo:
        with StatsClient(demo.target, timeout=10) as keyless:
            with pytest.raises(AccessDeniedError) as caught:
                keyless.get_sensor_stats()
            assert caught.value.reason == "API_KEY_MISSING"
            with pytest.raises(AccessDeniedError):
                keyless.check_health()
        with StatsClient(demo.target, api_key="wrong-key-0000000000000000") as wrong:
            with pytest.raises(AccessDeniedError) as caught:
                wrong.get_sensor_stats()
            assert caught.value.reason == "API_KEY_INVALID"
        with StatsClient(demo.target, api_key=f" {KEY}\n") as keyed:
            assert keyed.get_sensor_stats().total_sensors == 3
            assert keyed.check_health() == "SERVING"
    with pytest.raises(ValueError, match="printable ASCII"):
        StatsClient("localhost:1", api_key="two words")


@pytest.mark.postgres
def test_database_gone_is_service_unavailable(
    pg_db: Database, pg_cluster: PgCluster, start_server: StartServer
) -> None:
    running = start_server(pg_db.settings(result_cache_entries=0))
    admin = create_engine(pg_cluster.admin_url, isolation_level="AUTOCOMMIT")
    with StatsClient(running.address, timeout=10) as stats:
        assert stats.get_sensor_stats().total_sensors == 0
        pg_db.engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{pg_db.url.rsplit("/", 1)[1]}" WITH (FORCE)'))
        admin.dispose()
        error = _first_error(stats.get_sensor_stats)  # the replica answers until it replays
    assert isinstance(error, ServiceUnavailableError)
    assert error.reason == "DATABASE_UNAVAILABLE" and error.retryable


def _first_error(call: Callable[[], object], seconds: float = 20) -> StatsError:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            call()
        except StatsError as error:
            return error
        time.sleep(0.1)
    pytest.fail(f"no error within {seconds} s")


def test_a_server_without_the_service_is_a_server_error() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with StatsClient(f"127.0.0.1:{port}", timeout=5) as stats:
            with pytest.raises(ServerError) as caught:
                stats.get_session_stats()
            with pytest.raises(NotFoundError):  # health knows no such service
                stats.check_health()
    finally:
        server.stop(grace=0)
    assert caught.value.code == grpc.StatusCode.UNIMPLEMENTED
    assert isinstance(caught.value, StatsError) and not caught.value.retryable


# -- TLS -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_mutual_tls(pki: Pki, tmp_path: Path) -> None:
    with demo_server(tmp_path, **tls_settings(pki, mutual=True)) as demo:
        target = f"localhost:{demo.server.port}"
        good = ClientSettings(
            target,
            ca_file=str(pki.ca.cert),
            cert_file=str(pki.client.cert),
            key_file=str(pki.client.key),
            timeout=10,
        )
        with StatsClient.from_settings(good) as stats:
            assert stats.get_sensor_stats().total_sensors == 3
        for wrong in (
            ClientSettings(target, ca_file=str(pki.ca.cert), timeout=10),  # no certificate
            ClientSettings(
                target,
                ca_file=str(pki.rogue_ca.cert),
                cert_file=str(pki.client.cert),
                key_file=str(pki.client.key),
                timeout=10,
            ),
            ClientSettings(target, timeout=10),  # plaintext
        ):
            with StatsClient.from_settings(wrong) as stats, pytest.raises(ServerUnreachableError):
                stats.get_sensor_stats()
    with pytest.raises(SettingsError, match="cannot read /nonexistent"):
        StatsClient.from_settings(ClientSettings(ca_file="/nonexistent"))
    with pytest.raises(ValueError, match="go together"):
        StatsClient(target, certificate_chain=pki.client.cert.read_bytes())


def test_tls_server_name_override(pki: Pki, tmp_path: Path) -> None:
    tls: dict[str, Any] = {
        "tls_cert_file": str(pki.server.cert),
        "tls_key_file": str(pki.server.key),
    }
    with demo_server(tmp_path, **tls) as demo:
        settings = ClientSettings(
            f"127.0.0.1:{demo.server.port}", ca_file=str(pki.ca.cert), server_name="localhost"
        )
        with StatsClient.from_settings(settings) as stats:
            assert stats.check_health() == "SERVING"


# -- settings from the environment --------------------------------------------------------


def test_settings_from_env(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n", encoding="utf-8")
    key_file.chmod(0o600)  # a secret file others may read is refused
    assert ClientSettings.from_env({}) == ClientSettings("localhost:50051")
    assert ClientSettings.from_env({"COWRIE_STATS_GRPC_PORT": "50161"}).target == "localhost:50161"
    settings = ClientSettings.from_env(
        {
            "COWRIE_STATS_TARGET": "stats.example.net:443",
            "COWRIE_STATS_API_KEY_FILE": str(key_file),
            "COWRIE_STATS_TARGET_TLS": "true",
            "COWRIE_STATS_TARGET_CA_FILE": "/ca.pem",
            "COWRIE_STATS_TARGET_SERVER_NAME": "stats",
            "COWRIE_STATS_CLIENT_CERT_FILE": "/c.pem",
            "COWRIE_STATS_CLIENT_KEY_FILE": "/k.pem",
        }
    )
    assert settings == ClientSettings(
        "stats.example.net:443", KEY, True, "/ca.pem", "/c.pem", "/k.pem", "stats"
    )
    assert KEY not in repr(settings)
    with pytest.raises(SettingsError, match="not both"):
        ClientSettings.from_env({"COWRIE_STATS_API_KEY": KEY, "COWRIE_STATS_API_KEY_FILE": "/k"})
    with pytest.raises(SettingsError, match="TARGET_TLS"):
        ClientSettings.from_env({"COWRIE_STATS_TARGET_TLS": "maybe"})


def test_from_env_defaults_to_the_process_environment(
    demo: Demo, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COWRIE_STATS_TARGET", demo.target)
    with StatsClient.from_env() as stats:
        assert stats.target == demo.target
        assert stats.get_sensor_stats().total_sensors == 3


def test_env_example_documents_the_client_variables() -> None:
    source = (REPO / "cowrie_stats" / "client.py").read_text(encoding="utf-8")
    read = set(re.findall(r'\benv_(?:text|flag)\(env, "([A-Z_]+)"', source))
    example = (REPO / ".env.example").read_text(encoding="utf-8")
    assert {"TARGET", "API_KEY", "TARGET_CA_FILE"} <= read
    assert sorted(k for k in read if f"COWRIE_STATS_{k}" not in example) == []
    assert "COWRIE_STATS_API_KEY_FILE" in example
    for name in ClientSettings.VARIABLES:
        assert name.split(" ")[0] in example


def test_the_client_is_safe_to_share_between_threads(stats: StatsClient) -> None:
    results: list[int] = []

    def ask() -> None:
        results.append(stats.get_sensor_stats().total_sensors)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == [3] * 8
