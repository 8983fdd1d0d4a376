"""``cowrie-stats mcp``: its options, and running the server on stdio or streamable HTTP.

This module does not import the MCP SDK, so ``cowrie-stats --help`` and every other
subcommand work without the optional extra; :func:`run` says in one line which extra
to install when it is missing.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cowrie_stats import query, usage

if TYPE_CHECKING:
    from mcp.server import Server

    from cowrie_stats.usage import Subcommands

log = logging.getLogger("cowrie_stats.mcp")

DEFAULT_HTTP_HOST = "127.0.0.1"
MISSING_EXTRA = (
    "cowrie-stats mcp: the MCP SDK is not installed; install the extra: "
    "pip install 'cowrie-stats[mcp]'"
)
EXIT_HELP = (
    "exit status: 0 stopped (stdio: stdin closed; --http: SIGINT or SIGTERM),\n"
    "  1 cannot listen, 2 usage or configuration error (also: the mcp extra is missing)"
)
EXAMPLE = "cowrie-stats mcp --target stats.example.net:50051 --api-key-file ~/.cowrie-key"


def http_address(value: str) -> tuple[str, int]:
    """``PORT``, ``HOST:PORT`` or ``[IPv6]:PORT`` as (host, port) (argparse type)."""
    host, _, port = value.strip().rpartition(":")
    host = host.removeprefix("[").removesuffix("]") or DEFAULT_HTTP_HOST
    if not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"{value!r}: expected [HOST:]PORT, e.g. 127.0.0.1:8765")
    return host, int(port)


def add_subcommand(sub: Subcommands, func: Callable[..., int]) -> None:
    parser = usage.subcommand(
        sub,
        "mcp",
        "serve the statistics as MCP tools for AI assistants (stdio or HTTP)",
        "Serve the statistics RPCs as read-only Model Context Protocol tools, on stdio (an "
        "assistant starts this command) or on streamable HTTP. It asks a running server over "
        "gRPC, like `query`, and never the database. Needs the extra cowrie-stats[mcp]. "
        "See docs/mcp.md.",
        (usage.client_environment(), EXAMPLE, EXIT_HELP),
    )
    parser.add_argument(
        "--http",
        type=http_address,
        metavar="[HOST:]PORT",
        help=f"serve streamable HTTP at http://HOST:PORT/mcp instead of stdio "
        f"(HOST default {DEFAULT_HTTP_HOST})",
    )
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a --http HOST that is not loopback (the endpoint has no authentication)",
    )
    connection = parser.add_argument_group("connection to the gRPC server (as for query)")
    query.add_connection_options(connection)
    connection.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="deadline of each call (default 30)"
    )
    parser.set_defaults(func=func)


def _sdk_installed() -> bool:
    try:
        import mcp.server  # noqa: F401
    except ImportError:
        return False
    return True


def run(args: argparse.Namespace, env: dict[str, str]) -> int:
    """Serve until stdin closes (stdio) or SIGINT/SIGTERM (HTTP); the exit status."""
    if not _sdk_installed():
        print(MISSING_EXTRA, file=sys.stderr)
        return 2
    from cowrie_stats.client import StatsClient
    from cowrie_stats.mcp_server.server import build_server, is_loopback, serve_stdio

    if args.http and not (is_loopback(args.http[0]) or args.allow_remote):
        print(
            f"cowrie-stats mcp: --http {args.http[0]} is not a loopback address: anyone who "
            "reaches it reads the statistics with this server's credentials; add "
            "--allow-remote to serve it anyway",
            file=sys.stderr,
        )
        return 2
    settings = query.client_settings(args, env)
    with StatsClient.from_settings(settings) as client:
        server = build_server(client)
        log.info("MCP server asks the statistics server", extra={"target": settings.target})
        if args.http is None:
            serve_stdio(server)
            return 0
        return _serve_http(server, *args.http)


def _serve_http(server: Server[Any], host: str, port: int) -> int:
    import anyio

    from cowrie_stats.mcp_server.server import HttpEndpoint, is_loopback

    try:
        endpoint = HttpEndpoint(server, host, port)
    except OSError as error:
        print(
            f"cowrie-stats mcp: cannot listen on {host}:{port}: {error.strerror or error}",
            file=sys.stderr,
        )
        return 1
    # uvicorn handles SIGINT/SIGTERM while it serves, then raises the signal again for
    # the handler it found: this one, so that a stop is a clean exit, not a kill.
    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop_signal, lambda _signum, _frame: endpoint.stop())
    if not is_loopback(host):
        log.warning(
            "the MCP endpoint is not on loopback and has no authentication: anyone who "
            "reaches it reads the statistics with this server's credentials",
            extra={"url": endpoint.url},
        )
    anyio.run(endpoint.serve)
    return 0
