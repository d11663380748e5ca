"""Prometheus metrics of one server, in a registry of its own, served on their own port.

Names (all prefixed ``recserve_``):
- ``requests_total{rpc, model, version, code}``: finished requests by gRPC status.
- ``request_seconds{rpc}``: whole server-side latency; ``stage_seconds{stage}``: the part
  spent in each pipeline stage (queue, feature, crossing, head, topk).
- ``batch_size{model}``: requests per executed batch.
- ``in_flight``: requests being handled now.
- ``idle_streams_cancelled_total``: RankStreams cancelled for waiting on their client.
- ``model_loads_total{model, action}``: repository events (loaded, refused, unloaded);
  ``model_loaded{model, version}``: 1 for each served version.

With ``--processes N`` each serving process writes its samples to files in
``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's multiprocess mode, chosen when
prometheus_client is imported) and the supervisor serves them merged
(:class:`ProcessesEndpoint`): counters and histograms summed, ``in_flight`` summed over
live processes, ``model_loaded`` one sample per live process with a ``pid`` label.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

import grpc
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
    start_http_server,
)

from recserve.engine.request_context import STAGES, RequestContext

# Latency buckets from 50 µs to 2.5 s: a ranking call takes a millisecond or a few.
LATENCY_BUCKETS = (
    5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# prometheus_client's multiprocess mode: chosen, as here, when it is first imported.
MULTIPROCESS = "PROMETHEUS_MULTIPROC_DIR" in os.environ or "prometheus_multiproc_dir" in os.environ


class _Endpoint:
    """A registry served over HTTP at /metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._http: Any = None
        self._lock = threading.Lock()

    def serve(self, host: str, port: int) -> int:
        """Starts the /metrics HTTP endpoint; returns its port (``port`` 0: a free one)."""
        with self._lock:
            self._http, _thread = start_http_server(port, addr=host, registry=self.registry)
            return int(self._http.server_port)

    def stop(self) -> None:
        with self._lock:
            if self._http is not None:
                self._http.shutdown()
                self._http.server_close()
                self._http = None


class Metrics(_Endpoint):
    """The server's metrics; :meth:`serve` exposes them over HTTP."""

    def __init__(self) -> None:
        super().__init__()
        r = self.registry
        self.requests = Counter(
            "recserve_requests",
            "Finished requests by RPC, model, version and gRPC status code.",
            ("rpc", "model", "version", "code"),
            registry=r,
        )
        self.request_seconds = Histogram(
            "recserve_request_seconds",
            "Server-side latency of a request, from handler start to answer.",
            ("rpc",),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stage_seconds = Histogram(
            "recserve_stage_seconds",
            "Time a request spent in each pipeline stage.",
            ("stage",),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "recserve_batch_size",
            "Requests merged into one executed batch.",
            ("model",),
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        # multiprocess_mode: how several processes' values merge (ignored in one process).
        self.in_flight = Gauge(
            "recserve_in_flight",
            "Requests being handled now.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.idle_streams_cancelled = Counter(
            "recserve_idle_streams_cancelled",
            "RankStreams cancelled after waiting on their client for --stream-idle-seconds.",
            registry=r,
        )
        self.model_loads = Counter(
            "recserve_model_loads",
            "Model repository events: a version loaded, refused or unloaded.",
            ("model", "action"),
            registry=r,
        )
        self.model_loaded = Gauge(
            "recserve_model_loaded",
            "1 for each model version being served.",
            ("model", "version"),
            registry=r,
            # Per process (a pid label): shows whether every process serves a new version.
            multiprocess_mode="liveall",
        )
        for stage in STAGES:  # every stage shows up in a scrape from the start
            self.stage_seconds.labels(stage)

    def observe_request(
        self,
        rpc: str,
        models: Sequence[Any],
        code: grpc.StatusCode,
        request: RequestContext,
        started: float,
    ) -> None:
        """Counts one finished request; ``models`` are those that answered it (may be
        empty), ``started`` its ``time.perf_counter()`` start."""
        name, version = (models[0].name, str(models[0].version)) if models else ("", "")
        self.requests.labels(rpc, name, version, code.name).inc()
        self.request_seconds.labels(rpc).observe(time.perf_counter() - started)
        for stage, seconds in request.timings.items():
            self.stage_seconds.labels(stage).observe(seconds)

    def observe_batch(self, model: str, size: int) -> None:
        self.batch_size.labels(model).observe(size)

    def model_event(self, model: str, version: int, action: str) -> None:
        """Records a repository event; ``action`` is loaded, refused or unloaded."""
        self.model_loads.labels(model, action).inc()
        if action == "loaded":
            self.model_loaded.labels(model, str(version)).set(1)
        elif action == "unloaded":
            if MULTIPROCESS:  # a series cannot be removed from the process's file: 0
                self.model_loaded.labels(model, str(version)).set(0)
                return
            with contextlib.suppress(KeyError):  # never marked loaded, or unloaded twice
                self.model_loaded.remove(model, str(version))


class ProcessesEndpoint(_Endpoint):
    """/metrics of the supervisor of ``--processes N``: the samples its serving processes
    wrote to ``directory`` (their PROMETHEUS_MULTIPROC_DIR), merged at each scrape."""

    def __init__(self, directory: str) -> None:
        super().__init__()
        self.directory = directory
        multiprocess.MultiProcessCollector(self.registry, path=directory)

    def process_dead(self, pid: int) -> None:
        """Drops an exited process's live gauges (in_flight, model_loaded); its counters
        stay in the totals."""
        multiprocess.mark_process_dead(pid, self.directory)
