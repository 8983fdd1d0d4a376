"""API keys: keys file parsing, the interceptor on a real server, rotation, hash-key."""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import Database, RunningServer, StartServer, access_lines
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from cowrie_stats import SERVICE_NAME
from cowrie_stats._gen.cowrie.stats.v1 import stats_pb2
from cowrie_stats.auth import hash_key, key_line, match_key, parse_keys, presented_key
from cowrie_stats.cli import main
from cowrie_stats.errors import DOMAIN
from cowrie_stats.server import StatsServer
from cowrie_stats.settings import SettingsError

GRAFANA_KEY = "grafana-0123456789abcdef-secret"
GRAFANA_NEW_KEY = "grafana-fedcba9876543210-rotated"
CRON_KEY = "cron-job-key-0000000000000000"
TIMEOUT = 5.0


def _keys_file(path: Path, entries: Sequence[tuple[str, str]]) -> Path:
    lines = ["# cowrie-stats API keys", ""]
    lines += [key_line(name, key) for name, key in entries]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.chmod(0o600)
    os.replace(tmp, path)  # atomic, as an operator (or a Kubernetes secret) would
    return path


def _call(
    running: RunningServer, metadata: Sequence[tuple[str, str]] | None = None
) -> stats_pb2.GetSensorStatsResponse:
    reply: stats_pb2.GetSensorStatsResponse = running.stub.GetSensorStats(
        stats_pb2.GetSensorStatsRequest(),
        metadata=tuple(metadata) if metadata is not None else None,
        timeout=TIMEOUT,
    )
    return reply


def _refusal(
    running: RunningServer, metadata: Sequence[tuple[str, str]] | None = None
) -> tuple[grpc.StatusCode, str]:
    """Code and ErrorInfo reason of a refused call."""
    with pytest.raises(grpc.RpcError) as caught:
        _call(running, metadata)
    error = caught.value
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.domain == DOMAIN
    return error.code(), info.reason


@pytest.fixture
def keys_path(tmp_path: Path) -> Path:
    return _keys_file(tmp_path / "api-keys", [("grafana", GRAFANA_KEY), ("cron", CRON_KEY)])


# -- the keys file -------------------------------------------------------------------------


def test_parse_keys_accepts_comments_blanks_and_uppercase_hex() -> None:
    digest = hash_key(GRAFANA_KEY)
    keys = parse_keys(f"# comment\n\n  grafana : {digest.upper()}  \ncron:{hash_key(CRON_KEY)}\n")
    assert [k.name for k in keys] == ["grafana", "cron"]
    assert keys[0].digest == bytes.fromhex(digest)


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("", "holds no key"),
        ("# only a comment\n", "holds no key"),
        (f"{GRAFANA_KEY}\n", "line 1: expected NAME:SHA256HEX"),
        ("grafana:abc123\n", "line 1: expected 64 hexadecimal digits"),
        (f"grafana:{hash_key(GRAFANA_KEY)}\nbad name:{hash_key(CRON_KEY)}\n", "line 2: the key"),
        (f":{hash_key(GRAFANA_KEY)}\n", "line 1: the key name"),
        (f"a:{hash_key(GRAFANA_KEY)}\nb:{hash_key(GRAFANA_KEY)}\n", "line 2: the same key hash"),
    ],
)
def test_malformed_keys_files_are_refused_without_quoting_them(text: str, complaint: str) -> None:
    with pytest.raises(SettingsError, match=complaint) as caught:
        parse_keys(text)
    assert "COWRIE_STATS_API_KEYS_FILE" in str(caught.value)
    assert GRAFANA_KEY not in str(caught.value)  # a pasted raw key never reaches a log


def test_match_key_finds_the_name_and_rejects_others() -> None:
    keys = parse_keys(f"a:{hash_key(GRAFANA_KEY)}\nb:{hash_key(CRON_KEY)}\n")
    assert match_key(GRAFANA_KEY, keys) == "a"
    assert match_key(CRON_KEY, keys) == "b"
    assert match_key(GRAFANA_KEY + "x", keys) is None
    assert match_key("", keys) is None


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ([("authorization", "Bearer abc")], "abc"),
        ([("authorization", "bearer   abc ")], "abc"),
        ([("x-api-key", "abc")], "abc"),
        ([("x-api-key", "xyz"), ("authorization", "Bearer abc")], "abc"),
        ([("authorization", "Basic abc")], None),
        ([("authorization", "Bearer ")], None),
        ([("user-agent", "grpc")], None),
        (None, None),
    ],
)
def test_presented_key_reads_bearer_then_x_api_key(
    metadata: list[tuple[str, str]] | None, expected: str | None
) -> None:
    assert presented_key(metadata) == expected


def test_a_malformed_keys_file_stops_the_server_from_starting(
    sqlite_db: Database, tmp_path: Path
) -> None:
    bad = tmp_path / "bad-keys"
    bad.write_text(f"grafana {hash_key(GRAFANA_KEY)}\n", encoding="utf-8")
    bad.chmod(0o600)
    with pytest.raises(SettingsError, match="line 1"):
        StatsServer(sqlite_db.settings(api_keys_file=str(bad)))


# -- on a real server ----------------------------------------------------------------------


def test_calls_need_a_valid_key_sent_either_way(
    sqlite_db: Database, start_server: StartServer, keys_path: Path
) -> None:
    running = start_server(sqlite_db.settings(api_keys_file=str(keys_path)))
    unauthenticated = grpc.StatusCode.UNAUTHENTICATED
    assert _refusal(running) == (unauthenticated, "API_KEY_MISSING")
    assert _refusal(running, [("authorization", "Basic Z3Vlc3Q=")]) == (
        unauthenticated,
        "API_KEY_MISSING",
    )
    assert _refusal(running, [("x-api-key", "not-a-key")]) == (unauthenticated, "API_KEY_INVALID")
    assert _refusal(running, [("authorization", f"Bearer {GRAFANA_KEY}x")]) == (
        unauthenticated,
        "API_KEY_INVALID",
    )
    assert _call(running, [("authorization", f"Bearer {GRAFANA_KEY}")]).total_sensors == 0
    assert _call(running, [("x-api-key", CRON_KEY)]).total_sensors == 0


def test_health_and_reflection_stay_open_by_default(
    sqlite_db: Database, start_server: StartServer, keys_path: Path
) -> None:
    running = start_server(sqlite_db.settings(api_keys_file=str(keys_path)))
    health = health_pb2_grpc.HealthStub(running.channel)
    reply = health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=TIMEOUT)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(running.channel)
    answers = list(
        reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=TIMEOUT
        )
    )
    names = {s.name for s in answers[0].list_services_response.service}
    assert SERVICE_NAME in names


def test_health_and_reflection_can_require_a_key(
    sqlite_db: Database, start_server: StartServer, keys_path: Path
) -> None:
    running = start_server(
        sqlite_db.settings(api_keys_file=str(keys_path), open_health_and_reflection=False)
    )
    health = health_pb2_grpc.HealthStub(running.channel)
    request = health_pb2.HealthCheckRequest(service=SERVICE_NAME)
    with pytest.raises(grpc.RpcError) as caught:
        health.Check(request, timeout=TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    reply = health.Check(request, metadata=[("x-api-key", CRON_KEY)], timeout=TIMEOUT)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING

    reflection = reflection_pb2_grpc.ServerReflectionStub(running.channel)
    with pytest.raises(grpc.RpcError) as caught:
        list(
            reflection.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=TIMEOUT
            )
        )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_without_a_keys_file_no_key_is_needed(
    sqlite_db: Database, start_server: StartServer
) -> None:
    running = start_server(sqlite_db.settings())
    assert _call(running).total_sensors == 0


def test_access_log_names_the_key_and_never_shows_it(
    sqlite_db: Database,
    start_server: StartServer,
    keys_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    running = start_server(sqlite_db.settings(api_keys_file=str(keys_path)))
    caplog.set_level(logging.INFO)
    _call(running, [("authorization", f"Bearer {GRAFANA_KEY}")])
    _refusal(running, [("x-api-key", "wrong-key-wrong-key")])
    _call(running, [("x-api-key", CRON_KEY)])
    _refusal(running)
    running.server.access_log.flush()
    rpcs = access_lines(caplog)
    seen = [(r.code, getattr(r, "api_key_name", None)) for r in rpcs]  # type: ignore[attr-defined]
    assert seen == [
        ("OK", "grafana"),
        ("UNAUTHENTICATED", None),
        ("OK", "cron"),
        ("UNAUTHENTICATED", None),
    ]
    everything = caplog.text + "".join(str(vars(r)) for r in caplog.records)
    for secret in (GRAFANA_KEY, CRON_KEY, "wrong-key-wrong-key", hash_key(GRAFANA_KEY)):
        assert secret not in everything


@pytest.mark.parametrize(("mode", "logged"), [("errors", [("UNAUTHENTICATED", None)]), ("off", [])])
def test_access_log_modes_keep_failures_or_nothing(
    sqlite_db: Database,
    start_server: StartServer,
    keys_path: Path,
    caplog: pytest.LogCaptureFixture,
    mode: str,
    logged: list[tuple[str, str | None]],
) -> None:
    from cowrie_stats import metrics

    settings = sqlite_db.settings(api_keys_file=str(keys_path), access_log=mode)
    running = start_server(settings)
    caplog.set_level(logging.INFO)
    method = ("unary", "cowrie.stats.v1.CowrieStatsService", "GetSensorStats")
    ok = metrics.HANDLED.labels(*method, "OK")._value.get()
    _call(running, [("x-api-key", CRON_KEY)])
    _refusal(running)
    running.server.access_log.flush()
    rpcs = access_lines(caplog)
    assert [(r.code, getattr(r, "api_key_name", None)) for r in rpcs] == logged  # type: ignore[attr-defined]
    assert metrics.HANDLED.labels(*method, "OK")._value.get() == ok + 1  # still counted


def test_rotation_reloads_the_keys_file_without_restart(
    sqlite_db: Database,
    start_server: StartServer,
    keys_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    running = start_server(sqlite_db.settings(api_keys_file=str(keys_path)))
    old = [("authorization", f"Bearer {GRAFANA_KEY}")]
    new = [("authorization", f"Bearer {GRAFANA_NEW_KEY}")]
    assert _call(running, old).total_sensors == 0
    assert _refusal(running, new)[1] == "API_KEY_INVALID"

    # Step 1: both keys valid while clients move over.
    _keys_file(keys_path, [("grafana", GRAFANA_KEY), ("grafana", GRAFANA_NEW_KEY)])
    assert _call(running, old).total_sensors == 0
    assert _call(running, new).total_sensors == 0
    # Step 2: the old key is withdrawn.
    _keys_file(keys_path, [("grafana", GRAFANA_NEW_KEY)])
    assert _refusal(running, old)[1] == "API_KEY_INVALID"
    assert _call(running, new).total_sensors == 0

    # A broken edit is refused loudly; the keys loaded before stay in force.
    caplog.set_level(logging.ERROR, logger="cowrie_stats.auth")
    keys_path.write_text("grafana:not-a-hash\n", encoding="utf-8")
    assert _call(running, new).total_sensors == 0
    assert "previous keys stay in force" in caplog.text


# -- hash-key ------------------------------------------------------------------------------


def _run_hash_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, stdin: str, *args: str) -> int:
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setattr("cowrie_stats.cli._configure_logging", lambda _settings: None)
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    return main(["hash-key", *args])


def test_hash_key_prints_a_line_the_server_accepts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run_hash_key(monkeypatch, tmp_path, GRAFANA_KEY + "\n", "--name", "grafana") == 0
    line = capsys.readouterr().out.strip()
    assert line == f"grafana:{hash_key(GRAFANA_KEY)}"
    assert GRAFANA_KEY not in line
    assert match_key(GRAFANA_KEY, parse_keys(line)) == "grafana"


@pytest.mark.parametrize(
    ("stdin", "name", "complaint"),
    [("short\n", "grafana", "at least 16"), (GRAFANA_KEY, "bad name", "key name")],
)
def test_hash_key_refuses_short_keys_and_bad_names(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    stdin: str,
    name: str,
    complaint: str,
) -> None:
    assert _run_hash_key(monkeypatch, tmp_path, stdin, "--name", name) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert complaint in captured.err


# -- revocation fails closed; the keys file stays private -----------------------------------


def test_keys_file_deleted_or_emptied_revokes_every_key(
    sqlite_db: Database,
    start_server: StartServer,
    keys_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    running = start_server(sqlite_db.settings(api_keys_file=str(keys_path)))
    key = [("x-api-key", CRON_KEY)]
    assert _call(running, key).total_sensors == 0
    caplog.set_level(logging.INFO, logger="cowrie_stats.auth")

    def revocations() -> int:
        return sum("no API key is valid" in r.getMessage() for r in caplog.records)

    keys_path.unlink()
    for _ in range(3):
        assert _refusal(running, key) == (grpc.StatusCode.UNAUTHENTICATED, "API_KEY_INVALID")
    assert revocations() == 1  # once per change, not per call
    assert "No such file" in caplog.text

    _keys_file(keys_path, [("cron", CRON_KEY)])
    assert _call(running, key).total_sensors == 0
    assert "API keys reloaded" in caplog.text

    _keys_file(keys_path, [])  # comments only: no key line
    for _ in range(3):
        assert _refusal(running, key)[1] == "API_KEY_INVALID"
    assert revocations() == 2
    assert "holds no key" in caplog.text


def test_keys_file_readable_by_others_is_refused(
    sqlite_db: Database, keys_path: Path, in_process: Any
) -> None:
    keys_path.chmod(0o644)
    with pytest.raises(
        SettingsError, match=r"readable by group or others \(mode 644\); run: chmod"
    ):
        StatsServer(sqlite_db.settings(api_keys_file=str(keys_path)))
    status, out, err = in_process(
        "serve",
        COWRIE_STATS_DATABASE_URL=sqlite_db.url,
        COWRIE_STATS_GRPC_PORT="0",
        COWRIE_STATS_API_KEYS_FILE=str(keys_path),
    )
    assert status == 2 and out == ""
    assert err.count("\n") == 1 and f"chmod 600 {keys_path}" in err
    keys_path.chmod(0o640)  # group read is fine for the server's own group (fsGroup)
    if os.stat(keys_path).st_gid == os.getegid():
        StatsServer(sqlite_db.settings(api_keys_file=str(keys_path))).router.close()
    keys_path.chmod(0o660)  # but not group write
    with pytest.raises(SettingsError, match="mode 660"):
        StatsServer(sqlite_db.settings(api_keys_file=str(keys_path)))


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's group needs root")
def test_keys_file_readable_by_a_foreign_group_is_refused(
    sqlite_db: Database, keys_path: Path
) -> None:
    os.chown(keys_path, -1, os.getegid() + 4242)
    keys_path.chmod(0o640)
    with pytest.raises(SettingsError, match="mode 640"):
        StatsServer(sqlite_db.settings(api_keys_file=str(keys_path)))
    os.remove(keys_path)
    with pytest.raises(SettingsError, match="cannot read"):
        StatsServer(sqlite_db.settings(api_keys_file=str(keys_path)))
