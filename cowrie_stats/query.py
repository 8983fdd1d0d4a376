"""``cowrie-stats query``: ask a running server over gRPC and print tables or JSON.

It is a client of the public API (:class:`cowrie_stats.client.StatsClient`) and never
opens the database, so it works from any machine that can reach the server. Each
statistics RPC is one :class:`View`: its options, its call, and one renderer that turns
the response into :mod:`cowrie_stats.tables`. A new RPC is one more entry in
:data:`VIEWS`.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TextIO

from google.protobuf import json_format
from google.protobuf.message import Message

from cowrie_stats import api, tables, usage
from cowrie_stats.client import (
    BUCKETS,
    AccessDeniedError,
    ClientSettings,
    DeadlineExceededError,
    InvalidRequestError,
    NotFoundError,
    ResponseTooLargeError,
    ServerUnreachableError,
    ServiceUnavailableError,
    StatsClient,
    StatsError,
    read_api_key,
    text_value,
    window_bounds,
)
from cowrie_stats.tables import Table

if TYPE_CHECKING:
    from cowrie_stats.usage import Subcommands

# Exit statuses of `query` (and of `healthcheck` for the same failures); docs/api.md.
EXIT_OK = 0
EXIT_FAILED = 1  # the server failed the call (INTERNAL, UNIMPLEMENTED, ...)
EXIT_USAGE = 2  # bad option or configuration; nothing was sent
EXIT_UNREACHABLE = 3  # no server answered (refused, DNS, TLS handshake, draining)
EXIT_ACCESS_DENIED = 4  # UNAUTHENTICATED / PERMISSION_DENIED: key or certificate
EXIT_BAD_REQUEST = 5  # INVALID_ARGUMENT / NOT_FOUND / answer too large: fix the request
EXIT_TRY_LATER = 6  # UNAVAILABLE / RESOURCE_EXHAUSTED / DEADLINE_EXCEEDED: retry later
EXIT_STATUS: dict[type[StatsError], int] = {
    ServerUnreachableError: EXIT_UNREACHABLE,
    AccessDeniedError: EXIT_ACCESS_DENIED,
    InvalidRequestError: EXIT_BAD_REQUEST,
    NotFoundError: EXIT_BAD_REQUEST,
    ResponseTooLargeError: EXIT_BAD_REQUEST,
    ServiceUnavailableError: EXIT_TRY_LATER,
    DeadlineExceededError: EXIT_TRY_LATER,
}
HINTS: dict[type[StatsError], str] = {
    ServerUnreachableError: "check the address, and that TLS is on at both ends or at neither",
    AccessDeniedError: "send a key with --api-key-file or COWRIE_STATS_API_KEY(_FILE)",
    ResponseTooLargeError: "ask for fewer entries (--top), fewer sensors or a shorter window",
}
EXIT_HELP = (
    "exit status: 0 answered, 1 the server failed the call, 2 usage or configuration error,\n"
    "  3 cannot connect, 4 access denied (API key, certificate), 5 bad request, unknown\n"
    "  sensor or too large an answer (do not retry), 6 unavailable, overloaded or deadline\n"
    "  exceeded (retry later)"
)
HEALTH_EXIT_HELP = (
    "exit status: 0 SERVING, 1 NOT_SERVING or SERVICE_UNKNOWN (or the check failed),\n"
    "  2 usage or configuration error, 3 cannot connect, 4 access denied (send a key),\n"
    "  6 unavailable or deadline exceeded"
)
DURATION = re.compile(r"(?P<count>[0-9]+)(?P<unit>[smhd])")
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def exit_status(error: StatsError) -> int:
    return EXIT_STATUS.get(type(error), EXIT_FAILED)


def error_line(error: StatsError, target: str) -> str:
    """One escaped line: the status, its decoded details, and a hint where one helps."""
    hint = HINTS.get(type(error))
    where = f"{target}: " if isinstance(error, ServerUnreachableError) else ""
    return tables.escape(f"{where}{error}" + (f" ({hint})" if hint else ""))


# -- option values -------------------------------------------------------------------------


def duration(value: str) -> timedelta:
    """``90s``, ``15m``, ``24h``, ``7d`` as a timedelta (argparse type)."""
    match = DURATION.fullmatch(value.strip())
    if match is None or int(match["count"]) == 0:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a positive N[s|m|h|d], e.g. 24h")
    return timedelta(**{UNITS[match["unit"]]: int(match["count"])})


def instant(value: str) -> datetime:
    """An ISO 8601 time or date (argparse type); no offset means UTC."""
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r}: expected an ISO 8601 time, e.g. 2026-11-20T06:00:00Z or 2026-11-20"
        ) from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


# -- views: one per RPC --------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """What every view asks with: the resolved window and the sensor filter."""

    start: datetime | None
    end: datetime | None
    sensors: tuple[str, ...]
    read_from_primary: bool


@dataclass(frozen=True)
class View:
    name: str
    help: str
    example: str
    add_options: Callable[[argparse.ArgumentParser], None]
    call: Callable[[StatsClient, Request, argparse.Namespace], Message]
    render: Callable[[Any, int], Iterable[Table]]


def _window_kwargs(request: Request) -> dict[str, Any]:
    return {
        "start": request.start,
        "end": request.end,
        "sensors": request.sensors,
        "read_from_primary": request.read_from_primary,
    }


def _session_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bucket", choices=sorted(BUCKETS), help="add a time series of UTC hours or days"
    )


def _render_sessions(reply: api.GetSessionStatsResponse, max_width: int) -> Iterable[Table]:
    totals = Table("", ("figure", "value"), frozenset({"value"}), header=False)
    for descriptor in reply.DESCRIPTOR.fields:  # every number, zeros included, in order
        value = getattr(reply, descriptor.name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            totals.add(descriptor.name, _number(value))
    yield totals
    protocols = Table("sessions_by_protocol", ("protocol", "sessions"), frozenset({"sessions"}))
    for protocol, count in sorted(reply.sessions_by_protocol.items()):
        protocols.add(tables.text(protocol, max_width), tables.integer(count))
    yield protocols
    if reply.buckets:
        columns = (
            "start_time",
            "sessions",
            "unique_source_ips",
            "login_attempts",
            "total_commands",
        )
        series = Table("buckets", columns, frozenset(columns[1:]))
        for bucket in reply.buckets:
            series.add(
                tables.timestamp(bucket.start_time),
                *(tables.integer(getattr(bucket, name)) for name in columns[1:]),
            )
        yield series


def _number(value: int | float) -> str:
    return tables.decimal(value) if isinstance(value, float) else tables.integer(value)


def _attacker_text(message: Message, name: str, max_width: int) -> str:
    """A text cell of a value attackers wrote; one the server cut ends in ``…`` and says
    how long it is whole: ``echo AAAA… (1,048,576 chars)``."""
    value = text_value(message, name)
    if not value.truncated:
        return tables.text(value.text, max_width)
    escaped = tables.escape(value.text)
    shown = tables.clip(escaped, max_width)
    if shown == escaped:  # not cut here: mark the server's cut
        shown += tables.ELLIPSIS
    return f"{shown} ({tables.integer(value.length)} chars)"


def _threat_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--top", type=int, metavar="N", help="entries per ranking, 1..1000 (default 10)"
    )


def _render_threats(reply: api.GetThreatStatsResponse, max_width: int) -> Iterable[Table]:
    ranked = ("value", "count", "sessions", "first_seen", "last_seen")
    for name, unique in (
        ("top_source_ips", reply.unique_source_ips),
        ("top_usernames", reply.unique_usernames),
        ("top_passwords", reply.unique_passwords),
        ("top_commands", None),
    ):
        title = name + (f" (distinct: {tables.integer(unique)})" if unique is not None else "")
        table = Table(title, ranked, frozenset({"count", "sessions"}))
        for entry in getattr(reply, name):
            table.add(
                _attacker_text(entry, "value", max_width),
                tables.integer(entry.count),
                tables.integer(entry.sessions),
                tables.timestamp(entry.first_seen, entry.HasField("first_seen")),
                tables.timestamp(entry.last_seen, entry.HasField("last_seen")),
            )
        yield table
    credentials = Table(
        "top_credentials",
        ("username", "password", "attempts", "successes"),
        frozenset({"attempts", "successes"}),
    )
    for credential in reply.top_credentials:
        credentials.add(
            _attacker_text(credential, "username", max_width),
            _attacker_text(credential, "password", max_width),
            tables.integer(credential.attempts),
            tables.integer(credential.successes),
        )
    yield credentials
    downloads = Table(
        f"top_downloads (distinct: {tables.integer(reply.unique_download_hashes)})",
        ("shasum", "url", "count", "sessions"),
        frozenset({"count", "sessions"}),
    )
    for download in reply.top_downloads:
        downloads.add(
            _attacker_text(download, "shasum", max_width),
            _attacker_text(download, "url", max_width),
            tables.integer(download.count),
            tables.integer(download.sessions),
        )
    yield downloads


def _sensor_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--stale-after",
        type=duration,
        metavar="DURATION",
        help="a sensor is stale when silent this long (default 1h)",
    )


def _render_sensors(reply: api.GetSensorStatsResponse, max_width: int) -> Iterable[Table]:
    counts = ("sessions", "unique_source_ips", "events", "login_successes", "file_downloads")
    table = Table(
        f"sensors ({tables.integer(reply.total_sensors)})",
        ("sensor", *counts, "first_seen", "last_seen", "stale"),
        frozenset(counts),
    )
    for sensor in reply.sensors:
        table.add(
            tables.text(sensor.sensor, max_width),
            *(tables.integer(getattr(sensor, name)) for name in counts),
            tables.timestamp(sensor.first_seen, sensor.HasField("first_seen")),
            tables.timestamp(sensor.last_seen, sensor.HasField("last_seen")),
            "yes" if sensor.stale else "no",
        )
    yield table


VIEWS = (
    View(
        "sessions",
        "GetSessionStats: sessions, logins, commands, downloads",
        "cowrie-stats query sessions --since 7d --bucket day",
        _session_options,
        lambda client, request, args: client.get_session_stats(
            bucket=args.bucket, **_window_kwargs(request)
        ),
        _render_sessions,
    ),
    View(
        "threats",
        "GetThreatStats: top source IPs, usernames, passwords, credentials, commands",
        "cowrie-stats query threats --since 24h --top 5 --sensor sensor-eu-1",
        _threat_options,
        lambda client, request, args: client.get_threat_stats(
            top_n=args.top, **_window_kwargs(request)
        ),
        _render_threats,
    ),
    View(
        "sensors",
        "GetSensorStats: per-sensor activity and staleness",
        "cowrie-stats query sensors --stale-after 2h --json",
        _sensor_options,
        lambda client, request, args: client.get_sensor_stats(
            stale_after=args.stale_after, **_window_kwargs(request)
        ),
        _render_sensors,
    ),
)


# -- the subcommand ------------------------------------------------------------------------


def _at(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def describe_window(start: datetime | None, end: datetime | None) -> str:
    if start and end:
        return f"[{_at(start)}, {_at(end)})"
    if start:
        return f"from {_at(start)}"
    return f"before {_at(end)}" if end else "all time"


def _heading(view: View, target: str, request: Request) -> str:
    window = describe_window(request.start, request.end)
    sensors = ", ".join(request.sensors) or "all"
    return tables.escape(f"{view.name} at {target}, window: {window}, sensors: {sensors}")


def write_tables(out: TextIO, heading: str, rendered: Iterable[Table]) -> None:
    out.write(heading + "\n")
    for table in rendered:
        out.write("\n" + table.render() + "\n")


def client_settings(args: argparse.Namespace, env: dict[str, str]) -> ClientSettings:
    """Environment settings with the command line's options on top."""
    settings = ClientSettings.from_env(env)
    tls = args.tls or args.tls_ca or args.tls_cert
    return replace(
        settings,
        target=args.target or settings.target,
        api_key=read_api_key(args.api_key_file) if args.api_key_file else settings.api_key,
        tls=settings.tls or bool(tls),
        ca_file=args.tls_ca or settings.ca_file,
        cert_file=args.tls_cert or settings.cert_file,
        key_file=args.tls_key or settings.key_file,
        server_name=args.tls_server_name or settings.server_name,
        timeout=args.timeout or settings.timeout,
    )


def run(args: argparse.Namespace, env: dict[str, str], out: TextIO | None = None) -> int:
    """Run ``query VIEW`` for parsed ``args``; returns the exit status."""
    out = out or sys.stdout
    view: View = args.view
    if args.since is not None and args.start is not None:
        print("cowrie-stats query: give --since or --from, not both", file=sys.stderr)
        return EXIT_USAGE
    start, end = window_bounds(since=args.since, start=args.start, end=args.end)
    request = Request(start, end, tuple(args.sensor or ()), args.read_from_primary)
    settings = client_settings(args, env)
    with StatsClient.from_settings(settings) as client:
        try:
            reply = view.call(client, request, args)
        except StatsError as error:
            print(f"cowrie-stats query: {error_line(error, settings.target)}", file=sys.stderr)
            return exit_status(error)
    if args.json:
        out.write(json_format.MessageToJson(reply, always_print_fields_with_no_presence=True))
        out.write("\n")
    else:
        heading = _heading(view, settings.target, request)
        write_tables(out, heading, view.render(reply, args.max_width))
    return EXIT_OK


def add_connection_options(
    parser: argparse._ActionsContainer, flags: Sequence[str] = ("--target",)
) -> None:
    """Target, API key and TLS options, shared by `query` and `healthcheck`."""
    parser.add_argument(
        *flags,
        dest="target",
        metavar="HOST:PORT",
        help="server (default $COWRIE_STATS_TARGET, else localhost:$COWRIE_STATS_GRPC_PORT)",
    )
    parser.add_argument("--api-key-file", metavar="FILE", help="file holding the API key to send")
    parser.add_argument("--tls", action="store_true", help="use TLS, trusting the system CAs")
    parser.add_argument("--tls-ca", metavar="FILE", help="use TLS, trusting this CA (PEM)")
    parser.add_argument("--tls-cert", metavar="FILE", help="client certificate (PEM) for mTLS")
    parser.add_argument("--tls-key", metavar="FILE", help="client private key (PEM) for mTLS")
    parser.add_argument(
        "--tls-server-name", metavar="NAME", help="name to verify in the server certificate"
    )


def _options() -> argparse.ArgumentParser:
    """The options every view takes: window, filters, output and connection."""
    common = argparse.ArgumentParser(add_help=False)
    window = common.add_argument_group("window (default: all time) and filters")
    window.add_argument(
        "--since", type=duration, metavar="DURATION", help="the last 90s, 15m, 24h, 7d ... to now"
    )
    window.add_argument(
        "--from",
        dest="start",
        type=instant,
        metavar="TIME",
        help="start, inclusive (ISO 8601; no offset means UTC)",
    )
    window.add_argument("--to", dest="end", type=instant, metavar="TIME", help="end, exclusive")
    window.add_argument(
        "--sensor", action="append", metavar="NAME", help="only this sensor (repeat for several)"
    )
    output = common.add_argument_group("output")
    output.add_argument(
        "--json", action="store_true", help="the response as protobuf JSON (every field), for jq"
    )
    output.add_argument(
        "--max-width",
        type=int,
        default=tables.DEFAULT_MAX_WIDTH,
        metavar="N",
        help=f"cut longer values with … (0: never; default {tables.DEFAULT_MAX_WIDTH})",
    )
    call = common.add_argument_group("connection")
    add_connection_options(call, flags=("--target",))
    call.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="deadline of the call (default 30)"
    )
    call.add_argument(
        "--read-from-primary",
        action="store_true",
        help="read from the primary, not a replica (just after an ingest)",
    )
    return common


def add_subcommand(sub: Subcommands, func: Callable[..., int]) -> None:
    """`query`, with one subcommand per view that runs ``func``."""
    ending = (usage.client_environment(), "cowrie-stats query threats --since 24h", EXIT_HELP)
    parent = usage.subcommand(
        sub,
        "query",
        "ask a running server (gRPC) and print tables or JSON",
        "Ask a running cowrie-stats server over gRPC (never the database).",
        ending,
    )
    views = parent.add_subparsers(dest="view_name", required=True, metavar="WHAT")
    common = _options()
    for view in VIEWS:
        ending = (usage.client_environment(), view.example, EXIT_HELP)
        command = usage.subcommand(views, view.name, view.help, view.help, ending, parents=[common])
        view.add_options(command)
        command.set_defaults(func=func, view=view)
