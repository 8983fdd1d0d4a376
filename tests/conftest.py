"""Shared fixtures: databases (SQLite and the throwaway PostgreSQL pair), servers, data."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import pytest
from sqlalchemy import Engine, create_engine, text

from cowrie_stats._gen.cowrie.stats.v1 import stats_pb2_grpc
from cowrie_stats.db.engines import create_db_engine
from cowrie_stats.db.schema import upgrade
from cowrie_stats.ingest.reader import Ingester, IngestSummary
from cowrie_stats.sample import write_sample
from cowrie_stats.server import StatsServer
from cowrie_stats.settings import Settings
from testkit.pgcluster import PgCluster, find_bin_dir

REPO = Path(__file__).resolve().parent.parent
# Servers that tests start as processes inherit this: the probe listener's fixed default
# port would collide between runs side by side (tests that need it choose a free port).
os.environ.setdefault("COWRIE_STATS_PROBE_PORT", "0")
SHARED_DATA = REPO.parent / "shared" / "data"
CAPTURES = ("cowrie_2026-04-03.json", "cowrie.json.6.gz", "cowrie.json.2024-04-03")


def shared_captures() -> list[Path]:
    return [SHARED_DATA / name for name in CAPTURES if (SHARED_DATA / name).is_file()]


@pytest.fixture(scope="session")
def captures() -> list[Path]:
    found = shared_captures()
    if not found:
        pytest.skip("../shared/data captures are absent")
    return found


def require_postgres() -> None:
    """Skip without PostgreSQL binaries, or fail when make test said they must be there."""
    if find_bin_dir() is None:
        msg = "PostgreSQL server binaries not found (run scripts/ensure-postgres.sh)"
        if os.environ.get("COWRIE_STATS_REQUIRE_POSTGRES") == "1":
            pytest.fail(msg)
        pytest.skip(msg)


@contextmanager
def private_cluster() -> Iterator[PgCluster]:
    """A migrated primary + replica of its own, for tests that stop or pause servers."""
    require_postgres()
    with PgCluster() as running:
        engine = create_db_engine(running.primary_url, Settings(), writer=True)
        upgrade(engine)
        engine.dispose()
        running.wait_replica_caught_up()
        yield running


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    require_postgres()
    cluster = PgCluster()
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.teardown()


@dataclass(frozen=True)
class Database:
    """A migrated, empty database for one test."""

    kind: str
    url: str
    replica_url: str | None
    engine: Engine

    def settings(self, **overrides: object) -> Settings:
        base = Settings(
            database_url=self.url,
            replica_urls=(self.replica_url,) if self.replica_url else (),
            grpc_host="127.0.0.1",
            grpc_port=0,
            probe_port=0,  # a fixed port would collide between tests run side by side
            replica_check_interval=0.2,
            shutdown_grace_seconds=5.0,
        )
        return replace(base, **overrides)  # type: ignore[arg-type]

    def ingest(self, paths: Sequence[Path | str], **kwargs: object) -> IngestSummary:
        return Ingester(self.engine, **kwargs).ingest([str(p) for p in paths])  # type: ignore[arg-type]

    def ingest_sample(self, directory: Path) -> Path:
        """Write the demo log into ``directory``, ingest it, and return its path."""
        sample = directory / "cowrie.json"
        write_sample(sample)
        self.ingest([sample])
        return sample


def _fresh_pg_database(cluster: PgCluster, options: str = "") -> tuple[str, str]:
    name = "t_" + uuid.uuid4().hex[:12]
    admin = create_engine(cluster.admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" OWNER cowrie {options}'))
    admin.dispose()
    return (
        cluster.primary_url.rsplit("/", 1)[0] + "/" + name,
        cluster.replica_url.rsplit("/", 1)[0] + "/" + name,
    )


def make_database(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, pg_options: str = ""
) -> Database:
    """A migrated database; ``pg_options`` are extra CREATE DATABASE options (PostgreSQL)."""
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'stats.db'}"
        replica = None
    else:
        cluster: PgCluster = request.getfixturevalue("pg_cluster")
        url, replica = _fresh_pg_database(cluster, pg_options)
    engine = create_db_engine(url, Settings(database_url=url), writer=True)
    upgrade(engine)
    return Database(kind, url, replica, engine)


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    database = make_database(request.param, tmp_path, request)
    yield database
    database.engine.dispose()


@pytest.fixture
def sqlite_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    database = make_database("sqlite", tmp_path, request)
    yield database
    database.engine.dispose()


@pytest.fixture
def pg_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    database = make_database("postgresql", tmp_path, request)
    yield database
    database.engine.dispose()


Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def in_process(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> Run:
    """cowrie-stats main() in this process (so coverage sees it): (status, stdout, stderr)."""
    from cowrie_stats.cli import main

    monkeypatch.chdir(tmp_path)
    for name in [k for k in os.environ if k.startswith("COWRIE_STATS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("COWRIE_STATS_PROBE_PORT", "0")  # no fixed port between parallel runs
    monkeypatch.setattr("cowrie_stats.cli._configure_logging", lambda _settings: None)

    def run(*argv: str, **env: str) -> tuple[int, str, str]:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        status = main(list(argv))
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    return run


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """Undo what an in-process ``cowrie-stats`` run does to the root logger.

    ``main()`` installs a handler on the stderr of its moment, which pytest closes
    after the test; a background thread of a later test (the access log) would
    write to the closed stream.
    """
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def access_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The access-log records ("rpc" lines of logger cowrie_stats.access) caught so far."""
    return [r for r in caplog.records if r.name == "cowrie_stats.access" and r.msg == "rpc"]


@dataclass
class RunningServer:
    server: StatsServer
    channel: grpc.Channel
    stub: stats_pb2_grpc.CowrieStatsServiceStub

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"


StartServer = Callable[..., RunningServer]


@pytest.fixture
def start_server() -> Iterator[StartServer]:
    """Start a real StatsServer on a free loopback port; stopped after the test."""
    started: list[RunningServer] = []

    def start(settings: Settings) -> RunningServer:
        server = StatsServer(settings)
        server.start()
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        running = RunningServer(server, channel, stats_pb2_grpc.CowrieStatsServiceStub(channel))
        started.append(running)
        return running

    yield start
    for running in started:
        running.channel.close()
        running.server.stop(grace=0)
