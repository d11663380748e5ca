"""Maps exceptions from the servicer to gRPC status codes, in one place."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from recserve.engine.errors import (
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


_this_call = threading.local()


def accepted_at() -> float | None:
    """When the server took the unary call this thread handles (``time.monotonic()``),
    before the call waited for a handler thread; None outside a unary handler."""
    return getattr(_this_call, "accepted", None)


class _Undecodable:
    """Stands for request bytes that are not the method's message (grpc itself would
    answer INTERNAL, a server fault, for a client's mistake)."""

    def __init__(self, error: Exception) -> None:
        self.message = f"the request is not a serialized message of this method ({error})"


def _lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # noqa: BLE001 - any parse failure is the client's
            return _Undecodable(exc)

    return deserialize


class ExceptionToStatusInterceptor(grpc.ServerInterceptor):
    """Turns exceptions raised by unary handlers into statuses (the servicer logs them
    with the request id), and undecodable request bytes into INVALID_ARGUMENT.

    It also notes when each unary call was taken (:func:`accepted_at`): gRPC runs
    ``intercept_service`` on the thread that takes calls from its core, before the call
    waits for a handler thread, and that wait counts against --max-queue-ms."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        accepted = time.monotonic()
        handler = continuation(details)
        if handler is None:
            return handler
        if handler.stream_stream is not None:
            return self._stream_stream(handler)
        if handler.unary_unary is None:
            return handler
        inner = handler.unary_unary

        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            if isinstance(request, _Undecodable):
                return context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
            _this_call.accepted = accepted
            try:
                return inner(request, context)
            except Exception as exc:  # noqa: BLE001 - every error becomes a status, never a crash
                code, message = status_for(exc)
                return context.abort(code, message)  # abort() raises; nothing is returned
            finally:
                _this_call.accepted = None

        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=_lenient(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )

    @staticmethod
    def _stream_stream(handler: Any) -> Any:
        """A stream whose next message does not decode ends with INVALID_ARGUMENT."""
        inner = handler.stream_stream

        def guarded(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
            def decoded() -> Iterator[Any]:
                for request in requests:
                    if isinstance(request, _Undecodable):
                        context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
                    yield request

            return inner(decoded(), context)

        return grpc.stream_stream_rpc_method_handler(
            guarded,
            request_deserializer=_lenient(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )
