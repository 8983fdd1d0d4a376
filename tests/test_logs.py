"""Structured logs: one JSON object per line, or text with the extra fields appended."""

from __future__ import annotations

import json
import logging

import pytest

from cowrie_stats.logs import JsonFormatter, TextFormatter, configure


def _record(**extra: object) -> logging.LogRecord:
    record = logging.makeLogRecord(
        {"name": "cowrie_stats.access", "levelname": "INFO", "msg": "rpc"}
    )
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_json_lines_carry_the_extra_fields() -> None:
    line = JsonFormatter().format(_record(method="/x/Y", code="OK", duration_ms=1.5))
    data = json.loads(line)
    assert data["message"] == "rpc" and data["level"] == "INFO"
    assert (data["method"], data["code"], data["duration_ms"]) == ("/x/Y", "OK", 1.5)
    assert "\n" not in line


def test_json_includes_exceptions() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.makeLogRecord({"msg": "failed", "exc_info": __import__("sys").exc_info()})
    assert "ValueError: boom" in json.loads(JsonFormatter().format(record))["exception"]


def test_text_appends_extra_fields() -> None:
    text = TextFormatter("%(message)s").format(_record(method="/x/Y", code="OK"))
    assert text == "rpc method=/x/Y code=OK"


@pytest.mark.parametrize(("fmt", "kind"), [("json", JsonFormatter), ("text", TextFormatter)])
def test_configure_installs_one_handler(fmt: str, kind: type) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure(fmt, "DEBUG")
        assert len(root.handlers) == 1 and isinstance(root.handlers[0].formatter, kind)
        assert logging.getLogger("alembic").level == logging.WARNING
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
