"""Maps exceptions from the servicer to gRPC status codes, in one place."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from recserve.errors import (
    DeadlineExceeded,
    InvalidRequest,
    ModelNotFound,
    ModelUnavailable,
    Overloaded,
)

# Only errors raised on purpose reach the client with their message. Anything else (a
# ValueError from numpy or torch included) is a server fault: INTERNAL, details in the log.
_STATUS_BY_ERROR: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (ModelNotFound, grpc.StatusCode.NOT_FOUND),
    (ModelUnavailable, grpc.StatusCode.UNAVAILABLE),
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
)


def status_for(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status and message a client sees for ``error``."""
    for error_type, code in _STATUS_BY_ERROR:
        if isinstance(error, error_type):
            return code, str(error)
    return grpc.StatusCode.INTERNAL, "internal error; the server log has the details"


class ExceptionToStatusInterceptor(grpc.ServerInterceptor):
    """Turns exceptions raised by unary handlers into statuses (the servicer logs them
    with the request id)."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary

        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                return inner(request, context)
            except Exception as exc:  # noqa: BLE001 - every error becomes a status, never a crash
                code, message = status_for(exc)
                return context.abort(code, message)  # abort() raises; nothing is returned

        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
