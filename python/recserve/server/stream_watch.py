"""Ends streams that wait too long on their client.

A RankStream is a coroutine on the server's event loop: one whose client goes quiet (no
next request) or stops reading (flow control holds the write of an answer) holds no
thread, but it holds its connection's stream, its buffers and a slot of --max-in-flight.
A stream that has waited on its client for more than ``idle_seconds`` at a stretch, from
handing out an answer (or from its start) to receiving the next request, is ended with
CANCELLED; the time the server spends answering does not count.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

log = logging.getLogger("recserve.server")


class StreamIdle(Exception):
    """The stream waited on its client past the limit."""

    def __init__(self, waited: float, limit: float) -> None:
        super().__init__(
            f"the stream waited {waited:.1f} s on its client (no request sent, or no answer "
            f"read); the server's --stream-idle-seconds is {limit:g}"
        )


class IdleLimit:
    """The waits of one stream on its client, each stretch at most ``idle_seconds``
    (0: no limit). ``on_cancel()`` is called for each stream ended for it."""

    def __init__(self, idle_seconds: float, on_cancel: Callable[[], None] | None = None) -> None:
        self.idle_seconds = idle_seconds
        self._on_cancel = on_cancel

    def stream(self, context: grpc.aio.ServicerContext) -> WatchedStream:
        return WatchedStream(self, context)

    async def cancel(self, context: grpc.aio.ServicerContext, idle: StreamIdle) -> None:
        """Ends the stream with CANCELLED, logged and counted."""
        log.warning("cancelling a RankStream from %s: %s", context.peer(), idle)
        if self._on_cancel is not None:
            self._on_cancel()  # first: a client may see CANCELLED and scrape at once
        await context.abort(grpc.StatusCode.CANCELLED, str(idle))


class WatchedStream:
    """One stream's reads and writes, timed against its limit: a stretch of waiting
    starts when the stream opens and again when an answer is handed out."""

    def __init__(self, limit: IdleLimit, context: grpc.aio.ServicerContext) -> None:
        self._limit = limit.idle_seconds
        self._context = context
        self._waiting_since = time.monotonic()

    def _left(self) -> float | None:
        if self._limit <= 0:
            return None
        waited = time.monotonic() - self._waiting_since
        if waited >= self._limit:
            raise StreamIdle(waited, self._limit)
        return self._limit - waited

    async def _within_limit(self, waiting: Any) -> Any:
        left = self._left()
        if left is None:
            return await waiting
        try:
            return await asyncio.wait_for(waiting, left)
        except TimeoutError:
            raise StreamIdle(time.monotonic() - self._waiting_since, self._limit) from None

    async def requests(self, requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """The client's requests; raises StreamIdle when the next one is late."""
        iterator = aiter(requests)
        while True:
            try:
                request = await self._within_limit(anext(iterator))
            except StopAsyncIteration:
                return
            yield request

    async def send(self, answer: Any) -> None:
        """Writes an answer; the wait for the client to read it counts, and so does the
        wait for its next request after it."""
        self._waiting_since = time.monotonic()
        await self._within_limit(self._context.write(answer))
