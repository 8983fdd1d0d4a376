"""The ``cowrie-stats`` command: serve, migrate, ingest, query, healthcheck, hash-key, sample,
prune, dead-letters."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from cowrie_stats import SERVICE_NAME, __version__, query, usage
from cowrie_stats.maintenance import commands as maintenance
from cowrie_stats.mcp_server import command as mcp_command
from cowrie_stats.settings import (
    Settings,
    SettingsError,
    database_location,
    load_env_file,
    load_settings,
    warn_if_exposed,
)

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from cowrie_stats.usage import Subcommands

log = logging.getLogger("cowrie_stats")

#: Subcommands that open the database: they say which one at start.
DATABASE_COMMANDS = frozenset({"serve", "migrate", "ingest", "prune", "dead-letters"})


def _environment() -> dict[str, str]:
    """os.environ plus the COWRIE_STATS_* lines of a private ``.env`` (the environment wins)."""
    env = dict(os.environ)
    env_file = Path(env.get("COWRIE_STATS_ENV_FILE", ".env"))
    if env_file.is_file():
        load_env_file(env_file, env)
    return env


def _settings() -> Settings:
    return load_settings(_environment())


def _configure_logging(settings: Settings) -> None:
    from cowrie_stats.logs import configure

    configure(settings.log_format, settings.log_level)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from cowrie_stats.server import serve

    warn_if_exposed(settings)  # a listener beyond loopback with neither API keys nor TLS
    return serve(settings)  # also serves metrics when COWRIE_STATS_METRICS_PORT is set


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from cowrie_stats.db.engines import create_db_engine
    from cowrie_stats.db.schema import current_revision, upgrade

    engine = create_db_engine(settings.database_url, settings, writer=True)
    try:
        upgrade(engine)
        log.info(
            "database migrated",
            extra={
                "database": database_location(settings.database_url),
                "revision": current_revision(engine),
            },
        )
    finally:
        engine.dispose()
    return 0


def cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    from cowrie_stats.ingest.report import database_failure

    try:
        return _ingest_passes(args, settings)
    except Exception as error:
        # The database's own words in one line (refused, read-only role, disk full...).
        message = database_failure(error, settings.database_url)
        if message is None:
            raise
        log.debug("ingest stopped by a database error", exc_info=True)
        print(message, file=sys.stderr)
        return 1


def _ingest_passes(args: argparse.Namespace, settings: Settings) -> int:
    """One pass, or one per ``--watch`` interval until SIGTERM; the last pass's exit status."""
    from cowrie_stats.db.engines import create_db_engine
    from cowrie_stats.db.schema import check_schema
    from cowrie_stats.ingest.options import NO_LOG_FILES
    from cowrie_stats.ingest.source import discover_sources

    empty = discover_sources(args.paths).empty  # a missing PATH raises: nothing is read
    if empty and not args.watch:
        print(f"cowrie-stats: no log files in {', '.join(empty)} {NO_LOG_FILES}", file=sys.stderr)
        return 1
    engine = create_db_engine(settings.database_url, settings, writer=True)
    stop = {"now": False}

    def _stop(_signum: int, _frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, _stop)
    exporter = None
    if args.watch and settings.metrics_port:
        from cowrie_stats.metrics import MetricsServer, register_ingest_counters

        # A watching ingest is long-lived: expose its counters like the server does.
        register_ingest_counters()
        exporter = MetricsServer(settings.metrics_host, settings.metrics_port)
    try:
        check_schema(engine)
        while True:
            status = _ingest_pass(args, settings, engine)
            if not args.watch or stop["now"]:
                return status
            deadline = time.monotonic() + args.watch
            while time.monotonic() < deadline and not stop["now"]:
                time.sleep(0.2)
            if stop["now"]:
                return status
    finally:
        if exporter is not None:
            exporter.stop()
        engine.dispose()


def _ingest_pass(args: argparse.Namespace, settings: Settings, engine: Engine) -> int:
    """Read every PATH once; prints the summary and the problems, returns the exit status."""
    from cowrie_stats.ingest.reader import Ingester
    from cowrie_stats.ingest.report import ProgressBar, print_problems, print_tables

    bar = ProgressBar(sys.stderr) if sys.stderr.isatty() and not args.json else None
    ingester = Ingester(
        engine,
        default_sensor=args.sensor,
        batch_lines=args.batch_lines,
        progress=bar,
        workers=settings.ingest_workers,
        max_line_bytes=settings.ingest_max_line_bytes,
    )
    try:
        summary = ingester.ingest(args.paths)
    finally:
        if bar is not None:
            bar.close()
    if sys.stdout.isatty() and not args.json:
        print_tables(summary, sys.stdout)
    else:
        print(summary.to_json(), flush=True)
    print_problems(summary, sys.stderr)
    if settings.retention_days:
        from cowrie_stats.maintenance.prune import apply_retention

        apply_retention(engine, settings.retention_days)
    return summary.exit_code


def cmd_query(args: argparse.Namespace, settings: Settings) -> int:
    sys.stdout.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    return query.run(args, _environment())


def cmd_mcp(args: argparse.Namespace, settings: Settings) -> int:
    return mcp_command.run(args, _environment())


def cmd_healthcheck(args: argparse.Namespace, settings: Settings) -> int:
    from cowrie_stats.client import (
        ClientSettings,
        NotFoundError,
        ServerUnreachableError,
        StatsClient,
        StatsError,
    )

    client_settings = query.client_settings(args, _environment())
    if args.probe and settings.probe_port:
        # The probe listener: plaintext, health only, no key (nothing to send it).
        client_settings = replace(
            ClientSettings(timeout=client_settings.timeout),
            target=f"localhost:{settings.probe_port}",
        )
    with StatsClient.from_settings(client_settings) as client:
        try:
            status = client.check_health(args.service, timeout=args.timeout)
        except NotFoundError:  # the server does not know the service name
            status = "SERVICE_UNKNOWN"
        except StatsError as error:
            what = "cannot connect" if isinstance(error, ServerUnreachableError) else "failed"
            line = query.error_line(error, client_settings.target)
            print(f"cowrie-stats healthcheck: {what}: {line}", file=sys.stderr)
            return query.exit_status(error)
    print(status)
    return 0 if status == "SERVING" else 1


def _write_new_file(path: str, text: str) -> None:
    """Create ``path`` readable by its owner only; never overwrite (a key may be in it)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)


def _append_line(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as out:
        out.write(line + "\n")


def _generate_key(args: argparse.Namespace) -> int:
    """A new random key: the key to one place, its keys-file line to another."""
    import secrets

    from cowrie_stats.auth import key_line

    if not (args.key_out or args.append_to or sys.stdout.isatty()):
        print(
            "cowrie-stats hash-key: --generate would print the key and its keys-file line "
            "together; give --append-to KEYS_FILE (the key alone goes to stdout) or "
            "--key-out FILE (the line alone goes to stdout)",
            file=sys.stderr,
        )
        return 2
    key = secrets.token_urlsafe(32)  # 256 random bits, 43 characters of [A-Za-z0-9_-]
    line = key_line(args.name, key)
    if args.key_out:
        _write_new_file(args.key_out, key + "\n")
    if args.append_to:
        _append_line(args.append_to, line)
    if not (args.key_out or args.append_to):  # a terminal: both, labelled, once
        print(f"key (shown once; give it to the client): {key}\nkeys-file line: {line}")
    elif not args.key_out:
        print(key)
    elif not args.append_to:
        print(line)
    done = [f"key written to {args.key_out}"] if args.key_out else []
    done += [f"line {args.name}:... appended to {args.append_to}"] if args.append_to else []
    if done:
        print(f"cowrie-stats hash-key: {'; '.join(done)}", file=sys.stderr)
    return 0


def cmd_hash_key(args: argparse.Namespace, settings: Settings) -> int:
    from cowrie_stats.auth import key_line

    try:
        if args.generate:
            return _generate_key(args)
        line = key_line(args.name, sys.stdin.readline())
    except ValueError as error:
        hint = "" if args.generate else " (the key is read from stdin)"
        print(f"error: {error}{hint}", file=sys.stderr)
        return 2
    print(line)
    return 0


def cmd_sample(args: argparse.Namespace, settings: Settings) -> int:
    from cowrie_stats.sample import write_sample

    count = write_sample(Path(args.output), seed=args.seed)
    print(json.dumps({"output": args.output, "events": count}))
    return 0


# -- the parser: every subcommand's help names its options, variables and an example -------


def _add_serve(sub: Subcommands) -> None:
    serve = usage.subcommand(
        sub,
        "serve",
        "serve the gRPC API until SIGTERM/SIGINT",
        "Serve the gRPC API (statistics, health, reflection) until SIGTERM or SIGINT, then "
        "drain. The database must be migrated.",
        (usage.SERVE_ENV, "COWRIE_STATS_GRPC_PORT=50061 cowrie-stats serve"),
    )
    serve.set_defaults(func=cmd_serve)


def _add_migrate(sub: Subcommands) -> None:
    migrate = usage.subcommand(
        sub,
        "migrate",
        "upgrade the database schema (alembic upgrade head)",
        "Bring the database schema to this version (alembic upgrade head). Run it with the "
        "owner role, before new servers start.",
        (usage.DATABASE_ENV, "COWRIE_STATS_DATABASE_URL=sqlite:///var/s.db cowrie-stats migrate"),
    )
    migrate.set_defaults(func=cmd_migrate)


def _add_healthcheck(sub: Subcommands) -> None:
    port = (
        "  COWRIE_STATS_GRPC_PORT                   port of the default address\n"
        "  COWRIE_STATS_PROBE_PORT                  port --probe asks (0: the default address)"
    )
    check = usage.subcommand(
        sub,
        "healthcheck",
        "exit 0 when the server reports SERVING (for probes)",
        "Ask the grpc.health.v1 service; for Docker HEALTHCHECK and exec probes.",
        (
            usage.client_environment(port),
            "cowrie-stats healthcheck --address localhost:50051 --timeout 3",
            query.HEALTH_EXIT_HELP,
        ),
    )
    query.add_connection_options(check, flags=("--address", "--target"))
    check.add_argument(
        "--timeout", type=float, default=3.0, metavar="SECONDS", help="deadline (default 3)"
    )
    check.add_argument(
        "--service",
        default=SERVICE_NAME,
        help=f"service to ask about (default {SERVICE_NAME}; '' = the server)",
    )
    check.add_argument(
        "--probe",
        action="store_true",
        help="ask the health-only probe listener on localhost:$COWRIE_STATS_PROBE_PORT "
        "(plaintext, no key; when that is 0, the address above)",
    )
    check.set_defaults(func=cmd_healthcheck)


def _add_hash_key(sub: Subcommands) -> None:
    hash_key = usage.subcommand(
        sub,
        "hash-key",
        "make an API key's keys-file line (key from stdin, or --generate)",
        "Print the COWRIE_STATS_API_KEYS_FILE line (NAME:SHA256) of the key read from stdin, "
        "or generate a new random key with --generate.",
        (usage.NONE, "cowrie-stats hash-key --generate --name grafana --key-out k >> api-keys"),
    )
    hash_key.add_argument("--name", default="client", help="name of the key, shown in logs")
    new = hash_key.add_argument_group("--generate: a new random key")
    new.add_argument(
        "--generate", action="store_true", help="make a random 256-bit key instead of reading one"
    )
    new.add_argument(
        "--append-to",
        metavar="KEYS_FILE",
        help="append the line to this keys file; the key alone goes to stdout",
    )
    new.add_argument(
        "--key-out",
        metavar="FILE",
        help="write the key to this new file (mode 600); the line goes to stdout",
    )
    hash_key.set_defaults(func=cmd_hash_key)


def _add_sample(sub: Subcommands) -> None:
    sample = usage.subcommand(
        sub,
        "sample",
        "write the bundled demo Cowrie log",
        "Write the deterministic demo log (three sensors, 1,289 events).",
        (usage.NONE, "cowrie-stats sample var/sample/cowrie.json"),
    )
    sample.add_argument("output", help="file to write (cowrie.json format)")
    sample.add_argument("--seed", type=int, default=7)
    sample.set_defaults(func=cmd_sample)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cowrie-stats",
        description="Exact statistics over Cowrie honeypot logs, served over gRPC.",
        epilog="Configuration comes from COWRIE_STATS_* environment variables (see .env.example).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve(sub)
    _add_migrate(sub)

    from cowrie_stats.ingest import options

    ingest = sub.add_parser(
        "ingest",
        help="load Cowrie JSON logs (files, .gz, dirs, - for stdin)",
        description=options.DESCRIPTION,
        epilog=options.EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ingest.add_argument(
        "paths", nargs="+", metavar="PATH", help="log file (plain or gzip), directory, or -"
    )
    ingest.add_argument("--sensor", help="sensor name for events that carry none")
    ingest.add_argument(
        "--batch-lines",
        type=options.batch_lines,
        default=5000,
        metavar="N",
        help="lines per transaction, 1 to 1,000,000 (default 5000)",
    )
    ingest.add_argument(
        "--json", action="store_true", help="no progress bar; the summary as one JSON object"
    )
    ingest.add_argument(
        "--watch",
        type=options.watch_seconds,
        metavar="SECONDS",
        help="after a pass, wait SECONDS (> 0) and read again, until SIGTERM",
    )
    ingest.set_defaults(func=cmd_ingest)

    query.add_subcommand(sub, cmd_query)
    mcp_command.add_subcommand(sub, cmd_mcp)
    _add_healthcheck(sub)
    _add_hash_key(sub)
    _add_sample(sub)
    maintenance.add_subcommands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = _settings()
    except SettingsError as error:
        print(f"cowrie-stats: configuration error: {error}", file=sys.stderr)
        return 2
    _configure_logging(settings)
    if args.command in DATABASE_COMMANDS:
        log.info("using database", extra={"database": database_location(settings.database_url)})
    try:
        return int(args.func(args, settings))
    except KeyboardInterrupt:
        return 130
    except Exception as error:
        from cowrie_stats.failures import operator_error

        known = operator_error(error, settings, args.command)
        if known is None:
            raise
        print(f"cowrie-stats: {known[0]}", file=sys.stderr)
        return known[1]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
