"""Cancels streams that wait too long on their client.

A RankStream holds a handler thread for as long as it lasts, also while it waits for the
client's next request or for the client to read an answer (flow control blocks the
write). ``--workers`` clients that open streams and go quiet, or never read, would hold
every handler thread. A stream that has waited on its client for more than
``idle_seconds`` at a stretch is cancelled; the time the server spends answering does not
count.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import grpc

log = logging.getLogger("recserve.server")


class WatchedStream:
    """One stream's state: waiting on its client since a time, or working (None)."""

    def __init__(self, context: grpc.ServicerContext) -> None:
        self.context = context
        self.waiting_since: float | None = time.monotonic()  # for its first request

    def working(self) -> None:
        self.waiting_since = None

    def waiting(self) -> None:
        self.waiting_since = time.monotonic()


class StreamWatch:
    """Watches streams from one daemon thread, started with the first stream and
    stopped by :meth:`close`. ``idle_seconds`` 0: streams are never cancelled.
    ``on_cancel()`` is called for each stream cancelled."""

    def __init__(self, idle_seconds: float, on_cancel: Callable[[], None] | None = None) -> None:
        self.idle_seconds = idle_seconds
        self._on_cancel = on_cancel
        self._streams: set[WatchedStream] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @contextmanager
    def watch(self, context: grpc.ServicerContext) -> Iterator[WatchedStream]:
        """Watches one stream while the block runs; the stream marks itself working
        when it has a request and waiting again before it hands out the answer."""
        stream = WatchedStream(context)
        if self.idle_seconds <= 0:
            yield stream
            return
        with self._lock:
            self._streams.add(stream)
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name="stream-watch", daemon=True)
                self._thread.start()
        try:
            yield stream
        finally:
            with self._lock:
                self._streams.discard(stream)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        # Checking 4 times per limit cancels a stream within 1.25 limits of its last sign.
        while not self._stop.wait(min(1.0, self.idle_seconds / 4)):
            now = time.monotonic()
            with self._lock:
                idle = []
                for stream in self._streams:
                    since = stream.waiting_since  # read once: the handler may reset it
                    if since is not None and now - since > self.idle_seconds:
                        idle.append((stream, since))
            for stream, since in idle:
                # One that has moved since it was found idle is left alone.
                if stream.waiting_since == since:
                    self._cancel(stream, now - since)

    def _cancel(self, stream: WatchedStream, waited: float) -> None:
        with self._lock:
            self._streams.discard(stream)  # cancelled once; its handler ends by itself
        try:
            if not stream.context.is_active():  # ending already
                return
            log.warning(
                "cancelling a RankStream from %s: it waited %.1f s on its client (no request "
                "sent, or no answer read); the limit is --stream-idle-seconds",
                stream.context.peer(),
                waited,
            )
            if self._on_cancel is not None:
                self._on_cancel()  # first: a client may see CANCELLED and scrape at once
            stream.context.cancel()
        except Exception:  # the watch must outlive any one stream
            log.exception("cancelling an idle RankStream failed")
