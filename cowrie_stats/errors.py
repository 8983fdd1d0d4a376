"""Errors of the service and the one place where they become gRPC status codes.

Like python-api-core's ``exceptions`` module: each error class names its code;
:func:`to_status` builds a ``google.rpc.Status`` with rich details
(``BadRequest`` field violations for INVALID_ARGUMENT, ``ErrorInfo`` for the
rest). Database and unexpected errors are translated here too, so neither SQL
text nor stack traces reach a client.
"""

from __future__ import annotations

import functools
import logging
import re
import uuid
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from sqlalchemy import exc as sa_exc

log = logging.getLogger(__name__)

DOMAIN = "cowrie-stats"
# An error's size must not grow with the request: 10,000 bad sensor names give
# the first MAX_VIOLATIONS violations and a count of the rest, each text cut.
MAX_VIOLATIONS = 20
MAX_FIELD_CHARS = 100
MAX_DESCRIPTION_CHARS = 300
MAX_MESSAGE_CHARS = 2000
MAX_METADATA_VALUE_CHARS = 1000

# Every call has a request id: the caller's own ``x-request-id`` when it is a short
# token, else a new one. It is in the access-log line and goes back to the caller in
# the ``x-request-id`` response header (a trailer when the call fails), so one id
# finds the call in the server log.
REQUEST_ID_HEADER = "x-request-id"
REQUEST_ID: ContextVar[str | None] = ContextVar("cowrie_stats_request_id", default=None)
# The fields an INVALID_ARGUMENT was about, for the access log.
VIOLATED_FIELDS: ContextVar[tuple[str, ...]] = ContextVar(
    "cowrie_stats_violated_fields", default=()
)
_CALLER_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def request_id_of(metadata: Sequence[tuple[str, str | bytes]] | None) -> str:
    """The caller's ``x-request-id`` when it is a token of at most 64 safe characters.

    Anything else (missing, longer, other characters: it lands in logs) gets a new id.
    """
    for key, value in metadata or ():
        if key == REQUEST_ID_HEADER and isinstance(value, str):
            if _CALLER_REQUEST_ID.fullmatch(value):
                return value
            break
    return uuid.uuid4().hex


def shorten(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, saying how long it was."""
    if len(text) <= limit:
        return text
    marker = f"... ({len(text)} characters)"
    return text[: max(limit - len(marker), 0)] + marker


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str

    def shortened(self) -> FieldViolation:
        return FieldViolation(
            shorten(self.field, MAX_FIELD_CHARS), shorten(self.description, MAX_DESCRIPTION_CHARS)
        )


class ServiceError(Exception):
    """Base of the errors a caller can act on; ``reason`` is a stable UPPER_SNAKE code."""

    code = grpc.StatusCode.INTERNAL
    reason = "INTERNAL"

    def __init__(self, message: str, metadata: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.metadata = metadata or {}


class InvalidArgumentError(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"

    def __init__(self, violations: Sequence[FieldViolation], total: int = 0) -> None:
        """``total``: how many there were, when ``violations`` holds only the first ones."""
        total = max(total, len(violations))
        self.violations = [v.shortened() for v in violations[:MAX_VIOLATIONS]]
        self.unlisted = total - len(self.violations)
        summary = "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        if self.unlisted:
            summary += f"; and {self.unlisted} more violations"
        super().__init__(
            f"invalid request: {summary}", {"violations": str(total)} if self.unlisted else None
        )


class NotFoundError(ServiceError):
    code = grpc.StatusCode.NOT_FOUND
    reason = "SENSOR_NOT_FOUND"


class UnavailableError(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = "DATABASE_UNAVAILABLE"


class DeadlineExceededError(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "QUERY_CANCELLED"


class ResourceExhaustedError(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "DATABASE_POOL_EXHAUSTED"


class ResponseTooLargeError(ResourceExhaustedError):
    """The answer is larger than the server may send; the same call fails again."""

    reason = "RESPONSE_TOO_LARGE"

    def __init__(self, response_bytes: int, max_bytes: int) -> None:
        super().__init__(
            f"the answer is {response_bytes} bytes, more than the {max_bytes} the server "
            "sends; ask for fewer entries (top_n), fewer sensors or a narrower window",
            {"response_bytes": str(response_bytes), "max_response_bytes": str(max_bytes)},
        )


class UnauthenticatedError(ServiceError):
    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "API_KEY_INVALID"


def _is_query_cancelled(error: BaseException) -> bool:
    orig = getattr(error, "orig", None)
    # psycopg: QueryCanceled (SQLSTATE 57014) raised by statement_timeout.
    return getattr(orig, "sqlstate", None) == "57014"


def classify(error: BaseException) -> ServiceError | None:
    """The :class:`ServiceError` a known failure stands for; None when unexpected."""
    if isinstance(error, ServiceError):
        return error
    if isinstance(error, sa_exc.StatementError) and isinstance(error.orig, ServiceError):
        return error.orig  # raised by one of our engine event hooks
    if isinstance(error, sa_exc.TimeoutError):
        return ResourceExhaustedError("all database connections are busy; retry with backoff")
    if isinstance(error, sa_exc.DBAPIError) and _is_query_cancelled(error):
        return DeadlineExceededError("the query was cancelled at the request deadline")
    if isinstance(error, sa_exc.OperationalError | sa_exc.InterfaceError) or (
        isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated
    ):
        return UnavailableError("the database is unavailable; retry with backoff")
    return None


def translate(error: BaseException) -> ServiceError:
    """Map any exception raised while serving to a :class:`ServiceError`."""
    known = classify(error)
    if known is not None:
        return known
    request_id = REQUEST_ID.get() or uuid.uuid4().hex
    log.error("unexpected error (request_id=%s)", request_id, exc_info=error)
    return ServiceError("internal error", {"request_id": request_id})


def _pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def to_status(error: ServiceError) -> grpc.Status:
    """The ``grpc.Status`` (with google.rpc details) for a service error."""
    details: list[any_pb2.Any] = []
    metadata = {
        shorten(key, MAX_FIELD_CHARS): shorten(value, MAX_METADATA_VALUE_CHARS)
        for key, value in error.metadata.items()
    }
    if isinstance(error, InvalidArgumentError):
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in error.violations
            ]
        )
        details.append(_pack(bad_request))
    if not isinstance(error, InvalidArgumentError) or error.unlisted:
        # With more violations than listed, ErrorInfo's metadata "violations" has their count.
        info = error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=metadata)
        details.append(_pack(info))
    status = status_pb2.Status(
        code=getattr(code_pb2, error.code.name),
        message=shorten(error.message, MAX_MESSAGE_CHARS),
        details=details,
    )
    return rpc_status.to_status(status)


class _Status(NamedTuple):
    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]


class _StatusWithRequestId(_Status, grpc.Status):
    """A ``grpc.Status`` whose trailers also carry the call's request id."""


def abort(context: grpc.ServicerContext, error: BaseException) -> None:
    """Abort the RPC with the status for ``error`` (raises, as grpc does)."""
    service_error = translate(error)
    if isinstance(service_error, InvalidArgumentError):
        VIOLATED_FIELDS.set(tuple(v.field for v in service_error.violations))
    status = to_status(service_error)
    request_id = REQUEST_ID.get()
    if request_id is not None:
        trailers = (*status.trailing_metadata, (REQUEST_ID_HEADER, request_id))
        status = _StatusWithRequestId(status.code, status.details, trailers)
    context.abort_with_status(status)


Method = TypeVar("Method", bound=Callable[..., Any])


def rpc_errors(method: Method) -> Method:
    """Decorate a servicer method so that every failure becomes a proper status."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except Exception as error:
            abort(context, error)
            raise  # pragma: no cover - abort always raises

    return wrapper  # type: ignore[return-value]
