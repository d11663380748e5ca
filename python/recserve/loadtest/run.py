"""`recserve bench`: split the load over generator processes, start them together, show
progress, gather their samples and report."""

from __future__ import annotations

import importlib.util
import multiprocessing
import sys
import time
from collections import deque
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import TextIO

import grpc

from recserve.client import target_count

from .options import BenchOptions
from .report import format_text, missed_objectives, parse_slo, summarize, write_json, write_plot
from .traffic import IdSpace, fetch_id_space
from .workers import CONNECT_SECONDS, COUNTERS, Samples, WorkerPlan, worker_main

PROGRESS_SECONDS = 0.25  # how often the progress line is rewritten
RATE_WINDOW_SECONDS = 1.0  # the progress line's answers/s: over the last second
START_DELAY = 0.05  # from "all processes ready" to the common start instant
SPAWN_SECONDS = 60.0  # most a process may take to import and connect


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def plan_workers(options: BenchOptions, space: IdSpace) -> list[WorkerPlan]:
    """One plan per process: the concurrency (closed loop) or the rate (open loop), and
    any --requests budget, split between them."""
    processes = options.processes
    if options.rate is None:
        processes = min(processes, options.concurrency)
    elif options.rpc == "stream":
        processes = min(processes, options.streams)
    if options.requests is not None:
        processes = min(processes, options.requests)
    if options.rate is None:
        slots = _split(options.concurrency, processes)
    else:
        slots = _split(options.streams, processes)
    quotas = _split(options.requests, processes) if options.requests else [None] * processes
    plans = []
    for index in range(processes):
        rate = None if options.rate is None else options.rate / processes
        # Constant arrivals: process i starts i/rate late, so the sum is evenly spaced.
        phase = index / options.rate if options.rate and options.arrival == "constant" else 0.0
        seed = None if options.seed is None else options.seed * 1000 + index
        plans.append(
            WorkerPlan(index, options, space, slots[index], rate, phase, quotas[index], seed)
        )
    return plans


class _Progress:
    """One line on stderr, rewritten in place: time, requests, answers/s, errors."""

    def __init__(self, stream: TextIO, options: BenchOptions, enabled: bool) -> None:
        self.stream = stream
        self.options = options
        self.enabled = enabled
        self.history: deque[tuple[float, int]] = deque()  # (elapsed, answered), last second
        self.width = 0

    def update(self, elapsed: float, counters: list[int]) -> None:
        if not self.enabled:
            return
        sent = sum(counters[0::COUNTERS])
        answered = sum(counters[1::COUNTERS])
        errors = sum(counters[2::COUNTERS])
        self.history.append((elapsed, answered))
        while self.history[0][0] < elapsed - RATE_WINDOW_SECONDS:
            self.history.popleft()
        then, before = self.history[0]
        rate = (answered - before) / (elapsed - then) if elapsed > then else 0.0
        phase = "warm-up" if elapsed < self.options.warmup else "measuring"
        total = self.options.warmup + self.options.duration
        line = (
            f"{phase} {min(elapsed, total):5.1f}/{total:g} s  sent {sent}  "
            f"answered {answered}  {rate:7.1f}/s  errors {errors}"
        )
        self.stream.write("\r" + line.ljust(self.width))
        self.stream.flush()
        self.width = len(line)

    def finish(self) -> None:
        if self.enabled and self.width:
            self.stream.write("\n")
            self.stream.flush()


def _describe(options: BenchOptions) -> str:
    load = (
        f"concurrency {options.concurrency}"
        if options.rate is None
        else f"{options.rate:g} requests/s ({options.arrival})"
    )
    bound = f"{options.warmup:g} s warm-up + {options.duration:g} s"
    if options.requests:
        bound += f" or {options.requests} requests"
    targets = target_count(options.target)
    at = f"{targets} targets ({options.target})" if targets > 1 else options.target
    return f"bench: {options.rpc} at {at}, {load}, {bound}"


def _check_outputs(options: BenchOptions) -> None:
    for flag, path in (("--json", options.json), ("--plot", options.plot)):
        if path and not Path(path).parent.is_dir():
            raise ValueError(f"{flag} {path}: the folder {Path(path).parent} does not exist")
    if options.plot and importlib.util.find_spec("matplotlib") is None:
        raise ValueError('--plot needs matplotlib: pip install "recserve[plot]"')


def _gather(
    conns: list[Connection],
    processes: list,
    counters,
    deadline: float,
    progress: _Progress,
    start: float,
) -> list[Samples]:
    results: dict[int, Samples] = {}
    waiting = dict(enumerate(conns))
    next_update = 0.0
    while waiting:
        for conn in wait(list(waiting.values()), timeout=PROGRESS_SECONDS / 2):
            index = next(i for i, c in waiting.items() if c is conn)
            try:
                kind, payload = conn.recv()
            except EOFError:
                kind, payload = "error", f"exited with status {processes[index].exitcode}"
            if kind == "error":
                raise RuntimeError(f"generator process {index} failed: {payload}")
            results[index] = payload
            del waiting[index]
        now = time.monotonic()
        if now >= next_update:
            progress.update(now - start, list(counters))
            next_update = now + PROGRESS_SECONDS
        if now > deadline:
            raise RuntimeError(
                f"generator processes {sorted(waiting)} did not finish in time; "
                "is the server answering? Try a shorter --timeout"
            )
    progress.update(time.monotonic() - start, list(counters))
    return [results[i] for i in sorted(results)]


def _fetch_error(exc: grpc.RpcError, options: BenchOptions) -> str:
    code = exc.code()
    hint = ""
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        hint = f"; is `recserve serve` running at {options.target}?"
    elif code is grpc.StatusCode.NOT_FOUND:
        hint = "; pass --model with a loaded model"
    elif code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        hint = "; the model's id list is larger than --max-message-bytes: raise it"
    return f"{code.name}: {exc.details()}{hint}"


def run(options: BenchOptions, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Runs one load test and reports it. Returns the exit status: 0, 1 when a --slo
    target is missed (or the run failed), 2 for bad options."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        options.check()
        if options.slo is not None:
            parse_slo(options.slo)
        _check_outputs(options)
    except ValueError as exc:
        print(f"error: {exc}", file=err)
        return 2
    try:
        space = fetch_id_space(
            options.target,
            options.model,
            max(options.timeout, CONNECT_SECONDS),  # not a request of the load
            options.max_message_bytes,
        )
    except grpc.RpcError as exc:
        print(f"error: GetModelInfo at {options.target}: " + _fetch_error(exc, options), file=err)
        return 1
    except ValueError as exc:
        print(f"error: {exc}", file=err)
        return 1

    plans = plan_workers(options, space)
    enabled = options.progress if options.progress is not None else err.isatty()
    count = len(plans)
    print(
        _describe(options) + f", {count} process{'es' if count > 1 else ''}", file=err, flush=True
    )
    progress = _Progress(err, options, enabled)
    context = multiprocessing.get_context("spawn")
    counters = context.RawArray("q", len(plans) * COUNTERS)
    conns, processes = [], []
    try:
        for plan in plans:
            parent, child = context.Pipe()
            process = context.Process(target=worker_main, args=(plan, child, counters), daemon=True)
            process.start()
            child.close()
            conns.append(parent)
            processes.append(process)
        for index, conn in enumerate(conns):
            if not conn.poll(SPAWN_SECONDS + CONNECT_SECONDS):
                raise RuntimeError(f"generator process {index} did not start in time")
            message = conn.recv()
            if message != "ready":
                raise RuntimeError(f"generator process {index} failed: {message[1]}")
        start = time.monotonic() + START_DELAY
        for conn in conns:
            conn.send(start)
        deadline = start + options.warmup + options.duration + 2 * options.timeout + 30
        parts = _gather(conns, processes, counters, deadline, progress, start)
    except (RuntimeError, EOFError) as exc:
        progress.finish()
        print(f"error: {exc}", file=err)
        return 1
    except KeyboardInterrupt:
        for process in processes:
            process.terminate()
        progress.finish()
        print("interrupted: no figures", file=err)
        return 130
    finally:
        for process in processes:
            process.join(timeout=5)
            if process.is_alive():
                process.terminate()
    progress.finish()

    samples = Samples.concatenate(parts)
    summary = summarize(samples, options, space, len(plans))
    print(format_text(summary), file=out, flush=True)
    try:
        if options.json:
            write_json(summary, options.json)
        if options.plot:
            write_plot(summary, samples, options.plot)
    except OSError as exc:
        print(f"error: cannot write the results: {exc}", file=err)
        return 1
    if summary["requests"]["completed"] == 0:
        print("error: no request got an answer; the errors above say why", file=err)
        return 1
    missed = missed_objectives(summary)
    for objective in missed:
        measured = objective["measured"]
        unit = "%" if objective["name"] == "errors" else " ms"
        got = "no answers" if measured is None else f"measured {measured:g}{unit}"
        print(f"SLO missed: {objective['target']} ({got})", file=err)
    return 1 if missed else 0
