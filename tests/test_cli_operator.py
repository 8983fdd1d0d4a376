"""What an operator meets at the command line: help, start-up lines, one-line errors, keys.

* every subcommand's ``--help`` lists its options, the variables it reads (all of them
  real, documented in .env.example) and an example;
* ``serve``, ``migrate`` and ``ingest`` say which database they use, SQLite as an
  absolute path, passwords never;
* a database role without the rights a command needs is one line naming the role and
  what it lacks (real PostgreSQL roles), never a traceback;
* ``hash-key --generate`` makes keys the server accepts, and never writes a key where
  its keys-file line belongs.
"""

from __future__ import annotations

import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, Run
from test_docs import clean_env, run_bash, shell_block

from cowrie_stats.auth import match_key, parse_keys
from cowrie_stats.cli import build_parser, main
from cowrie_stats.settings import SETTINGS_TABLE, database_location
from testkit.pgcluster import READER_USER, PgCluster

DOCUMENTED = set(re.findall(r"COWRIE_STATS_[A-Z_]+", (REPO / ".env.example").read_text()))
OWN_HELP = (
    "serve",
    "migrate",
    "query",
    "healthcheck",
    "hash-key",
    "sample",
    "prune",
    "dead-letters",
)


def cli(
    *argv: str, cwd: Path, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cowrie_stats.cli", *argv],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(**(env or {})),
    )


def help_text(*command: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as done:
        main([*command, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize(
    "command",
    [*([c] for c in OWN_HELP), ["query", "sessions"], ["query", "threats"], ["query", "sensors"]],
    ids=" ".join,
)
def test_help_lists_options_variables_and_an_example(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    text = help_text(*command, capsys=capsys)
    assert "environment" in text and "exit status:" in text
    named = set(re.findall(r"COWRIE_STATS_[A-Z_]+", text))
    assert named <= DOCUMENTED, f"undocumented: {sorted(named - DOCUMENTED)}"
    example = text.split("example:\n")[1].splitlines()[0]
    argv = example.split("cowrie-stats ", 1)[1].split(" >")[0].split()
    assert argv[: len(command)] == command
    build_parser().parse_args(argv)  # the example is a real command line


def test_serve_help_names_every_server_setting(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_text("serve", capsys=capsys)
    ingest_only = {"INGEST_WORKERS", "INGEST_MAX_LINE_BYTES", "RETENTION_DAYS"}
    server = {row.variable for row in SETTINGS_TABLE} - {f"COWRIE_STATS_{k}" for k in ingest_only}
    assert sorted(name for name in server if name not in text) == []


def test_query_and_healthcheck_help_show_the_client_options(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for command in (["query", "threats"], ["healthcheck"]):
        text = help_text(*command, capsys=capsys)
        for option in ("--api-key-file", "--tls-ca", "--tls-cert", "--tls-key", "--timeout"):
            assert option in text
        assert "COWRIE_STATS_API_KEY" in text and "COWRIE_STATS_TARGET_CA_FILE" in text
        assert "3 cannot connect" in text


# -- which database ---------------------------------------------------------------------------


def test_database_location_is_absolute_and_redacted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert database_location("sqlite:///var/cowrie-stats.db") == (
        f"sqlite:///{tmp_path}/var/cowrie-stats.db"
    )
    assert database_location("sqlite://") == "sqlite://"
    assert database_location("postgresql+psycopg://u:secret@db/x") == (
        "postgresql+psycopg://u:***@db/x"
    )
    assert database_location("::") == "<invalid database URL>"


def test_commands_name_their_database_and_not_migrated_names_it(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    unmigrated = cli("serve", cwd=elsewhere)  # the default, relative SQLite path
    where = f"sqlite:///{elsewhere}/var/cowrie-stats.db"
    assert unmigrated.returncode == 1
    assert f"using database database={where}" in unmigrated.stderr
    assert unmigrated.stderr.splitlines()[-1] == (
        f"cowrie-stats: the database {where} is not migrated: run `cowrie-stats migrate` first"
    )
    migrated = cli("migrate", cwd=elsewhere)
    assert migrated.returncode == 0 and f"database={where}" in migrated.stderr
    empty = cli("ingest", "--json", str(tmp_path / "none"), cwd=elsewhere)
    assert f"using database database={where}" in empty.stderr


def test_a_read_only_sqlite_file_is_one_line(tmp_path: Path, in_process: Run) -> None:
    database = tmp_path / "ro.db"
    database.touch()
    # Opened read-only by SQLite itself, so the test holds when it runs as root too.
    url = f"sqlite:///file:{database}?mode=ro&uri=true"
    status, _, err = in_process("migrate", COWRIE_STATS_DATABASE_URL=url)
    assert status == 1 and err.count("\n") == 1
    assert err.startswith(f"cowrie-stats: cannot write {database_location(url)}: ")
    assert "attempt to write a readonly database" in err
    unreachable = "postgresql://cowrie@127.0.0.1:9/cowrie_stats"
    status, _, err = in_process("migrate", COWRIE_STATS_DATABASE_URL=unreachable)
    assert status == 1 and err.count("\n") == 1
    assert err.startswith("cowrie-stats: database unavailable (postgresql+psycopg://cowrie@")


@pytest.mark.postgres
def test_roles_without_rights_get_one_line_naming_the_role(
    pg_cluster: PgCluster, tmp_path: Path, in_process: Run
) -> None:
    pg_cluster.psql("DROP ROLE IF EXISTS no_grants", database="postgres")
    pg_cluster.psql("CREATE ROLE no_grants LOGIN", database="postgres")
    # A database of its own, never migrated, so that migrate has DDL to run.
    pg_cluster.psql("DROP DATABASE IF EXISTS roles_test", database="postgres")
    pg_cluster.psql("CREATE DATABASE roles_test OWNER cowrie", database="postgres")
    pg_cluster.psql(f"GRANT CONNECT ON DATABASE roles_test TO {READER_USER}", database="postgres")
    reader = pg_cluster.url("primary", user=READER_USER, database="roles_test")
    nobody = pg_cluster.url("primary", user="no_grants", database="roles_test")

    status, _, line = in_process("migrate", COWRIE_STATS_DATABASE_URL=reader)
    assert status == 1 and line.count("\n") == 1
    assert f'role "{READER_USER}" is read-only' in line
    assert "cannot execute CREATE TABLE in a read-only transaction" in line
    assert "migrate needs the database's owner role" in line
    assert f"migrate {database_location(reader)}: " in line

    # The same as a process, as an operator meets it: one line, no traceback.
    lacking = cli("migrate", cwd=tmp_path, env={"COWRIE_STATS_DATABASE_URL": nobody})
    assert lacking.returncode == 1 and "Traceback" not in lacking.stderr
    line = lacking.stderr.splitlines()[-1]
    assert 'role "no_grants" lacks a privilege (permission denied for ' in line


# -- hash-key --generate ----------------------------------------------------------------------


def test_generate_appends_the_line_and_prints_only_the_key(tmp_path: Path, in_process: Run) -> None:
    keys = tmp_path / "api-keys.txt"
    keys.write_text("# keys\n", encoding="utf-8")
    status, out, err = in_process(
        "hash-key", "--generate", "--name", "grafana", "--append-to", str(keys)
    )
    assert status == 0, err
    key = out.strip()
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", key)
    assert match_key(key, parse_keys(keys.read_text())) == "grafana"
    assert key not in keys.read_text() and key not in err
    assert "appended to" in err


def test_generate_to_a_private_key_file_prints_the_line(tmp_path: Path, in_process: Run) -> None:
    key_file = tmp_path / "grafana.key"
    status, out, err = in_process(
        "hash-key", "--generate", "--name", "grafana", "--key-out", str(key_file)
    )
    assert status == 0, err
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text().strip()
    assert match_key(key, parse_keys(out)) == "grafana"
    assert key not in out
    status, _, err = in_process("hash-key", "--generate", "--key-out", str(key_file))
    assert status == 1 and "File exists" in err  # never overwritten
    assert key_file.read_text().strip() == key
    keys = tmp_path / "keys"
    both = ("--key-out", str(tmp_path / "ops.key"), "--append-to", str(keys))
    status, out, err = in_process("hash-key", "--generate", "--name", "ops", *both)
    assert (status, out) == (0, "")
    ops_key = (tmp_path / "ops.key").read_text().strip()
    assert match_key(ops_key, parse_keys(keys.read_text())) == "ops"


def test_generate_never_pipes_key_and_line_together(tmp_path: Path) -> None:
    done = cli("hash-key", "--generate", cwd=tmp_path)  # stdout is a pipe here
    assert done.returncode == 2 and done.stdout == ""
    assert "--append-to" in done.stderr and "--key-out" in done.stderr


def test_generate_on_a_terminal_shows_both_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("cowrie_stats.cli._configure_logging", lambda _settings: None)
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    assert main(["hash-key", "--generate", "--name", "ops"]) == 0
    key_line, keys_line = capsys.readouterr().out.splitlines()
    key = key_line.rsplit(" ", 1)[1]
    assert match_key(key, parse_keys(keys_line.split(": ", 1)[1])) == "ops"
    assert main(["hash-key", "--generate", "--name", "bad name"]) == 2
    assert "key name" in capsys.readouterr().err


def test_generate_snippet_of_the_security_docs(tmp_path: Path) -> None:
    script = shell_block(REPO / "docs/security/secrets-management.md", "hash-key --generate")
    setup = "\n".join(line for line in script.splitlines() if "query" not in line)
    done = run_bash(setup + '\nprintf %s "$KEY" > alerting.key', tmp_path)
    assert done.returncode == 0, done.stderr
    keys = parse_keys((tmp_path / "api-keys.txt").read_text())
    assert stat.S_IMODE((tmp_path / "api-keys.txt").stat().st_mode) == 0o600
    for name in ("alerting", "grafana"):
        assert match_key((tmp_path / f"{name}.key").read_text().strip(), keys) == name
    assert "query sensors" in script  # the client side is shown (run in test_query_cli)
