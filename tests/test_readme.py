"""The README's first steps as a newcomer takes them: `make run`, then a second terminal.

`make run` runs for real, in an environment that names a configured database (and read
replicas) it must leave alone, on a port of its own given as COWRIE_STATS_GRPC_PORT. The
README's block of `cowrie-stats query` commands then runs verbatim in another process,
as in a second terminal, and so does its `buf curl` example when buf is installed. The
commands are read out of README.md, so the README cannot drift from what works.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_docs import REPO, fenced_blocks

from cowrie_stats.client import StatsClient, StatsError

README = REPO / "README.md"
BIN = REPO / ".venv" / "bin"
BUF = REPO / ".tools" / "node_modules" / ".bin" / "buf"
STARTUP_SECONDS = 180  # install is a no-op after `make test`'s own; generous for 2 busy cores


@dataclass(frozen=True)
class DemoRun:
    port: int
    log: Path
    configured: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def second_terminal(port: int) -> dict[str, str]:
    """A fresh shell's environment: no COWRIE_STATS_* but the demo's port, no make state."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("COWRIE_STATS_") and k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")
    }
    env["COWRIE_STATS_GRPC_PORT"] = str(port)
    env["COWRIE_STATS_ENV_FILE"] = "/dev/null"  # a developer's own .env stays out of it
    return env


def _wait_serving(port: int, make: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    with StatsClient(f"localhost:{port}", timeout=2) as client:
        while time.monotonic() < deadline:
            if make.poll() is not None:
                pytest.fail(f"make run exited {make.returncode}:\n{log.read_text()}")
            try:
                if client.check_health() == "SERVING":
                    return
            except StatsError:
                pass
            time.sleep(0.5)
    pytest.fail(f"make run did not serve within {STARTUP_SECONDS} s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoRun]:
    if shutil.which("make") is None or not (BIN / "cowrie-stats").is_file():
        pytest.skip("needs make and the repository's .venv (make install)")
    directory = tmp_path_factory.mktemp("make-run")
    port = _free_port()
    configured = directory / "configured.db"
    env = second_terminal(port)
    del env["COWRIE_STATS_ENV_FILE"]
    env["COWRIE_STATS_DATABASE_URL"] = f"sqlite:///{configured}"
    env["COWRIE_STATS_REPLICA_URLS"] = "postgresql://replica/cowrie_stats"  # refused if read
    log = directory / "make-run.log"
    with log.open("wb") as out:
        make = subprocess.Popen(
            ["make", "--no-print-directory", "run"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: make and the server stop together
        )
    try:
        _wait_serving(port, make, log)
        yield DemoRun(port, log, configured)
    finally:
        os.killpg(make.pid, signal.SIGTERM)
        try:
            make.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(make.pid, signal.SIGKILL)
            make.wait()


def calling_block() -> str:
    blocks = [
        b.text
        for b in fenced_blocks(README)
        if b.language == "sh" and "cowrie-stats query" in b.text
    ]
    assert len(blocks) == 1, "README.md has one shell block of `cowrie-stats query` commands"
    return blocks[0]


def bash(script: str, port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=REPO,
        env=second_terminal(port),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_make_run_serves_the_demo_from_its_own_database(demo: DemoRun) -> None:
    log = demo.log.read_text()
    assert f"using database database=sqlite:///{REPO}/var/demo.db" in log
    assert f"port={demo.port}" in log
    assert not demo.configured.exists(), "make run wrote into the configured database"
    assert "Traceback" not in log and "WARNING" not in log


def test_readme_query_commands_run_verbatim(demo: DemoRun) -> None:
    block = calling_block()
    assert block.startswith("source .venv/bin/activate\n")
    result = bash(block, demo.port)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    out = result.stdout
    assert re.search(r"^total_sessions\s+240$", out, re.M)
    assert re.search(r"^2026-11-20T23:00:00Z\s+\d+", out, re.M)  # the hourly series
    assert "top_source_ips (distinct: 5)" in out
    assert re.search(r"^sensor-eu-1\s.*\sno$", out, re.M)  # --stale-after 30d
    assert out.rstrip().endswith("SERVING")
    sensor_json = out[out.index("{") : out.rindex("}") + 1]
    assert json.loads(sensor_json)["sensors"][0]["sensor"] == "sensor-eu-1"


def test_each_readme_query_line_stands_alone(demo: DemoRun) -> None:
    lines = [line for line in calling_block().splitlines() if line.startswith("cowrie-stats ")]
    assert len(lines) >= 5
    for line in lines:
        result = bash(f". .venv/bin/activate\n{line}", demo.port)
        assert result.returncode == 0, f"{line}: {result.stderr}"
        assert result.stdout.strip(), line


def test_readme_buf_curl_example(demo: DemoRun) -> None:
    if not BUF.is_file():
        if os.environ.get("COWRIE_STATS_REQUIRE_TOOLS") == "1":
            pytest.fail("buf is not installed (make buf)")
        pytest.skip("buf is not installed (make buf)")
    start = ".tools/node_modules/.bin/buf curl"
    block = next(b.text for b in fenced_blocks(README) if b.language == "sh" and start in b.text)
    command = block[block.index(start) :].strip()  # the last command of the block
    result = bash(command.replace("localhost:50051", f"localhost:{demo.port}"), demo.port)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["sensors"][0]["sensor"] == "sensor-eu-1"
