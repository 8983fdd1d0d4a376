"""Python client of the statistics API: one class, one method per RPC, typed errors.

::

    from datetime import timedelta
    from cowrie_stats.client import StatsClient, StatsError

    with StatsClient("stats.example.net:50051", api_key=key, tls=True) as stats:
        day = stats.get_session_stats(since=timedelta(hours=24), bucket="hour")
        print(day.total_sessions, [b.sessions for b in day.buckets])

Windows are keyword arguments: ``since`` (a :class:`~datetime.timedelta` back from now,
or from ``end``) or ``start``/``end`` (timezone-aware datetimes; either may be left out
for an unbounded side). Answers are the generated messages of :mod:`cowrie_stats.api`.
A failed call raises a subclass of :class:`StatsError` that says what to do about it:
fix the request, fix the credentials, or retry later. ``cowrie-stats query`` is built
on this class; its settings come from the same ``COWRIE_STATS_*`` variables
(:meth:`ClientSettings.from_env`).

Answers carry at most 1024 characters of each value attackers wrote; :func:`text_value`
reads such a value with its ``truncated`` flag and whole ``length``::

    for entry in stats.get_threat_stats().top_commands:
        command = text_value(entry, "value")
        print(command.text, "(cut)" if command.truncated else "", command.length)
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Literal, TypeVar

import grpc
from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cowrie_stats import SERVICE_NAME, api
from cowrie_stats.capping import MAX_TEXT_CHARS
from cowrie_stats.client_errors import (
    AccessDeniedError,
    DeadlineExceededError,
    InvalidRequestError,
    NotFoundError,
    ResponseTooLargeError,
    ServerError,
    ServerUnreachableError,
    ServiceUnavailableError,
    StatsError,
    error_from_call,
)
from cowrie_stats.errors import FieldViolation
from cowrie_stats.settings import PREFIX, SETTING_ROWS, SettingsError, env_flag, env_text

__all__ = [
    "MAX_TEXT_CHARS",
    "AccessDeniedError",
    "ClientSettings",
    "DeadlineExceededError",
    "FieldViolation",
    "InvalidRequestError",
    "NotFoundError",
    "ResponseTooLargeError",
    "ServerError",
    "ServerUnreachableError",
    "ServiceUnavailableError",
    "StatsClient",
    "StatsError",
    "TextValue",
    "error_from_call",
    "read_api_key",
    "text_value",
    "time_range",
    "window_bounds",
]

DEFAULT_TIMEOUT_SECONDS = 30.0
BUCKETS = {"hour": api.BUCKET_HOUR, "day": api.BUCKET_DAY}
# What a gRPC metadata value can carry (and every key `hash-key --generate` makes).
API_KEY_PATTERN = re.compile(r"[\x21-\x7e]+")
BucketName = Literal["hour", "day"]
Response = TypeVar("Response", bound=Message)
# grpc core's connectivity numbers (ChannelConnectivity.X.value[0]) without a connection.
_NOT_CONNECTED = frozenset(
    state.value[0]
    for state in (grpc.ChannelConnectivity.CONNECTING, grpc.ChannelConnectivity.TRANSIENT_FAILURE)
)


# -- values attackers wrote ----------------------------------------------------------------


@dataclass(frozen=True)
class TextValue:
    """A text field of an answer: ``text`` as sent (at most :data:`MAX_TEXT_CHARS`
    characters), whether the server cut it, and the whole value's length in code points."""

    text: str
    truncated: bool
    length: int


def text_value(message: Message, name: str) -> TextValue:
    """Field ``name`` of ``message`` with its ``<name>_truncated`` and ``<name>_length``.

    A field without those siblings (a sensor name) is never cut; an answer from a server
    older than them reads as not cut either.
    """
    text = getattr(message, name)
    fields = message.DESCRIPTOR.fields_by_name
    if f"{name}_truncated" not in fields:
        return TextValue(text, False, len(text))
    truncated = bool(getattr(message, f"{name}_truncated"))
    length = int(getattr(message, f"{name}_length"))
    return TextValue(text, truncated, length if truncated else len(text))


# -- settings ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientSettings:
    """Where and how to connect; :meth:`from_env` reads the ``COWRIE_STATS_*`` variables.

    ``ca_file``, ``cert_file`` and ``key_file`` are PEM files; any of them, or ``tls``,
    turns TLS on (without ``ca_file`` the system's CAs are trusted).
    """

    target: str = "localhost:50051"
    api_key: str | None = field(default=None, repr=False)
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None
    timeout: float = DEFAULT_TIMEOUT_SECONDS

    #: Variable -> what it sets, for help texts and the documentation test.
    VARIABLES: ClassVar[dict[str, str]] = {
        f"{PREFIX}TARGET": "HOST:PORT (default localhost:$COWRIE_STATS_GRPC_PORT)",
        f"{PREFIX}API_KEY / _FILE": "the API key to send (authorization: Bearer)",
        f"{PREFIX}TARGET_TLS": "true: TLS, trusting the system CAs",
        f"{PREFIX}TARGET_CA_FILE": "CA (PEM) of the server's certificate; TLS on",
        f"{PREFIX}TARGET_SERVER_NAME": "name to verify in the server's certificate",
        f"{PREFIX}CLIENT_CERT_FILE": "client certificate (PEM) for mutual TLS",
        f"{PREFIX}CLIENT_KEY_FILE": "its private key (PEM)",
    }

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ClientSettings:
        """Settings from ``env`` (default os.environ); SettingsError names a wrong variable."""
        env = os.environ if env is None else env
        port = SETTING_ROWS["grpc_port"].read(env)  # the server's port, as it reads it
        return cls(
            target=env_text(env, "TARGET") or f"localhost:{port}",
            api_key=env_text(env, "API_KEY"),
            tls=env_flag(env, "TARGET_TLS", False),
            ca_file=env_text(env, "TARGET_CA_FILE"),
            cert_file=env_text(env, "CLIENT_CERT_FILE"),
            key_file=env_text(env, "CLIENT_KEY_FILE"),
            server_name=env_text(env, "TARGET_SERVER_NAME"),
        )


def _read_pem(what: str, path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise SettingsError(f"{what}: cannot read {path}: {error.strerror}") from None


def read_api_key(path: str) -> str:
    """The API key stored in ``path`` (surrounding whitespace removed)."""
    try:
        key = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
        raise SettingsError(f"API key file: cannot read {path}: {reason}") from None
    if not key:
        raise SettingsError(f"API key file {path} is empty")
    return key


# -- windows -------------------------------------------------------------------------------


def _timestamp(name: str, value: datetime) -> timestamp_pb2.Timestamp:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware (e.g. datetime(..., tzinfo=UTC))")
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _now_to_the_second() -> datetime:
    """Now, rounded up to a whole second: "the last 24 h" includes this very moment."""
    now = datetime.now(UTC)
    return now.replace(microsecond=0) + (timedelta(seconds=1) if now.microsecond else timedelta())


def window_bounds(
    *,
    since: timedelta | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> tuple[datetime | None, datetime | None]:
    """(start, end) of a window: ``since`` back from ``end`` (default now), or as given."""
    if since is None:
        return start, end
    if start is not None:
        raise ValueError("give either since or start, not both")
    if since <= timedelta():
        raise ValueError("since must be positive")
    end = end if end is not None else _now_to_the_second()
    return end - since, end


def time_range(
    *,
    since: timedelta | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> api.TimeRange | None:
    """The ``TimeRange`` of a request (see :func:`window_bounds`); None when unbounded."""
    start, end = window_bounds(since=since, start=start, end=end)
    if start is None and end is None:
        return None
    window = api.TimeRange()
    if start is not None:
        window.start_time.CopyFrom(_timestamp("start", start))
    if end is not None:
        window.end_time.CopyFrom(_timestamp("end", end))
    return window


def _duration(value: timedelta) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromTimedelta(value)
    return duration


# -- the client ----------------------------------------------------------------------------


class StatsClient:
    """A connection to one cowrie-stats server; thread-safe, close it (or use ``with``).

    ``timeout`` is the default deadline of every call in seconds (a call's own
    ``timeout=`` wins); the server also caps calls at its
    ``COWRIE_STATS_DEFAULT_DEADLINE_SECONDS``. ``wait_for_ready`` makes calls wait for
    a server that is not up yet (until the deadline) instead of failing at once.
    """

    def __init__(
        self,
        target: str = "localhost:50051",
        *,
        api_key: str | None = None,
        tls: bool = False,
        root_certificates: bytes | None = None,
        certificate_chain: bytes | None = None,
        private_key: bytes | None = None,
        server_name: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        wait_for_ready: bool = False,
    ) -> None:
        if (certificate_chain is None) != (private_key is None):
            raise ValueError("a client certificate and its private key go together")
        self.target = target
        self.timeout = timeout
        self.wait_for_ready = wait_for_ready
        self._metadata: tuple[tuple[str, str], ...] = ()
        if api_key is not None:
            if not API_KEY_PATTERN.fullmatch(api_key.strip()):
                raise ValueError("an API key is printable ASCII without spaces")
            self._metadata = (("authorization", f"Bearer {api_key.strip()}"),)
        options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
        if tls or root_certificates or certificate_chain:
            credentials = grpc.ssl_channel_credentials(
                root_certificates, private_key, certificate_chain
            )
            self._channel = grpc.secure_channel(target, credentials, options)
        else:
            self._channel = grpc.insecure_channel(target, options)
        self._stub = api.CowrieStatsServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    @classmethod
    def from_settings(cls, settings: ClientSettings) -> StatsClient:
        """A client for ``settings``; SettingsError when a file or value is unusable."""
        try:
            return cls(
                settings.target,
                api_key=settings.api_key,
                tls=settings.tls,
                root_certificates=_read_pem("CA file", settings.ca_file),
                certificate_chain=_read_pem("client certificate", settings.cert_file),
                private_key=_read_pem("client key", settings.key_file),
                server_name=settings.server_name,
                timeout=settings.timeout,
            )
        except SettingsError:
            raise
        except ValueError as error:  # a key that cannot travel in a header, half an mTLS pair
            raise SettingsError(str(error)) from None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> StatsClient:
        """A client configured by the ``COWRIE_STATS_*`` variables (default os.environ)."""
        return cls.from_settings(ClientSettings.from_env(env))

    def _connecting(self) -> bool:
        """True while the channel has no connection (connecting, or failing to).

        Read from the channel core directly: ``Channel.subscribe`` starts a polling
        thread that raises "Cannot monitor channel state: Channel closed!" when the
        channel is closed under it. A grpc without that method reads as connected.
        """
        check = getattr(getattr(self._channel, "_channel", None), "check_connectivity_state", None)
        if check is None:  # pragma: no cover - every grpcio we support has it
            return False
        return bool(check(False) in _NOT_CONNECTED)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> StatsClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _call(
        self,
        method: Callable[..., Response],
        request: Message,
        timeout: float | None,
        read_from_primary: bool = False,
    ) -> Response:
        metadata = self._metadata + (
            (("x-cowrie-read-from", "primary"),) if read_from_primary else ()
        )
        try:
            return method(
                request,
                timeout=self.timeout if timeout is None else timeout,
                metadata=metadata,
                wait_for_ready=self.wait_for_ready,
            )
        except grpc.RpcError as error:
            if not isinstance(error, grpc.Call):  # pragma: no cover - a unary call raises its Call
                raise
            raise error_from_call(error, connected=not self._connecting()) from None

    # One method per RPC of CowrieStatsService, named after it.

    def get_session_stats(
        self,
        *,
        since: timedelta | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        sensors: Sequence[str] = (),
        bucket: BucketName | None = None,
        timeout: float | None = None,
        read_from_primary: bool = False,
    ) -> api.GetSessionStatsResponse:
        """Sessions, logins, commands and downloads; ``bucket`` adds an hourly/daily series."""
        request = api.GetSessionStatsRequest(
            time_range=time_range(since=since, start=start, end=end),
            sensors=list(sensors),
            bucket=BUCKETS[bucket] if bucket else api.BUCKET_UNSPECIFIED,
        )
        return self._call(self._stub.GetSessionStats, request, timeout, read_from_primary)

    def get_threat_stats(
        self,
        *,
        since: timedelta | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        sensors: Sequence[str] = (),
        top_n: int | None = None,
        timeout: float | None = None,
        read_from_primary: bool = False,
    ) -> api.GetThreatStatsResponse:
        """Rankings of source IPs, usernames, passwords, credentials, commands, downloads."""
        request = api.GetThreatStatsRequest(
            time_range=time_range(since=since, start=start, end=end),
            sensors=list(sensors),
            top_n=top_n or 0,
        )
        return self._call(self._stub.GetThreatStats, request, timeout, read_from_primary)

    def get_sensor_stats(
        self,
        *,
        since: timedelta | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        sensors: Sequence[str] = (),
        stale_after: timedelta | None = None,
        timeout: float | None = None,
        read_from_primary: bool = False,
    ) -> api.GetSensorStatsResponse:
        """Per-sensor activity; ``stale_after`` (default 1 h) decides which are stale."""
        request = api.GetSensorStatsRequest(
            time_range=time_range(since=since, start=start, end=end),
            sensors=list(sensors),
            stale_after=_duration(stale_after) if stale_after is not None else None,
        )
        return self._call(self._stub.GetSensorStats, request, timeout, read_from_primary)

    def check_health(self, service: str = SERVICE_NAME, *, timeout: float | None = None) -> str:
        """The ``grpc.health.v1`` status name: SERVING, NOT_SERVING, SERVICE_UNKNOWN..."""
        request = health_pb2.HealthCheckRequest(service=service)
        reply = self._call(self._health.Check, request, timeout)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
