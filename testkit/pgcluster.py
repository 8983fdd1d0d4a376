"""Throwaway PostgreSQL primary + real streaming replica(s) for the tests and the benchmark.

``PgCluster`` builds, in a private temporary directory, a primary (``initdb``) and one or more
physical streaming replicas (``pg_basebackup -R -X stream`` with a replication slot), each
listening on its own free port on 127.0.0.1 only, and tears everything down afterwards
(``teardown()``, also registered with :mod:`atexit`). Startup takes a few seconds.

Usage::

    cluster = PgCluster()          # nothing happens until start()
    cluster.start()                # initdb, start primary, roles + db, basebackup, start replica
    cluster.primary_url            # postgresql+psycopg://cowrie@127.0.0.1:PORT/cowrie_stats
    cluster.replica_url            # same database, read-only hot standby
    cluster.psql("SELECT pg_is_in_recovery()", on="replica")   # -> [(True,)]
    cluster.stop_primary("kill")   # faults: stop modes fast/immediate/kill, start_*,
    cluster.start_primary()        # pause_replay/resume_replay, set_durable(True)
    cluster.teardown()             # immediate stop of every server, directories removed

Roles and database (created on the primary, present on the replicas through replication):

``postgres``
    Bootstrap superuser. Used by :meth:`PgCluster.psql` and the fault helpers, and for
    replication. Available as ``admin_url``/``admin_dsn`` when a test needs it.
``cowrie``
    ``LOGIN CREATEROLE``, owner of database ``cowrie_stats`` (so it can run migrations and
    ingest), member of ``pg_monitor`` (sees ``pg_stat_replication``/``pg_stat_activity`` of
    every role) and ``pg_signal_backend``. Not a superuser. ``primary_url``/``replica_url``
    connect as this role.
``cowrie_reader``
    ``LOGIN``, read-only: ``CONNECT`` on the database, ``USAGE`` on schema ``public``,
    ``SELECT`` on every table ``cowrie`` creates there (default privileges) and
    ``default_transaction_read_only = on``. Use ``url(on, user=READER_USER)`` for the
    least-privilege role the gRPC server is documented to run with.

Authentication is ``trust`` for 127.0.0.1 and the private Unix socket directory only (test
use; nothing listens on other interfaces), so no password appears in any URL.

Server binaries are found in ``/usr/lib/postgresql/<highest version>/bin`` or in the directory
named by ``COWRIE_STATS_PG_BIN``; ``scripts/ensure-postgres.sh`` installs them. When the tests
run as root, directories are owned by the ``postgres`` OS user and every server binary runs
through ``runuser -u postgres --`` (PostgreSQL refuses to run as root).

Node names accepted by the ``on=`` parameters: ``"primary"``, ``"replica"`` (the first
replica), ``"replica0"``, ``"replica1"``, ...
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import psycopg

__all__ = [
    "ADMIN_USER",
    "APP_USER",
    "DATABASE",
    "READER_USER",
    "PgCluster",
    "PgClusterError",
    "find_bin_dir",
]

ENV_BIN: Final = "COWRIE_STATS_PG_BIN"
DATABASE: Final = "cowrie_stats"
APP_USER: Final = "cowrie"
READER_USER: Final = "cowrie_reader"
ADMIN_USER: Final = "postgres"
HOST: Final = "127.0.0.1"
_OS_USER: Final = "postgres"
_DIR_PREFIX: Final = "cowrie-stats-pg-"
_OWNER_FILE: Final = "owner.pid"
_REQUIRED_TOOLS: Final = ("initdb", "pg_ctl", "postgres", "pg_basebackup")

# pg_ctl's shutdown modes, and "kill": SIGKILL to the postmaster, a crash (no shutdown
# checkpoint; the other server processes exit when they notice the postmaster is gone).
StopMode = Literal["smart", "fast", "immediate", "kill"]
DURABILITY_SETTINGS: Final = ("fsync", "full_page_writes", "synchronous_commit")


class PgClusterError(RuntimeError):
    """A server could not be created, started, stopped or reached in time."""


def find_bin_dir() -> Path | None:
    """Directory holding initdb/pg_ctl/postgres/pg_basebackup, or None when not installed.

    ``$COWRIE_STATS_PG_BIN`` wins when set; otherwise the highest
    ``/usr/lib/postgresql/<version>/bin`` containing all the tools.
    """
    override = os.environ.get(ENV_BIN)
    if override:
        path = Path(override)
        return path if _has_tools(path) else None
    root = Path("/usr/lib/postgresql")
    if not root.is_dir():
        return None
    candidates = [p / "bin" for p in root.iterdir() if _has_tools(p / "bin")]
    if not candidates:
        return None
    return max(candidates, key=lambda p: _version_key(p.parent.name))


def _has_tools(path: Path) -> bool:
    return all(os.access(path / tool, os.X_OK) for tool in _REQUIRED_TOOLS)


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", name)) or (0,)


def _free_port(exclude: Sequence[int] = ()) -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port = int(sock.getsockname()[1])
        if port not in exclude:
            return port
    raise PgClusterError("could not find a free loopback TCP port")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _process_state(pid: int) -> tuple[int, str] | None:
    """(parent pid, state letter) of a process from /proc; None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces
    return int(fields[1]), fields[0]


def _running(pid: int) -> bool:
    state = _process_state(pid)
    return state is not None and state[1] != "Z"  # a zombie has exited


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            state = _process_state(int(entry.name))
            if state is not None and state[0] == pid:
                found.append(int(entry.name))
    return found


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class _Node:
    name: str
    port: int
    data_dir: Path
    socket_dir: Path
    log_file: Path
    running: bool = False


class PgCluster:
    """A primary and ``replicas`` streaming replicas on free loopback ports (see module doc).

    :param replicas: number of streaming replicas (>= 0; the routing tests use 1).
    :param bin_dir: server binaries; default :func:`find_bin_dir`.
    :param base_dir: parent of the private temp directory; default the system temp dir.
    :param timeout: bound, in seconds, on every start/stop/wait done by :meth:`start`.
    :param extra_conf: extra ``postgresql.conf`` settings for every server.
    :param durable: fsync, full page writes and synchronous commit on (default off: faster,
        and a crash of a server process alone loses nothing the kernel had been given).
    """

    def __init__(
        self,
        *,
        replicas: int = 1,
        bin_dir: str | os.PathLike[str] | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        timeout: float = 30.0,
        extra_conf: dict[str, str] | None = None,
        durable: bool = False,
    ) -> None:
        if replicas < 0:
            raise ValueError("replicas must be >= 0")
        found = Path(bin_dir) if bin_dir is not None else find_bin_dir()
        if found is None or not _has_tools(found):
            raise PgClusterError(
                f"PostgreSQL server binaries not found (looked in {found or '/usr/lib/postgresql'}"
                f"; set {ENV_BIN} or run scripts/ensure-postgres.sh)"
            )
        self.bin_dir: Path = found
        self.n_replicas = replicas
        self.timeout = timeout
        self.extra_conf = dict(extra_conf or {})
        self.durable = durable
        self._base_parent = Path(base_dir) if base_dir is not None else None
        self._as_root = os.geteuid() == 0
        self.base_dir: Path | None = None
        self.primary: _Node | None = None
        self.replicas: list[_Node] = []
        self._started = False
        self._atexit_registered = False

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> PgCluster:
        """Create and start the primary and the replicas; return ``self``.

        On failure everything created so far is torn down before the error propagates.
        """
        if self._started:
            raise PgClusterError("cluster already started")
        self._started = True
        if not self._atexit_registered:
            atexit.register(self.teardown)
            self._atexit_registered = True
        reap_stale_clusters(self._base_parent)
        try:
            self._create_base_dir()
            self._init_primary()
            self._start(self._primary)
            self._create_roles()
            for index in range(self.n_replicas):
                self._create_replica(index)
            for node in self.replicas:
                self._start(node)
            for index in range(self.n_replicas):
                self.wait_streaming(index, timeout=self.timeout)
        except BaseException:
            self.teardown()
            raise
        return self

    def teardown(self) -> None:
        """Stop every server (immediate mode) and delete the directories. Idempotent."""
        nodes = [*self.replicas, *([self.primary] if self.primary else [])]
        for node in nodes:
            if (node.data_dir / "postmaster.pid").exists():
                with contextlib.suppress(Exception):
                    self._pg_ctl(node, "stop", "-m", "immediate", "-w", "-t", "10")
            node.running = False
        if self.base_dir is not None and self.base_dir.exists():
            shutil.rmtree(self.base_dir, ignore_errors=True)
        self.base_dir = None
        if self._atexit_registered:
            atexit.unregister(self.teardown)
            self._atexit_registered = False

    def __enter__(self) -> PgCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    # ------------------------------------------------------------------ addresses

    @property
    def primary_port(self) -> int:
        return self._primary.port

    @property
    def replica_port(self) -> int:
        return self._node("replica").port

    @property
    def replica_ports(self) -> list[int]:
        return [node.port for node in self.replicas]

    def url(self, on: str = "primary", *, user: str = APP_USER, database: str = DATABASE) -> str:
        """SQLAlchemy URL (psycopg 3 driver) for a node, e.g.
        ``postgresql+psycopg://cowrie@127.0.0.1:5433/cowrie_stats``."""
        return f"postgresql+psycopg://{user}@{HOST}:{self._node(on).port}/{database}"

    def dsn(self, on: str = "primary", *, user: str = APP_USER, database: str = DATABASE) -> str:
        """libpq keyword/value DSN for a node (``psycopg.connect(dsn)``)."""
        return f"host={HOST} port={self._node(on).port} dbname={database} user={user}"

    @property
    def primary_url(self) -> str:
        return self.url("primary")

    @property
    def replica_url(self) -> str:
        return self.url("replica")

    @property
    def replica_urls(self) -> list[str]:
        return [self.url(node.name) for node in self.replicas]

    @property
    def primary_dsn(self) -> str:
        return self.dsn("primary")

    @property
    def replica_dsn(self) -> str:
        return self.dsn("replica")

    @property
    def replica_dsns(self) -> list[str]:
        return [self.dsn(node.name) for node in self.replicas]

    @property
    def admin_url(self) -> str:
        """Superuser URL on the primary."""
        return self.url("primary", user=ADMIN_USER)

    @property
    def admin_dsn(self) -> str:
        """Superuser DSN on the primary."""
        return self.dsn("primary", user=ADMIN_USER)

    def log_tail(self, on: str = "primary", lines: int = 40) -> str:
        """Last lines of a node's server log."""
        return _tail(self._node(on).log_file, lines)

    # ------------------------------------------------------------------ SQL

    def connect(
        self,
        on: str = "primary",
        *,
        user: str = ADMIN_USER,
        database: str = DATABASE,
        connect_timeout: int = 5,
    ) -> psycopg.Connection[tuple[Any, ...]]:
        """A new autocommit psycopg connection (caller closes it)."""
        node = self._node(on)
        try:
            return psycopg.connect(
                host=HOST,
                port=node.port,
                dbname=database,
                user=user,
                connect_timeout=connect_timeout,
                autocommit=True,
                application_name="pgcluster-harness",
            )
        except psycopg.OperationalError as exc:
            raise PgClusterError(
                f"cannot connect to {node.name} on port {node.port}: {exc}\n"
                f"--- tail of {node.log_file} ---\n{_tail(node.log_file)}"
            ) from exc

    def psql(
        self,
        sql: str,
        params: Sequence[Any] | dict[str, Any] | None = None,
        *,
        on: str = "primary",
        user: str = ADMIN_USER,
        database: str = DATABASE,
    ) -> list[tuple[Any, ...]]:
        """Run one statement (autocommit, as ``postgres`` by default) and return its rows."""
        with self.connect(on, user=user, database=database) as conn, conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description is not None else []

    def scalar(self, sql: str, params: Sequence[Any] | None = None, *, on: str = "primary") -> Any:
        """First column of the first row of :meth:`psql` (None when there is no row)."""
        rows = self.psql(sql, params, on=on)
        return rows[0][0] if rows else None

    # ------------------------------------------------------------------ faults

    def stop_primary(self, mode: StopMode = "fast") -> None:
        self._stop(self._primary, mode)

    def start_primary(self) -> None:
        self._start(self._primary)

    def restart_primary(self, mode: StopMode = "fast") -> None:
        self.stop_primary(mode)
        self.start_primary()

    def stop_replica(self, index: int = 0, mode: StopMode = "fast") -> None:
        self._stop(self._replica(index), mode)

    def start_replica(self, index: int = 0, *, wait_streaming: bool = True) -> None:
        """Start a stopped replica; by default wait until the primary sees it streaming
        (skipped automatically when the primary is down)."""
        node = self._replica(index)
        self._start(node)
        if wait_streaming and self._primary.running:
            self.wait_streaming(index, timeout=self.timeout)

    def set_durable(self, durable: bool) -> None:
        """Turn fsync, full page writes and synchronous commit on or off on the running primary.

        Takes effect at once (configuration reload), for new transactions.
        """
        value = "on" if durable else "off"
        for name in DURABILITY_SETTINGS:
            self.psql(f"ALTER SYSTEM SET {name} = {value}")
        self.psql("SELECT pg_reload_conf()")
        self._wait(
            lambda: self.scalar("SHOW fsync") == value,
            self.timeout,
            f"fsync to be {value}",
            self._primary,
        )
        self.durable = durable

    def is_running(self, on: str = "primary") -> bool:
        """Whether the harness started the node and has not stopped it since."""
        return self._node(on).running

    def pause_replay(self, index: int = 0, *, timeout: float = 10.0) -> None:
        """``pg_wal_replay_pause()`` on a replica, waiting until replay is actually paused.

        WAL keeps being received (``pg_last_wal_receive_lsn()`` advances) while the replayed
        LSN and ``pg_last_xact_replay_timestamp()`` stay put, i.e. replication lag grows.
        """
        on = self._replica(index).name
        self.psql("SELECT pg_wal_replay_pause()", on=on)
        self._wait(
            lambda: self.scalar("SELECT pg_get_wal_replay_pause_state()", on=on) == "paused",
            timeout,
            f"replay on {on} to pause",
            self._replica(index),
        )

    def resume_replay(self, index: int = 0) -> None:
        self.psql("SELECT pg_wal_replay_resume()", on=self._replica(index).name)

    def replay_paused(self, index: int = 0) -> bool:
        state = self.scalar("SELECT pg_get_wal_replay_pause_state()", on=self._replica(index).name)
        return bool(state != "not paused")

    def replica_lsns(self, index: int = 0) -> tuple[str, str]:
        """``(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())`` of a replica, as text."""
        rows = self.psql(
            "SELECT pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text",
            on=self._replica(index).name,
        )
        return str(rows[0][0]), str(rows[0][1])

    def replica_byte_lag(self, index: int = 0) -> int:
        """Bytes received but not yet replayed by a replica."""
        value = self.scalar(
            "SELECT pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())",
            on=self._replica(index).name,
        )
        return int(value or 0)

    def wait_replica_caught_up(self, timeout: float = 10.0, index: int | None = None) -> None:
        """Wait until the replica(s) show everything the primary had committed when called.

        Visibility, not LSN arithmetic: a fresh token is committed on the primary
        (synchronously, which also flushes every earlier asynchronous commit) and
        each replica is polled until a query there sees it. The token table lives
        in the ``postgres`` database, out of the application's schema.

        :param index: one replica, or every replica when None.
        """
        token = self._commit_sync_token()
        nodes = self.replicas if index is None else [self._replica(index)]
        deadline = time.monotonic() + timeout
        for node in nodes:

            def caught_up(node: _Node = node) -> bool:
                rows = self.psql(
                    "SELECT 1 FROM harness_sync WHERE token = %s",
                    [token],
                    on=node.name,
                    database="postgres",
                )
                return bool(rows)

            self._wait(
                caught_up,
                max(0.0, deadline - time.monotonic()),
                f"{node.name} to show sync token {token}",
                node,
            )

    def _commit_sync_token(self) -> str:
        token = uuid.uuid4().hex
        with self.connect("primary", database="postgres") as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS harness_sync (token text PRIMARY KEY)")
            with conn.transaction():
                conn.execute("SET LOCAL synchronous_commit = on")
                conn.execute("INSERT INTO harness_sync (token) VALUES (%s)", [token])
        return token

    def wait_streaming(self, index: int = 0, timeout: float = 10.0) -> None:
        """Wait until a replica is in recovery and the primary's ``pg_stat_replication``
        shows it ``streaming``."""
        node = self._replica(index)
        self._wait(
            lambda: bool(self.scalar("SELECT pg_is_in_recovery()", on=node.name)),
            timeout,
            f"{node.name} to be in recovery",
            node,
        )
        self._wait(
            lambda: (
                self.scalar(
                    "SELECT state FROM pg_stat_replication WHERE application_name = %s",
                    [node.name],
                )
                == "streaming"
            ),
            timeout,
            f"{node.name} to stream from the primary",
            node,
        )

    def terminate_backends(
        self,
        application_name: str | None = None,
        *,
        on: str = "primary",
        user: str | None = None,
        database: str | None = None,
    ) -> int:
        """``pg_terminate_backend`` every client backend (never walsenders, autovacuum or the
        connection doing it) matching the optional filters; returns how many were killed."""
        rows = self.psql(
            """
            SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))
            FROM pg_stat_activity
            WHERE backend_type = 'client backend'
              AND pid <> pg_backend_pid()
              AND (%(app)s::text IS NULL OR application_name = %(app)s::text)
              AND (%(user)s::text IS NULL OR usename = %(user)s::text)
              AND (%(db)s::text IS NULL OR datname = %(db)s::text)
            """,
            {"app": application_name, "user": user, "db": database},
            on=on,
        )
        return int(rows[0][0])

    # ------------------------------------------------------------------ internals

    @property
    def _primary(self) -> _Node:
        if self.primary is None:
            raise PgClusterError("cluster not started")
        return self.primary

    def _replica(self, index: int) -> _Node:
        if not 0 <= index < len(self.replicas):
            raise PgClusterError(f"no replica #{index} (cluster has {len(self.replicas)})")
        return self.replicas[index]

    def _node(self, on: str) -> _Node:
        if on == "primary":
            return self._primary
        if on == "replica":
            return self._replica(0)
        match = re.fullmatch(r"replica(\d+)", on)
        if match:
            return self._replica(int(match.group(1)))
        raise ValueError(f"unknown node {on!r}: use 'primary', 'replica' or 'replicaN'")

    def _create_base_dir(self) -> None:
        parent = self._base_parent or Path(tempfile.gettempdir())
        base = Path(tempfile.mkdtemp(prefix=_DIR_PREFIX, dir=parent))
        self.base_dir = base
        (base / _OWNER_FILE).write_text(f"{os.getpid()}\n")
        # Unix socket paths are limited to ~107 bytes; keep them short and inside base.
        ports: list[int] = []
        nodes: list[_Node] = []
        for name in ["primary", *(f"replica{i}" for i in range(self.n_replicas))]:
            port = _free_port(ports)
            ports.append(port)
            sock = base / f"s-{name}"
            sock.mkdir()
            nodes.append(_Node(name, port, base / name, sock, base / f"{name}.log"))
        self.primary, self.replicas = nodes[0], nodes[1:]
        if self._as_root:
            for path in [base, *base.iterdir()]:
                shutil.chown(path, _OS_USER, _OS_USER)
        os.chmod(base, 0o700)

    def _init_primary(self) -> None:
        node = self._primary
        self._run(
            [
                "initdb",
                "-D",
                str(node.data_dir),
                "-U",
                ADMIN_USER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            what="initdb",
        )
        (node.data_dir / "pg_hba.conf").write_text(
            "# cowrie-stats test cluster: trust, loopback and private socket only\n"
            "local   all          all                 trust\n"
            f"host    all          all   {HOST}/32  trust\n"
            "local   replication  all                 trust\n"
            f"host    replication  all   {HOST}/32  trust\n"
        )
        settings = {
            "listen_addresses": f"'{HOST}'",
            "max_connections": "200",
            "shared_buffers": "32MB",
            **dict.fromkeys(DURABILITY_SETTINGS, "on" if self.durable else "off"),
            "wal_level": "replica",
            "max_wal_senders": "10",
            "max_replication_slots": "10",
            "wal_keep_size": "128MB",
            "hot_standby": "on",
            "hot_standby_feedback": "on",
            "wal_writer_delay": "10ms",  # synchronous_commit=off: ship WAL promptly
            "wal_receiver_status_interval": "1s",
            "wal_retrieve_retry_interval": "500ms",
            "wal_sender_timeout": "10s",
            "wal_receiver_timeout": "10s",
            "checkpoint_timeout": "5min",
            "max_wal_size": "256MB",
            "timezone": "'UTC'",
            "log_timezone": "'UTC'",
            "lc_messages": "'C'",
            "logging_collector": "off",
            "log_line_prefix": "'%m [%p] %q%u@%d/%a '",
            "log_min_messages": "warning",
            "track_io_timing": "off",
            **self.extra_conf,
        }
        self._append_conf(node, "cowrie-stats test primary", settings)

    def _append_conf(self, node: _Node, title: str, settings: dict[str, str]) -> None:
        # Appended settings win over earlier ones; postgresql.auto.conf (pg_basebackup -R's
        # primary_conninfo/primary_slot_name) is read after this file.
        per_node = {
            "port": str(node.port),
            "unix_socket_directories": f"'{node.socket_dir}'",
            "cluster_name": f"'{node.name}'",
        }
        lines = [f"\n# --- {title} ---"]
        lines += [f"{key} = {value}" for key, value in {**settings, **per_node}.items()]
        with (node.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n".join(lines) + "\n")
        if self._as_root:
            shutil.chown(node.data_dir / "postgresql.conf", _OS_USER, _OS_USER)

    def _create_roles(self) -> None:
        statements = [
            f"CREATE ROLE {APP_USER} LOGIN CREATEROLE",
            f"GRANT pg_monitor, pg_signal_backend TO {APP_USER}",
            f"CREATE ROLE {READER_USER} LOGIN",
            f"ALTER ROLE {READER_USER} SET default_transaction_read_only = on",
            f"CREATE DATABASE {DATABASE} OWNER {APP_USER}",
        ]
        for statement in statements:
            self.psql(statement, database="postgres")
        in_db = [
            f"GRANT CONNECT ON DATABASE {DATABASE} TO {READER_USER}",
            f"GRANT USAGE ON SCHEMA public TO {READER_USER}",
            f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {READER_USER}",
            f"ALTER DEFAULT PRIVILEGES FOR ROLE {APP_USER} IN SCHEMA public "
            f"GRANT SELECT ON TABLES TO {READER_USER}",
            f"ALTER DEFAULT PRIVILEGES FOR ROLE {APP_USER} IN SCHEMA public "
            f"GRANT USAGE, SELECT ON SEQUENCES TO {READER_USER}",
        ]
        for statement in in_db:
            self.psql(statement)

    def _create_replica(self, index: int) -> None:
        node = self._replica(index)
        slot = f"{node.name}_slot"
        self._run(
            [
                "pg_basebackup",
                "-D",
                str(node.data_dir),
                "-h",
                HOST,
                "-p",
                str(self._primary.port),
                "-U",
                ADMIN_USER,
                "-R",
                "-X",
                "stream",
                "-C",
                "-S",
                slot,
                "--checkpoint=fast",
                "--no-sync",
                "--no-password",
            ],
            what=f"pg_basebackup for {node.name}",
            log_of=self._primary,
        )
        # The copied postgresql.conf carries the primary's port/socket/name; override them.
        self._append_conf(node, f"cowrie-stats test {node.name}", {})

    def _start(self, node: _Node) -> None:
        if node.running:
            return
        self._pg_ctl(node, "start", "-w", "-t", str(int(self.timeout)), "-l", str(node.log_file))
        node.running = True

    def _stop(self, node: _Node, mode: StopMode) -> None:
        if not node.running and not (node.data_dir / "postmaster.pid").exists():
            return
        if mode == "kill":
            self._kill(node)
        else:
            self._pg_ctl(node, "stop", "-m", mode, "-w", "-t", str(int(self.timeout)))
        node.running = False

    def _kill(self, node: _Node) -> None:
        """SIGKILL the postmaster, then wait until all its processes are gone.

        The backends, the WAL writer and the others exit by themselves once they
        notice; until they have, the data directory cannot be started again.
        Any still there after ``timeout`` are killed too.
        """
        try:
            pid = int((node.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return
        processes = [pid, *_children(pid)]
        for victims in ([pid], processes):
            for victim in filter(_running, victims):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(victim, signal.SIGKILL)
            deadline = time.monotonic() + self.timeout
            while any(map(_running, processes)) and time.monotonic() < deadline:
                time.sleep(0.02)
            if not any(map(_running, processes)):
                self._forget_dead_postmaster(node, pid)
                return
        raise PgClusterError(f"processes of {node.name} survived SIGKILL{self._log_note(node)}")

    @staticmethod
    def _forget_dead_postmaster(node: _Node, pid: int) -> None:
        """Remove the lock file of a postmaster that has exited but is not reaped yet.

        A new postmaster would take the zombie for a live one ("lock file
        postmaster.pid already exists") until init reaps it, which can take a while.
        """
        deadline = time.monotonic() + 2
        while _process_state(pid) is not None and time.monotonic() < deadline:
            time.sleep(0.02)
        if _process_state(pid) is not None:
            (node.data_dir / "postmaster.pid").unlink(missing_ok=True)

    def _pg_ctl(self, node: _Node, *args: str) -> None:
        self._run(
            ["pg_ctl", "-D", str(node.data_dir), *args],
            what=f"pg_ctl {args[0]} {node.name}",
            log_of=node,
        )

    def _run(self, argv: list[str], *, what: str, log_of: _Node | None = None) -> None:
        command = [str(self.bin_dir / argv[0]), *argv[1:]]
        if self._as_root:
            command = ["runuser", "-u", _OS_USER, "--", *command]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C", TZ="UTC")
        try:
            result = subprocess.run(
                command,
                cwd=self.base_dir or "/",
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=self.timeout + 15,
                check=False,
                start_new_session=True,  # servers must not get the test runner's Ctrl-C
            )
        except subprocess.TimeoutExpired as exc:
            raise PgClusterError(
                f"{what} timed out after {exc.timeout:.0f}s{self._log_note(log_of)}"
            ) from exc
        if result.returncode != 0:
            raise PgClusterError(
                f"{what} failed (exit {result.returncode}): {' '.join(command)}\n"
                f"stdout: {result.stdout.strip()}\nstderr: {result.stderr.strip()}"
                f"{self._log_note(log_of)}"
            )

    @staticmethod
    def _log_note(node: _Node | None) -> str:
        if node is None:
            return ""
        return f"\n--- tail of {node.log_file} ---\n{_tail(node.log_file)}"

    def _wait(self, predicate: Callable[[], bool], timeout: float, what: str, node: _Node) -> None:
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while True:
            try:
                if predicate():
                    return
                last_error = None
            except (psycopg.Error, PgClusterError) as exc:
                last_error = exc
            if time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        detail = f" (last error: {last_error})" if last_error else ""
        raise PgClusterError(
            f"timed out after {timeout:.1f}s waiting for {what}{detail}"
            f"{self._log_note(node)}"
            f"{self._log_note(self.primary) if node is not self.primary else ''}"
        )


def reap_stale_clusters(parent: str | os.PathLike[str] | None = None) -> list[Path]:
    """Stop and delete harness clusters left behind by test runs that died (SIGKILL, OOM...).

    A directory is stale when the process that created it (``owner.pid``) no longer exists.
    Returns the directories removed.
    """
    root = Path(parent) if parent is not None else Path(tempfile.gettempdir())
    removed: list[Path] = []
    bin_dir = find_bin_dir()
    for base in _candidate_dirs(root):
        try:
            owner = int((base / _OWNER_FILE).read_text().strip())
        except (OSError, ValueError):
            continue
        if _pid_alive(owner):
            continue
        for pid_file in base.glob("*/postmaster.pid"):
            data_dir = pid_file.parent
            if bin_dir is not None:
                command = [str(bin_dir / "pg_ctl"), "-D", str(data_dir), "stop", "-m", "immediate"]
                if os.geteuid() == 0:
                    command = ["runuser", "-u", _OS_USER, "--", *command]
                with contextlib.suppress(Exception):
                    subprocess.run(command, capture_output=True, timeout=20, check=False, cwd="/")
        shutil.rmtree(base, ignore_errors=True)
        removed.append(base)
    return removed


def _candidate_dirs(root: Path) -> Iterator[Path]:
    try:
        yield from (p for p in root.glob(f"{_DIR_PREFIX}*") if p.is_dir())
    except OSError:
        return
