"""`recserve serve --processes N`: a supervisor and N serving processes on one port.

Each serving process is the single-process server (:func:`app.serve_one`): its own gRPC
server, health service, batchers and models, listening on the same host:port with
SO_REUSEPORT, so the kernel spreads new connections over the processes. The supervisor
loads no model and imports no torch. It

- holds the port with a socket bound with SO_REUSEPORT that never listens, so port 0 is
  resolved once and no other program takes the port while a process restarts;
- forwards SIGTERM and SIGINT (each process drains as a single server does) and SIGHUP
  (rescan the repository) to every process; when one process answers a ReloadModels RPC,
  it sends SIGHUP to the others;
- restarts a process that dies, at most MAX_RESTARTS times within RESTART_WINDOW_S;
- serves the processes' metrics, which they write to a directory of its own
  (prometheus_client's multiprocess mode).

A serving process reports to the supervisor over a pipe, and stops once that pipe
closes: a supervisor that is killed leaves no process serving behind it.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from .metrics import ProcessesEndpoint
from .options import ServeOptions, check_ranges

log = logging.getLogger("recserve.server")

MAX_RESTARTS = 5  # within RESTART_WINDOW_S; one more exit stops the server with an error
RESTART_WINDOW_S = 60.0
STOP_MARGIN_S = 30.0  # beyond --grace, before a process that has not stopped is killed
MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"

# What a serving process tells its supervisor.
SERVING = "serving"  # its models serve; with a description of them
RELOADED = "reloaded"  # it answered a ReloadModels RPC: the others should rescan
FAILED = "failed"  # it could not start; with the error


def hold_port(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (port 0: a free one) with SO_REUSEPORT, as grpc binds
    its listeners, that never listens: it takes no connection, but holds the port."""
    if not hasattr(socket, "SO_REUSEPORT"):
        raise OSError("--processes above 1 needs SO_REUSEPORT (Linux); run one process per port")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise OSError(f"cannot listen on {host}:{port} ({exc})") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise OSError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); is another server using "
            "the port? Pick another with --port"
        ) from None
    return sock


def supervise(options: ServeOptions) -> None:
    """Runs ``options.processes`` serving processes until SIGTERM or SIGINT; returns once
    all have stopped. Raises ChildProcessError (an OSError) with the reason when they
    could not start or kept dying."""
    check_ranges(options)
    holder = hold_port(options.host, options.port)
    port = holder.getsockname()[1]
    if options.port == 0:
        log.info("port 0: the serving processes share port %d", port)
    directory = tempfile.mkdtemp(prefix="recserve-metrics-")
    endpoint = ProcessesEndpoint(directory)
    previous = os.environ.get(MULTIPROC_DIR)
    # Inherited by every process started below, before it imports prometheus_client.
    os.environ[MULTIPROC_DIR] = directory
    try:
        metrics_port = -1
        if options.metrics_port >= 0:
            try:
                metrics_port = endpoint.serve(options.metrics_host, options.metrics_port)
            except OSError as exc:
                raise OSError(
                    f"cannot serve metrics on {options.metrics_host}:{options.metrics_port} "
                    f"({exc}); pick another --metrics-port, or -1 to turn the endpoint off"
                ) from None
        # Each process serves on the held port and leaves /metrics to the supervisor.
        child_options = replace(options, port=port, processes=1, metrics_port=-1)
        Supervisor(child_options, options.processes, endpoint, metrics_port).run()
    finally:
        endpoint.stop()
        holder.close()
        if previous is None:
            os.environ.pop(MULTIPROC_DIR, None)
        else:
            os.environ[MULTIPROC_DIR] = previous
        shutil.rmtree(directory, ignore_errors=True)


@dataclass
class _Child:
    slot: int  # 1..N, kept by a restarted process
    process: BaseProcess
    conn: Connection  # the supervisor's end of the pipe
    conn_open: bool = True
    serving: bool = False
    reload_pending: bool = False  # a rescan was asked for before it served
    failure: str = ""  # what it reported before exiting
    exited: bool = False


class Supervisor:
    """Starts, watches and signals the serving processes; see the module docstring."""

    def __init__(
        self, options: ServeOptions, count: int, endpoint: ProcessesEndpoint, metrics_port: int
    ) -> None:
        self.options = options
        self.count = count
        self.endpoint = endpoint
        self.metrics_port = metrics_port
        self.context = multiprocessing.get_context("spawn")  # no fork of a threaded process
        self.children: list[_Child] = []
        self.stopping = 0  # the signal being forwarded to stop, 0 until then
        self.stop_deadline = float("inf")
        self.started = False  # every process has served once
        self.restarts: collections.deque[float] = collections.deque()
        self.error = ""

    def run(self) -> None:
        signals = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP]
        previous = {s: signal.getsignal(s) for s in signals}
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGHUP, self._on_reload_signal)
        try:
            for slot in range(1, self.count + 1):
                self._start(slot)
            while any(not c.exited for c in self.children):
                self._step()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        if self.error:
            raise ChildProcessError(self.error)
        log.info("stopped")

    # -- signals (handlers run in the main thread, between the loop's steps) ------------

    def _on_stop_signal(self, signum: int, _frame: object) -> None:
        if not self.stopping:
            log.info(
                "%s received: every serving process drains for up to %gs",
                signal.Signals(signum).name,
                self.options.grace_seconds,
            )
            self.stop(signum)

    def _on_reload_signal(self, _signum: int, _frame: object) -> None:
        log.info("SIGHUP received: every serving process rescans the model repository")
        self._reload_others(None)

    def stop(self, signum: int) -> None:
        self.stopping = signum
        self.stop_deadline = time.monotonic() + self.options.grace_seconds + STOP_MARGIN_S
        for child in self.children:
            self._signal(child, signum)

    def _reload_others(self, source: _Child | None) -> None:
        if self.stopping:
            return
        for child in self.children:
            if child is source or child.exited:
                continue
            if child.serving:
                self._signal(child, signal.SIGHUP)
            else:  # its handler may not be installed yet: sent once it serves
                child.reload_pending = True

    def _signal(self, child: _Child, signum: int) -> None:
        if not child.exited:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.process.pid, signum)  # type: ignore[arg-type]

    # -- processes -------------------------------------------------------------------

    def _start(self, slot: int) -> None:
        ours, theirs = self.context.Pipe()
        level = logging.getLogger().getEffectiveLevel()
        process = self.context.Process(
            target=serve_child,
            args=(self.options, theirs, level),
            name=f"recserve-serve-{slot}",
        )
        process.start()
        theirs.close()
        child = _Child(slot, process, ours)
        self.children = [c for c in self.children if c.slot != slot] + [child]
        log.info("serving process %d of %d: pid %d", slot, self.count, process.pid)
        if self.stopping:  # a stop signal arrived while it started
            self._signal(child, self.stopping)

    def _step(self) -> None:
        live = [c for c in self.children if not c.exited]
        handles: dict[Any, _Child] = {c.conn: c for c in live if c.conn_open}
        handles.update((c.process.sentinel, c) for c in live)
        # Messages before exits: a process's last words explain its exit.
        for ready in sorted(wait(list(handles), timeout=1.0), key=lambda h: isinstance(h, int)):
            child = handles[ready]
            if isinstance(ready, int):
                self._exited(child)
            else:
                self._receive(child)
        if time.monotonic() > self.stop_deadline:
            self.stop_deadline = float("inf")
            for child in self.children:
                if not child.exited:
                    log.error(
                        "serving process %d (pid %d) did not stop within %gs; killing it",
                        child.slot,
                        child.process.pid,
                        self.options.grace_seconds + STOP_MARGIN_S,
                    )
                    self._signal(child, signal.SIGKILL)

    def _receive(self, child: _Child) -> None:
        try:
            kind, *rest = child.conn.recv()
        except (EOFError, OSError):
            child.conn_open = False
            return
        if kind == FAILED:
            child.failure = rest[0]
        elif kind == RELOADED:
            log.info(
                "pid %d answered ReloadModels: the %d other serving process(es) rescan too",
                child.process.pid,
                self.count - 1,
            )
            self._reload_others(child)
        elif kind == SERVING:
            child.serving = True
            if child.reload_pending:
                child.reload_pending = False
                self._signal(child, signal.SIGHUP)
            if self.started:
                log.info("serving process %d (pid %d) serves again", child.slot, child.process.pid)
            elif all(c.serving for c in self.children) and not self.stopping:
                self.started = True
                log.info(
                    "serving %s with %d processes on %s:%d",
                    rest[0],
                    self.count,
                    self.options.host,
                    self.options.port,
                )
                if self.metrics_port >= 0:
                    log.info(
                        "metrics of every process on http://%s:%d/metrics",
                        self.options.metrics_host,
                        self.metrics_port,
                    )

    def _exited(self, child: _Child) -> None:
        while child.conn_open and child.conn.poll():
            self._receive(child)
        child.exited = True
        child.process.join()
        child.conn.close()
        self.endpoint.process_dead(child.process.pid)  # type: ignore[arg-type]
        code = child.process.exitcode
        what = f"serving process {child.slot} (pid {child.process.pid})"
        if self.stopping:
            # One that never served had nothing to drain: any exit will do.
            if child.serving and code != 0:
                self.error = f"{what} exited with {_exit_status(code)} while stopping"
            return
        if not self.started:  # it could not start: neither will another
            self.error = child.failure or (
                f"{what} exited with {_exit_status(code)} before serving; its log says why"
            )
            self.stop(signal.SIGTERM)
            return
        log.error("%s exited unexpectedly with %s", what, _exit_status(code))
        now = time.monotonic()
        while self.restarts and now - self.restarts[0] > RESTART_WINDOW_S:
            self.restarts.popleft()
        if len(self.restarts) >= MAX_RESTARTS:
            self.error = (
                f"serving processes exited {MAX_RESTARTS + 1} times within "
                f"{RESTART_WINDOW_S:g}s; stopping the server"
            )
            log.error("%s", self.error)
            self.stop(signal.SIGTERM)
            return
        self.restarts.append(now)
        self._start(child.slot)


def _exit_status(code: int | None) -> str:
    if code is not None and code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"exit code {code}"


def serve_child(options: ServeOptions, conn: Connection, log_level: int) -> None:
    """A serving process, started by :class:`Supervisor` ("spawn"): the single-process
    server, which reports to the supervisor over ``conn``."""
    from .logs import configure_logging

    configure_logging(options.log_format, log_level, with_pid=True)
    lock = threading.Lock()  # sends come from handler threads and the main thread

    def tell(*message: object) -> None:
        with lock, contextlib.suppress(OSError):  # the supervisor is gone: see below
            conn.send(message)

    def watch_supervisor() -> None:
        with contextlib.suppress(EOFError, OSError):
            conn.recv()  # the supervisor sends nothing: this returns when it exits
        log.error("the supervisor exited; stopping")
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch_supervisor, name="supervisor-watch", daemon=True).start()

    # Here, not at the top: the supervisor never imports torch and the models' runtime.
    from recserve.engine.errors import ModelNotFound

    from .app import serve_one

    def on_start(running: Any) -> None:
        running.servicer.after_reload = lambda: tell(RELOADED)

    def on_serving(_running: Any, loaded: list[Any]) -> None:
        tell(SERVING, ", ".join(f"{m.name} v{m.version}" for m in loaded))

    try:
        serve_one(options, on_start, on_serving)
    except (OSError, ValueError, ModelNotFound) as exc:
        tell(FAILED, str(exc))
        sys.exit(1)
