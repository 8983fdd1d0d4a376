"""Logging set-up: human text or one JSON object per line.

Log lines carry text strangers chose (method names, sensor names, exception
messages), so every field is made safe here, once, whoever logs it: control
characters are escaped, so one record is always one line and no escape sequence
reaches a terminal, and URL passwords and secret query parameters are masked.
Times are RFC 3339 in UTC.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

from cowrie_stats.settings import redact_text

# Attributes every LogRecord has; anything else was passed with ``extra=``.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
# C0 controls, DEL, C1 controls, the Unicode line and paragraph separators, lone surrogates.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def escape_control(text: str) -> str:
    """``text`` with every control character, separator and lone surrogate escaped."""
    return _UNSAFE.sub(_escaped, text)


def safe_text(value: object) -> str:
    """A field value as it may appear in a text log line: redacted, then escaped."""
    return escape_control(redact_text(str(value)))


def rfc3339(created: float) -> str:
    """``2026-11-25T17:20:20.123Z``: the record's time in UTC, to the millisecond."""
    moment = datetime.fromtimestamp(created, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _extra(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


def _exception_text(formatter: logging.Formatter, record: logging.LogRecord) -> str | None:
    parts = []
    if record.exc_info:
        parts.append(formatter.formatException(record.exc_info))
    elif record.exc_text:
        parts.append(record.exc_text)
    if record.stack_info:
        parts.append(formatter.formatStack(record.stack_info))
    return "\n".join(parts) if parts else None


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with ``extra=`` fields as top-level keys.

    ``json.dumps`` escapes control characters and lone surrogates itself, so a
    line stays one valid JSON object whatever the values; secrets are masked.
    """

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": rfc3339(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": redact_text(record.getMessage()),
        }
        for key, value in _extra(record).items():
            data[key] = redact_text(value) if isinstance(value, str) else value
        exception = _exception_text(self, record)
        if exception is not None:
            data["exception"] = redact_text(exception)
        return json.dumps(data, default=lambda value: redact_text(str(value)))


class TextFormatter(logging.Formatter):
    """``fmt`` with the ``extra=`` fields appended as ``key=value``; one line per record.

    Every field (time, level, logger, message, extra keys and values, the
    exception and its traceback) is redacted and escaped, so a newline in any of
    them is written as ``\\n`` and cannot start a forged line.
    """

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return rfc3339(record.created) if datefmt is None else super().formatTime(record, datefmt)

    def format(self, record: logging.LogRecord) -> str:
        safe = logging.makeLogRecord(vars(record))
        safe.msg, safe.args = safe_text(record.getMessage()), None
        safe.name, safe.levelname = safe_text(record.name), safe_text(record.levelname)
        safe.exc_info = safe.exc_text = safe.stack_info = None
        line = super().format(safe)
        extra = _extra(record)
        if extra:
            line += "".join(f" {safe_text(k)}={safe_text(v)}" for k, v in extra.items())
        exception = _exception_text(self, record)
        if exception is not None:
            line += " exception=" + safe_text(exception)
        return line


def configure(log_format: str = "text", level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Alembic narrates every plugin it loads at INFO; keep its warnings only.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, root.level))
