"""Ingest benchmark on PostgreSQL: ``cowrie-stats ingest`` against raw ``COPY``.

For two file sizes (to show peak memory does not grow with the file), each into a fresh
database: the real CLI in a subprocess. Events/s come from its own summary and from wall
time; memory is the peak RSS of the ingest process (``wait4``) and the peak of the summed
PSS of it and its parse worker processes, sampled every 0.1 s (PSS splits the pages a
worker shares with the forkserver it comes from, so the sum is what the run occupies).
Then two re-ingest passes of the large file, both of which must store 0 new rows: the
same file again (the cursor skips it) and the same events in a new file (a different
head, so every line is parsed again and dropped by content dedup). The physical limit is
``COPY`` of the same lines, streamed as they are, into an unindexed one-column table in
a fresh database.

Between the two sits the storage floor: the rows the large run stored, dumped with
``COPY ... TO`` and loaded into a fresh, migrated database with ``COPY ... FROM``, on one
connection and then on two in parallel (``events`` on one, the other tables on the
other). It is what PostgreSQL alone needs for this schema's tables and indexes with no
client work at all (no parsing, no dedup probe, no upserts), so it splits the gap to
raw COPY into what the schema costs and what the ingest's own work costs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import create_engine, text

from bench import generate
from cowrie_stats.periodic import Periodic

REPO = Path(__file__).resolve().parent.parent
COPY_CHUNK = 1 << 20
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Raw lines go through CSV COPY with quote/delimiter bytes that JSON never contains
# unescaped, so the bytes are stored exactly as read.
COPY_SQL = "COPY raw_copy (line) FROM STDIN (FORMAT csv, DELIMITER E'\\x02', QUOTE E'\\x01')"
# The tables a batch writes, in an order that satisfies their foreign keys
# (sessions -> sensors; the event tables have none since migration 0003).
STORED_TABLES = (
    "sensors",
    "sessions",
    "login_attempts",
    "commands",
    "downloads",
    "value_dictionary",
    "rollups",
    "rollup_sets",
    "rollup_values",
    "events",
)


@dataclass
class IngestRun:
    """One ``cowrie-stats ingest`` process."""

    events_in_file: int
    wall_seconds: float
    ingest_seconds: float
    peak_rss_mb: float
    peak_tree_pss_mb: float
    # CPU seconds: the ingest process (exact, from wait4), its descendants (the
    # forkserver and parse workers, which it does not reap) and the PostgreSQL
    # processes of its database, both sampled every 0.1 s (the last 0.1 s of
    # each process may be missed).
    cpu_seconds: dict[str, float]
    summary: dict[str, Any]

    @property
    def events_per_second(self) -> float:
        return self.summary["lines_read"] / self.ingest_seconds if self.ingest_seconds else 0.0

    def cpu_us_per_event(self) -> dict[str, float]:
        """CPU per event: ingest process, parse workers (with their forkserver), PostgreSQL."""
        events = self.summary["lines_read"] or 1
        cpu = self.cpu_seconds
        parts = cpu | {"total": sum(cpu.values())}
        return {name: round(seconds / events * 1e6, 2) for name, seconds in parts.items()}

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {
            "events_per_second": round(self.events_per_second, 1),
            "cpu_us_per_event": self.cpu_us_per_event(),
        }


def fresh_database(admin_url: str, app_url: str, prefix: str) -> tuple[str, str]:
    """Create an empty database owned by the app role; (SQLAlchemy URL, libpq DSN)."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" OWNER cowrie'))
    admin.dispose()
    url = app_url.rsplit("/", 1)[0] + "/" + name
    return url, url.replace("postgresql+psycopg://", "postgresql://")


def migrate(url: str) -> None:
    from cowrie_stats.db.engines import create_db_engine
    from cowrie_stats.db.schema import upgrade
    from cowrie_stats.settings import Settings

    engine = create_db_engine(url, Settings(database_url=url))
    try:
        upgrade(engine)
    finally:
        engine.dispose()


def cli_env(url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COWRIE_STATS_")}
    env.update(COWRIE_STATS_DATABASE_URL=url, COWRIE_STATS_ENV_FILE="/nonexistent", **extra)
    return env


def run_ingest(url: str, path: Path, events_in_file: int) -> IngestRun:
    """``cowrie-stats ingest --json PATH`` in a subprocess; peak RSS from its rusage."""
    argv = [sys.executable, "-m", "cowrie_stats.cli", "ingest", "--json", str(path)]
    started = time.monotonic()
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(url), cwd=REPO
    )
    tree = TreeSampler(proc.pid, database=url.rsplit("/", 1)[1])
    tree.start()
    stdout, stderr = _drain(proc)
    tree.stop()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"ingest failed ({proc.returncode}): {stderr.decode()[-2000:]}")
    summary = json.loads(stdout.decode().strip().splitlines()[-1])
    return IngestRun(
        events_in_file=events_in_file,
        wall_seconds=round(wall, 3),
        ingest_seconds=float(summary["seconds"]),
        peak_rss_mb=round(usage.ru_maxrss / 1024, 1),  # KiB on Linux
        peak_tree_pss_mb=round(tree.peak_kb / 1024, 1),
        cpu_seconds={
            "ingest_process": round(usage.ru_utime + usage.ru_stime, 3),
            "parse_workers": round(tree.descendants_cpu_seconds(), 3),
            "postgres": round(tree.postgres_cpu_seconds(), 3),
        },
        summary=summary,
    )


class TreeSampler:
    """Samples a process tree: the peak of its summed PSS, and CPU time per process.

    Also the CPU time of the PostgreSQL processes serving ``database`` (those
    whose title names it: the ingest's backend, autovacuum workers).
    """

    def __init__(self, pid: int, database: str, interval: float = 0.1) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_kb = 0
        self._title = f" {database} "
        self._ticks: dict[int, int] = {}
        self._postgres: set[int] = set()
        self._descendants: set[int] = set()
        self._before = self._postgres_ticks()
        self._sampler = Periodic("bench-sampler", self._sample, interval)

    def start(self) -> None:
        self._sampler.start()

    def stop(self) -> None:
        self._sampler.close()

    def descendants_cpu_seconds(self) -> float:
        ticks = sum(self._ticks.get(pid, 0) for pid in self._descendants)
        return ticks / CLOCK_TICKS

    def postgres_cpu_seconds(self) -> float:
        ticks = sum(self._ticks.get(pid, 0) - self._before.get(pid, 0) for pid in self._postgres)
        return ticks / CLOCK_TICKS

    def _sample(self) -> None:
        processes = _processes()
        tree = _tree(self.pid, processes)
        self.peak_kb = max(self.peak_kb, sum(_pss_kb(pid) for pid in tree))
        for pid in tree[1:]:  # the root's own time comes exact from wait4
            self._descendants.add(pid)
            self._ticks[pid] = processes[pid].cpu_ticks
        for pid, ticks in self._postgres_ticks(processes).items():
            self._postgres.add(pid)
            self._ticks[pid] = ticks

    def _postgres_ticks(self, processes: dict[int, _Process] | None = None) -> dict[int, int]:
        found = processes if processes is not None else _processes()
        return {
            pid: process.cpu_ticks
            for pid, process in found.items()
            if process.title.startswith("postgres") and self._title in process.title
        }


@dataclass
class _Process:
    parent: int
    cpu_ticks: int  # user + system, in clock ticks
    title: str


def _processes() -> dict[int, _Process]:
    """Every process: its parent, CPU time and title (from /proc/PID/stat and cmdline)."""
    found: dict[int, _Process] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            continue  # the process ended while we looked
        # After the name: state, ppid, ... utime (14th field of stat) and stime (15th).
        found[int(entry.name)] = _Process(int(fields[1]), int(fields[11]) + int(fields[12]), title)
    return found


def _tree(root: int, processes: dict[int, _Process]) -> list[int]:
    """``root`` and its descendants."""
    children: dict[int, list[int]] = {}
    for pid, process in processes.items():
        children.setdefault(process.parent, []).append(pid)
    found, queue = [], [root]
    while queue:
        pid = queue.pop()
        found.append(pid)
        queue.extend(children.get(pid, []))
    return found


def _pss_kb(pid: int) -> int:
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    for line in rollup.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def _drain(proc: subprocess.Popen[bytes]) -> tuple[bytes, bytes]:
    """Read both pipes to EOF without reaping the child (wait4 reaps it for its rusage)."""
    chunks: dict[str, bytes] = {}

    def read(name: str, stream: Any) -> None:
        chunks[name] = stream.read()

    assert proc.stdout is not None and proc.stderr is not None
    reader = threading.Thread(target=read, args=("err", proc.stderr))
    reader.start()
    chunks["out"] = proc.stdout.read()
    reader.join()
    return chunks["out"], chunks["err"]


def raw_copy(dsn: str, path: Path) -> dict[str, Any]:
    """COPY the file's lines into an unindexed table; the physical limit."""
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE TABLE raw_copy (line text)")
        conn.commit()
        started = time.monotonic()
        with conn.cursor() as cur, cur.copy(COPY_SQL) as copy, path.open("rb") as source:
            while chunk := source.read(COPY_CHUNK):
                copy.write(chunk)
        conn.commit()
        seconds = time.monotonic() - started
        rows = conn.execute("SELECT count(*) FROM raw_copy").fetchone()
    count = int(rows[0]) if rows else 0
    return {
        "rows": count,
        "seconds": round(seconds, 3),
        "events_per_second": round(count / seconds, 1) if seconds else 0.0,
    }


def storage_floor(
    admin_url: str, app_url: str, source_dsn: str, events: int, workdir: Path
) -> dict[str, Any]:
    """Time COPY-loading the rows of ``source_dsn`` into fresh databases: 1 and 2 connections."""
    dumps = workdir / "floor"
    dumps.mkdir(exist_ok=True)
    with psycopg.connect(source_dsn) as conn:
        for table in STORED_TABLES:
            with (
                conn.cursor().copy(f"COPY {table} TO STDOUT") as copy,
                (dumps / table).open("wb") as out,
            ):
                for chunk in copy:
                    out.write(chunk)
    loads = {
        "one_connection": [list(STORED_TABLES)],
        # events has no foreign key: it loads beside the rest, each on its own backend.
        "two_connections": [list(STORED_TABLES[:-1]), ["events"]],
    }
    floor = {
        label: _timed_load(admin_url, app_url, dumps, groups) for label, groups in loads.items()
    }
    for table in STORED_TABLES:
        (dumps / table).unlink()
    dumps.rmdir()
    for figures in floor.values():
        seconds = figures["seconds"]
        figures["events_per_second"] = round(events / seconds, 1) if seconds else 0.0
    return floor


def _timed_load(
    admin_url: str, app_url: str, dumps: Path, groups: list[list[str]]
) -> dict[str, float]:
    """COPY each group of tables on its own connection, all groups at once: seconds, events."""
    url, dsn = fresh_database(admin_url, app_url, "bench_floor")
    migrate(url)
    connections = [psycopg.connect(dsn) for _ in groups]
    try:
        with ThreadPoolExecutor(len(groups)) as pool:
            started = time.monotonic()
            loads = [
                pool.submit(_load_tables, conn, dumps, tables)
                for conn, tables in zip(connections, groups, strict=True)
            ]
            for load in loads:
                load.result()  # re-raises a failed load
            seconds = time.monotonic() - started
        row = connections[0].execute("SELECT count(*) FROM events").fetchone()
    finally:
        for conn in connections:
            conn.close()
    return {"seconds": round(seconds, 3), "events_loaded": int(row[0]) if row else 0}


def _load_tables(conn: psycopg.Connection[Any], dumps: Path, tables: list[str]) -> None:
    with conn.cursor() as cur:
        for table in tables:
            with cur.copy(f"COPY {table} FROM STDIN") as copy, (dumps / table).open("rb") as dump:
                while chunk := dump.read(COPY_CHUNK):
                    copy.write(chunk)
    conn.commit()


def _ratio(events_per_second: float, limit: dict[str, Any]) -> float:
    """``events_per_second`` over a limit's ``events_per_second`` (0 for a limit of 0)."""
    rate = limit["events_per_second"]
    return round(events_per_second / rate, 4) if rate else 0.0


def run(admin_url: str, app_url: str, workdir: Path, events: int, seed: int) -> dict[str, Any]:
    """The whole ingest benchmark; returns the JSON section."""
    # Half, not less: at the default 200k events both runs pass the 50k lines after
    # which parse workers start, so the two peaks compare the same set of processes.
    sizes = {"small": max(1, events // 2), "large": events}
    files: dict[str, Path] = {}
    counts: dict[str, int] = {}
    for label, size in sizes.items():
        files[label] = workdir / f"ingest-{label}.json"
        counts[label] = generate.write_file(files[label], events=size, seed=seed)
    runs: dict[str, IngestRun] = {}
    url = ""
    for label in sizes:
        url, _ = fresh_database(admin_url, app_url, f"bench_ingest_{label}")
        migrate(url)
        runs[label] = run_ingest(url, files[label], counts[label])
    floor = storage_floor(
        admin_url,
        app_url,
        url.replace("postgresql+psycopg://", "postgresql://"),
        counts["large"],
        workdir,
    )
    # Re-ingest into the database of the large run.
    again = run_ingest(url, files["large"], counts["large"])
    renamed = workdir / "ingest-large-copy.json"
    with renamed.open("wb") as out, files["large"].open("rb") as source:
        out.write(b"\n")  # new head hash: no cursor, every line parsed and deduplicated
        while chunk := source.read(COPY_CHUNK):
            out.write(chunk)
    dedup = run_ingest(url, renamed, counts["large"])
    _, dsn = fresh_database(admin_url, app_url, "bench_copy")
    copy = raw_copy(dsn, files["large"])
    large = runs["large"]
    cpu = large.cpu_us_per_event()
    for path in [*files.values(), renamed]:
        path.unlink(missing_ok=True)
    return {
        "events": counts["large"],
        "file_bytes": large.summary["bytes_read"],
        "runs": {label: r.as_dict() for label, r in runs.items()},
        "reingest_same_file": again.as_dict(),
        "reingest_new_file_same_events": dedup.as_dict(),
        "copy": copy,
        "storage_floor": floor,
        # What the whole pipeline costs in CPU per event, and the rate that cost
        # allows on this machine's cores even if every core were busy all the time.
        "cpu_us_per_event": cpu,
        "cpu_bound_events_per_second": round((os.cpu_count() or 1) * 1e6 / cpu["total"], 1),
        "floor_ratio": _ratio(large.events_per_second, floor["one_connection"]),
        "events_per_second": round(large.events_per_second, 1),
        "copy_ratio": _ratio(large.events_per_second, copy),
        "peak_rss_mb": {label: r.peak_rss_mb for label, r in runs.items()},
        "peak_tree_pss_mb": {label: r.peak_tree_pss_mb for label, r in runs.items()},
        "reingest_new_rows": again.summary["events_stored"] + dedup.summary["events_stored"],
    }
