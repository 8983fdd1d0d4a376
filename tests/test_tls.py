"""TLS and mutual TLS on a real server, with certificates generated for the test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from certs import Pki, make_pki
from conftest import Database, StartServer
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cowrie_stats import SERVICE_NAME
from cowrie_stats._gen.cowrie.stats.v1 import stats_pb2, stats_pb2_grpc
from cowrie_stats.cli import main

TIMEOUT = 5.0


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _credentials(
    ca: Path | None, client: tuple[Path, Path] | None = None
) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes() if ca else None,
        private_key=client[1].read_bytes() if client else None,
        certificate_chain=client[0].read_bytes() if client else None,
    )


@pytest.fixture
def channels() -> Iterator[list[grpc.Channel]]:
    opened: list[grpc.Channel] = []
    yield opened
    for channel in opened:
        channel.close()


def _sensor_stats(
    channels: list[grpc.Channel], target: str, credentials: grpc.ChannelCredentials
) -> stats_pb2.GetSensorStatsResponse:
    channel = grpc.secure_channel(target, credentials)
    channels.append(channel)
    stub = stats_pb2_grpc.CowrieStatsServiceStub(channel)
    response: stats_pb2.GetSensorStatsResponse = stub.GetSensorStats(
        stats_pb2.GetSensorStatsRequest(), timeout=TIMEOUT
    )
    return response


def test_tls_call_works_with_the_right_ca(
    sqlite_db: Database, start_server: StartServer, pki: Pki, channels: list[grpc.Channel]
) -> None:
    running = start_server(
        sqlite_db.settings(tls_cert_file=str(pki.server.cert), tls_key_file=str(pki.server.key))
    )
    for host in ("127.0.0.1", "localhost"):
        reply = _sensor_stats(channels, f"{host}:{running.server.port}", _credentials(pki.ca.cert))
        assert reply.total_sensors == 0


def test_tls_client_trusting_a_wrong_ca_is_refused(
    sqlite_db: Database, start_server: StartServer, pki: Pki, channels: list[grpc.Channel]
) -> None:
    running = start_server(
        sqlite_db.settings(tls_cert_file=str(pki.server.cert), tls_key_file=str(pki.server.key))
    )
    with pytest.raises(grpc.RpcError) as caught:
        _sensor_stats(channels, running.address, _credentials(pki.rogue_ca.cert))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    # A plaintext client cannot talk to the TLS port either.
    plaintext = stats_pb2_grpc.CowrieStatsServiceStub(running.channel)
    with pytest.raises(grpc.RpcError) as caught:
        plaintext.GetSensorStats(stats_pb2.GetSensorStatsRequest(), timeout=TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_needs_a_client_certificate_from_the_client_ca(
    sqlite_db: Database, start_server: StartServer, pki: Pki, channels: list[grpc.Channel]
) -> None:
    running = start_server(
        sqlite_db.settings(
            tls_cert_file=str(pki.server.cert),
            tls_key_file=str(pki.server.key),
            tls_client_ca_file=str(pki.ca.cert),
        )
    )
    with pytest.raises(grpc.RpcError) as caught:
        _sensor_stats(channels, running.address, _credentials(pki.ca.cert))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

    rogue = (pki.rogue_client.cert, pki.rogue_client.key)
    with pytest.raises(grpc.RpcError) as caught:
        _sensor_stats(channels, running.address, _credentials(pki.ca.cert, rogue))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

    client = (pki.client.cert, pki.client.key)
    reply = _sensor_stats(channels, running.address, _credentials(pki.ca.cert, client))
    assert reply.total_sensors == 0

    health = health_pb2_grpc.HealthStub(channels[-1])
    status = health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=TIMEOUT)
    assert status.status == health_pb2.HealthCheckResponse.SERVING


def test_healthcheck_command_speaks_tls(
    sqlite_db: Database,
    start_server: StartServer,
    pki: Pki,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setattr("cowrie_stats.cli._configure_logging", lambda _settings: None)
    running = start_server(
        sqlite_db.settings(
            tls_cert_file=str(pki.server.cert),
            tls_key_file=str(pki.server.key),
            tls_client_ca_file=str(pki.ca.cert),
        )
    )
    base = ["healthcheck", "--address", f"localhost:{running.server.port}", "--timeout", "5"]
    mtls = ["--tls-cert", str(pki.client.cert), "--tls-key", str(pki.client.key)]

    assert main([*base, "--tls-ca", str(pki.ca.cert), *mtls]) == 0
    assert capsys.readouterr().out.strip() == "SERVING"

    # No client certificate, the wrong CA, plaintext: no connection, exit 3.
    assert main([*base, "--tls-ca", str(pki.ca.cert)]) == 3
    assert main([*base, "--tls-ca", str(pki.rogue_ca.cert), *mtls]) == 3
    assert main(base) == 3
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("cowrie-stats healthcheck: cannot connect: ") == 3
