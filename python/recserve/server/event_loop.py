"""gRPC's asyncio server on an event loop of its own thread, behind the blocking calls
the rest of the server makes (start, stop with a grace period, wait for the end).

The loop takes every call from gRPC's core and runs the coroutine handlers (Rank,
RankStream, Recommend); plain-function handlers and the work a coroutine hands off
(``asyncio.to_thread``) run on ``executor``, the handler threads of ``--workers``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from concurrent import futures
from typing import Any, TypeVar

import grpc

T = TypeVar("T")

# How long a stopped server's leftover tasks (a coroutine waiting on a handler thread)
# get to end before the loop closes.
TASKS_GRACE_SECONDS = 5.0


class LoopServer:
    """A ``grpc.aio`` server made by ``make()`` on a new event loop thread."""

    def __init__(
        self, make: Callable[[], grpc.aio.Server], executor: futures.ThreadPoolExecutor
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._loop.set_default_executor(executor)
        self._executor = executor
        self._thread = threading.Thread(target=self._run, name="grpc-loop", daemon=True)
        self._thread.start()
        self._terminated = threading.Event()
        self._stopping: futures.Future[None] | None = None
        self._lock = threading.Lock()

        async def made() -> grpc.aio.Server:  # grpc.aio binds a server to the running loop
            return make()

        self.server = self.run(made())

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    @property
    def stopped(self) -> bool:
        """True once :meth:`stop` has been called: the loop ends, nothing more runs on it."""
        return self._stopping is not None

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Runs ``coroutine`` on the loop and returns its result (from another thread)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def start(self) -> None:
        self.run(self.server.start())

    def stop(self, grace: float | None) -> threading.Event:
        """New calls are refused; calls in progress get ``grace`` seconds (None: as long
        as they need), then are cancelled. The event is set once the loop has ended."""
        with self._lock:
            if self._stopping is None:
                self._stopping = asyncio.run_coroutine_threadsafe(self._stop(grace), self._loop)
        return self._terminated

    async def _stop(self, grace: float | None) -> None:
        try:
            await self.server.stop(grace)
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            if others:
                await asyncio.wait(others, timeout=TASKS_GRACE_SECONDS)
        finally:
            self._loop.call_soon(self._loop.stop)
            self._executor.shutdown(wait=False)
            self._loop.call_soon(self._terminated.set)

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        """Blocks until the server has stopped; False if ``timeout`` passed first."""
        return self._terminated.wait(timeout)
