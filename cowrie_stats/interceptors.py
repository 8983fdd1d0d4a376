"""Server interceptors: access log and metrics for every call (and API keys)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc

from cowrie_stats import metrics
from cowrie_stats.settings import Settings

log = logging.getLogger("cowrie_stats.access")

if TYPE_CHECKING:  # grpc-stubs make these generic; the runtime classes are not
    Interceptor = grpc.ServerInterceptor[Any, Any]
    Handler = grpc.RpcMethodHandler[Any, Any]
else:
    Interceptor = grpc.ServerInterceptor
    Handler = grpc.RpcMethodHandler


def _code_of(context: grpc.ServicerContext, failed: bool) -> grpc.StatusCode:
    code = context.code()  # type: ignore[attr-defined]
    if isinstance(code, grpc.StatusCode):
        return code
    return grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK


class AccessLogInterceptor(Interceptor):
    """Logs method, status code and duration of every unary call; counts them."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Handler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method
        inner = handler.unary_unary

        def logged(request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            metrics.STARTED.labels(method).inc()
            failed = False
            try:
                return inner(request, context)
            except BaseException:
                failed = True
                raise
            finally:
                elapsed = time.perf_counter() - started
                code = _code_of(context, failed)
                metrics.HANDLED.labels(method, code.name).inc()
                metrics.HANDLING.labels(method).observe(elapsed)
                log.info(
                    "rpc",
                    extra={
                        "method": method,
                        "code": code.name,
                        "duration_ms": round(elapsed * 1000, 2),
                    },
                )

        return grpc.unary_unary_rpc_method_handler(
            logged,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def build_interceptors(settings: Settings) -> list[Interceptor]:
    interceptors: list[Interceptor] = [AccessLogInterceptor()]
    return interceptors
