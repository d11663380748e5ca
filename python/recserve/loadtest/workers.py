"""One generator process: sends its share of the load on ``grpc.aio`` and times each request.

Closed loop: ``concurrency`` coroutines, each sending its next request when the last one
returns; latency = completion - send. Open loop: requests are launched at intended times
(constant spacing or Poisson arrivals) whatever the server does, and latency = completion
- intended time, so a request that waits behind a stalled server is charged the wait
(no coordinated omission). RankStream: one stream per concurrency slot in closed loop;
in open loop the requests are written to a few streams and matched by ``request_id``.

Cheap on CPU, so the generator leaves the cores to the server it measures: each process
serializes a pool of requests before the load starts and sends those bytes through raw
multicallables (no serializer), and unary answers are timed, not parsed, unless
``--decode``. RankStream answers are always parsed: they carry the request_id that
matches them to their request, and each one's own error status. Each process measures
its CPU time (user + system, all threads) over the measured window.

Times are seconds from a start instant on ``time.monotonic()``, which all processes of
one machine share.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import grpc
import grpc.aio
import numpy as np

from recserve.client import SERVICE_NAME, resolve_channel
from recserve.v1 import recserve_pb2 as pb

from .options import BenchOptions
from .traffic import POOL_REQUESTS, IdSpace, RequestBuilder, request_pool, with_request_id

OK = grpc.StatusCode.OK.value[0]
DEADLINE_EXCEEDED = grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]
TICK_SECONDS = 0.1  # how often a process publishes its counts and expires stream requests
COUNTERS = 3  # per process in the shared counter array: sent, answered, errors
CONNECT_SECONDS = 10.0  # most a process waits for its channel to connect
LATE_SECONDS = 0.01  # open loop: a request sent later than this after its time is "late"
# The unary methods, by --rpc: path, and the answer's type for --decode.
UNARY = {
    "rank": (f"/{SERVICE_NAME}/Rank", pb.RankResponse),
    "recommend": (f"/{SERVICE_NAME}/Recommend", pb.RecommendResponse),
}
RANK_STREAM = f"/{SERVICE_NAME}/RankStream"


@dataclass(frozen=True)
class WorkerPlan:
    """What one process sends: its slots (closed loop) or its rate (open loop)."""

    index: int
    options: BenchOptions
    space: IdSpace
    slots: int  # closed loop: requests in flight; open-loop stream: streams
    rate: float | None  # open loop: this process's requests per second
    phase: float  # open loop, constant arrivals: offset of this process's first request
    quota: int | None  # measured requests this process may send (None: until the end)
    seed: int | None


@dataclass
class Samples:
    """One row per finished request: intended (or send) time, latency, status code."""

    intended: np.ndarray  # float64 seconds from the start
    latency: np.ndarray  # float64 seconds
    code: np.ndarray  # int32 grpc status code numbers
    # Open loop: requests the generator itself sent more than LATE_SECONDS after their
    # intended time (it was short of CPU), and the largest such delay.
    late_sends: int = 0
    max_send_lag: float = 0.0
    messages: dict[int, str] = field(default_factory=dict)  # the first one of each code
    cpu_seconds: float = 0.0  # the generator's CPU time over the measured window
    decoded: int = 0  # answers parsed, warm-up included

    @classmethod
    def concatenate(cls, parts: list[Samples]) -> Samples:
        return cls(
            np.concatenate([p.intended for p in parts] or [np.empty(0)]),
            np.concatenate([p.latency for p in parts] or [np.empty(0)]),
            np.concatenate([p.code for p in parts] or [np.empty(0, np.int32)]).astype(np.int32),
            sum(p.late_sends for p in parts),
            max((p.max_send_lag for p in parts), default=0.0),
            {code: m for p in reversed(parts) for code, m in p.messages.items()},
            sum(p.cpu_seconds for p in parts),
            sum(p.decoded for p in parts),
        )


class _Engine:
    def __init__(self, plan: WorkerPlan, counters: Any) -> None:
        options = plan.options
        self.plan = plan
        self.options = options
        self.counters = counters
        self.start = time.monotonic()  # until the parent says when all processes start
        self.end = options.warmup + options.duration
        self.requests = itertools.cycle(build_pool(plan))
        self.intended: list[float] = []
        self.latency: list[float] = []
        self.code: list[int] = []
        self.sent = self.errors = self.measured_sent = self.late_sends = 0
        self.max_send_lag = 0.0
        self.messages: dict[int, str] = {}
        self.ids = (f"{plan.index}-{n}" for n in itertools.count())
        self.pending_streams: list[_OpenStream] = []
        self.decoded = 0
        self.cpu_mark: float | None = None  # process CPU time when the warm-up ended
        self.cpu_seconds = 0.0

    # -- bookkeeping -------------------------------------------------------------------

    def now(self) -> float:
        return time.monotonic() - self.start

    def decoder(self, message: Any) -> Callable[[bytes], Any]:
        """A response deserializer that parses into ``message`` and counts the answers."""

        def decode(data: bytes) -> Any:
            self.decoded += 1
            return message.FromString(data)

        return decode

    def start_cpu_window(self) -> None:
        self.cpu_mark = time.process_time()

    def end_cpu_window(self) -> None:
        if self.cpu_mark is not None:
            self.cpu_seconds = time.process_time() - self.cpu_mark

    def may_send(self, t: float) -> bool:
        """Counts a request sent at ``t`` unless the run is over for this process."""
        if t >= self.end:
            return False
        if t >= self.options.warmup:
            if self.plan.quota is not None and self.measured_sent >= self.plan.quota:
                return False
            self.measured_sent += 1
        self.sent += 1
        return True

    def failed(self, code: int, message: str) -> int:
        """Keeps the first message of each error code; returns the code."""
        if code != OK:
            self.messages.setdefault(code, message)
        return code

    def rpc_failed(self, exc: grpc.aio.AioRpcError) -> int:
        return self.failed(exc.code().value[0], exc.details() or "")

    def timed_out(self) -> int:
        return self.failed(
            DEADLINE_EXCEEDED, f"no answer within --timeout {self.options.timeout:g}s"
        )

    def record(self, intended: float, code: int) -> None:
        self.intended.append(intended)
        self.latency.append(self.now() - intended)
        self.code.append(code)
        if code != OK:
            self.errors += 1

    def publish(self) -> None:
        base = self.plan.index * COUNTERS
        self.counters[base] = self.sent
        self.counters[base + 1] = len(self.code)
        self.counters[base + 2] = self.errors

    async def tick(self) -> None:
        while True:
            self.publish()
            for stream in self.pending_streams:
                stream.expire(self.now() - self.options.timeout)
            await asyncio.sleep(TICK_SECONDS)

    def schedule(self) -> Iterator[float]:
        """Intended send times of this process (open loop), until the end or the quota."""
        rate = self.plan.rate
        assert rate is not None
        rng = np.random.default_rng(None if self.plan.seed is None else self.plan.seed + 7)
        t = self.plan.phase
        while True:
            if self.options.arrival == "poisson":
                steps = np.cumsum(rng.exponential(1.0 / rate, 1024))
            else:
                steps = np.arange(1, 1025) / rate
            offsets = t + np.concatenate([[0.0], steps[:-1]])
            t = t + steps[-1]
            for offset in offsets.tolist():
                if not self.may_send(offset):
                    return
                yield offset

    async def paced(self) -> AsyncIterator[float]:
        """The intended send times, each yielded when it comes (open loop)."""
        for n, intended in enumerate(self.schedule()):
            delay = intended - self.now()
            if delay > 0:
                await asyncio.sleep(delay)
            elif n % 64 == 0:  # behind schedule: still let the requests in flight progress
                await asyncio.sleep(0)
            lag = self.now() - intended
            if lag > LATE_SECONDS and intended >= self.options.warmup:
                self.late_sends += 1
                self.max_send_lag = max(self.max_send_lag, lag)
            yield intended

    # -- unary -------------------------------------------------------------------------

    async def unary(self, method: Callable[..., Awaitable[Any]], request: bytes) -> int:
        try:
            await method(request, timeout=self.options.timeout)
        except grpc.aio.AioRpcError as exc:
            return self.rpc_failed(exc)
        return OK

    async def closed_unary(self, method: Callable[..., Awaitable[Any]]) -> None:
        while self.may_send(sent := self.now()):
            code = await self.unary(method, next(self.requests))
            self.record(sent, code)

    async def open_unary(self, method: Callable[..., Awaitable[Any]]) -> None:
        async def one(intended: float, request: bytes) -> None:
            self.record(intended, await self.unary(method, request))

        tasks: set[asyncio.Task] = set()
        async for intended in self.paced():
            task = asyncio.create_task(one(intended, next(self.requests)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)

    # -- RankStream --------------------------------------------------------------------

    async def closed_stream(self, open_call: Callable[[], Any]) -> None:
        call = None
        while self.may_send(sent := self.now()):
            if call is None:
                call = open_call()
            request_id = next(self.ids)
            try:
                await call.write(with_request_id(next(self.requests), request_id))
                response = await asyncio.wait_for(call.read(), self.options.timeout)
                if response is grpc.aio.EOF or response.request_id != request_id:
                    code = self.failed(UNAVAILABLE, "the server ended the stream early")
                else:
                    code = self.failed(response.error_code, response.error_message)
            except asyncio.TimeoutError:
                code = self.timed_out()
            except grpc.aio.AioRpcError as exc:
                code = self.rpc_failed(exc)
            self.record(sent, code)
            if code in (DEADLINE_EXCEEDED, UNAVAILABLE) or call.done():
                call.cancel()  # a fresh stream, so no late answer is taken for the next one
                call = None
        if call is not None:
            await call.done_writing()
            call.cancel()

    async def open_stream(self, open_call: Callable[[], Any]) -> None:
        streams = [_OpenStream(self, open_call) for _ in range(self.plan.slots)]
        self.pending_streams = streams
        runs = [asyncio.create_task(s.run()) for s in streams]
        turns = itertools.cycle(streams)
        async for intended in self.paced():
            next(turns).send(next(self.ids), intended)
        # Wait for the answers (the ticker expires those older than the timeout).
        while any(s.pending for s in streams):
            await asyncio.sleep(TICK_SECONDS / 2)
        for stream in streams:
            stream.close()
        _, late = await asyncio.wait(runs, timeout=1.0)
        for task in late:
            task.cancel()

    async def run(self, conn: Connection) -> None:
        """Connects, says "ready", and runs from the start instant the parent sends."""
        options = self.options
        # Several targets: round_robin, health checks and retries, as the Client does.
        target, channel_options = resolve_channel(options.target, options.max_message_bytes)
        async with grpc.aio.insecure_channel(target, options=channel_options) as channel:
            try:
                await asyncio.wait_for(channel.channel_ready(), CONNECT_SECONDS)
            except asyncio.TimeoutError:
                raise ConnectionError(
                    f"cannot connect to {options.target} within {CONNECT_SECONDS:g}s"
                ) from None
            conn.send("ready")
            self.start = conn.recv()
            delay = -self.now()
            if delay > 0:
                await asyncio.sleep(delay)
            ticker = asyncio.create_task(self.tick())
            window = asyncio.get_running_loop().call_later(
                max(options.warmup - self.now(), 0.0), self.start_cpu_window
            )
            await asyncio.gather(*self.jobs(channel))
            window.cancel()
            self.end_cpu_window()
            ticker.cancel()
            self.publish()

    def jobs(self, channel: grpc.aio.Channel) -> list[Awaitable[None]]:
        """The coroutines that send this process's load, on raw (bytes) multicallables."""
        if self.options.rpc == "stream":
            # Parsed: the request_id matches an answer to its request, error_code is its status.
            open_call = channel.stream_stream(
                RANK_STREAM,
                request_serializer=None,
                response_deserializer=self.decoder(pb.RankStreamResponse),
            )
            if self.plan.rate:
                return [self.open_stream(open_call)]
            return [self.closed_stream(open_call) for _ in range(self.plan.slots)]
        path, answer = UNARY[self.options.rpc]
        method = channel.unary_unary(
            path,
            request_serializer=None,  # the pool's bytes go out as they are
            response_deserializer=self.decoder(answer) if self.options.decode else None,
        )
        if self.plan.rate:
            return [self.open_unary(method)]
        return [self.closed_unary(method) for _ in range(self.plan.slots)]

    def samples(self) -> Samples:
        return Samples(
            np.asarray(self.intended, np.float64),
            np.asarray(self.latency, np.float64),
            np.asarray(self.code, np.int32),
            self.late_sends,
            self.max_send_lag,
            self.messages,
            self.cpu_seconds,
            self.decoded,
        )


class _OpenStream:
    """One RankStream call of the open loop: requests queued at their intended time, written
    in order, answers matched by ``request_id``; reopened when the call fails."""

    def __init__(self, engine: _Engine, open_call: Callable[[], Any]) -> None:
        self.engine = engine
        self.open_call = open_call
        self.queue: asyncio.Queue = asyncio.Queue()
        self.pending: dict[str, float] = {}  # request_id -> intended time

    def send(self, request_id: str, intended: float) -> None:
        self.pending[request_id] = intended
        self.queue.put_nowait(with_request_id(next(self.engine.requests), request_id))

    def close(self) -> None:
        self.queue.put_nowait(None)

    def expire(self, before: float) -> None:
        for request_id, intended in list(self.pending.items()):
            if intended < before:
                del self.pending[request_id]
                self.engine.record(intended, self.engine.timed_out())

    def fail_pending(self, code: int) -> None:
        for intended in self.pending.values():
            self.engine.record(intended, code)
        self.pending.clear()

    async def run(self) -> None:
        while True:
            call = self.open_call()
            writer = asyncio.create_task(self._write(call))
            try:
                async for response in call:
                    intended = self.pending.pop(response.request_id, None)
                    if intended is not None:
                        code = self.engine.failed(response.error_code, response.error_message)
                        self.engine.record(intended, code)
            except grpc.aio.AioRpcError as exc:
                code = self.engine.rpc_failed(exc)
            else:
                if writer.done() and not writer.cancelled() and writer.exception() is None:
                    return  # closed by us, every answer read
                code = self.engine.failed(UNAVAILABLE, "the server ended the stream early")
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            self.fail_pending(code)
            await asyncio.sleep(0.05)  # a failing server is not hammered by reconnects

    async def _write(self, call: Any) -> None:
        while (request := await self.queue.get()) is not None:
            await call.write(request)
        await call.done_writing()


def build_pool(plan: WorkerPlan) -> list[bytes]:
    """The serialized requests of one process: its seed's requests in the order it would
    have built them (RankStream's without request_id, set when sent)."""
    options = plan.options
    builder = RequestBuilder(
        plan.space,
        model=options.model,
        candidates=options.candidates,
        history=options.history,
        k=options.k,
        zipf=options.zipf,
        seed=plan.seed,
        layout_seed=options.seed or 0,
    )
    make = builder.recommend if options.rpc == "recommend" else builder.rank
    # --requests: no more to build than the process will measure (warm-up ones repeat).
    size = POOL_REQUESTS if plan.quota is None else min(POOL_REQUESTS, plan.quota)
    return request_pool(make, size)


def worker_main(plan: WorkerPlan, conn: Connection, counters: Any) -> None:
    """Entry point of a generator process: says "ready", waits for the start instant,
    runs, sends back ("done", Samples) or ("error", message)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    try:
        engine = _Engine(plan, counters)
        asyncio.run(engine.run(conn))
        conn.send(("done", engine.samples()))
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which prints it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()
