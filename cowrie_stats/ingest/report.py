"""What ``cowrie-stats ingest`` tells the operator: help, progress, summary, errors."""

from __future__ import annotations

import sqlite3
from typing import IO, NoReturn

import psycopg
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from tqdm import tqdm

from cowrie_stats.ingest.options import NO_LOG_FILES
from cowrie_stats.ingest.store import driver_error, one_line, permission_problem
from cowrie_stats.ingest.summary import IngestSummary, Tally
from cowrie_stats.settings import redact_url

# Connection-level SQLSTATE classes: connection exception, operator
# intervention (shutdown), insufficient resources (disk full, too many clients).
UNAVAILABLE_SQLSTATE = ("08", "57", "53")


class ProgressBar:
    """Bytes of the input read (of the files on disk), rate and ETA, on a terminal."""

    def __init__(self, stream: IO[str], refresh_seconds: float = 0.1) -> None:
        self._stream = stream
        self._refresh_seconds = refresh_seconds
        self._bar: tqdm[NoReturn] | None = None

    def __call__(self, summary: IngestSummary) -> None:
        bar = self._bar
        if bar is None:
            bar = self._bar = tqdm(
                total=summary.disk_bytes_total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=self._stream,
                dynamic_ncols=True,
                leave=False,
                mininterval=self._refresh_seconds,
                miniters=1,
            )
        bar.update(max(0, summary.disk_bytes_done - bar.n))
        bar.set_postfix(
            events=summary.events_stored,
            dup=summary.duplicates_skipped,
            dead=summary.dead_lettered,
            refresh=False,
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._bar = None


def print_tables(summary: IngestSummary, out: IO[str]) -> None:
    """The summary for a person: per file, per sensor, then the totals."""
    header = ("lines", "stored", "duplicates", "dead", "first event", "last event")
    _table(out, "file", header, [(p, t) for p, t in summary.by_file.items()], lines=True)
    sensors = sorted(summary.by_sensor.items())
    if summary.other_sensors is not None:
        sensors.append(("(more sensors)", summary.other_sensors))
    _table(out, "sensor", header[1:], sensors, lines=False)
    out.write(
        f"{summary.files} files, {summary.lines_read} lines, {summary.events_stored} events"
        f" stored, {summary.duplicates_skipped} duplicates, {summary.dead_lettered} dead"
        f" letters, {summary.bytes_read / 1e6:.1f} MB in {summary.seconds:.1f} s\n"
    )


def _table(
    out: IO[str], title: str, header: tuple[str, ...], rows: list[tuple[str, Tally]], lines: bool
) -> None:
    if not rows:
        return
    cells = [(name, *_figures(tally, lines)) for name, tally in rows]
    table = [(title, *header), *cells]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        first = row[0].ljust(widths[0])
        out.write(
            "  ".join([first, *(c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True))])
            + "\n"
        )
    out.write("\n")


def _figures(tally: Tally, lines: bool) -> list[str]:
    data = tally.to_dict(lines)
    figures = [str(data["events_stored"]), str(data["duplicates_skipped"])]
    figures.append(str(data["dead_lettered"]))
    figures += [data["first_event"] or "-", data["last_event"] or "-"]
    return ([str(tally.lines_read)] if lines else []) + figures


def print_problems(summary: IngestSummary, err: IO[str]) -> None:
    """One line per thing the operator should know about: skipped, unread, unusable."""
    for path, why in summary.skipped:
        err.write(f"cowrie-stats: skipped {path}: {why}\n")
    for path in summary.empty_paths:
        err.write(f"cowrie-stats: no log files in {path} yet {NO_LOG_FILES}\n")
    for failure in summary.failed_files:
        where = f" (stopped at line {failure.line_no})" if failure.line_no else ""
        err.write(f"cowrie-stats: {failure.path}: not read to its end{where}: {failure.reason}\n")
    if summary.nothing_usable:
        err.write("cowrie-stats: every line read was dead-lettered; the first reasons:\n")
        for record in summary.first_dead_letters:
            err.write(f"  {record.source}:{record.line_no}: {record.reason}\n")


def database_failure(error: BaseException, database_url: str) -> str | None:
    """One line for a database error that ends the run; None when ``error`` is none."""
    driver = driver_error(error)
    if driver is None:
        return None
    target = redact_url(database_url)
    denied = permission_problem(error)
    if denied is not None:
        return f"cowrie-stats: {_login(database_url)} may not write what ingest stores: {denied}"
    sqlstate = str(getattr(driver, "sqlstate", "") or "")
    unavailable = isinstance(driver, psycopg.OperationalError | sqlite3.OperationalError)
    what = "unavailable" if unavailable or sqlstate.startswith(UNAVAILABLE_SQLSTATE) else "error"
    return f"cowrie-stats: database {what} ({target}): {one_line(driver)}"


def _login(database_url: str) -> str:
    try:
        url = make_url(database_url)
    except ArgumentError:
        return "the database login"
    if url.get_backend_name() == "sqlite":
        return f"this user (the database file {url.database} is read-only to it)"
    return (
        f"the database role {url.username!r} (ingest needs the owner role, or SELECT,"
        " INSERT and UPDATE on every table, USAGE on the sequences, and TEMP;"
        " see docs/operations.md#database-roles)"
    )
