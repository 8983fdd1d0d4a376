"""Concurrent gRPC load generator, run in separate processes from the server and the bench.

A *plan* is a list of scenarios, each a list of calls (method + request as protobuf JSON; a
call with ``slide_us`` moves its time range that much later on every call, so that no two
calls ask the same question).
:func:`run_load` starts ``processes`` worker processes (``python -m bench.loadgen``) that share
``clients`` closed-loop clients between them: each client is a thread with its own channel
(its own TCP connection, loopback only) that calls as fast as answers come back, cycling
through the scenario's calls. Every worker connects and warms up first; then, scenario by
scenario, all workers start at the same wall-clock instant, stop issuing calls ``duration``
seconds later and report once their last call has returned, so a slow scenario never
overlaps the next one. Latency is measured per call around the blocking stub call; calls that
fail are counted by status code; calls/s divides by the time until the last answer.

Worker protocol: the worker prints ``READY`` once its clients are connected, then for each
line ``K START_AT`` read from stdin runs scenario K from START_AT (epoch seconds) and prints
one JSON line ``{"latencies_us": [...], "errors": {CODE: n}, "finished_at": epoch}``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import grpc

REPO = Path(__file__).resolve().parent.parent
STATS_SERVICE = "/cowrie.stats.v1.CowrieStatsService/"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
LOOPBACK_PREFIXES = ("127.", "localhost:", "[::1]:")
CALL_TIMEOUT_SECONDS = 30.0
WARMUP_CALLS = 3


@dataclass
class ScenarioResult:
    """Merged result of one scenario over every worker."""

    latencies_us: list[int] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0  # from the common start to the last answer


@dataclass
class LoadResult:
    scenarios: dict[str, ScenarioResult]
    duration: float
    clients: int
    processes: int
    worker_cpu_seconds: float


@dataclass(frozen=True)
class Rpc:
    """One method a plan can call: ``Check`` (the health check) or a stats RPC's name."""

    path: str
    request_class: Any
    response_class: Any

    @classmethod
    def named(cls, name: str) -> Rpc:
        from grpc_health.v1 import health_pb2

        from cowrie_stats._gen.cowrie.stats.v1 import stats_pb2

        if name == "Check":
            return cls(HEALTH_CHECK, health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse)
        request = getattr(stats_pb2, f"{name}Request")
        response = getattr(stats_pb2, f"{name}Response")
        return cls(STATS_SERVICE + name, request, response)

    def stub(self, channel: grpc.Channel) -> Callable[..., Any]:
        """The blocking unary call of this method on ``channel``."""
        return channel.unary_unary(
            self.path,
            request_serializer=self.request_class.SerializeToString,
            response_deserializer=self.response_class.FromString,
        )

    def request(self, fields: dict[str, Any]) -> Any:
        """The request message of ``fields`` (protobuf JSON, as in a plan)."""
        from google.protobuf import json_format

        return json_format.ParseDict(fields, self.request_class())


def _slid(request: Any, shift_us: int) -> Any:
    """A copy of ``request`` with its time range moved ``shift_us`` later."""
    moved = type(request)()
    moved.CopyFrom(request)
    for name in ("start_time", "end_time"):
        if moved.time_range.HasField(name):
            stamp = getattr(moved.time_range, name)
            total = stamp.seconds * 1_000_000 + stamp.nanos // 1000 + shift_us
            stamp.seconds, stamp.nanos = total // 1_000_000, total % 1_000_000 * 1000
    return moved


def _check_loopback(target: str) -> None:
    if not target.startswith(LOOPBACK_PREFIXES):
        raise ValueError(f"the load generator only targets loopback addresses, not {target}")


# -- worker ---------------------------------------------------------------------------


class _Client:
    """One closed-loop client: a channel of its own and prepared callables."""

    def __init__(self, target: str, plan: dict[str, Any]) -> None:
        import grpc

        # A local subchannel pool gives every client its own connection.
        self.channel = grpc.insecure_channel(
            target, options=[("grpc.use_local_subchannel_pool", 1)]
        )
        self.calls: list[list[tuple[Callable[..., Any], Any, int]]] = []
        self.clients_total = int(plan.get("clients", 1))
        callables: dict[str, Callable[..., Any]] = {}
        for scenario in plan["scenarios"]:
            prepared = []
            for call in scenario["calls"]:
                rpc = Rpc.named(call["method"])
                if rpc.path not in callables:
                    callables[rpc.path] = rpc.stub(self.channel)
                request = rpc.request(call["request"])
                prepared.append((callables[rpc.path], request, int(call.get("slide_us", 0))))
            self.calls.append(prepared)

    def warm_up(self) -> None:
        for prepared in self.calls:
            for stub_call, request, slide_us in prepared[:WARMUP_CALLS]:
                if not slide_us:  # a sliding call is never asked twice, warm-up included
                    stub_call(request, timeout=CALL_TIMEOUT_SECONDS)

    def run(
        self, k: int, index: int, start_at: float, duration: float
    ) -> tuple[list[int], Counter[str]]:
        import grpc

        prepared = self.calls[k]
        end = start_at + duration
        delay = start_at - time.time()
        if delay > 0:
            time.sleep(delay)
        latencies: list[int] = []
        errors: Counter[str] = Counter()
        position = index % len(prepared)
        sent = 0
        while time.time() < end:
            stub_call, request, slide_us = prepared[position]
            position = (position + 1) % len(prepared)
            if slide_us:
                # Never asked before: every call of every client moves the window on.
                request = _slid(request, (sent * self.clients_total + index) * slide_us)
            sent += 1
            started = time.perf_counter()
            try:
                stub_call(request, timeout=CALL_TIMEOUT_SECONDS)
            except grpc.RpcError as error:
                errors[error.code().name] += 1
                continue
            latencies.append(int((time.perf_counter() - started) * 1_000_000))
        return latencies, errors

    def close(self) -> None:
        self.channel.close()


def worker(target: str, clients: int, plan: dict[str, Any], offset: int) -> None:
    """Run scenarios with ``clients`` threads as told on stdin; one JSON line per scenario."""
    _check_loopback(target)
    pool = [_Client(target, plan) for _ in range(clients)]
    for client in pool:
        client.warm_up()
    print("READY", flush=True)
    for line in sys.stdin:
        k_text, start_text = line.split()
        k, start_at = int(k_text), float(start_text)
        results: list[tuple[list[int], Counter[str]]] = [([], Counter()) for _ in pool]

        def run(
            i: int,
            k: int = k,
            start_at: float = start_at,
            results: list[tuple[list[int], Counter[str]]] = results,
        ) -> None:
            results[i] = pool[i].run(k, offset + i, start_at, plan["duration"])

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(pool))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        finished_at = time.time()
        latencies: list[int] = []
        errors: Counter[str] = Counter()
        for per_client in results:
            latencies.extend(per_client[0])
            errors.update(per_client[1])
        reply = {"latencies_us": latencies, "errors": dict(errors), "finished_at": finished_at}
        print(json.dumps(reply), flush=True)
    for client in pool:
        client.close()


# -- orchestration --------------------------------------------------------------------


def run_load(
    target: str,
    scenarios: Sequence[tuple[str, list[dict[str, Any]]]],
    *,
    duration: float,
    clients: int = 32,
    processes: int = 2,
    gap: float = 0.1,
) -> LoadResult:
    """Drive ``scenarios`` (name, calls) one after the other; returns merged latencies."""
    _check_loopback(target)
    processes = max(1, min(processes, clients))
    plan = {
        "duration": duration,
        "clients": clients,
        "scenarios": [{"name": name, "calls": calls} for name, calls in scenarios],
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(plan, handle)
        plan_path = handle.name
    shares = [
        clients // processes + (1 if i < clients % processes else 0) for i in range(processes)
    ]
    workers: list[subprocess.Popen[str]] = []
    try:
        offset = 0
        for share in shares:
            argv = [sys.executable, "-m", "bench.loadgen", "--target", target]
            argv += ["--clients", str(share), "--plan", plan_path, "--offset", str(offset)]
            offset += share
            workers.append(
                subprocess.Popen(
                    argv,
                    cwd=REPO,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                    env={**os.environ, "PYTHONPATH": str(REPO)},
                )
            )
        for proc in workers:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            if line != "READY":
                raise RuntimeError(f"load worker did not start (got {line!r})")
        merged = {name: ScenarioResult() for name, _ in scenarios}
        for k, (name, _) in enumerate(scenarios):
            start_at = time.time() + gap
            for proc in workers:
                assert proc.stdin is not None
                proc.stdin.write(f"{k} {start_at}\n")
                proc.stdin.flush()
            finished = start_at + duration
            for proc in workers:
                assert proc.stdout is not None
                data = json.loads(proc.stdout.readline())
                merged[name].latencies_us.extend(data["latencies_us"])
                merged[name].errors.update(data["errors"])
                finished = max(finished, data["finished_at"])
            merged[name].seconds = finished - start_at
        cpu = 0.0
        for proc in workers:
            assert proc.stdin is not None
            proc.stdin.close()
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            cpu += usage.ru_utime + usage.ru_stime
            if proc.returncode != 0:
                raise RuntimeError(f"load worker exited with {proc.returncode}")
        return LoadResult(merged, duration, clients, processes, cpu)
    finally:
        for proc in workers:
            if proc.returncode is None:
                proc.kill()
                proc.wait()
        Path(plan_path).unlink(missing_ok=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    parser.add_argument("--target", required=True, help="HOST:PORT on loopback")
    parser.add_argument("--clients", type=int, required=True, help="client threads")
    parser.add_argument("--plan", required=True, help="plan JSON written by run_load")
    parser.add_argument("--offset", type=int, default=0, help="index of the first client")
    args = parser.parse_args(argv)
    plan = json.loads(Path(args.plan).read_text())
    worker(args.target, args.clients, plan, args.offset)
    return 0


if __name__ == "__main__":
    sys.exit(main())
