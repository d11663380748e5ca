"""Dynamic batching: concurrent requests for one model share its head and top-k calls.

A request is prepare -> batch compute -> finish (recserve.engine.batch_plan). The caller's
thread prepares its own request (a bad one fails there, alone, with its own
InvalidRequest), puts its share of the batch computation on the model's queue and waits;
``compute_threads`` worker threads per model (the server's --compute-threads: by default
one per core) each take up to ``max_batch_size`` queued requests, run the computation once
for all of them, and wake their callers, who finish their own answers.
A request with no batch work (a cold-start user answered by popularity, a retrieval
model's Rank) is finished by its caller at once, without queueing.

When the worker waits for company (the adaptive delay):

- A request that finds nothing else queued, running or being prepared runs at once: a
  lone request never waits.
- While a batch runs, arrivals queue up; the worker takes them as soon as it is free
  (the running batch was their delay).
- The worker waits for more, at most until the oldest queued request has waited
  ``max_delay_s``, only while the batch is not full and another caller is preparing a
  request (it enqueues within its prepare time): the evidence of concurrent load. A
  prepare that fails, or needs no batch work, ends the wait as well.

Admission is by time, not by count (``max_queue_s``, the server's --max-queue-ms). The
wait that counts starts when the server took the call from gRPC (the request context's
``accepted``), so time spent waiting for a handler thread counts too. The batcher
measures how long requests wait for a compute thread: a new request is expected to wait
as long as the latest ones did (a moving average of their queue times), or at least as
long as the oldest request still queued has already waited; with nothing queued it joins
the next batch, so it waits at most for a running batch to end. A request whose wait so
far plus that expected wait exceeds ``max_queue_s`` is refused before it is prepared,
with Overloaded (RESOURCE_EXHAUSTED) saying which limit it hit; one whose deadline falls
before its expected turn gets DeadlineExceeded at once. A request that waited in this
queue past ``max_queue_s`` all the same (the load rose faster than the average) is refused
when its batch starts, without computing it; its wait for a handler thread was judged at
admission and does not count again. The compute threads run at a lower scheduling
priority (``compute_nice``, server/thread_priority.py), so taking and refusing calls goes
first under overload; calls still waiting in gRPC's core for the server to take them are
outside this admission (docs/performance.md, "Overload").

A request whose deadline passes while it is queued is dropped, not computed: its caller
gets DeadlineExceeded. The waits (for a handler thread, then from enqueue to the batch's
start) are the request's ``queue`` stage. An exception in the batch computation reaches
every caller of that batch as a :class:`BatchFailed` (INTERNAL, the cause chained) and
the worker carries on.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from recserve.engine.batch_plan import Prepared
from recserve.engine.errors import DeadlineExceeded, ModelUnavailable, Overloaded
from recserve.engine.pipeline import CatalogPipeline
from recserve.engine.request_context import RequestContext
from recserve.results import Ranking

from .thread_priority import lower_this_thread
from .torch_threads import adopt_torch_threads

log = logging.getLogger("recserve.server")

__all__ = ["BatchFailed", "Batcher", "runner_factory"]

# Weight of one request's queue time in the moving average admission uses: about the
# last 20 requests count, so the estimate follows a change of load within a batch or two.
QUEUE_AVERAGE_WEIGHT = 0.05


class BatchFailed(RuntimeError):
    """The batch computation a request was part of raised (a server fault: INTERNAL)."""


@dataclass(eq=False)
class _Queued:
    """A prepared request on the queue; the worker fills ``output`` or ``error``."""

    prepared: Prepared
    enqueued: float  # time.perf_counter()
    started: float = 0.0
    output: Any = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


class Batcher:
    """Answers ``rank``/``recommend`` for one pipeline, batching concurrent requests.

    ``on_batch(size)`` is called after each executed batch. :meth:`close` stops the
    worker once everything accepted has been answered. No batching (``--max-batch-size
    1``) is no Batcher: :func:`runner_factory` hands out the pipeline itself."""

    def __init__(
        self,
        pipeline: CatalogPipeline,
        max_batch_size: int,
        max_delay_s: float,
        on_batch: Callable[[int], None] | None = None,
        compute_threads: int = 1,
        max_queue_s: float = 0.0,
        compute_nice: int = 0,
    ) -> None:
        if compute_threads < 1:
            raise ValueError(f"compute_threads must be at least 1; got {compute_threads}")
        if max_queue_s < 0:
            raise ValueError(f"max_queue_s must be non-negative; got {max_queue_s}")
        if max_batch_size < 2:
            raise ValueError(f"max_batch_size must be at least 2; got {max_batch_size}")
        if max_delay_s < 0:
            raise ValueError(f"max_delay_s must be non-negative; got {max_delay_s}")
        self.pipeline = pipeline
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self._on_batch = on_batch
        self._queue: deque[_Queued] = deque()
        self._cond = threading.Condition()
        self._preparing = 0  # callers inside prepare: requests about to be queued
        self._closed = False
        self.max_queue_s = max_queue_s
        self.compute_threads = compute_threads
        self.compute_nice = compute_nice
        self.queue_seconds = 0.0  # moving average of the latest requests' queue times
        name = getattr(getattr(pipeline, "artifact", None), "name", "model")
        self.name = name
        self._workers = [
            threading.Thread(target=self._work, name=f"batch-{name}-{i}", daemon=True)
            for i in range(compute_threads)
        ]
        for worker in self._workers:
            worker.start()

    # -- the pipeline's signatures -----------------------------------------------------

    def rank(
        self,
        user_id: int,
        candidate_item_ids: Sequence[int],
        k: int = 0,
        context: Mapping[str, str] | None = None,
        request_context: RequestContext | None = None,
    ) -> Ranking:
        args = (user_id, candidate_item_ids, k, context, request_context)
        return self._serve(functools.partial(self.pipeline.prepare_rank, *args), request_context)

    def recommend(
        self,
        user_id: int,
        k: int = 0,
        recent_item_ids: Sequence[int] = (),
        include_seen: bool = False,
        context: Mapping[str, str] | None = None,
        request_context: RequestContext | None = None,
    ) -> Ranking:
        args = (user_id, k, recent_item_ids, include_seen, context, request_context)
        return self._serve(
            functools.partial(self.pipeline.prepare_recommend, *args), request_context
        )

    def rank_retrieved(
        self,
        user_id: int,
        item_ids: Sequence[int],
        retriever_scores: Sequence[float],
        k: int = 0,
        recent_item_ids: Sequence[int] = (),
        context: Mapping[str, str] | None = None,
        request_context: RequestContext | None = None,
    ) -> Ranking:
        args = (user_id, item_ids, retriever_scores, k, recent_item_ids, context, request_context)
        return self._serve(
            functools.partial(self.pipeline.prepare_rank_retrieved, *args), request_context
        )

    def close(self) -> None:
        """Refuses new requests, answers the accepted ones, then stops the workers."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for worker in self._workers:
            if worker is not threading.current_thread():
                worker.join()

    # -- callers -----------------------------------------------------------------------

    def expected_wait(self) -> float:
        """Seconds a request queued now is expected to wait for a compute thread."""
        with self._cond:
            return self._expected_wait()

    def _expected_wait(self) -> float:
        if not self._queue:  # the next batch takes it: at most a running batch's time
            return 0.0
        return max(self.queue_seconds, time.perf_counter() - self._queue[0].enqueued)

    def _admit(self, request_context: RequestContext | None) -> None:
        """Refuses a request the queue cannot start in time (called with the lock held).
        The time the call already waited for a handler thread counts."""
        ahead = self._expected_wait()
        waited = 0.0 if request_context is None else request_context.waited()
        wait = waited + ahead
        if self.max_queue_s and wait > self.max_queue_s:
            raise Overloaded(
                f"server over capacity: requests for model {self.name!r} wait about "
                f"{wait * 1000:.0f} ms to start computing ({waited * 1000:.0f} ms for a "
                f"handler thread, {ahead * 1000:.0f} ms for a compute thread, "
                f"{len(self._queue)} queued), more than the server's --max-queue-ms "
                f"({self.max_queue_s * 1000:g}); retry later (with backoff) or add replicas"
            )
        remaining = None if request_context is None else request_context.remaining()
        if remaining is not None and remaining < ahead:
            raise DeadlineExceeded(
                f"the deadline ({max(remaining, 0.0) * 1000:.0f} ms left) cannot be met: "
                f"about {ahead * 1000:.0f} ms of queued compute is ahead of this request; "
                "nothing was computed"
            )

    def _serve(
        self, prepare: Callable[[], Prepared], request_context: RequestContext | None
    ) -> Ranking:
        with self._cond:
            if self._closed:
                raise ModelUnavailable("this model version was unloaded; retry the request")
            self._admit(request_context)
            self._preparing += 1
        queued = None
        try:
            prepared = prepare()
            if prepared.work is not None:
                queued = _Queued(prepared, time.perf_counter())
        finally:
            # One step, so the worker never sees the request neither preparing nor queued.
            with self._cond:
                self._preparing -= 1
                if queued is not None:
                    self._queue.append(queued)
                self._cond.notify_all()
        if queued is None:
            return prepared.finish(None)
        queued.done.wait()
        if prepared.request_context is not None:
            prepared.request_context.add_time("queue", queued.started - queued.enqueued)
        if queued.error is not None:
            raise queued.error
        return prepared.finish(queued.output)

    # -- the worker --------------------------------------------------------------------

    def _work(self) -> None:
        adopt_torch_threads()
        lower_this_thread(self.compute_nice)
        while (batch := self._next_batch()) is not None:
            self._execute(batch)

    def _next_batch(self) -> list[_Queued] | None:
        """The next batch (see the module for when it waits); None once closed and idle."""
        with self._cond:
            while not self._queue:
                if self._closed and self._preparing == 0:
                    return None
                self._cond.wait()
            oldest = self._queue[0].enqueued
            while len(self._queue) < self.max_batch_size and self._preparing > 0:
                left = oldest + self.max_delay_s - time.perf_counter()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch = [
                self._queue.popleft() for _ in range(min(len(self._queue), self.max_batch_size))
            ]
            now = time.perf_counter()
            for queued in batch:  # each request's queue time moves the average a little
                self.queue_seconds += QUEUE_AVERAGE_WEIGHT * (
                    now - queued.enqueued - self.queue_seconds
                )
            return batch

    def _refusal(self, queued: _Queued, now: float) -> Exception | None:
        """Why a request taken from the queue is not computed (None: it is)."""
        context = queued.prepared.request_context
        if context is not None and context.deadline is not None and now >= context.deadline:
            return DeadlineExceeded(
                "the deadline passed while the request waited for its batch; nothing was computed"
            )
        waited = queued.started - queued.enqueued
        if self.max_queue_s and waited > self.max_queue_s:
            return Overloaded(
                f"server over capacity: the request waited {waited * 1000:.0f} ms for a "
                f"compute thread of model {self.name!r}, more than the server's "
                f"--max-queue-ms ({self.max_queue_s * 1000:g}); nothing was computed; "
                "retry later (with backoff) or add replicas"
            )
        return None

    def _execute(self, batch: list[_Queued]) -> None:
        started = time.perf_counter()
        now = time.monotonic()
        live = []
        for queued in batch:
            queued.started = started
            queued.error = self._refusal(queued, now)
            if queued.error is not None:
                queued.done.set()
            else:
                live.append(queued)
        self._compute(live)

    def _compute(self, live: list[_Queued]) -> None:
        if not live:
            return
        try:
            outputs = self.pipeline.compute_batch([q.prepared for q in live])
            for queued, output in zip(live, outputs, strict=True):
                queued.output = output
        except Exception as exc:  # noqa: BLE001 - reaches the callers, never ends the worker
            for queued in live:
                queued.error = BatchFailed(f"a batch of {len(live)} requests failed: {exc!r}")
                queued.error.__cause__ = exc
        finally:
            for queued in live:
                queued.done.set()
        if self._on_batch is not None:
            try:
                self._on_batch(len(live))
            except Exception:
                log.exception("recording a batch of %d failed", len(live))


def runner_factory(
    max_batch_size: int,
    max_delay_s: float,
    observe_batch: Callable[[str, int], None] | None = None,
    compute_threads: int = 1,
    max_queue_s: float = 0.0,
    compute_nice: int = 0,
) -> Callable[[CatalogPipeline], CatalogPipeline | Batcher]:
    """The repository's ``make_runner``: a Batcher per loaded version, or the pipeline
    itself when ``max_batch_size`` is 1 or the pipeline has no batch work to merge (a
    ranker without a crossing block); ``observe_batch(model name, size)`` per batch. The
    values were range-checked with the other options (``check_ranges``)."""

    def make_runner(pipeline: CatalogPipeline) -> CatalogPipeline | Batcher:
        if max_batch_size == 1 or not pipeline.shares_batch_work:
            return pipeline  # nothing to merge: each request runs on its own thread
        on_batch = None
        if observe_batch is not None:
            on_batch = functools.partial(observe_batch, pipeline.artifact.name)  # type: ignore[attr-defined]
        return Batcher(
            pipeline,
            max_batch_size,
            max_delay_s,
            on_batch,
            compute_threads=compute_threads,
            max_queue_s=max_queue_s,
            compute_nice=compute_nice,
        )

    return make_runner
