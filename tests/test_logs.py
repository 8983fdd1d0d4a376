"""Structured logs: one JSON object per line, or text with the extra fields appended."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time

import grpc
import pytest
from conftest import access_lines

from cowrie_stats import interceptors
from cowrie_stats.interceptors import AccessLog, Call
from cowrie_stats.logs import JsonFormatter, TextFormatter, configure, escape_control


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


def call(method: str, code: grpc.StatusCode, elapsed: float, caller: str | None = None) -> Call:
    return Call(time.time(), method, code.name, elapsed, "ipv4:127.0.0.1:5000", "r-1", caller)


def test_access_lines_keep_call_time_order_and_caller(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    lines = AccessLog(interval=3600)  # flushed by hand here
    before = time.time()
    lines.add(call("/x/A", grpc.StatusCode.OK, 0.0015))
    lines.add(call("/x/B", grpc.StatusCode.NOT_FOUND, 0.25, caller="grafana"))
    time.sleep(0.05)
    assert access_lines(caplog) == []  # nothing written by the serving thread
    lines.flush()
    first, second = access_lines(caplog)
    assert (first.method, first.code, first.duration_ms) == ("/x/A", "OK", 1.5)  # type: ignore[attr-defined]
    assert not hasattr(first, "api_key_name")
    assert (second.code, second.api_key_name) == ("NOT_FOUND", "grafana")  # type: ignore[attr-defined]
    # The time of the call, not of the write.
    assert before <= first.created <= second.created < before + 0.05
    assert first.msecs == pytest.approx((first.created % 1) * 1000)


def test_access_log_thread_writes_and_close_writes_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    lines = AccessLog(interval=0.01)
    lines.start()
    lines.add(call("/x/A", grpc.StatusCode.OK, 0.001))
    deadline = time.monotonic() + 5
    while not access_lines(caplog) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(access_lines(caplog)) == 1
    lines.add(call("/x/B", grpc.StatusCode.OK, 0.001))
    lines.close()
    assert [r.method for r in access_lines(caplog)] == ["/x/A", "/x/B"]  # type: ignore[attr-defined]
    assert not any(t.name == "access-log" for t in threading.enumerate())


def _bounded(
    bound: int, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> AccessLog:
    """An access log that keeps at most ``bound`` pending lines, flushed by hand."""
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(interceptors, "MAX_PENDING_LINES", bound)
    return AccessLog(interval=3600)


def _drop_reports(caplog: pytest.LogCaptureFixture) -> list[int]:
    return [r.lines for r in caplog.records if r.msg == "access log lines dropped"]  # type: ignore[attr-defined]


def test_access_lines_past_the_bound_are_counted_not_kept(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = _bounded(2, caplog, monkeypatch)
    for _ in range(5):
        lines.add(call("/x/A", grpc.StatusCode.OK, 0.001))
    lines.flush()
    assert len(access_lines(caplog)) == 2
    assert _drop_reports(caplog) == [3]
    lines.flush()
    assert _drop_reports(caplog) == [3]  # reported once


class _Keep(logging.Handler):
    """Level NOTSET: only the logger's own level can hold a line back."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_access_lines_follow_the_log_level() -> None:
    handler = _Keep()
    seen = handler.records
    root = logging.getLogger()
    saved = root.level
    root.addHandler(handler)
    try:
        root.setLevel(logging.WARNING)
        lines = AccessLog(interval=3600)
        lines.add(call("/x/A", grpc.StatusCode.OK, 0.001))
        lines.flush()
        assert seen == []
        root.setLevel(logging.INFO)
        lines.add(call("/x/B", grpc.StatusCode.OK, 0.001))
        lines.flush()
        assert [r.method for r in seen] == ["/x/B"]  # type: ignore[attr-defined]
    finally:
        root.removeHandler(handler)
        root.setLevel(saved)


def test_dropped_lines_are_counted_exactly_across_threads(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = _bounded(10, caplog, monkeypatch)

    def add_many() -> None:
        for _ in range(5_000):
            lines.add(call("/x/A", grpc.StatusCode.OK, 0.001))

    threads = [threading.Thread(target=add_many) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines.flush()
    # The bound is soft (a thread may pass the check just before another appends);
    # what holds exactly is that every line is either written or counted.
    written = len(access_lines(caplog))
    (dropped,) = _drop_reports(caplog)
    assert written >= 10 and written + dropped == 8 * 5_000


# -- hostile text: every field escaped, secrets masked, RFC 3339 times ----------------------

HOSTILE = "a\nb\rc\td\x1b[2Je\x00f\x7fg\x9bh\u2028i\ud800j"
ESCAPED = "a\\nb\\rc\\td\\x1b[2Je\\x00f\\x7fg\\x9bh\\u2028i\\ud800j"


def test_escape_control_covers_c0_c1_separators_and_surrogates() -> None:
    assert escape_control(HOSTILE) == ESCAPED
    clean = "plain ünïcode, 名前 and \\n as text"
    assert escape_control(clean) == clean


def test_text_lines_escape_every_field() -> None:
    record = logging.makeLogRecord(
        {"name": "cowrie\nstats", "levelname": "INFO", "msg": "got %s", "args": (HOSTILE,)}
    )
    record.created = 0.5
    setattr(record, "field\n", HOSTILE)
    try:
        raise ValueError(HOSTILE)
    except ValueError:
        record.exc_info = sys.exc_info()
    line = TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s").format(record)
    assert "\n" not in line and "\x1b" not in line and "\ud800" not in line
    assert line.startswith(f"1970-01-01T00:00:00.500Z INFO cowrie\\nstats: got {ESCAPED} ")
    assert f" field\\n={ESCAPED} exception=Traceback (most recent call last):\\n" in line
    assert line.endswith(f"ValueError: {ESCAPED}")


def test_json_lines_stay_valid_with_hostile_values_and_rfc3339_time() -> None:
    record = _record(method=HOSTILE, count=3)
    record.created = 1_795_000_000.25
    line = JsonFormatter().format(record)
    assert "\n" not in line and "\x1b" not in line
    data = json.loads(line)
    assert data["method"] == HOSTILE and data["count"] == 3
    assert data["time"] == "2026-11-18T11:06:40.250Z"


def test_stack_info_is_part_of_the_line() -> None:
    record = logging.makeLogRecord({"msg": "here", "stack_info": "Stack (most recent):\n  x"})
    assert TextFormatter("%(message)s").format(record) == (
        "here exception=Stack (most recent):\\n  x"
    )
    assert json.loads(JsonFormatter().format(record))["exception"].endswith("\n  x")


def test_urls_in_any_field_are_masked() -> None:
    url = "postgresql://stats:pw1@db/stats?sslmode=require&PASSWORD=pw2&api_key=pw3"
    record = logging.makeLogRecord({"msg": "cannot reach %s", "args": (url,)})
    record.target = url
    record.wrapped = ValueError(url)  # not a string: rendered, then masked
    try:
        raise RuntimeError(url)
    except RuntimeError:
        record.exc_info = sys.exc_info()
    masked = "postgresql://stats:***@db/stats?sslmode=require&PASSWORD=***&api_key=***"
    text = TextFormatter("%(message)s").format(record)
    assert "pw1" not in text and "pw2" not in text and "pw3" not in text
    assert text.startswith(f"cannot reach {masked} target={masked} wrapped={masked} ")
    data = json.loads(JsonFormatter().format(record))
    assert data["message"] == f"cannot reach {masked}" and data["target"] == masked
    assert data["wrapped"] == masked and "pw1" not in data["exception"]


def test_text_format_keeps_an_explicit_date_format() -> None:
    formatter = TextFormatter("%(asctime)s %(message)s", datefmt="%Y")
    record = logging.makeLogRecord({"msg": "x"})
    assert formatter.format(record) == time.strftime("%Y", time.localtime(record.created)) + " x"


def test_cached_exception_text_is_escaped_too() -> None:
    record = logging.makeLogRecord({"msg": "failed", "exc_text": "Traceback:\n  boom\x1b"})
    assert TextFormatter("%(message)s").format(record) == (
        "failed exception=Traceback:\\n  boom\\x1b"
    )


def test_made_up_method_names_are_logged_cut() -> None:
    assert interceptors.loggable_method("/a/B") == "/a/B"
    long = "/x/" + "y" * 5000
    shown = interceptors.loggable_method(long)
    assert shown == long[: interceptors.MAX_LOGGED_METHOD_CHARS] + "... (5003 characters)"
