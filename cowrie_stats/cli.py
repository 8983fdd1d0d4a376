"""The ``cowrie-stats`` command: serve, migrate, ingest, healthcheck, hash-key, sample."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cowrie_stats import SERVICE_NAME, __version__
from cowrie_stats.settings import Settings, SettingsError, load_env_file, load_settings, redact_url

if TYPE_CHECKING:
    import grpc
    from sqlalchemy import Engine

log = logging.getLogger("cowrie_stats")


def _settings() -> Settings:
    env = dict(os.environ)
    env_file = Path(env.get("COWRIE_STATS_ENV_FILE", ".env"))
    if env_file.is_file():
        load_env_file(env_file, env)
    return load_settings(env)


def _configure_logging(settings: Settings) -> None:
    from cowrie_stats.logs import configure

    configure(settings.log_format, settings.log_level)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from cowrie_stats.server import serve

    return serve(settings)  # also serves metrics when COWRIE_STATS_METRICS_PORT is set


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from cowrie_stats.db.routing import create_db_engine
    from cowrie_stats.db.schema import current_revision, upgrade

    engine = create_db_engine(settings.database_url, settings, writer=True)
    try:
        upgrade(engine)
        log.info(
            "database migrated",
            extra={
                "database": redact_url(settings.database_url),
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
    from cowrie_stats.db.routing import create_db_engine
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
        from cowrie_stats.metrics import MetricsServer

        # A watching ingest is long-lived: expose its counters like the server does.
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
    return summary.exit_code


def _channel_credentials(args: argparse.Namespace) -> grpc.ChannelCredentials | None:
    """TLS credentials for the healthcheck client, or None for plaintext."""
    import grpc

    if not (args.tls or args.tls_ca or args.tls_cert):
        return None
    if bool(args.tls_cert) != bool(args.tls_key):
        raise SettingsError("--tls-cert and --tls-key go together")
    ca = Path(args.tls_ca).read_bytes() if args.tls_ca else None
    cert = Path(args.tls_cert).read_bytes() if args.tls_cert else None
    key = Path(args.tls_key).read_bytes() if args.tls_key else None
    return grpc.ssl_channel_credentials(ca, key, cert)


def cmd_healthcheck(args: argparse.Namespace, settings: Settings) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    address = args.address or f"localhost:{settings.grpc_port}"
    credentials = _channel_credentials(args)
    options = []
    if args.tls_server_name:
        options.append(("grpc.ssl_target_name_override", args.tls_server_name))
    channel = (
        grpc.insecure_channel(address)
        if credentials is None
        else grpc.secure_channel(address, credentials, options)
    )
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as error:
            print(f"NOT_SERVING ({error.code().name})")
            return 1
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(name)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def cmd_hash_key(args: argparse.Namespace, settings: Settings) -> int:
    from cowrie_stats.auth import key_line

    try:
        line = key_line(args.name, sys.stdin.readline())
    except ValueError as error:
        print(f"error: {error} (the key is read from stdin)", file=sys.stderr)
        return 2
    print(line)
    return 0


def cmd_sample(args: argparse.Namespace, settings: Settings) -> int:
    from cowrie_stats.sample import write_sample

    count = write_sample(Path(args.output), seed=args.seed)
    print(json.dumps({"output": args.output, "events": count}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cowrie-stats",
        description="Exact statistics over Cowrie honeypot logs, served over gRPC.",
        epilog="Configuration comes from COWRIE_STATS_* environment variables (see .env.example).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("serve", help="serve the gRPC API until SIGTERM/SIGINT").set_defaults(
        func=cmd_serve
    )
    sub.add_parser(
        "migrate", help="upgrade the database schema (alembic upgrade head)"
    ).set_defaults(func=cmd_migrate)

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

    check = sub.add_parser("healthcheck", help="exit 0 when the server reports SERVING")
    check.add_argument("--address", help="HOST:PORT (default localhost:$COWRIE_STATS_GRPC_PORT)")
    check.add_argument("--timeout", type=float, default=3.0)
    check.add_argument("--service", default=SERVICE_NAME)
    check.add_argument("--tls", action="store_true", help="use TLS, trusting the system CAs")
    check.add_argument("--tls-ca", metavar="FILE", help="use TLS, trusting this CA (PEM)")
    check.add_argument("--tls-cert", metavar="FILE", help="client certificate (PEM) for mTLS")
    check.add_argument("--tls-key", metavar="FILE", help="client private key (PEM) for mTLS")
    check.add_argument(
        "--tls-server-name", metavar="NAME", help="name to verify in the server certificate"
    )
    check.set_defaults(func=cmd_healthcheck)

    hash_key = sub.add_parser("hash-key", help="hash an API key read from stdin for the keys file")
    hash_key.add_argument("--name", default="client", help="name of the key, shown in logs")
    hash_key.set_defaults(func=cmd_hash_key)

    sample = sub.add_parser("sample", help="write the bundled demo Cowrie log")
    sample.add_argument("output", help="file to write (cowrie.json format)")
    sample.add_argument("--seed", type=int, default=7)
    sample.set_defaults(func=cmd_sample)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = _settings()
    except SettingsError as error:
        print(f"cowrie-stats: configuration error: {error}", file=sys.stderr)
        return 2
    _configure_logging(settings)
    try:
        return int(args.func(args, settings))
    except KeyboardInterrupt:
        return 130
    except SettingsError as error:  # raised at start-up, e.g. a malformed API keys file
        print(f"cowrie-stats: configuration error: {error}", file=sys.stderr)
        return 2
    except Exception as error:
        from cowrie_stats.db.schema import SchemaError

        if isinstance(error, SchemaError | OSError):
            print(f"cowrie-stats: {error}", file=sys.stderr)
            return 1
        from sqlalchemy.exc import OperationalError

        if isinstance(error, OperationalError):
            # The driver's first line says what happened (refused, disk full, ...);
            # neither it nor the redacted URL carries a password.
            reason = str(error.orig).strip().splitlines()[0] if str(error.orig).strip() else ""
            print(
                f"cowrie-stats: database unavailable ({redact_url(settings.database_url)}): "
                f"{type(error.orig).__name__}: {reason}",
                file=sys.stderr,
            )
            return 1
        raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
