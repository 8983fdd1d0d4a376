"""A bounded, loopback-only load loop for reliability tests: N client threads for T seconds."""

from __future__ import annotations

import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from cowrie_stats._gen.cowrie.stats.v1 import stats_pb2, stats_pb2_grpc

CALLS: list[Callable[[stats_pb2_grpc.CowrieStatsServiceStub], object]] = [
    lambda stub: stub.GetSessionStats(
        stats_pb2.GetSessionStatsRequest(bucket=stats_pb2.BUCKET_HOUR), timeout=10
    ),
    lambda stub: stub.GetThreatStats(stats_pb2.GetThreatStatsRequest(top_n=20), timeout=10),
    lambda stub: stub.GetSensorStats(stats_pb2.GetSensorStatsRequest(), timeout=10),
]


@dataclass
class LoadResult:
    codes: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def calls(self) -> int:
        return sum(self.codes.values())

    def summary(self) -> str:
        ordered = sorted(self.latencies_ms) or [0.0]
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        return (
            f"{self.calls} calls in {self.seconds:.1f}s ({self.calls / self.seconds:.0f}/s), "
            f"p50 {statistics.median(ordered):.1f} ms, p99 {p99:.1f} ms, codes {dict(self.codes)}"
        )


def run_load(
    address: str, clients: int, seconds: float, stop: threading.Event | None = None
) -> LoadResult:
    """``clients`` threads, each with its own channel, calling the three RPCs in turn."""
    result = LoadResult()
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    stop = stop or threading.Event()

    def client(index: int) -> None:
        with grpc.insecure_channel(address) as channel:
            stub = stats_pb2_grpc.CowrieStatsServiceStub(channel)
            turn = index
            while time.monotonic() < deadline and not stop.is_set():
                started = time.perf_counter()
                try:
                    CALLS[turn % len(CALLS)](stub)
                    code = "OK"
                except grpc.RpcError as error:
                    code = error.code().name
                elapsed = (time.perf_counter() - started) * 1000
                turn += 1
                with lock:
                    result.codes[code] += 1
                    result.latencies_ms.append(elapsed)

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + 30)
    result.seconds = time.monotonic() - started
    return result


def rss_kib() -> int:
    """Current resident set size of this process, from /proc."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0
