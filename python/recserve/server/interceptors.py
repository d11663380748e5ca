"""Maps exceptions from the servicer to gRPC status codes, in one place."""

from __future__ import annotations

import contextvars
import inspect
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
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


# gRPC's own services, passed through as they are: health probes must reach a busy
# server, and neither counts against --max-in-flight.
UNGUARDED_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

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


class GuardInterceptor(grpc.aio.ServerInterceptor):
    """What every unary and bidirectional call of the server goes through:

    - ``--max-in-flight``: beyond ``max_in_flight`` calls being handled, a new one is
      refused with RESOURCE_EXHAUSTED as the server takes it, before its request is
      parsed (0: no limit). gRPC's health and reflection services pass unguarded.
    - exceptions raised by handlers become statuses (the servicer logs them with the
      request id), and undecodable request bytes INVALID_ARGUMENT;
    - when each unary call was taken (:func:`accepted_at`): gRPC runs
      ``intercept_service`` on its event loop as it takes the call, before a plain
      function's call waits for a handler thread, and that wait counts against
      --max-queue-ms.

    A coroutine handler keeps its kind (gRPC runs it on the loop)."""

    def __init__(self, max_in_flight: int = 0) -> None:
        self.max_in_flight = max_in_flight
        self._in_flight = 0
        self._lock = threading.Lock()  # handlers on the loop and on handler threads

    @contextmanager
    def _counted(self) -> Iterator[None]:
        with self._lock:
            self._in_flight += 1
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        accepted = time.monotonic()
        handler = await continuation(details)
        if handler is None or details.method.startswith(UNGUARDED_PREFIXES):
            return handler
        if handler.stream_stream is None and handler.unary_unary is None:
            return handler
        if self.max_in_flight and self._in_flight >= self.max_in_flight:
            return refusal(
                handler,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"server over capacity: {self._in_flight} requests in progress, the "
                f"server's --max-in-flight ({self.max_in_flight}); retry later (with "
                "backoff) or add replicas",
            )
        if handler.stream_stream is not None:
            return self._stream_stream(handler)
        inner = handler.unary_unary
        if inspect.iscoroutinefunction(inner):
            guarded: Callable[..., Any] = self._guarded_coroutine(inner, accepted)
        else:
            guarded = self._guarded_function(inner, accepted)
        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=_lenient(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )

    def _stream_stream(self, handler: Any) -> Any:
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
                with self._counted():
                    async for answer in inner(checked(requests, context), context):
                        yield answer

        elif inspect.iscoroutinefunction(inner):

            async def guarded(requests: Any, context: grpc.aio.ServicerContext) -> Any:  # type: ignore[misc]
                with self._counted():
                    return await inner(checked(requests, context), context)

        else:
            return handler
        return grpc.stream_stream_rpc_method_handler(
            guarded,
            request_deserializer=_lenient(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )

    def _guarded_coroutine(
        self, inner: Callable[..., Awaitable[Any]], accepted: float
    ) -> Callable[..., Any]:
        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, _Undecodable):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
            _accepted.set(accepted)  # the call's own task: nothing to reset
            with self._counted():
                try:
                    return await inner(request, context)
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:  # noqa: BLE001 - every error becomes a status
                    code, message = status_for(exc)
                    await context.abort(code, message)  # abort() raises; nothing is returned

        return guarded

    def _guarded_function(self, inner: Callable[..., Any], accepted: float) -> Callable[..., Any]:
        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            if isinstance(request, _Undecodable):
                return context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
            token = _accepted.set(accepted)  # a handler thread: reset for its next call
            with self._counted():
                try:
                    return inner(request, context)
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:  # noqa: BLE001 - every error becomes a status
                    code, message = status_for(exc)
                    return context.abort(code, message)  # abort() raises; nothing returned
                finally:
                    _accepted.reset(token)

        return guarded


def refusal(
    handler: grpc.RpcMethodHandler | None,
    code: grpc.StatusCode,
    message: str,
    on_refuse: Callable[[grpc.aio.ServicerContext], None] | None = None,
) -> Any:
    """A handler of the same kind as ``handler`` that answers ``code`` with ``message``,
    without parsing the request (an unknown method's refusal is a stream);
    ``on_refuse(context)`` runs first."""

    async def refuse(_request: Any, context: grpc.aio.ServicerContext) -> Any:
        if on_refuse is not None:
            on_refuse(context)
        await context.abort(code, message)

    if handler is None or handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(refuse)
    serializer = handler.response_serializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(refuse, response_serializer=serializer)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(refuse, response_serializer=serializer)
    return grpc.stream_unary_rpc_method_handler(refuse, response_serializer=serializer)
