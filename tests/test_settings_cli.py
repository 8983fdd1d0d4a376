"""Settings validation and the CLI subcommands, run for real."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import fields, replace
from pathlib import Path

import pytest
from conftest import Database, StartServer

from cowrie_stats import __version__
from cowrie_stats.cli import main
from cowrie_stats.sample import write_sample
from cowrie_stats.settings import (
    SETTINGS_TABLE,
    Choice,
    Flag,
    Integer,
    Number,
    Parser,
    Settings,
    SettingsError,
    exposure_warning,
    is_loopback,
    load_env_file,
    load_settings,
    redact_text,
    redact_url,
    warn_if_exposed,
)
from cowrie_stats.validation import Limits


def test_defaults() -> None:
    settings = load_settings({})
    assert settings.database_url == "sqlite:///var/cowrie-stats.db"
    assert settings.grpc_port == 50051 and settings.replica_urls == ()
    assert settings.primary_url.get_backend_name() == "sqlite"
    assert settings.ingest_workers == 1
    assert load_settings({"COWRIE_STATS_INGEST_WORKERS": "0"}).ingest_workers == 0


def test_postgres_urls_password_file_and_replicas(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cr:et@\n")
    secret.chmod(0o600)
    settings = load_settings(
        {
            "COWRIE_STATS_DATABASE_URL": "postgresql://stats@db:5432/stats",
            "COWRIE_STATS_DATABASE_PASSWORD_FILE": str(secret),
            "COWRIE_STATS_REPLICA_URLS": "postgresql://stats@r1/stats, postgresql+psycopg://stats@r2/stats",
        }
    )
    assert settings.primary_url.password == "s3cr:et@"
    assert settings.primary_url.drivername == "postgresql+psycopg"
    assert len(settings.replica_urls) == 2
    assert "s3cr" not in redact_url(settings.database_url)
    assert redact_url("::not a url::") == "<invalid database URL>"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"COWRIE_STATS_GRPC_PORT": "http"}, "GRPC_PORT: expected an integer"),
        ({"COWRIE_STATS_GRPC_PORT": "70000"}, "outside 0..65535"),
        ({"COWRIE_STATS_LOG_FORMAT": "xml"}, "LOG_FORMAT"),
        ({"COWRIE_STATS_INGEST_WORKERS": "-1"}, "INGEST_WORKERS: -1 is outside 0..64"),
        ({"COWRIE_STATS_MAX_REPLICA_LAG": "-1"}, "MAX_REPLICA_LAG"),
        ({"COWRIE_STATS_MAX_REPLICA_LAG": "soon"}, "expected a number"),
        ({"COWRIE_STATS_DATABASE_URL": "mysql://x/y"}, "only sqlite and postgresql"),
        ({"COWRIE_STATS_DATABASE_URL": "::"}, "not a database URL"),
        ({"COWRIE_STATS_REPLICA_URLS": "postgresql://r/x"}, "replicas need a PostgreSQL"),
        ({"COWRIE_STATS_DATABASE_URL_FILE": "/nonexistent"}, "cannot read"),
        (
            {"COWRIE_STATS_DATABASE_URL": "sqlite://", "COWRIE_STATS_DATABASE_URL_FILE": "/x"},
            "not both",
        ),
        ({"COWRIE_STATS_TLS_CERT_FILE": "/etc/hostname"}, "go together"),
        ({"COWRIE_STATS_TLS_CLIENT_CA_FILE": "/etc/hostname"}, "needs"),
        ({"COWRIE_STATS_API_KEYS_FILE": "/nonexistent"}, "not a readable file"),
        ({"COWRIE_STATS_OPEN_HEALTH_AND_REFLECTION": "maybe"}, "true or false"),
    ],
)
def test_bad_values_are_refused_with_the_variable_name(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings(env)


def test_booleans() -> None:
    assert not load_settings(
        {"COWRIE_STATS_OPEN_HEALTH_AND_REFLECTION": "off"}
    ).open_health_and_reflection
    assert load_settings(
        {"COWRIE_STATS_OPEN_HEALTH_AND_REFLECTION": "yes"}
    ).open_health_and_reflection


def test_env_file_must_be_private(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("# comment\nexport COWRIE_STATS_GRPC_PORT='6000'\nOTHER=1\nnoequals\n")
    env_file.chmod(0o644)
    with pytest.raises(SettingsError, match="chmod 600"):
        load_env_file(env_file, {})
    env_file.chmod(0o600)
    env: dict[str, str] = {"COWRIE_STATS_LOG_LEVEL": "DEBUG"}
    load_env_file(env_file, env)
    assert env == {"COWRIE_STATS_LOG_LEVEL": "DEBUG", "COWRIE_STATS_GRPC_PORT": "6000"}


def _cli(*args: str, cwd: Path, stdin: str = "", **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cowrie_stats.cli", *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert __version__ in capsys.readouterr().out
    for command in ("serve", "migrate", "ingest", "healthcheck", "hash-key", "sample"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "usage: cowrie-stats" in capsys.readouterr().out


def test_bad_configuration_exits_2(tmp_path: Path) -> None:
    result = _cli("migrate", cwd=tmp_path, COWRIE_STATS_GRPC_PORT="x")
    assert result.returncode == 2
    assert "configuration error" in result.stderr


def test_migrate_ingest_stdin_and_summary(tmp_path: Path) -> None:
    sample = tmp_path / "cowrie.json"
    write_sample(sample)
    env = {"COWRIE_STATS_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}"}
    unmigrated = _cli("ingest", str(sample), cwd=tmp_path, **env)
    assert unmigrated.returncode == 1 and "cowrie-stats migrate" in unmigrated.stderr
    assert _cli("migrate", cwd=tmp_path, **env).returncode == 0
    result = _cli(
        "ingest", "--sensor", "stdin-sensor", "-", cwd=tmp_path, stdin=sample.read_text(), **env
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["events_stored"] == summary["lines_read"] == 1289
    assert summary["dead_lettered"] == 0
    missing = _cli("ingest", str(tmp_path / "nope"), cwd=tmp_path, **env)
    assert missing.returncode == 1 and "no such file" in missing.stderr


def test_hash_key(tmp_path: Path) -> None:
    key = "k" * 32
    result = _cli("hash-key", "--name", "dashboards", cwd=tmp_path, stdin=key + "\n")
    assert result.stdout.strip() == f"dashboards:{hashlib.sha256(key.encode()).hexdigest()}"
    short = _cli("hash-key", cwd=tmp_path, stdin="short\n")
    assert short.returncode == 2


def test_healthcheck_command(
    sqlite_db: Database, start_server: StartServer, tmp_path: Path
) -> None:
    running = start_server(sqlite_db.settings())
    ok = _cli("healthcheck", "--address", running.address, cwd=tmp_path)
    assert (ok.returncode, ok.stdout.strip()) == (0, "SERVING")
    running.server.stop(grace=0)
    down = _cli("healthcheck", "--address", running.address, "--timeout", "1", cwd=tmp_path)
    assert down.returncode == 3 and "cannot connect" in down.stderr  # not NOT_SERVING


def test_ingest_watch_exposes_metrics_and_stops_on_sigterm(tmp_path: Path) -> None:
    import signal
    import socket
    import time
    import urllib.request

    logs = tmp_path / "logs"
    write_sample(logs / "cowrie.json")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **os.environ,
        "COWRIE_STATS_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}",
        "COWRIE_STATS_METRICS_PORT": str(port),
        "COWRIE_STATS_METRICS_HOST": "127.0.0.1",
    }
    assert _cli("migrate", cwd=tmp_path, **env).returncode == 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "cowrie_stats.cli", "ingest", "--watch", "0.2", str(logs)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    body = ""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "1289.0" not in body:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
                body = reply.read().decode()
        except OSError:
            time.sleep(0.1)
    assert "cowrie_stats_ingest_events_stored_total 1289.0" in body
    (logs / "cowrie.json.1").write_text((logs / "cowrie.json").read_text())  # a rotation
    time.sleep(0.6)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    summaries = [json.loads(line) for line in out.splitlines()]
    assert summaries[0]["events_stored"] == 1289
    assert all(s["events_stored"] == 0 for s in summaries[1:])
    assert len(summaries) >= 2


def test_help_of_each_command_lists_the_settings_it_reads(
    capsys: pytest.CaptureFixture[str],
) -> None:
    commands = {command for row in SETTINGS_TABLE for command in row.spec.commands}
    assert commands == {"serve", "migrate", "ingest", "prune", "dead-letters", "healthcheck"}
    for command in sorted(commands):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())  # help wraps lines
        named = {row.variable for row in SETTINGS_TABLE if row.variable in text}
        assert named >= {r.variable for r in SETTINGS_TABLE if command in r.spec.commands}
        for row in SETTINGS_TABLE:  # with its default, where the table lists it
            if command in row.spec.commands and row.shown_default and command != "healthcheck":
                assert f"default {row.shown_default}" in text, (command, row.variable)


def test_table_field_names_are_the_variable_names() -> None:
    assert [row.field for row in SETTINGS_TABLE] == [f.name for f in fields(Settings)]
    for row in SETTINGS_TABLE:
        assert row.variable == "COWRIE_STATS_" + row.field.upper()
        assert row.spec.help and row.spec.commands, row.variable
        assert getattr(Settings(), row.field) == row.default
    assert Limits() == Limits(
        Settings.max_sensors_per_request, Settings.max_window_days
    )  # validation's limits default to the settings'


def other_than_default(parser: Parser[object]) -> str | None:
    """A valid text for ``parser`` that no setting has as its default."""
    if isinstance(parser, Integer):
        return str(parser.maximum)
    if isinstance(parser, Number):
        return "12.5"
    if isinstance(parser, Choice):
        return parser.choices[-1]
    return "false" if isinstance(parser, Flag) else None


def test_every_value_is_read_from_its_variable_and_file_twin(tmp_path: Path) -> None:
    paths = tmp_path / "file.pem"
    paths.write_text("pem")
    paths.chmod(0o600)
    env: dict[str, str] = {}
    expected: dict[str, object] = {}
    for row in SETTINGS_TABLE:
        text = other_than_default(row.spec.parser)
        if text is not None:
            env[row.variable] = text
            expected[row.field] = row.spec.parser.parse(row.variable, text)
    settings = load_settings(env)
    assert {name: getattr(settings, name) for name in expected} == expected
    defaults = Settings()
    assert [f for f in expected if expected[f] == getattr(defaults, f)] == []  # each was read
    twin = tmp_path / "port"
    twin.write_text("6001\n")
    twin.chmod(0o600)
    assert load_settings({"COWRIE_STATS_GRPC_PORT_FILE": str(twin)}).grpc_port == 6001
    keys = load_settings({"COWRIE_STATS_API_KEYS_FILE": str(paths)})
    assert keys.api_keys_file == str(paths)


def test_secrets_stay_out_of_the_settings_repr(tmp_path: Path) -> None:
    settings = load_settings(
        {
            "COWRIE_STATS_DATABASE_URL": "postgresql://stats@db/stats",
            "COWRIE_STATS_DATABASE_PASSWORD": "hunter2-s3cret",
        }
    )
    assert settings.primary_url.password == "hunter2-s3cret"
    assert "hunter2" not in repr(settings)
    secret = {row.variable for row in SETTINGS_TABLE if row.spec.secret}
    assert secret == {
        "COWRIE_STATS_DATABASE_URL",
        "COWRIE_STATS_DATABASE_PASSWORD",
        "COWRIE_STATS_REPLICA_URLS",
    }


def test_cli_in_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The same commands as above, in this process, so coverage sees the CLI code.
    import io

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COWRIE_STATS_DATABASE_URL", f"sqlite:///{tmp_path / 'db.sqlite'}")
    sample = tmp_path / "logs" / "cowrie.json"
    assert main(["sample", str(sample)]) == 0
    assert main(["ingest", str(sample)]) == 1  # not migrated yet
    assert main(["migrate"]) == 0
    assert main(["ingest", "--json", str(tmp_path / "logs")]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["events_stored"] == 1289
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"k" * 20 + b"\n")))
    assert main(["hash-key", "--name", "ci"]) == 0
    assert capsys.readouterr().out.startswith("ci:")
    (tmp_path / ".env").write_text("COWRIE_STATS_GRPC_PORT=x\n")
    (tmp_path / ".env").chmod(0o600)
    monkeypatch.delenv("COWRIE_STATS_GRPC_PORT", raising=False)
    assert main(["migrate"]) == 2  # the private .env is read, and its bad value refused


# -- exposure: masked URLs, loopback defaults, private secret files -------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:s3cr3t@h/db", "postgresql://u:***@h/db"),
        (
            "postgresql://u@h/db?Password=s3cr3t&PWD=s3cr3t&passwd=s3cr3t&sslmode=require",
            "postgresql://u@h/db?PWD=***&Password=***&passwd=***&sslmode=require",
        ),
        (
            "postgresql://h/db?sslpassword=s3cr3t&client_secret=s3cr3t&token=s3cr3t&sslkey=/k"
            "&application_name=a",
            "postgresql://h/db?application_name=a&client_secret=***&sslkey=***&sslpassword=***"
            "&token=***",
        ),
    ],
)
def test_urls_are_shown_without_secrets(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    in_text = redact_text(f"failed: {url}; retrying")
    assert "s3cr3t" not in in_text and in_text.endswith("; retrying")


def test_redact_text_leaves_ordinary_text_alone() -> None:
    for text in ("no url here", "mode=ro key_name=grafana", "user@host", "a=b&c=d"):
        assert redact_text(text) == text
    assert (
        redact_text("see https://x/?a=1&secret=s&b=2#top")
        == "see https://x/?a=1&secret=***&b=2#top"
    )


def test_hosts_default_to_loopback_and_exposure_is_told() -> None:
    settings = load_settings({})
    assert (settings.grpc_host, settings.metrics_host) == ("127.0.0.1", "127.0.0.1")
    assert exposure_warning(settings) is None
    for host in ("localhost", "::1", "[::1]", "127.0.0.2"):
        assert is_loopback(host) and exposure_warning(replace(settings, grpc_host=host)) is None
    for host in ("[::]", "0.0.0.0", "", "10.0.0.5", "stats.example.net"):
        assert not is_loopback(host)
    opened = replace(settings, grpc_host="[::]")
    warning = exposure_warning(opened)
    assert warning is not None and warning.startswith("gRPC listens on [::]:50051, beyond")
    assert exposure_warning(replace(opened, api_keys_file="/keys")) is None
    assert exposure_warning(replace(opened, tls_cert_file="/c", tls_key_file="/k")) is None


def test_warn_if_exposed_logs_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    settings = load_settings({"COWRIE_STATS_GRPC_HOST": "0.0.0.0"})
    assert warn_if_exposed(settings)
    assert not warn_if_exposed(load_settings({}))
    (record,) = caplog.records
    assert record.levelname == "WARNING" and "without API keys or TLS" in record.getMessage()


def test_tls_key_file_must_be_private(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("cert")
    key.write_text("key")
    key.chmod(0o640)
    env = {"COWRIE_STATS_TLS_CERT_FILE": str(cert), "COWRIE_STATS_TLS_KEY_FILE": str(key)}
    if os.geteuid() == 0:  # root-owned: its group may read it
        assert load_settings(env).tls_key_file == str(key)
        key.chmod(0o604)
    with pytest.raises(SettingsError, match=r"TLS_KEY_FILE: .* is readable by group or others"):
        load_settings(env)
    key.chmod(0o600)
    assert load_settings(env).tls_key_file == str(key)
