"""Request validation: protobuf requests in, plain validated values out.

All checks of a request run before it is rejected, so one INVALID_ARGUMENT
lists every field violation at once (the first :data:`errors.MAX_VIOLATIONS`
of them, and how many there were: a request can hold 500,000 bad names).
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf import duration_pb2, timestamp_pb2

from cowrie_stats._gen.cowrie.stats.v1 import stats_pb2
from cowrie_stats.errors import MAX_VIOLATIONS, FieldViolation, InvalidArgumentError
from cowrie_stats.settings import Settings

DEFAULT_TOP_N = 10
MAX_TOP_N = 1000
DEFAULT_STALE_AFTER_US = 3_600_000_000
MAX_BUCKETS = 10_000
MAX_SENSOR_NAME = 256
US_PER_SECOND = 1_000_000
US_PER_DAY = 86_400 * US_PER_SECOND


class Violations(list[FieldViolation]):
    """Field violations found so far: the first MAX_VIOLATIONS kept, all of them counted."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def append(self, violation: FieldViolation) -> None:
        self.total += 1
        if len(self) < MAX_VIOLATIONS:
            super().append(violation)


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; the defaults are the settings' defaults."""

    max_sensors: int = Settings.max_sensors_per_request
    max_window_days: int = Settings.max_window_days


@dataclass(frozen=True)
class Window:
    """Half-open window [start_us, end_us) in microseconds; None is unbounded."""

    start_us: int | None = None
    end_us: int | None = None


@dataclass(frozen=True)
class Filters:
    window: Window
    sensors: tuple[str, ...]


def _timestamp_us(ts: timestamp_pb2.Timestamp) -> int:
    return ts.seconds * US_PER_SECOND + ts.nanos // 1000


def _check_timestamp(name: str, ts: timestamp_pb2.Timestamp, out: Violations) -> None:
    # google.protobuf.Timestamp is defined for 0001-01-01..9999-12-31.
    if not -62_135_596_800 <= ts.seconds <= 253_402_300_799 or not 0 <= ts.nanos < 10**9:
        out.append(FieldViolation(name, "timestamp out of range"))


def _window(
    request: stats_pb2.GetSessionStatsRequest
    | stats_pb2.GetThreatStatsRequest
    | stats_pb2.GetSensorStatsRequest,
    limits: Limits,
    out: Violations,
) -> Window:
    if not request.HasField("time_range"):
        return Window()
    time_range = request.time_range
    start = end = None
    if time_range.HasField("start_time"):
        _check_timestamp("time_range.start_time", time_range.start_time, out)
        start = _timestamp_us(time_range.start_time)
    if time_range.HasField("end_time"):
        _check_timestamp("time_range.end_time", time_range.end_time, out)
        end = _timestamp_us(time_range.end_time)
    if start is not None and end is not None:
        if end < start:
            out.append(FieldViolation("time_range.end_time", "end_time is before start_time"))
        elif end - start > limits.max_window_days * US_PER_DAY:
            out.append(
                FieldViolation("time_range", f"window longer than {limits.max_window_days} days")
            )
    return Window(start, end)


def _sensors(
    names: list[str] | tuple[str, ...], limits: Limits, out: Violations
) -> tuple[str, ...]:
    if len(names) > limits.max_sensors:
        out.append(FieldViolation("sensors", f"at most {limits.max_sensors} sensors per request"))
    for index, name in enumerate(names):
        if not name or len(name) > MAX_SENSOR_NAME or "\x00" in name:
            out.append(
                FieldViolation(f"sensors[{index}]", "sensor names are 1..256 characters, no NUL")
            )
    return tuple(dict.fromkeys(names))


def _raise_if(violations: Violations) -> None:
    if violations:
        raise InvalidArgumentError(violations, violations.total)


def session_request(
    request: stats_pb2.GetSessionStatsRequest, limits: Limits
) -> tuple[Filters, int]:
    """Validated filters and bucket width in microseconds (0 = no buckets)."""
    out = Violations()
    window = _window(request, limits, out)
    sensors = _sensors(list(request.sensors), limits, out)
    widths = {
        stats_pb2.BUCKET_UNSPECIFIED: 0,
        stats_pb2.BUCKET_HOUR: 3600 * US_PER_SECOND,
        stats_pb2.BUCKET_DAY: US_PER_DAY,
    }
    width = widths.get(request.bucket)
    if width is None:
        out.append(FieldViolation("bucket", f"unknown Bucket value {request.bucket}"))
        width = 0
    elif (
        width
        and window.start_us is not None
        and window.end_us is not None
        and (window.end_us - window.start_us) // width > MAX_BUCKETS
    ):
        out.append(FieldViolation("bucket", f"more than {MAX_BUCKETS} buckets in the window"))
    _raise_if(out)
    return Filters(window, sensors), width


def threat_request(request: stats_pb2.GetThreatStatsRequest, limits: Limits) -> tuple[Filters, int]:
    """Validated filters and top_n."""
    out = Violations()
    window = _window(request, limits, out)
    sensors = _sensors(list(request.sensors), limits, out)
    top_n = request.top_n or DEFAULT_TOP_N
    if not 1 <= top_n <= MAX_TOP_N:
        out.append(
            FieldViolation("top_n", f"top_n must be 1..{MAX_TOP_N} (0 means {DEFAULT_TOP_N})")
        )
    _raise_if(out)
    return Filters(window, sensors), top_n


def _duration_us(duration: duration_pb2.Duration) -> int:
    return duration.seconds * US_PER_SECOND + duration.nanos // 1000


def sensor_request(request: stats_pb2.GetSensorStatsRequest, limits: Limits) -> tuple[Filters, int]:
    """Validated filters and stale_after in microseconds."""
    out = Violations()
    window = _window(request, limits, out)
    sensors = _sensors(list(request.sensors), limits, out)
    stale_after = DEFAULT_STALE_AFTER_US
    if request.HasField("stale_after"):
        stale_after = _duration_us(request.stale_after)
        if stale_after <= 0 or request.stale_after.seconds > 100 * 365 * 86_400:
            out.append(FieldViolation("stale_after", "stale_after must be positive (≤ 100 years)"))
    _raise_if(out)
    return Filters(window, sensors), stale_after
