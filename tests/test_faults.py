"""Database and disk faults under load and during ingest, on real servers and a real tmpfs.

A cluster of its own: these tests restart and stop servers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from conftest import make_database, private_cluster
from google.protobuf.message import Message
from loadtools import run_load
from sqlalchemy import text
from test_chaos import ask, same_answer, time_range
from test_ingest import snapshot
from test_routing import pair_settings

from cowrie_stats._gen.cowrie.stats.v1 import stats_pb2, stats_pb2_grpc
from cowrie_stats.db.engines import create_db_engine
from cowrie_stats.db.schema import upgrade
from cowrie_stats.ingest.reader import Ingester
from cowrie_stats.sample import write_sample
from cowrie_stats.server import StatsServer
from cowrie_stats.settings import Settings
from testkit.pgcluster import PgCluster

pytestmark = pytest.mark.postgres
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgCluster]:
    with private_cluster() as running:
        engine = create_db_engine(running.primary_url, Settings(), writer=True)
        sample = tmp_path_factory.mktemp("faults") / "cowrie.json"
        write_sample(sample)
        Ingester(engine).ingest([str(sample)])
        engine.dispose()
        running.wait_replica_caught_up()
        yield running


def _eventually_ok(stub: stats_pb2_grpc.CowrieStatsServiceStub, timeout: float = 20) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            stub.GetThreatStats(stats_pb2.GetThreatStatsRequest(), timeout=5)
            return time.monotonic() - started
        except grpc.RpcError:
            time.sleep(0.1)
    raise AssertionError("no recovery")


def test_restarts_and_killed_connections_during_load(cluster: PgCluster) -> None:
    settings = pair_settings(cluster, replica_check_interval=0.2, result_cache_entries=0)
    server = StatsServer(settings)
    server.start()
    stop = threading.Event()
    results = []
    try:
        load = threading.Thread(
            target=lambda: results.append(run_load(f"127.0.0.1:{server.port}", 8, 60, stop))
        )
        load.start()
        time.sleep(1)
        killed = cluster.terminate_backends("cowrie-stats", on="replica")
        killed += cluster.terminate_backends("cowrie-stats", on="primary")
        time.sleep(1)
        cluster.restart_primary()
        time.sleep(1)
        cluster.stop_replica()
        time.sleep(1)
        cluster.start_replica()
        time.sleep(1)
        stop.set()
        load.join(timeout=60)
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            recovery = _eventually_ok(stats_pb2_grpc.CowrieStatsServiceStub(channel))
    finally:
        stop.set()
        server.stop(grace=0)
    result = results[0]
    print(
        f"\nfaults under load ({killed} backends killed, primary restarted, replica stopped and"
        f" started): {result.summary()}; recovered {recovery:.2f}s after the last fault"
    )
    assert set(result.codes) <= {"OK", "UNAVAILABLE"}
    assert result.codes["OK"] > result.codes["UNAVAILABLE"]


def _big_log(tmp_path: Path) -> Path:
    big = tmp_path / "big" / "cowrie.json"
    big.parent.mkdir()
    lines = []
    for day in range(6):  # six days of the demo log, shifted: about 7,700 events
        sample = tmp_path / f"day{day}.json"
        write_sample(sample, seed=day)
        lines.extend(sample.read_text().splitlines())
    big.write_text("\n".join(lines) + "\n")
    return big


def test_primary_down_during_ingest_then_resume(
    cluster: PgCluster, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    database = "ingest_fault"
    cluster.psql(f"DROP DATABASE IF EXISTS {database}")
    cluster.psql(f"CREATE DATABASE {database} OWNER cowrie")
    url = cluster.url(database=database)
    engine = create_db_engine(url, Settings(), writer=True)
    upgrade(engine)
    big = _big_log(tmp_path)
    env = {**os.environ, "COWRIE_STATS_DATABASE_URL": url}
    command = [
        sys.executable,
        "-m",
        "cowrie_stats.cli",
        "ingest",
        "--json",
        "--batch-lines",
        "100",
        str(big),
    ]
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            if conn.execute(text("SELECT count(*) FROM events")).scalar_one() > 0:
                break
        time.sleep(0.02)
    engine.dispose()
    # "fast": the test cluster runs with synchronous_commit=off, so a crash could
    # lose the last commits the assertion below relies on.
    cluster.stop_primary(mode="fast")
    try:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 1
        assert "database unavailable" in err and "Traceback" not in err
    finally:
        cluster.start_primary()
        cluster.wait_streaming()
    engine = create_db_engine(url, Settings(), writer=True)
    with engine.connect() as conn:
        offset = conn.execute(text('SELECT "offset" FROM ingest_cursors')).scalar_one()
        stored = conn.execute(text("SELECT count(*) FROM events")).scalar_one()
    committed = big.read_bytes()[:offset].count(b"\n")
    assert stored == committed  # the cursor covers exactly the committed lines
    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    clean = make_database("sqlite", tmp_path, request)
    clean.ingest([big])
    assert snapshot(engine) == snapshot(clean.engine)
    engine.dispose()
    clean.engine.dispose()


CRASH_LOG_EVENTS = 40_000  # a few seconds of ingest


def _ingest_command(log: Path) -> list[str]:
    return [sys.executable, "-m", "cowrie_stats.cli", "ingest", "--json", str(log)]


def _fresh_database(cluster: PgCluster, name: str) -> str:
    cluster.psql(f"DROP DATABASE IF EXISTS {name}")
    cluster.psql(f"CREATE DATABASE {name} OWNER cowrie")
    url = cluster.url(database=name)
    engine = create_db_engine(url, Settings(), writer=True)
    upgrade(engine)
    engine.dispose()
    return url


def _wait_for_stored_events(url: str, proc: subprocess.Popen[str]) -> None:
    engine = create_db_engine(url, Settings())
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            with engine.connect() as conn:
                if conn.execute(text("SELECT count(*) FROM events")).scalar_one() > 0:
                    return
            time.sleep(0.02)
    finally:
        engine.dispose()
    raise AssertionError("the ingest stored nothing, or finished, before the crash")


def _questions(stub: stats_pb2_grpc.CowrieStatsServiceStub) -> list[Message]:
    """All three RPCs over all time, a day, a few days in hours, and per sensor."""
    sensors = [s.sensor for s in stub.GetSensorStats(stats_pb2.GetSensorStatsRequest()).sensors]
    start = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp())  # bench.generate's default start
    windows = [
        stats_pb2.TimeRange(),
        time_range(start + 86_400, start + 2 * 86_400),
        time_range(start + 3_600 * 30, start + 3_600 * 100 + 17),
    ]
    questions: list[Message] = []
    for window in windows:
        for chosen in ([], sensors[:1], sensors[1:3]):
            questions += [
                stats_pb2.GetSessionStatsRequest(
                    time_range=window, sensors=chosen, bucket=stats_pb2.BUCKET_HOUR
                ),
                stats_pb2.GetThreatStatsRequest(time_range=window, sensors=chosen, top_n=50),
                stats_pb2.GetSensorStatsRequest(time_range=window, sensors=chosen),
            ]
    return questions


def _answers(url: str, questions: list[Message] | None = None) -> list[tuple[Message, Message]]:
    server = StatsServer(Settings(database_url=url, grpc_host="127.0.0.1", grpc_port=0))
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = stats_pb2_grpc.CowrieStatsServiceStub(channel)
            asked = questions if questions is not None else _questions(stub)
            return [(question, ask(stub, question, 30)[0]) for question in asked]
    finally:
        server.stop(grace=0)


def test_no_data_lost_when_the_primary_crashes_during_ingest(
    cluster: PgCluster, tmp_path: Path
) -> None:
    """SIGKILL of the postmaster mid-ingest (fsync on), restart, ingest again: as if clean."""
    log = tmp_path / "cowrie.json"
    generate = ["-m", "bench.generate", "--events", str(CRASH_LOG_EVENTS), "--days", "7"]
    subprocess.run([sys.executable, *generate, str(log)], cwd=REPO, check=True, timeout=120)
    crashed = _fresh_database(cluster, "ingest_crash")
    clean = _fresh_database(cluster, "ingest_clean")
    cluster.set_durable(True)
    try:
        env = {**os.environ, "COWRIE_STATS_DATABASE_URL": crashed}
        proc = subprocess.Popen(
            _ingest_command(log), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        _wait_for_stored_events(crashed, proc)
        time.sleep(0.5)
        assert proc.poll() is None, "the ingest finished before the crash: use a bigger log"
        cluster.stop_primary(mode="kill")
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 1 and "database unavailable" in err and "Traceback" not in err
        cluster.start_primary()
        resumed = subprocess.run(
            _ingest_command(log), env=env, capture_output=True, text=True, timeout=300
        )
        assert resumed.returncode == 0, resumed.stderr
        env["COWRIE_STATS_DATABASE_URL"] = clean
        once = subprocess.run(_ingest_command(log), env=env, capture_output=True, timeout=300)
        assert once.returncode == 0, once.stderr
    finally:
        cluster.start_primary()
        cluster.set_durable(False)
        cluster.wait_streaming()
    expected = _answers(clean)
    # Every field, doubles to the last bit: durations are summed as whole microseconds.
    for (question, got), (_, want) in zip(
        _answers(crashed, [q for q, _ in expected]), expected, strict=True
    ):
        assert same_answer(got, want) is None, (question, same_answer(got, want))
    print(f"\n{len(expected)} answers after a crash mid-ingest equal those of one clean ingest")


def test_disk_full_during_ingest_then_resume_elsewhere(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    mount = tmp_path / "small-disk"
    mount.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1200k", "tmpfs", str(mount)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        big = _big_log(tmp_path)
        env = {**os.environ, "COWRIE_STATS_DATABASE_URL": f"sqlite:///{mount / 'stats.db'}"}
        cli = [sys.executable, "-m", "cowrie_stats.cli"]
        assert subprocess.run([*cli, "migrate"], env=env, capture_output=True).returncode == 0
        full = subprocess.run(
            [*cli, "ingest", "--json", "--batch-lines", "200", str(big)],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert full.returncode == 1
        assert "full" in full.stderr and "Traceback" not in full.stderr
        for suffix in ("", "-wal", "-shm"):
            source = mount / f"stats.db{suffix}"
            if source.exists():
                shutil.copy(source, tmp_path / f"moved.db{suffix}")
    finally:
        subprocess.run(["umount", str(mount)], check=False)
    env["COWRIE_STATS_DATABASE_URL"] = f"sqlite:///{tmp_path / 'moved.db'}"
    resumed = subprocess.run(
        [*cli, "ingest", "--json", str(big)], env=env, capture_output=True, text=True, timeout=120
    )
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert 0 < summary["lines_read"] < big.read_text().count("\n")  # resumed, not restarted
    (tmp_path / "clean").mkdir()
    clean = make_database("sqlite", tmp_path / "clean", request)
    clean.ingest([big])
    moved = create_db_engine(env["COWRIE_STATS_DATABASE_URL"], Settings())
    assert snapshot(moved) == snapshot(clean.engine)
    moved.dispose()
    clean.engine.dispose()
