"""The options and help of ``cowrie-stats ingest`` (light: imported by every CLI start)."""

from __future__ import annotations

import argparse

from cowrie_stats.usage import environment, help_row

NO_LOG_FILES = "(a directory scan reads files whose names contain .json; see ingest --help)"
MAX_BATCH_LINES = 1_000_000
DESCRIPTION = """\
Load Cowrie JSON logs into the database: idempotent (events are deduplicated by
content), resumable (a file's read position is committed with its events), and
tolerant (an unusable line, or a row the database refuses, is kept in the
dead_letters table with its reason; it never stops the run).

PATH is any of:
  a log file, plain or gzip (recognised by its content, whatever its name)
  a directory: scanned recursively for files whose names contain ".json"
    (cowrie.json, cowrie.json.2024-04-03, cowrie.json.6.gz, ...), in sorted order;
    a symlink is followed only when it points to a file inside that directory
    (files named on the command line are read as given)
  -  standard input (plain or gzip)"""

EPILOG = (
    "environment (COWRIE_STATS_*, also from a mode-600 .env file; *_FILE variants read a file):\n"
    + environment(
        "ingest", help_row("COWRIE_STATS_ENV_FILE", "the .env file to read (default .env)")
    )
    + """
exit status:
  0    done (dead letters alone are no failure while some line was usable)
  1    nothing was read: database unavailable or not migrated, the role may not
       write, a PATH does not exist or holds no log file
  2    a bad option or COWRIE_STATS_* value
  3    some file could not be read to its end (unreadable, damaged gzip); the rest
       was loaded, and what was read of that file before the damage
  4    every line read was dead-lettered (not a Cowrie JSON log?); the first
       reasons are printed
  130  interrupted (SIGINT); the next run resumes from the last committed batch

example:
  cowrie-stats ingest --sensor honeypot-1 /var/log/cowrie
  zcat old/cowrie.json.*.gz | cowrie-stats ingest --json --sensor honeypot-1 -"""
)


def batch_lines(text: str) -> int:
    """``--batch-lines``: an integer from 1 to 1,000,000."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 1 <= value <= MAX_BATCH_LINES:
        raise argparse.ArgumentTypeError(f"{value} is outside 1..{MAX_BATCH_LINES:,}")
    return value


def watch_seconds(text: str) -> float:
    """``--watch``: seconds between passes, more than 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a number of seconds above 0")
    return value
