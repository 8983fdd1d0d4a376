"""The ``prune`` and ``dead-letters`` subcommands: options, help and output.

Both open the primary with a writer engine. Deleting is a dry run unless
``--yes`` is given; output is a table on a terminal (every text a log line
holds is escaped, see cowrie_stats.tables) or one JSON object with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from cowrie_stats import query, tables, usage
from cowrie_stats.settings import Settings
from cowrie_stats.tables import Table

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from cowrie_stats.maintenance.dead_letters import DeadLetter, Filter
    from cowrie_stats.maintenance.prune import PruneReport
    from cowrie_stats.usage import Subcommands

Command = Callable[[argparse.Namespace, Settings], int]
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
US = timedelta(microseconds=1)
DEFAULT_LIMIT = 50
PRUNE_ENV = usage.DATABASE_ENV + (
    "  COWRIE_STATS_RETENTION_DAYS              applied by ingest after each pass, not here\n"
)


def moment(value: str) -> datetime:
    """An ISO 8601 time or date, or a duration back from now (``90d``, ``12h``)."""
    try:
        return datetime.now(UTC) - query.duration(value)
    except argparse.ArgumentTypeError:
        pass
    try:
        return query.instant(value)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"{value!r}: expected an ISO 8601 time (2026-11-20T06:00:00Z, 2026-11-20)"
            " or a duration back from now (90d, 12h)"
        ) from None


def _us(value: datetime | None) -> int | None:
    return None if value is None else (value - EPOCH) // US


def _at(ts_us: int) -> str:
    return (EPOCH + ts_us * US).strftime("%Y-%m-%dT%H:%M:%SZ")


def _writer_engine(settings: Settings) -> Engine:
    from cowrie_stats.db.engines import create_db_engine
    from cowrie_stats.db.schema import check_schema

    engine = create_db_engine(settings.database_url, settings, writer=True)
    try:
        check_schema(engine)
    except BaseException:
        engine.dispose()
        raise
    return engine


def _print_json(value: dict[str, Any]) -> None:
    print(json.dumps(value, sort_keys=True), flush=True)


# -- prune ---------------------------------------------------------------------------------


def cmd_prune(args: argparse.Namespace, settings: Settings) -> int:
    from cowrie_stats.maintenance.prune import Selection, UnknownSensorError, plan, prune

    if args.before is None and args.sensor is None:
        print("cowrie-stats prune: give --before TIME, --sensor NAME or both", file=sys.stderr)
        return 2
    selection = Selection(_us(args.before), args.sensor)
    engine = _writer_engine(settings)
    try:
        if args.yes:
            report = prune(engine, selection)
        else:
            with engine.connect() as conn:
                report = plan(conn, selection)
    except UnknownSensorError as error:
        print(f"cowrie-stats prune: {tables.escape(str(error))}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    _show_prune(args, selection.before_us, report)
    return 0


def _show_prune(args: argparse.Namespace, before_us: int | None, report: PruneReport) -> None:
    what = "sessions whose last event is before " + (_at(before_us) if before_us else "any time")
    where = f"sensor {args.sensor}" if args.sensor else "every sensor"
    if args.json:
        _print_json(
            {"dry_run": not args.yes, "before": before_us and _at(before_us)}
            | {"sensor": args.sensor, **report.to_dict()}
        )
        return
    done = "deleted" if args.yes else "would delete"
    table = Table(tables.escape(f"prune: {what}, {where}"), ["table", done], frozenset({done}))
    for name, value in report.to_dict().items():
        if isinstance(value, int) and name != "days":
            table.add(name, tables.integer(value))
    print(table.render())
    removed = ", ".join(tables.text(name) for name in report.sensors_removed) or "none"
    print(f"sensors left without events, {done} too: {removed}")
    if args.yes:
        print(f"done in {report.days} transactions (a UTC day of session starts each)")
    else:
        print(f"dry run ({report.days} days of sessions): nothing deleted; add --yes to delete")


def add_prune(sub: Subcommands) -> None:
    prune = usage.subcommand(
        sub,
        "prune",
        "delete old sessions, or a sensor, keeping every figure exact (dry run by default)",
        "Delete whole sessions whose last event is before --before (a session still going on "
        "then is kept whole), with all their events and rows, and dead letters stored before "
        "it; or, with --sensor, only that sensor's sessions (all of them without --before, "
        "and the sensor itself). The summaries of the days involved are rebuilt from the "
        "remaining rows. A UTC day per transaction, oldest first: a prune stopped half-way "
        "is finished by running it again. Without --yes, only prints what would go.",
        (PRUNE_ENV, "cowrie-stats prune --before 2026-01-01 --yes"),
    )
    prune.add_argument(
        "--before",
        type=moment,
        metavar="TIME",
        help="sessions whose last event is before TIME (ISO 8601, or 90d for 90 days ago)",
    )
    prune.add_argument("--sensor", metavar="NAME", help="only this sensor's sessions")
    prune.add_argument("--yes", action="store_true", help="delete (default: a dry run)")
    prune.add_argument("--json", action="store_true", help="the counts as one JSON object")
    prune.set_defaults(func=cmd_prune)


# -- dead-letters ----------------------------------------------------------------------------


def _filter(args: argparse.Namespace) -> Filter:
    from cowrie_stats.maintenance.dead_letters import Filter

    return Filter(_us(args.since), _us(args.before), args.reason)


def cmd_dead_letters(args: argparse.Namespace, settings: Settings) -> int:
    if args.purge and args.before is None:
        print("cowrie-stats dead-letters: --purge needs --before TIME", file=sys.stderr)
        return 2
    engine = _writer_engine(settings)
    try:
        if args.retry:
            return _retry(args, engine)
        if args.purge:
            return _purge(args, engine)
        return _list(args, engine)
    finally:
        engine.dispose()


def _list(args: argparse.Namespace, engine: Engine) -> int:
    from cowrie_stats.maintenance import dead_letters

    which = _filter(args)
    with engine.connect() as conn:
        shown = dead_letters.newest(conn, which, args.limit)
        total = dead_letters.count(conn, which)
    if args.json:
        for letter in shown:
            _print_json(_letter_json(letter))
        return 0
    table = Table("dead letters, newest first", ["id", "received", "source", "line", "reason"])
    table.right = frozenset({"id", "line"})
    for letter in shown:
        table.add(
            str(letter.id),
            _at(letter.received_us),
            tables.text(letter.source, args.max_width),
            str(letter.line_no),
            tables.text(letter.reason, args.max_width),
        )
    print(table.render())
    print(
        f"{len(shown):,} shown of {total:,} matching (--limit {args.limit}; --json for the lines)"
    )
    return 0


def _letter_json(letter: DeadLetter) -> dict[str, Any]:
    return {
        "id": letter.id,
        "received": _at(letter.received_us),
        "source": letter.source,
        "line_no": letter.line_no,
        "reason": letter.reason,
        "line": letter.line,
    }


def _retry(args: argparse.Namespace, engine: Engine) -> int:
    from cowrie_stats.maintenance.dead_letters import retry

    report = retry(engine, _filter(args), args.sensor)
    if args.json:
        _print_json(report.to_dict())
    else:
        table = Table("dead letters retried", ["", "lines"], frozenset({"lines"}), header=False)
        for name, value in report.to_dict().items():
            table.add(name.replace("_", " "), tables.integer(value))
        print(table.render())
    return 0


def _purge(args: argparse.Namespace, engine: Engine) -> int:
    from cowrie_stats.maintenance import dead_letters

    which = _filter(args)
    if args.yes:
        gone = dead_letters.purge(engine, which)
    else:
        with engine.connect() as conn:
            gone = dead_letters.count(conn, which)
    if args.json:
        _print_json({"dry_run": not args.yes, "dead_letters": gone})
    elif args.yes:
        print(f"deleted {gone:,} dead letters received before {_at(which.before_us or 0)}")
    else:
        print(f"dry run: {gone:,} dead letters would be deleted; add --yes to delete")
    return 0


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a number of lines above 0")
    return value


def add_dead_letters(sub: Subcommands) -> None:
    command = usage.subcommand(
        sub,
        "dead-letters",
        "list, retry or purge the log lines ingest could not use",
        "List the dead letters (lines ingest could not use) with where they came from and "
        "why; --retry parses them again with this version's parser and stores those that "
        "are events now (each removed in the same transaction); --purge --before deletes "
        "old ones (a dry run without --yes).",
        (usage.DATABASE_ENV, "cowrie-stats dead-letters --since 24h --reason json"),
    )
    which = command.add_argument_group("which (default: all)")
    which.add_argument("--since", type=moment, metavar="TIME", help="received at or after TIME")
    which.add_argument("--before", type=moment, metavar="TIME", help="received before TIME")
    which.add_argument("--reason", metavar="TEXT", help="whose reason contains TEXT (any case)")
    action = command.add_mutually_exclusive_group()
    action.add_argument("--retry", action="store_true", help="parse again; store what parses")
    action.add_argument("--purge", action="store_true", help="delete them (needs --before)")
    command.add_argument("--yes", action="store_true", help="with --purge: delete (not a dry run)")
    command.add_argument("--sensor", metavar="NAME", help="with --retry: for events without one")
    command.add_argument("--json", action="store_true", help="JSON: one object per line")
    command.add_argument("--limit", type=_limit, default=DEFAULT_LIMIT, metavar="N")
    command.add_argument(
        "--max-width", type=int, default=tables.DEFAULT_MAX_WIDTH, metavar="N", help="cut cells"
    )
    command.set_defaults(func=cmd_dead_letters)


def add_subcommands(sub: Subcommands) -> None:
    add_prune(sub)
    add_dead_letters(sub)
