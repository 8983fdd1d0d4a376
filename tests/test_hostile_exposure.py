"""What a stranger can reach without a key: metrics, logs, errors, listeners, secret files.

Each attack runs against a real server (in this process, or ``cowrie-stats serve`` as a
process) over loopback sockets, and the test reads what an operator would read: the
``/metrics`` body, the log lines on stderr, the status a client gets, the CLI's output.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import grpc
import pytest
from conftest import Database, StartServer
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from prometheus_client.parser import text_string_to_metric_families
from prometheus_scrape import free_port

from cowrie_stats import errors, validation
from cowrie_stats._gen.cowrie.stats.v1 import stats_pb2
from cowrie_stats.auth import key_line
from cowrie_stats.db.engines import create_db_engine
from cowrie_stats.interceptors import registered_methods
from cowrie_stats.metrics import MetricsServer
from cowrie_stats.sample import write_sample
from cowrie_stats.settings import Settings, load_settings

KEY = "k" * 32
TIMEOUT = 5.0
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ")
# A method name that, written raw, would end the access-log line and forge another one,
# then clear the terminal of whoever reads the log.
FORGED = "2026-01-01T00:00:00.000Z INFO cowrie_stats.access: rpc method=/forged code=OK"
HOSTILE_METHOD = f"/evil.Service/Call\n{FORGED}\r\x1b[2J\x07\x9b/X"


def _keys_file(tmp_path: Path) -> Path:
    keys = tmp_path / "api-keys"
    keys.write_text(key_line("tests", KEY) + "\n", encoding="utf-8")
    keys.chmod(0o600)
    return keys


def _metrics_text(port: int) -> str:
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=TIMEOUT) as reply:
        return str(reply.read().decode())


def _raw_method(channel: grpc.Channel, method: str) -> grpc.UnaryUnaryMultiCallable[bytes, bytes]:
    """Any method path, bytes in and out (no stub knows a made-up one)."""
    return channel.unary_unary(method, request_serializer=None, response_deserializer=None)


def _call(channel: grpc.Channel, method: str) -> grpc.StatusCode:
    try:
        _raw_method(channel, method)(b"", timeout=TIMEOUT)
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def _unknown_refused(metrics_text: str) -> float:
    """grpc_server_handled_total of unknown methods refused UNAUTHENTICATED."""
    wanted = {"grpc_service": "unknown", "grpc_method": "unknown", "grpc_code": "UNAUTHENTICATED"}
    return sum(
        sample.value
        for family in text_string_to_metric_families(metrics_text)
        for sample in family.samples
        if sample.name == "grpc_server_handled_total" and wanted.items() <= sample.labels.items()
    )


# -- 1. made-up method names ---------------------------------------------------------------


def test_made_up_method_names_add_no_metric_series(
    sqlite_db: Database, start_server: StartServer, tmp_path: Path
) -> None:
    running = start_server(
        sqlite_db.settings(metrics_port=free_port(), api_keys_file=str(_keys_file(tmp_path)))
    )
    port = running.server.metrics_server.port  # type: ignore[union-attr]
    running.stub.GetSensorStats(
        stats_pb2.GetSensorStatsRequest(), metadata=(("x-api-key", KEY),), timeout=TIMEOUT
    )
    assert _call(running.channel, "/attacker.Warmup/M") == grpc.StatusCode.UNAUTHENTICATED
    before = _metrics_text(port)
    refused_before = _unknown_refused(before)

    calls = 3000
    codes = {_call(running.channel, f"/attacker.S{i}/Method{i}") for i in range(calls)}
    assert codes == {grpc.StatusCode.UNAUTHENTICATED}
    after = _metrics_text(port)

    # The unknown series existed already: thousands of new names add no byte but digits.
    assert len(after) - len(before) < 200, (len(before), len(after))
    assert len(after) < 64 * 1024
    assert "attacker" not in after
    registered = {(service, method) for _, service, method in registered_methods().values()}
    for family in text_string_to_metric_families(after):
        for sample in family.samples:
            if sample.name.startswith("grpc_server_"):
                labels = (sample.labels["grpc_service"], sample.labels["grpc_method"])
                assert labels in registered or labels == ("unknown", "unknown"), labels
    # Every call is still counted, under "unknown".
    assert _unknown_refused(after) - refused_before == calls


# -- 2. control characters in log lines, from a real serve process -------------------------


@dataclass
class ServeProcess:
    process: subprocess.Popen[str]
    port: int = 0
    lines: list[str] = field(default_factory=list)

    reader: threading.Thread | None = None

    def stop(self) -> list[str]:
        # A refused call's status reaches the client before its handler has queued
        # the access line; a SIGTERM at once can close the access log first.
        time.sleep(0.5)
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)
        if self.reader is not None:  # the last lines may still be in the pipe
            self.reader.join(timeout=30)
        return self.lines


def _migrated(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'stats.db'}"
    engine = create_db_engine(url, Settings(database_url=url), writer=True)
    from cowrie_stats.db.schema import upgrade

    upgrade(engine)
    engine.dispose()
    return url


def _clean_env(**env: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("COWRIE_STATS_")}
    return clean | {"COWRIE_STATS_ENV_FILE": "/dev/null", **env}


@contextmanager
def serve_process(**env: str) -> Iterator[ServeProcess]:
    """``cowrie-stats serve`` on a free port; its stderr lines collected as they come."""
    process = subprocess.Popen(
        [sys.executable, "-m", "cowrie_stats.cli", "serve"],
        env=_clean_env(COWRIE_STATS_GRPC_PORT="0", COWRIE_STATS_PROBE_PORT="0", **env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        errors="surrogateescape",
    )
    running = ServeProcess(process)
    started = threading.Event()

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            running.lines.append(line)
            found = re.search(r'"?port"?[=:] ?(\d+)', line) if "serving" in line else None
            if found and not started.is_set():  # the gRPC port, logged first
                running.port = int(found.group(1))
                started.set()

    reader = running.reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert started.wait(60), "".join(running.lines)
        yield running
    finally:
        if process.poll() is None:
            running.stop()
        reader.join(timeout=10)


def test_control_characters_in_a_method_name_stay_escaped_in_one_text_line(
    tmp_path: Path,
) -> None:
    env = {
        "COWRIE_STATS_DATABASE_URL": _migrated(tmp_path),
        "COWRIE_STATS_API_KEYS_FILE": str(_keys_file(tmp_path)),
        "COWRIE_STATS_LOG_FORMAT": "text",
    }
    with serve_process(**env) as serve:
        with grpc.insecure_channel(f"127.0.0.1:{serve.port}") as channel:
            assert _call(channel, HOSTILE_METHOD) == grpc.StatusCode.UNAUTHENTICATED
            wrong_key = (("x-api-key", "not-the-key"),)
            with pytest.raises(grpc.RpcError):
                _raw_method(channel, HOSTILE_METHOD)(b"", metadata=wrong_key, timeout=TIMEOUT)
        lines = serve.stop()

    text = "".join(lines)
    assert "\x1b" not in text and "\r" not in text and "\x07" not in text and "\x9b" not in text
    assert all(RFC3339.match(line) for line in lines), lines  # every line is a record
    hostile = [line for line in lines if "forged" in line]
    # The access-log line of each call, and the refusal warning of each kind (no key, a
    # wrong key): each one line, with the newline and the escape sequence written out.
    assert len(hostile) == 4, hostile
    refusals = [line for line in hostile if line.split(" ")[2] == "cowrie_stats.guard:"]
    assert len(refusals) == 2, hostile
    for line in hostile:
        assert "Call\\n2026-01-01T00:00:00.000Z INFO" in line
        assert "\\r\\x1b[2J\\x07\\x9b/X" in line
    access = [line for line in hostile if line.split(" ")[2] == "cowrie_stats.access:"]
    assert len(access) == 2 and all("code=UNAUTHENTICATED" in line for line in access)
    assert not any("beyond loopback" in line for line in lines)  # 127.0.0.1, keys set


def test_json_logs_stay_one_valid_object_per_line(tmp_path: Path) -> None:
    env = {
        "COWRIE_STATS_DATABASE_URL": _migrated(tmp_path),
        "COWRIE_STATS_API_KEYS_FILE": str(_keys_file(tmp_path)),
        "COWRIE_STATS_LOG_FORMAT": "json",
    }
    with serve_process(**env) as serve:
        with grpc.insecure_channel(f"127.0.0.1:{serve.port}") as channel:
            assert _call(channel, HOSTILE_METHOD) == grpc.StatusCode.UNAUTHENTICATED
        lines = serve.stop()
    records = [json.loads(line) for line in lines]
    assert all(RFC3339.match(record["time"] + " ") for record in records)
    (access,) = [r for r in records if r["logger"] == "cowrie_stats.access"]
    assert access["method"] == HOSTILE_METHOD  # exact in JSON, escaped by the encoder
    assert "\x1b" not in "".join(lines)


# -- 3. a password in the database URL -----------------------------------------------------


def _with_secrets(url: str) -> str:
    """``url`` with a userinfo password and secret query parameters (trust auth ignores them)."""
    scheme, rest = url.split("://", 1)
    user, host = rest.split("@", 1)
    return f"{scheme}://{user}:HUNTER1@{host}?password=HUNTER2&sslpassword=HUNTER3&sslmode=disable"


def test_database_passwords_reach_no_metric_log_or_engine_text(
    pg_db: Database, start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    from cowrie_stats.logs import JsonFormatter, TextFormatter

    assert pg_db.replica_url is not None
    primary, replica = _with_secrets(pg_db.url), _with_secrets(pg_db.replica_url)
    settings = load_settings(
        {"COWRIE_STATS_DATABASE_URL": primary, "COWRIE_STATS_REPLICA_URLS": replica}
    )
    caplog.set_level("DEBUG")
    running = start_server(
        pg_db.settings(
            database_url=settings.database_url,
            replica_urls=settings.replica_urls,
            metrics_port=free_port(),
        )
    )
    running.stub.GetSensorStats(stats_pb2.GetSensorStatsRequest(), timeout=TIMEOUT)
    body = _metrics_text(running.server.metrics_server.port)  # type: ignore[union-attr]
    assert "HUNTER" not in body
    assert ":***@" in body and "?password=***&sslmode=disable&sslpassword=***" in body

    engine = running.server.router.primary.engine
    assert "HUNTER" not in f"{engine!r} {engine.url!r} {engine.url}"
    sent: dict[str, object] = {}

    def remember(*args: object) -> None:
        sent.update(args[3])  # type: ignore[call-overload]

    from sqlalchemy import event, text

    event.listen(engine, "do_connect", remember)
    engine.pool.dispose()
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    # The driver still gets the secrets, as connect arguments; the query's password wins
    # over the userinfo's, as it does in SQLAlchemy's own translation of a URL.
    assert (sent["password"], sent["sslpassword"]) == ("HUNTER2", "HUNTER3")

    logger = __import__("logging").getLogger("cowrie_stats.tests")
    logger.warning("connect failed for %s", primary, extra={"url": replica})
    assert caplog.records
    for record in caplog.records:
        assert "HUNTER" not in TextFormatter("%(message)s").format(record)
        assert "HUNTER" not in JsonFormatter().format(record)


def _cli(tmp_path: Path, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cowrie_stats.cli", *argv],
        cwd=tmp_path,
        env=_clean_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("command", ["migrate", "serve", "ingest"])
def test_database_passwords_stay_out_of_cli_output(tmp_path: Path, command: str) -> None:
    log = tmp_path / "cowrie.json"
    write_sample(log)
    url = "postgresql://stats:HUNTER1@127.0.0.1:1/stats?password=HUNTER2&sslmode=disable"
    argv = [command, str(log)] if command == "ingest" else [command]
    result = _cli(tmp_path, *argv, COWRIE_STATS_DATABASE_URL=url)
    assert result.returncode == 1, result.stderr
    output = result.stdout + result.stderr
    assert "HUNTER" not in output
    assert "postgresql+psycopg://stats:***@127.0.0.1:1/stats?password=***" in output


# -- 4. listeners: loopback by default, a warning when opened without keys or TLS ----------


def _address(hex_address: str) -> str:
    """An address of /proc/net/tcp{,6} (32-bit words in host order), IPv4-mapped made IPv4."""
    words = [bytes.fromhex(hex_address[i : i + 8])[::-1] for i in range(0, len(hex_address), 8)]
    address = ipaddress.ip_address(b"".join(words))
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def _listening(port: int) -> set[str]:
    """Local addresses of the sockets listening on ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            local, _, state = row.split()[1:4]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(_address(address))
    return found


def test_serve_and_metrics_bind_loopback_by_default(
    sqlite_db: Database, start_server: StartServer
) -> None:
    metrics_port = free_port()
    env = {"COWRIE_STATS_GRPC_PORT": "0", "COWRIE_STATS_METRICS_PORT": str(metrics_port)}
    defaults = load_settings(env)
    assert (defaults.grpc_host, defaults.metrics_host) == ("127.0.0.1", "127.0.0.1")
    running = start_server(
        sqlite_db.settings(
            grpc_host=defaults.grpc_host,
            metrics_host=defaults.metrics_host,
            metrics_port=metrics_port,
        )
    )
    assert _listening(running.server.port) == {"127.0.0.1"}
    assert _listening(metrics_port) == {"127.0.0.1"}


def test_serve_on_all_interfaces_without_keys_or_tls_warns_once(tmp_path: Path) -> None:
    env = {"COWRIE_STATS_DATABASE_URL": _migrated(tmp_path), "COWRIE_STATS_GRPC_HOST": "0.0.0.0"}
    with serve_process(**env) as serve:
        assert _listening(serve.port) in ({"0.0.0.0"}, {"::"})  # gRPC may bind dual-stack
        lines = serve.stop()
    warnings = [line for line in lines if " WARNING " in line]
    assert len(warnings) == 1, lines
    assert "gRPC listens on 0.0.0.0:0, beyond loopback, without API keys or TLS" in warnings[0]
    assert "COWRIE_STATS_API_KEYS_FILE" in warnings[0]


# -- 5. secret files others may read -------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "content"),
    [
        ("COWRIE_STATS_DATABASE_PASSWORD_FILE", "s3cret"),
        ("COWRIE_STATS_DATABASE_URL_FILE", "sqlite:///var/x.db"),
        ("COWRIE_STATS_REPLICA_URLS_FILE", "postgresql://r/x"),
        ("COWRIE_STATS_TLS_KEY_FILE", "-----BEGIN PRIVATE KEY-----"),
    ],
)
def test_secret_files_others_may_read_are_refused(
    tmp_path: Path, variable: str, content: str
) -> None:
    secret = tmp_path / "secret"
    secret.write_text(content + "\n", encoding="utf-8")
    secret.chmod(0o644)
    env = {variable: str(secret)}
    if variable == "COWRIE_STATS_TLS_KEY_FILE":
        env["COWRIE_STATS_TLS_CERT_FILE"] = str(secret)
    result = _cli(tmp_path, "serve", **env)
    assert result.returncode == 2
    assert result.stderr == (
        f"cowrie-stats: configuration error: {variable}: {secret} is readable by group or "
        f"others (mode 644); run: chmod 600 {secret}\n"
    )


def test_client_key_file_others_may_read_is_refused(tmp_path: Path) -> None:
    key_file = tmp_path / "client.key"
    key_file.write_text(KEY, encoding="utf-8")
    key_file.chmod(0o604)
    result = _cli(
        tmp_path, "healthcheck", "--address", "127.0.0.1:9", COWRIE_STATS_API_KEY_FILE=str(key_file)
    )
    assert result.returncode == 2
    assert "COWRIE_STATS_API_KEY_FILE" in result.stderr and "mode 604" in result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another owner needs root")
@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_group_may_read_only_when_it_is_the_process_own(tmp_path: Path) -> None:
    """0440 with the pod's fsGroup is how Kubernetes mounts Secrets; another group may not."""
    secret = tmp_path / "password"
    secret.write_text("s3cret\n", encoding="utf-8")
    secret.chmod(0o440)
    env = {"COWRIE_STATS_DATABASE_PASSWORD_FILE": str(secret)}
    os.chown(secret, 1001, os.getegid())
    assert load_settings(env).database_url  # the process's own group: accepted
    os.chown(secret, 1001, os.getegid() + 4242)
    result = _cli(tmp_path, "migrate", **env)
    assert result.returncode == 2 and "mode 440" in result.stderr


# -- 6. huge invalid requests get small errors ---------------------------------------------


def _status_size(error: grpc.Call) -> int:
    status = rpc_status.from_call(error)
    assert status is not None
    return len(status.SerializeToString())


def test_ten_thousand_empty_sensor_names_give_a_small_invalid_argument(
    sqlite_db: Database, start_server: StartServer
) -> None:
    running = start_server(sqlite_db.settings())
    with pytest.raises(grpc.RpcError) as caught:
        running.stub.GetSensorStats(
            stats_pb2.GetSensorStatsRequest(sensors=[""] * 10_000), timeout=TIMEOUT
        )
    error = cast(grpc.Call, caught.value)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _status_size(error) < 4096
    status = rpc_status.from_call(error)
    assert status is not None
    details = status.details
    bad_request, info = error_details_pb2.BadRequest(), error_details_pb2.ErrorInfo()
    details[0].Unpack(bad_request)
    details[1].Unpack(info)
    assert len(bad_request.field_violations) == errors.MAX_VIOLATIONS
    assert bad_request.field_violations[0].field == "sensors"
    assert info.metadata["violations"] == "10001"  # the count, and each empty name
    assert str(error.details()).endswith("; and 9981 more violations")


def test_a_thousand_long_unknown_sensor_names_give_a_small_not_found(
    sqlite_db: Database, start_server: StartServer
) -> None:
    running = start_server(sqlite_db.settings())
    names = [f"{i:04d}" + "x" * 252 for i in range(1000)]
    with pytest.raises(grpc.RpcError) as caught:
        running.stub.GetSensorStats(stats_pb2.GetSensorStatsRequest(sensors=names), timeout=30)
    error = cast(grpc.Call, caught.value)
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert _status_size(error) < 4096
    assert str(error.details()).endswith(" characters)")


def test_violations_are_counted_not_kept() -> None:
    request = stats_pb2.GetSensorStatsRequest(sensors=[""] * 200_000)
    with pytest.raises(errors.InvalidArgumentError) as caught:
        validation.sensor_request(request, validation.Limits())
    error = caught.value
    assert len(error.violations) == errors.MAX_VIOLATIONS
    assert (error.unlisted, error.metadata) == (199_981, {"violations": "200001"})
    few = errors.InvalidArgumentError([errors.FieldViolation("f" * 500, "d" * 5000)])
    ((field_, description),) = [(v.field, v.description) for v in few.violations]
    assert len(field_) == errors.MAX_FIELD_CHARS and field_.endswith("... (500 characters)")
    assert len(description) == errors.MAX_DESCRIPTION_CHARS and few.metadata == {}


# -- 7. idle connections to /metrics -------------------------------------------------------


def _closed_by_server(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def _connection_threads() -> int:
    """Threads serving a metrics connection (named after their target by threading)."""
    return sum("process_request_thread" in t.name for t in threading.enumerate())


def test_idle_metrics_connections_are_bounded_and_closed() -> None:
    server = MetricsServer("127.0.0.1", 0, max_connections=4, idle_timeout=3.0)
    idle: list[socket.socket] = []
    try:
        for _ in range(4):
            idle.append(socket.create_connection(("127.0.0.1", server.port)))
        time.sleep(0.2)
        assert _connection_threads() == 4  # one thread per connection
        # Past the bound, a connection is closed at once, with no thread for it.
        started = time.monotonic()
        for _ in range(20):
            extra = socket.create_connection(("127.0.0.1", server.port))
            idle.append(extra)
            assert _closed_by_server(extra, 1.0)
        assert time.monotonic() - started < 2.0  # long before the held ones time out
        assert server.refused == 20
        assert _connection_threads() == 4
        # The held ones are closed once idle for the timeout, and their threads end.
        assert not _closed_by_server(idle[0], 0.3)
        assert all(_closed_by_server(sock, 5.0) for sock in idle[:4])
        deadline = time.monotonic() + 5
        while _connection_threads() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _connection_threads() == 0
        assert "python_info" in _metrics_text(server.port)  # and it serves again
    finally:
        for sock in idle:
            sock.close()
        server.stop()


def test_a_partial_request_does_not_hold_a_metrics_thread() -> None:
    server = MetricsServer("127.0.0.1", 0, max_connections=2, idle_timeout=0.5)
    try:
        with socket.create_connection(("127.0.0.1", server.port)) as slow:
            slow.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never finished
            assert _closed_by_server(slow, 3.0)
        assert "python_info" in _metrics_text(server.port)
    finally:
        server.stop()


# -- memory of a serving process under strangers -------------------------------------------

SERVER_GROWTH_LIMIT_KB = 64 << 10  # docs/security/README.md


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1])


def _with_unknown_field(size: int) -> bytes:
    """A GetThreatStats request plus field 99 (length-delimited) of ``size`` random bytes."""
    payload = os.urandom(size)
    # Tag 99 << 3 | 2 = 794 and the length, as protobuf varints.
    return b"\x9a\x06" + _varint(len(payload)) + payload


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes(out + bytes([value]))


def test_a_serving_process_stays_small_under_unknown_fields_and_made_up_methods(
    tmp_path: Path,
) -> None:
    """The attacks that once cost 600 MB (cache) and 2 GB (labels) now cost a bounded few."""
    metrics_port = free_port()
    env = {
        "COWRIE_STATS_DATABASE_URL": _migrated(tmp_path),
        "COWRIE_STATS_API_KEYS_FILE": str(_keys_file(tmp_path)),
        "COWRIE_STATS_METRICS_PORT": str(metrics_port),
        "COWRIE_STATS_ACCESS_LOG": "errors",
    }
    threats = "/cowrie.stats.v1.CowrieStatsService/GetThreatStats"
    key = (("x-api-key", KEY),)
    with serve_process(**env) as serve:
        with grpc.insecure_channel(f"127.0.0.1:{serve.port}") as channel:
            ask = _raw_method(channel, threats)
            for _ in range(5):  # warm: first calls, first scrape
                ask(_with_unknown_field(900_000), metadata=key, timeout=TIMEOUT)
            _metrics_text(metrics_port)
            before = _rss_kb(serve.process.pid)
            for _ in range(100):
                ask(_with_unknown_field(900_000), metadata=key, timeout=TIMEOUT)
            for i in range(3000):
                _call(channel, f"/attacker.S{i}/Method{i}")
            scraped = _metrics_text(metrics_port)
            after = _rss_kb(serve.process.pid)
        serve.stop()
    assert len(scraped) < 64 * 1024
    print(f"serving process: {before >> 10} MiB before, {after >> 10} MiB after the attacks")
    assert after - before < SERVER_GROWTH_LIMIT_KB, (before, after)
