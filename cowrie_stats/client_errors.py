"""The typed errors of :mod:`cowrie_stats.client`: what a failed call means to its caller.

Each class says what to do about it: fix the request, fix the credentials, or retry
later. :func:`error_from_call` turns a failed gRPC call (its code and google.rpc
details) into one of them. Import them from :mod:`cowrie_stats.client`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from cowrie_stats.errors import FieldViolation


class StatsError(Exception):
    """A call failed. ``str()`` is one line: the code, the reason and the details.

    Attributes: ``code`` (:class:`grpc.StatusCode`), ``message`` (the server's status
    message), ``reason`` and ``domain`` (from ``google.rpc.ErrorInfo``, or None),
    ``metadata`` (ErrorInfo metadata, e.g. ``{"sensors": "a,b"}``), ``field_violations``
    (from ``google.rpc.BadRequest``), and ``retryable``: whether the same call may
    succeed later (with exponential backoff; every RPC is idempotent).
    """

    retryable: ClassVar[bool] = False

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str | None = None,
        domain: str | None = None,
        metadata: Mapping[str, str] | None = None,
        field_violations: Sequence[FieldViolation] = (),
    ) -> None:
        self.code = code
        self.message = message
        self.reason = reason
        self.domain = domain
        self.metadata = dict(metadata or {})
        self.field_violations = tuple(field_violations)
        super().__init__(self.summary())

    def summary(self) -> str:
        head = self.code.name + (f" {self.reason}" if self.reason else "")
        if self.field_violations:
            return f"{head}: " + "; ".join(
                f"{v.field}: {v.description}" for v in self.field_violations
            )
        extra = ", ".join(f"{k}={v}" for k, v in sorted(self.metadata.items()))
        return f"{head}: {self.message}" + (f" ({extra})" if extra else "")


class ServerUnreachableError(StatsError):
    """No server answered: refused, unresolvable, TLS handshake failed, or draining."""

    retryable = True


class AccessDeniedError(StatsError):
    """UNAUTHENTICATED or PERMISSION_DENIED: a missing or wrong API key or certificate."""


class InvalidRequestError(StatsError):
    """INVALID_ARGUMENT or OUT_OF_RANGE; ``field_violations`` lists every broken rule."""


class NotFoundError(StatsError):
    """NOT_FOUND, e.g. reason SENSOR_NOT_FOUND with metadata ``sensors``."""


class ResponseTooLargeError(StatsError):
    """RESOURCE_EXHAUSTED, reason RESPONSE_TOO_LARGE: the answer is more than the server
    sends (metadata ``response_bytes``, ``max_response_bytes``). Ask for fewer entries
    (``top_n``), fewer sensors or a narrower window; the same call fails again."""


class ServiceUnavailableError(StatsError):
    """The server answered but cannot serve now (database down, overloaded): retry."""

    retryable = True


class DeadlineExceededError(StatsError):
    """The call's deadline passed; narrow the window or allow a longer ``timeout``."""

    retryable = True


class ServerError(StatsError):
    """INTERNAL, UNKNOWN, UNIMPLEMENTED and the other codes: report it (see metadata)."""


_BY_CODE: dict[grpc.StatusCode, type[StatsError]] = {
    grpc.StatusCode.UNAUTHENTICATED: AccessDeniedError,
    grpc.StatusCode.PERMISSION_DENIED: AccessDeniedError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequestError,
    grpc.StatusCode.OUT_OF_RANGE: InvalidRequestError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.UNAVAILABLE: ServiceUnavailableError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ServiceUnavailableError,
    grpc.StatusCode.ABORTED: ServiceUnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
}


TOO_LARGE = "RESPONSE_TOO_LARGE"


def _details(error: grpc.Call) -> tuple[error_details_pb2.ErrorInfo | None, list[FieldViolation]]:
    """The ErrorInfo and the BadRequest field violations carried by a failed call."""
    try:
        status = rpc_status.from_call(error)
    except ValueError:  # details that contradict the status: ignore them, keep the code
        status = None
    info: error_details_pb2.ErrorInfo | None = None
    violations: list[FieldViolation] = []
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            violations += [
                FieldViolation(v.field, v.description) for v in bad_request.field_violations
            ]
    return info, violations


def error_from_call(error: grpc.Call, *, connected: bool = True) -> StatsError:
    """The :class:`StatsError` for a failed call; ``connected``: the channel got READY."""
    code = error.code()
    info, violations = _details(error)
    kind = _BY_CODE.get(code, ServerError)
    has_details = info is not None or bool(violations)
    # Without rich details an UNAVAILABLE comes from the transport, not from our server;
    # a deadline that passed before any connection was made is one too.
    if (code == grpc.StatusCode.UNAVAILABLE and not has_details) or (
        code == grpc.StatusCode.DEADLINE_EXCEEDED and not connected
    ):
        kind = ServerUnreachableError
    elif code == grpc.StatusCode.RESOURCE_EXHAUSTED and info and info.reason == TOO_LARGE:
        kind = ResponseTooLargeError
    return kind(
        code,
        error.details() or "",
        reason=info.reason if info is not None else None,
        domain=info.domain if info is not None else None,
        metadata=dict(info.metadata) if info is not None else None,
        field_violations=violations,
    )
