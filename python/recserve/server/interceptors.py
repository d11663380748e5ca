"""Maps exceptions from the servicer to gRPC status codes, in one place."""

from __future__ import annotations

import contextvars
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
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


# When the server took the call this task or handler thread is handling.
_accepted: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "recserve_call_accepted", default=None
)


def accepted_at() -> float | None:
    """When the server took the unary call being handled (``time.monotonic()``), before
    it waited for a handler thread; None outside a unary handler."""
    return _accepted.get()


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


class ExceptionToStatusInterceptor(grpc.aio.ServerInterceptor):
    """Turns exceptions raised by unary handlers into statuses (the servicer logs them
    with the request id), and undecodable request bytes into INVALID_ARGUMENT.

    It also notes when each unary call was taken (:func:`accepted_at`): gRPC runs
    ``intercept_service`` on its event loop as it takes the call, before a plain
    function's call waits for a handler thread, and that wait counts against
    --max-queue-ms. A coroutine handler keeps its kind (gRPC runs it on the loop)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        accepted = time.monotonic()
        handler = await continuation(details)
        if handler is None:
            return handler
        if handler.stream_stream is not None:
            return self._stream_stream(handler)
        if handler.unary_unary is None:
            return handler
        inner = handler.unary_unary
        if inspect.iscoroutinefunction(inner):
            guarded: Callable[..., Any] = _guarded_coroutine(inner, accepted)
        else:
            guarded = _guarded_function(inner, accepted)
        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=_lenient(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )

    @staticmethod
    def _stream_stream(handler: Any) -> Any:
        """A stream whose next message does not decode ends with INVALID_ARGUMENT (a
        stream handler on the loop: RankStream's coroutine, reflection's generator)."""
        inner = handler.stream_stream

        def checked(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            async def decoded() -> AsyncIterator[Any]:
                async for request in requests:
                    if isinstance(request, _Undecodable):
                        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
                    yield request

            return decoded()

        if inspect.isasyncgenfunction(inner):

            async def guarded(requests: Any, context: grpc.aio.ServicerContext) -> Any:
                async for answer in inner(checked(requests, context), context):
                    yield answer

        elif inspect.iscoroutinefunction(inner):

            async def guarded(requests: Any, context: grpc.aio.ServicerContext) -> Any:  # type: ignore[misc]
                return await inner(checked(requests, context), context)

        else:
            return handler
        return grpc.stream_stream_rpc_method_handler(
            guarded,
            request_deserializer=_lenient(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )


def _guarded_coroutine(inner: Callable[..., Awaitable[Any]], accepted: float) -> Callable[..., Any]:
    async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, _Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        _accepted.set(accepted)  # the call's own task: nothing to reset
        try:
            return await inner(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001 - every error becomes a status, never a crash
            code, message = status_for(exc)
            await context.abort(code, message)  # abort() raises; nothing is returned

    return guarded


def _guarded_function(inner: Callable[..., Any], accepted: float) -> Callable[..., Any]:
    def guarded(request: Any, context: grpc.ServicerContext) -> Any:
        if isinstance(request, _Undecodable):
            return context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        token = _accepted.set(accepted)  # a handler thread: reset for its next call
        try:
            return inner(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001 - every error becomes a status, never a crash
            code, message = status_for(exc)
            return context.abort(code, message)  # abort() raises; nothing is returned
        finally:
            _accepted.reset(token)

    return guarded
