"""`cowrie-stats query` and `cowrie-stats healthcheck` against real servers.

Tables must agree with the API's answers, `--json` must be exactly protobuf's JSON
mapping, hostile strings from the logs must never reach the terminal raw, and every
failure must be one line with its documented exit status.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from certs import Pki, make_pki
from demo_server import Demo, demo_server, tls_settings, write_events
from google.protobuf import json_format
from grpc_health.v1 import health_pb2

from cowrie_stats import SERVICE_NAME, query, tables
from cowrie_stats.auth import key_line
from cowrie_stats.cli import main
from cowrie_stats.client import StatsClient

KEY = "query-test-key-0123456789abcdef"
CLIENT_VARIABLES = (
    "COWRIE_STATS_TARGET",
    "COWRIE_STATS_API_KEY",
    "COWRIE_STATS_API_KEY_FILE",
    "COWRIE_STATS_TARGET_TLS",
    "COWRIE_STATS_TARGET_CA_FILE",
    "COWRIE_STATS_TARGET_SERVER_NAME",
    "COWRIE_STATS_CLIENT_CERT_FILE",
    "COWRIE_STATS_CLIENT_KEY_FILE",
    "COWRIE_STATS_GRPC_PORT",
)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    with demo_server(tmp_path_factory.mktemp("query")) as running:
        yield running


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No stray .env or client variable of the machine running the tests."""
    monkeypatch.chdir(tmp_path)
    for name in CLIENT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("cowrie_stats.cli._configure_logging", lambda _settings: None)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def exit_status(argv: list[str]) -> int | str | None:
    """main's status, also when argparse exits (SystemExit) for a usage error."""
    try:
        return main(argv)
    except SystemExit as done:
        return done.code


def figures(output: str) -> dict[str, str]:
    """The ``name  value`` lines of a table, as a dict."""
    pairs = (line.split() for line in output.splitlines())
    return {p[0]: p[1] for p in pairs if len(p) == 2 and not p[0].startswith("(")}


def test_sessions_table_matches_the_api(demo: Demo, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "query", "sessions", "--target", demo.target)
    assert (status, err) == (0, "")
    with StatsClient(demo.target) as stats:
        answer = stats.get_session_stats()
    shown = figures(out)
    assert shown["total_sessions"] == f"{answer.total_sessions:,}" == "240"
    assert shown["avg_commands_per_session"] == f"{answer.avg_commands_per_session:,.2f}"
    assert shown["telnet"] == str(answer.sessions_by_protocol["telnet"])
    assert shown["unknown"] == "0"  # zeros are figures, not gaps
    assert out.splitlines()[0] == f"sessions at {demo.target}, window: all time, sensors: all"
    assert "buckets" not in out


def test_hourly_buckets_as_a_compact_table(demo: Demo, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["query", "sessions", "--target", demo.target, "--bucket", "hour"]
    status, out, _ = run(capsys, *argv, "--from", "2026-11-20", "--to", "2026-11-20T06:00:00Z")
    assert status == 0
    lines = out.splitlines()
    assert "window: [2026-11-20T00:00:00Z, 2026-11-20T06:00:00Z)" in lines[0]
    header = lines.index("buckets") + 1
    assert lines[header].split() == [
        "start_time", "sessions", "unique_source_ips", "login_attempts", "total_commands"
    ]  # fmt: skip
    rows = lines[header + 1 : header + 7]
    assert [row.split()[0] for row in rows] == [f"2026-11-20T0{h}:00:00Z" for h in range(6)]
    assert len({len(row) for row in [lines[header], *rows]}) == 1  # aligned columns


def test_threats_with_sensors_and_top(demo: Demo, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["query", "threats", "--target", demo.target, "--top", "2"]
    status, out, _ = run(capsys, *argv, "--sensor", "sensor-eu-1", "--sensor", "sensor-us-1")
    assert status == 0
    with StatsClient(demo.target) as stats:
        answer = stats.get_threat_stats(sensors=["sensor-eu-1", "sensor-us-1"], top_n=2)
    assert "sensors: sensor-eu-1, sensor-us-1" in out.splitlines()[0]
    for entry in answer.top_commands:
        assert re.search(
            rf"^{re.escape(entry.value)}\s+{entry.count}\s+{entry.sessions}\s", out, re.M
        )
    assert f"top_source_ips (distinct: {answer.unique_source_ips})" in out
    assert '""' in out  # the empty username is a value, shown as ""


def test_sensors_table_and_stale_after(demo: Demo, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "query", "sensors", "--target", demo.target)
    assert status == 0
    rows = [line.split() for line in out.splitlines() if line.startswith("sensor-")]
    assert [row[0] for row in rows] == ["sensor-ap-1", "sensor-eu-1", "sensor-us-1"]
    assert [row[-1] for row in rows] == ["yes"] * 3  # the demo log is from 2026-11
    _, out, _ = run(capsys, "query", "sensors", "--target", demo.target, "--stale-after", "3650d")
    assert [line.split()[-1] for line in out.splitlines() if line.startswith("sensor-")] == [
        "no"
    ] * 3


@pytest.mark.parametrize(
    ("view", "options", "call"),
    [
        ("sessions", ["--bucket", "day"], lambda s: s.get_session_stats(bucket="day")),
        ("threats", ["--top", "3"], lambda s: s.get_threat_stats(top_n=3)),
        ("sensors", ["--sensor", "sensor-ap-1"],
         lambda s: s.get_sensor_stats(sensors=["sensor-ap-1"])),
    ],
)  # fmt: skip
def test_json_is_protobufs_json_mapping(
    demo: Demo,
    capsys: pytest.CaptureFixture[str],
    view: str,
    options: list[str],
    call: Any,
) -> None:
    status, out, _ = run(capsys, "query", view, "--target", demo.target, "--json", *options)
    assert status == 0
    with StatsClient(demo.target) as stats:
        answer = call(stats)
    expected = json_format.MessageToJson(answer, always_print_fields_with_no_presence=True)
    assert json.loads(out) == json.loads(expected)
    assert out == expected + "\n"  # one object, byte for byte as json_format writes it


def test_since_makes_a_window_ending_now(demo: Demo, capsys: pytest.CaptureFixture[str]) -> None:
    before = datetime.now(UTC)
    status, out, _ = run(capsys, "query", "sessions", "--target", demo.target, "--since", "90s")
    assert status == 0
    start, end = re.findall(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", out.splitlines()[0])
    end_at = datetime.fromisoformat(end)
    assert before - timedelta(seconds=1) <= end_at <= datetime.now(UTC) + timedelta(seconds=1)
    assert end_at - datetime.fromisoformat(start) == timedelta(seconds=90)
    assert figures(out)["total_sessions"] == "0"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("90s", timedelta(seconds=90)), ("15m", timedelta(minutes=15)),
     ("24h", timedelta(hours=24)), ("7d", timedelta(days=7))],
)  # fmt: skip
def test_durations(text: str, expected: timedelta) -> None:
    assert query.duration(text) == expected


@pytest.mark.parametrize(
    "argv",
    [
        ["--since", "5x"],
        ["--since", "0h"],
        ["--since", "1h", "--from", "2026-11-20"],
        ["--from", "yesterday"],
        ["--api-key-file", "/nonexistent/key"],
    ],
)
def test_usage_errors_exit_2_and_send_nothing(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    # The target does not exist: reaching it would be exit 3, not 2.
    assert exit_status(["query", "sessions", "--target", "127.0.0.1:9", *argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert re.match(r"cowrie-stats(?: query)?(?: sessions)?: ", err.splitlines()[-1])


def test_server_errors_are_one_line_with_their_exit_status(
    demo: Demo, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["query", "threats", "--target", demo.target]
    status, out, err = run(capsys, *base, "--top", "5000", "--sensor", "")
    assert (status, out) == (query.EXIT_BAD_REQUEST, "")
    assert err == (
        "cowrie-stats query: INVALID_ARGUMENT: sensors[0]: sensor names are 1..256 "
        "characters, no NUL; top_n: top_n must be 1..1000 (0 means 10)\n"
    )
    status, _, err = run(capsys, *base, "--sensor", "no-such-sensor")
    assert status == query.EXIT_BAD_REQUEST
    assert err.startswith("cowrie-stats query: NOT_FOUND SENSOR_NOT_FOUND: ")
    assert err.endswith("(sensors=no-such-sensor)\n") and err.count("\n") == 1


def test_unreachable_is_exit_3(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "query", "sensors", "--target", "127.0.0.1:9", "--timeout", "5")
    assert (status, out) == (query.EXIT_UNREACHABLE, "")
    assert err.startswith("cowrie-stats query: 127.0.0.1:9: UNAVAILABLE: ")
    assert err.count("\n") == 1


def _keys(directory: Path) -> Path:
    keys = directory / "api-keys"
    keys.write_text(key_line("tests", KEY) + "\n", encoding="utf-8")
    keys.chmod(0o600)  # the server refuses keys others can read
    return keys


def test_api_key_from_option_or_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    key_file = tmp_path / "client.key"
    key_file.write_text(KEY + "\n", encoding="utf-8")
    key_file.chmod(0o600)  # a secret file others may read is refused
    with demo_server(tmp_path, api_keys_file=str(_keys(tmp_path))) as demo:
        base = ["query", "sensors", "--target", demo.target]
        status, _, err = run(capsys, *base)
        assert status == query.EXIT_ACCESS_DENIED
        assert "UNAUTHENTICATED API_KEY_MISSING" in err and "--api-key-file" in err
        assert run(capsys, *base, "--api-key-file", str(key_file))[0] == 0
        monkeypatch.setenv("COWRIE_STATS_API_KEY_FILE", str(key_file))
        assert run(capsys, *base)[0] == 0
        monkeypatch.delenv("COWRIE_STATS_API_KEY_FILE")
        monkeypatch.setenv("COWRIE_STATS_API_KEY", "not-the-key-000000000000")
        status, _, err = run(capsys, *base)
        assert status == query.EXIT_ACCESS_DENIED and "API_KEY_INVALID" in err
        monkeypatch.setenv("COWRIE_STATS_API_KEY", "bad key")
        assert run(capsys, *base)[0] == 2  # not sendable as a header: a usage error


def test_target_from_the_environment_and_dotenv(
    demo: Demo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text(f"COWRIE_STATS_TARGET={demo.target}\n", encoding="utf-8")
    dotenv.chmod(0o600)
    status, out, _ = run(capsys, "query", "sensors")
    assert status == 0 and f"at {demo.target}" in out


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_mutual_tls_by_options_and_environment(
    pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with demo_server(tmp_path, **tls_settings(pki, mutual=True)) as demo:
        target = f"localhost:{demo.server.port}"
        base = ["query", "sensors", "--target", target, "--timeout", "10"]
        mtls = ["--tls-cert", str(pki.client.cert), "--tls-key", str(pki.client.key)]
        assert run(capsys, *base, "--tls-ca", str(pki.ca.cert), *mtls)[0] == 0
        status, _, err = run(capsys, *base, "--tls-ca", str(pki.rogue_ca.cert), *mtls)
        assert status == query.EXIT_UNREACHABLE and err.count("\n") == 1
        assert run(capsys, *base)[0] == query.EXIT_UNREACHABLE  # plaintext to a TLS server
        monkeypatch.setenv("COWRIE_STATS_TARGET_CA_FILE", str(pki.ca.cert))
        monkeypatch.setenv("COWRIE_STATS_CLIENT_CERT_FILE", str(pki.client.cert))
        monkeypatch.setenv("COWRIE_STATS_CLIENT_KEY_FILE", str(pki.client.key))
        assert run(capsys, *base)[0] == 0
        addressed = ["--target", f"127.0.0.1:{demo.server.port}", "--tls-server-name", "localhost"]
        assert run(capsys, "query", "sensors", *addressed)[0] == 0


# -- hostile values --------------------------------------------------------------------------

HOSTILE = {
    "escape": "\x1b[2J\x1b]0;owned\x07root",
    "bidi": "admin\u202etxt.exe",
    "newline": "pass\nword\r\tx",
    "c1": "csi\x9b31m",
    "invisible": "zero\u200bwidth\u2028line",
    "wide": "管理员",
    "long": "A" * 500,
}
RAW_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069]")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    directory = tmp_path_factory.mktemp("hostile")
    at = "2026-11-20T10:00:{:02d}Z"
    events: list[dict[str, Any]] = []
    for second, (name, value) in enumerate(sorted(HOSTILE.items())):
        session = {"session": f"s{second}", "src_ip": "203.0.113.9", "sensor": f"\x1b[1m{name}"}
        events += [
            {"eventid": "cowrie.login.failed", "timestamp": at.format(second), **session,
             "username": value, "password": value},
            {"eventid": "cowrie.command.input", "timestamp": at.format(second), **session,
             "input": value},
        ]  # fmt: skip
    logs = [write_events(directory / "hostile.json", events)]
    with demo_server(directory, logs=logs) as running:
        yield running


def test_hostile_values_are_escaped_clipped_and_aligned(
    hostile: Demo, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run(capsys, "query", "threats", "--target", hostile.target, "--top", "20")
    assert status == 0
    assert RAW_CONTROLS.search(out.replace("\n", "")) is None
    for shown in ("\\x1b[2J\\x1b]0;owned\\x07root", "admin\\u202etxt.exe", "csi\\x9b31m",
                  "pass\\nword\\r\\tx", "zero\\u200bwidth\\u2028line", "管理员"):  # fmt: skip
        assert shown in out
    long_cell = "A" * 63 + tables.ELLIPSIS
    assert long_cell in out and "A" * 64 not in out
    block = out.split("top_commands\n")[1].split("\n\n")[0].splitlines()
    count_column = {tables.width(line[: line.index(" 1 ")]) for line in block[1:]}
    assert len(count_column) == 1, block  # the wide characters did not shift the columns
    _, out, _ = run(capsys, "query", "sensors", "--target", hostile.target)
    assert "\\x1b[1mescape" in out and "\x1b" not in out
    _, wide, _ = run(capsys, "query", "threats", "--target", hostile.target, "--max-width", "0")
    assert "A" * 500 in wide


def test_escape_and_clip_rules() -> None:
    assert tables.escape("plain text, ünïcödé") == "plain text, ünïcödé"
    assert tables.escape("\x00\x7f\x85\u00a0\u061c\ufeff\U000e0001") == (
        "\\x00\\x7f\\x85\\xa0\\u061c\\ufeff\\U000e0001"
    )
    assert tables.width("ab管理") == 6 and tables.width("e\u0301") == 1
    assert tables.clip("管理员管理员", 5) == "管理" + tables.ELLIPSIS
    zalgo = "a" + "\u0301" * 1000
    assert len(tables.clip(zalgo, 10)) == 4 * 10 + 1  # bounded, even at width 1
    assert tables.text("") == '""' and tables.text("-") == "-"
    empty = tables.Table("t", ("a",))
    assert empty.render() == "t\na\n(none)"


# -- healthcheck ------------------------------------------------------------------------------


def test_healthcheck_serving_not_serving_and_unreachable(
    demo: Demo, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "healthcheck", "--address", demo.target) == (0, "SERVING\n", "")
    demo.server.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)
    try:
        assert run(capsys, "healthcheck", "--target", demo.target)[:2] == (1, "NOT_SERVING\n")
    finally:
        demo.server.update_health()
    assert run(capsys, "healthcheck", "--address", demo.target, "--service", "nope")[:2] == (
        1,
        "SERVICE_UNKNOWN\n",
    )
    status, out, err = run(capsys, "healthcheck", "--address", "127.0.0.1:9", "--timeout", "2")
    assert (status, out) == (query.EXIT_UNREACHABLE, "")
    assert err.startswith("cowrie-stats healthcheck: cannot connect: 127.0.0.1:9: UNAVAILABLE")


def test_healthcheck_sends_an_api_key_when_health_is_closed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    key_file = tmp_path / "client.key"
    key_file.write_text(KEY, encoding="utf-8")
    key_file.chmod(0o600)
    keys = _keys(tmp_path)
    with demo_server(tmp_path, api_keys_file=str(keys), open_health_and_reflection=False) as demo:
        status, _, err = run(capsys, "healthcheck", "--address", demo.target)
        assert status == query.EXIT_ACCESS_DENIED and "API_KEY_MISSING" in err
        assert run(capsys, "healthcheck", "--address", demo.target, "--api-key-file",
                   str(key_file))[:2] == (0, "SERVING\n")  # fmt: skip
        monkeypatch.setenv("COWRIE_STATS_API_KEY_FILE", str(key_file))
        monkeypatch.setenv("COWRIE_STATS_GRPC_PORT", str(demo.server.port))
        assert run(capsys, "healthcheck")[:2] == (0, "SERVING\n")  # localhost:$GRPC_PORT


def test_healthcheck_in_a_subprocess_exit_codes(tmp_path: Path) -> None:
    # What a container runtime sees: a process, its exit status and one line.
    env = {k: v for k, v in os.environ.items() if k not in CLIENT_VARIABLES}
    done = subprocess.run(
        [sys.executable, "-m", "cowrie_stats.cli", "healthcheck", "--address", "127.0.0.1:9"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == query.EXIT_UNREACHABLE
    assert done.stdout == "" and done.stderr.count("\n") == 1


@pytest.mark.parametrize("command", ["query sensors", "healthcheck"])
def test_half_a_certificate_pair_is_a_configuration_error(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cert = tmp_path / "client.pem"
    cert.write_text("not used", encoding="utf-8")
    argv = [*command.split(), "--target", "127.0.0.1:9", "--tls-cert", str(cert)]
    status, out, err = run(capsys, *argv)
    assert (status, out) == (2, "")
    assert err.startswith("cowrie-stats: configuration error: a client certificate and its ")
    assert err.count("\n") == 1
