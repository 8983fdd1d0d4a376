"""Chaos: 32 clients against a real server while the databases fail in random orders.

A seeded schedule stops and starts the primary and the replica (clean stop,
immediate stop, SIGKILL of the postmaster), sometimes both at once, restarts
the replica while the primary is busy, and pauses replay while the primary
commits (alone, and with the primary down). The clients ask never-asked
questions (unique windows, so the cache cannot answer) and repeated ones.

Every call must end, within its deadline, with the exact answer for the data
(checked afterwards against a quiet copy of the same data) or with UNAVAILABLE
or DEADLINE_EXCEEDED. The availability printed is answered calls over calls
made while at least one server was up.

``COWRIE_STATS_CHAOS_SEED=N`` replays a run (the seed is printed);
``COWRIE_STATS_LONG_TESTS=1`` (``make test-long``) runs it for minutes.
"""

from __future__ import annotations

import os
import random
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from conftest import Database, StartServer, private_cluster
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from test_routing import pair_settings

from cowrie_stats._gen.cowrie.stats.v1 import stats_pb2, stats_pb2_grpc
from cowrie_stats.db.engines import create_db_engine
from cowrie_stats.ingest.reader import Ingester
from cowrie_stats.sample import SENSORS, START, write_sample
from cowrie_stats.servicer import DATA_LAG_HEADER
from cowrie_stats.settings import Settings
from testkit.pgcluster import PgCluster, StopMode

pytestmark = pytest.mark.postgres

LONG = os.environ.get("COWRIE_STATS_LONG_TESTS") == "1"
CHAOS_SECONDS = 240.0 if LONG else 15.0
CLIENTS = 32
DEADLINE_SECONDS = 5.0
DEADLINE_SLACK_SECONDS = 1.0  # scheduling on 2 busy cores, after the client's own deadline
UNIQUE_SHARE = 0.4  # of the calls; the rest repeat a dozen questions
# The goal is 99.5 %; the short run on 2 busy cores reliably stays above this.
MIN_AVAILABILITY = 0.98
FAILURE_CODES = {"UNAVAILABLE", "DEADLINE_EXCEEDED"}
STOP_MODES: tuple[StopMode, ...] = ("fast", "immediate", "kill")
SEED_VARIABLE = "COWRIE_STATS_CHAOS_SEED"


# -- comparing answers --------------------------------------------------------------------


def same_answer(got: Any, expected: Any, path: str = "") -> str | None:
    """Where two responses differ, or None when equal (every bit: doubles are computed
    from exact integer sums, the same whatever the ingest order or backend)."""
    if isinstance(expected, Message):
        for descriptor in expected.DESCRIPTOR.fields:
            name = descriptor.name
            difference = same_answer(getattr(got, name), getattr(expected, name), f"{path}.{name}")
            if difference:
                return difference
        return None
    if hasattr(expected, "items"):  # a map field
        if dict(got).keys() != dict(expected).keys():
            return f"{path}: keys {sorted(got)} != {sorted(expected)}"
        return next(
            (d for k in expected if (d := same_answer(got[k], expected[k], f"{path}[{k}]"))), None
        )
    if not isinstance(expected, str | bytes) and hasattr(expected, "__len__"):
        if len(got) != len(expected):
            return f"{path}: {len(got)} items != {len(expected)}"
        pairs = zip(got, expected, strict=True)
        return next(
            (d for i, (a, b) in enumerate(pairs) if (d := same_answer(a, b, f"{path}[{i}]"))), None
        )
    return None if got == expected else f"{path}: {got!r} != {expected!r}"


# -- the questions -------------------------------------------------------------------------


def time_range(start_s: int, end_s: int) -> stats_pb2.TimeRange:
    return stats_pb2.TimeRange(
        start_time=Timestamp(seconds=start_s), end_time=Timestamp(seconds=end_s)
    )


DATA_START = int(START.timestamp())
DAY = int(timedelta(days=1).total_seconds())


def repeated_questions() -> list[Message]:
    everything = stats_pb2.TimeRange()
    first_day = time_range(DATA_START, DATA_START + DAY)
    afternoon = time_range(DATA_START + DAY // 2, DATA_START + DAY // 2 + 4 * 3600)
    questions: list[Message] = []
    for window in (everything, first_day, afternoon):
        questions += [
            stats_pb2.GetSessionStatsRequest(time_range=window, bucket=stats_pb2.BUCKET_HOUR),
            stats_pb2.GetThreatStatsRequest(time_range=window, top_n=10),
            stats_pb2.GetSensorStatsRequest(time_range=window),
            stats_pb2.GetSessionStatsRequest(time_range=window, sensors=[SENSORS[0]]),
        ]
    return questions


class Questions:
    """Repeated questions and never-asked ones (a window no call used before)."""

    def __init__(self, seed: int) -> None:
        self.repeated = repeated_questions()
        self._rng = random.Random(seed)
        self._used: set[tuple[int, int, int]] = set()
        self._lock = threading.Lock()

    def next(self, rng: random.Random) -> Message:
        if rng.random() >= UNIQUE_SHARE:
            return rng.choice(self.repeated)
        with self._lock:
            while True:
                kind = self._rng.randrange(3)
                start = DATA_START - 7200 + self._rng.randrange(2 * DAY + 7200)
                end = start + 600 + self._rng.randrange(DAY)
                if (kind, start, end) not in self._used:
                    self._used.add((kind, start, end))
                    break
        window = time_range(start, end)
        sensors = [SENSORS[start % len(SENSORS)]] if end % 3 == 0 else []
        if kind == 0:
            bucket = (stats_pb2.BUCKET_UNSPECIFIED, stats_pb2.BUCKET_HOUR, stats_pb2.BUCKET_DAY)
            return stats_pb2.GetSessionStatsRequest(
                time_range=window, sensors=sensors, bucket=bucket[end % 3]
            )
        if kind == 1:
            return stats_pb2.GetThreatStatsRequest(
                time_range=window, sensors=sensors, top_n=5 + end % 20
            )
        return stats_pb2.GetSensorStatsRequest(time_range=window, sensors=sensors)


def question_key(request: Message) -> bytes:
    return type(request).__name__.encode() + request.SerializeToString(deterministic=True)


def ask(stub: stats_pb2_grpc.CowrieStatsServiceStub, request: Message, timeout: float) -> Any:
    """(reply, call) of the RPC that takes ``request``."""
    method: Any = {
        "GetSessionStatsRequest": stub.GetSessionStats,
        "GetThreatStatsRequest": stub.GetThreatStats,
        "GetSensorStatsRequest": stub.GetSensorStats,
    }[type(request).__name__]
    return method.with_call(request, timeout=timeout)


# -- the clients ---------------------------------------------------------------------------


@dataclass
class Call:
    started: float
    ended: float
    request: Message
    code: str
    reply: Message | None = None
    lag: str | None = None
    details: str = ""


def run_clients(address: str, questions: Questions, seed: int, stop: threading.Event) -> list[Call]:
    calls: list[Call] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        with grpc.insecure_channel(address) as channel:
            stub = stats_pb2_grpc.CowrieStatsServiceStub(channel)
            while not stop.is_set():
                request = questions.next(rng)
                call = Call(time.monotonic(), 0.0, request, "OK")
                try:
                    call.reply, rpc = ask(stub, request, DEADLINE_SECONDS)
                    call.lag = dict(rpc.initial_metadata()).get(DATA_LAG_HEADER)
                except grpc.RpcError as error:
                    call.code, call.details = error.code().name, error.details() or ""
                call.ended = time.monotonic()
                with lock:
                    calls.append(call)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    stop.wait()
    for thread in threads:
        thread.join(timeout=DEADLINE_SECONDS + 10)
    assert not any(t.is_alive() for t in threads), "a client hangs"
    return calls


# -- the faults ----------------------------------------------------------------------------


@dataclass
class Timeline:
    """When each server was down (from the moment it was told to stop until it was up)."""

    down_since: dict[str, float | None] = field(
        default_factory=lambda: {"primary": None, "replica": None}
    )
    outages: dict[str, list[tuple[float, float]]] = field(
        default_factory=lambda: {"primary": [], "replica": []}
    )

    def stopping(self, node: str) -> None:
        if self.down_since[node] is None:
            self.down_since[node] = time.monotonic()

    def started(self, node: str) -> None:
        since = self.down_since[node]
        if since is not None:
            self.outages[node].append((since, time.monotonic()))
            self.down_since[node] = None

    def all_down_during(self, start: float, end: float) -> bool:
        """Were both servers down at one moment of [start, end]?"""
        now = time.monotonic()
        spans = {
            node: [*self.outages[node], *([(since, now)] if since is not None else [])]
            for node, since in self.down_since.items()
        }
        return any(
            max(a0, b0, start) <= min(a1, b1, end)
            for a0, a1 in spans["primary"]
            for b0, b1 in spans["replica"]
        )


class Chaos:
    """The seeded schedule of faults; every action leaves both servers up."""

    def __init__(self, cluster: PgCluster, rng: random.Random, timeline: Timeline) -> None:
        self.cluster = cluster
        self.rng = rng
        self.timeline = timeline
        self.done: Counter[str] = Counter()
        self.actions: list[Callable[[], str]] = [
            self.primary_down,
            self.replica_down,
            self.both_down,
            self.replay_paused,
            self.lagging_replica_alone,
            self.replica_restart_on_a_busy_primary,
        ]

    def run(self, seconds: float) -> None:
        ends = time.monotonic() + seconds
        while time.monotonic() < ends:
            time.sleep(self.rng.uniform(0.2, 1.0))
            self.done[self.rng.choice(self.actions)()] += 1

    def _outage(self) -> float:
        return self.rng.uniform(0.3, 2.0)

    def _mode(self) -> StopMode:
        return self.rng.choice(STOP_MODES)

    def stop(self, node: str, mode: StopMode) -> None:
        self.timeline.stopping(node)
        if node == "primary":
            self.cluster.stop_primary(mode)
        else:
            self.cluster.stop_replica(mode=mode)

    def start(self, node: str) -> None:
        if node == "primary":
            self.cluster.start_primary()
        else:
            self.cluster.start_replica(wait_streaming=False)
        self.timeline.started(node)

    def primary_down(self) -> str:
        return self._down("primary")

    def replica_down(self) -> str:
        return self._down("replica")

    def _down(self, node: str) -> str:
        mode = self._mode()
        self.stop(node, mode)
        time.sleep(self._outage())
        self.start(node)
        return f"{node} {mode}"

    def both_down(self) -> str:
        nodes = ["primary", "replica"]
        self.rng.shuffle(nodes)
        for node in nodes:
            self.stop(node, self._mode())
        time.sleep(self._outage())
        self.rng.shuffle(nodes)
        for node in nodes:
            self.start(node)
        return "both"

    def _commit_while_paused(self, seconds: float) -> None:
        """Pause replay, and let the primary commit (outside the statistics) meanwhile."""
        self.cluster.pause_replay()
        ends = time.monotonic() + seconds
        while time.monotonic() < ends:
            self.cluster.psql("INSERT INTO chaos_ticks VALUES (now())", database="postgres")
            time.sleep(0.2)

    def replay_paused(self) -> str:
        self._commit_while_paused(self._outage())
        self.cluster.resume_replay()
        return "replay paused"

    def lagging_replica_alone(self) -> str:
        self._commit_while_paused(1.5)  # beyond the server's lag limit of 1 s
        self.stop("primary", self._mode())
        time.sleep(self._outage())
        self.start("primary")
        self.cluster.resume_replay()
        return "replay paused, primary down"

    def replica_restart_on_a_busy_primary(self) -> str:
        with busy(self.cluster, seconds=3.0):
            time.sleep(0.5)
            return self._down("replica") + " on a busy primary"

    def heal(self) -> None:
        for node in ("primary", "replica"):
            if not self.cluster.is_running(node):
                self.start(node)
        if self.cluster.replay_paused():
            self.cluster.resume_replay()
        self.cluster.wait_streaming(timeout=30)


@contextmanager
def busy(cluster: PgCluster, seconds: float) -> Iterator[None]:
    """Two sessions keep the primary's CPUs busy for ``seconds``."""

    def burn() -> None:
        try:
            with cluster.connect("primary", database="postgres") as conn:
                conn.execute(f"SET statement_timeout = '{int(seconds * 1000)}ms'")
                conn.execute("SELECT count(*) FROM generate_series(1, 1000000000)")
        except (psycopg.Error, OSError, RuntimeError):
            pass  # cancelled at the timeout, as intended

    burners = [threading.Thread(target=burn, daemon=True) for _ in range(2)]
    for burner in burners:
        burner.start()
    try:
        yield
    finally:
        for burner in burners:
            burner.join(timeout=seconds + 10)


# -- the test ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgCluster]:
    with private_cluster() as running:
        sample = tmp_path_factory.mktemp("chaos") / "cowrie.json"
        write_sample(sample)
        engine = create_db_engine(running.primary_url, Settings(), writer=True)
        Ingester(engine).ingest([str(sample)])
        engine.dispose()
        running.psql("CREATE TABLE chaos_ticks (at timestamptz)", database="postgres")
        running.wait_replica_caught_up()
        yield running


@pytest.fixture
def quiet_copy(sqlite_db: Database, tmp_path: Path, start_server: StartServer) -> Any:
    """The same data in SQLite, behind a server nobody disturbs: the expected answers."""
    sample = tmp_path / "cowrie.json"
    write_sample(sample)
    sqlite_db.ingest([sample])
    return start_server(sqlite_db.settings(result_cache_entries=0)).stub


def chaos_seed() -> int:
    configured = os.environ.get(SEED_VARIABLE)
    return int(configured) if configured else random.SystemRandom().randrange(1_000_000)


@pytest.mark.timeout(3 * CHAOS_SECONDS + 240)
def test_every_call_is_exact_or_unavailable_under_chaos(
    cluster: PgCluster, start_server: StartServer, quiet_copy: Any
) -> None:
    seed = chaos_seed()
    print(f"\nchaos seed {seed} ({SEED_VARIABLE}={seed} replays this schedule)")
    running = start_server(pair_settings(cluster, max_replica_lag=1.0))
    timeline = Timeline()
    chaos = Chaos(cluster, random.Random(seed), timeline)
    stop = threading.Event()
    calls: list[Call] = []
    clients = threading.Thread(
        target=lambda: calls.extend(run_clients(running.address, Questions(seed), seed, stop)),
        daemon=True,
    )
    clients.start()
    try:
        chaos.run(CHAOS_SECONDS)
        chaos.heal()
    finally:
        stop.set()
        clients.join(timeout=DEADLINE_SECONDS + 30)
    report(seed, chaos, calls, timeline)
    check_calls(seed, calls, quiet_copy)


def report(seed: int, chaos: Chaos, calls: list[Call], timeline: Timeline) -> None:
    counted = [c for c in calls if not timeline.all_down_during(c.started, c.ended)]
    answered = sum(c.code == "OK" for c in counted)
    availability = answered / max(len(counted), 1)
    latencies = sorted((c.ended - c.started) * 1000 for c in calls) or [0.0]
    print(
        f"chaos seed {seed}, {CHAOS_SECONDS:.0f}s, faults {dict(chaos.done)}\n"
        f"{len(calls)} calls, codes {dict(Counter(c.code for c in calls))}, "
        f"{sum(c.lag is not None for c in calls)} answered with a lag header; "
        f"p50 {statistics.median(latencies):.1f} ms, "
        f"max {latencies[-1]:.0f} ms\n"
        f"availability {answered}/{len(counted)} = {availability:.4%} of the calls made while "
        f"a server was up (goal 99.5 %, asserted >= {MIN_AVAILABILITY:.1%})"
    )
    for call in [c for c in counted if c.code != "OK"][:5]:
        print(f"  failed while a server was up: {call.code} {call.details!r} at {call.started:.2f}")
    assert len(calls) > 5 * CHAOS_SECONDS, f"too few calls (seed {seed})"
    assert availability >= MIN_AVAILABILITY, f"availability {availability:.4%} (seed {seed})"


def check_calls(seed: int, calls: list[Call], quiet_copy: Any) -> None:
    """Every call ended within its deadline, as an exact answer or a retryable failure."""
    limit = DEADLINE_SECONDS + DEADLINE_SLACK_SECONDS
    late = [c for c in calls if c.ended - c.started > limit]
    assert not late, f"{len(late)} calls took longer than {limit}s (seed {seed})"
    codes = Counter(c.code for c in calls)
    assert set(codes) <= {"OK", *FAILURE_CODES}, f"codes {dict(codes)} (seed {seed})"
    answered = [c for c in calls if c.reply is not None]
    questions = {question_key(c.request): c.request for c in answered}
    with ThreadPoolExecutor(4) as pool:
        replies = pool.map(lambda question: ask(quiet_copy, question, 30)[0], questions.values())
        expected = dict(zip(questions, replies, strict=True))
    wrong = []
    for call in answered:
        difference = same_answer(call.reply, expected[question_key(call.request)])
        if difference:
            wrong.append(f"{type(call.request).__name__} {call.request}: {difference}")
        if call.lag is not None:
            assert call.lag == "unknown" or float(call.lag) > 1.0, call.lag
    print(f"{len(expected)} distinct questions checked against the quiet copy")
    assert not wrong, f"{len(wrong)} wrong answers (seed {seed}), first: {wrong[:3]}"
