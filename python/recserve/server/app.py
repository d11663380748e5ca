"""Server lifecycle: options, wiring, start, graceful stop."""

from __future__ import annotations

import gc
import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from recserve.core import kernels
from recserve.engine.errors import ModelNotFound
from recserve.engine.validation import Limits
from recserve.kserve import grpc_predict_v2_pb2_grpc as kserve_grpc
from recserve.v1 import recserve_pb2 as pb
from recserve.v1 import recserve_pb2_grpc as pb_grpc

from . import kserve
from .batching import runner_factory
from .interceptors import ExceptionToStatusInterceptor
from .metrics import Metrics
from .options import (
    ServeOptions,
    check_compile_on_device,
    check_head_on_device,
    check_ranges,
)
from .reload import RepositoryPoller, reload_in_background
from .repository import LoadedModel, ModelRepository
from .security import TokenAuthInterceptor, load_tokens, server_credentials
from .servicer import RecommenderServicer
from .torch_threads import adopt_torch_threads

log = logging.getLogger("recserve.server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Recommender"].full_name

__all__ = ["SERVICE_NAME", "RunningServer", "ServeOptions", "build_server", "serve_one"]


@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    health: health.HealthServicer
    repository: ModelRepository
    servicer: RecommenderServicer
    metrics: Metrics
    metrics_port: int  # -1 when the endpoint is off
    poller: RepositoryPoller | None = None  # rescans the repository every --poll-seconds

    def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", SERVICE_NAME):
            self.health.set(service, status)

    def stop(self, grace: float) -> None:
        """Health goes NOT_SERVING and new requests get UNAVAILABLE; in-flight requests
        get ``grace`` seconds to finish."""
        deadline = time.monotonic() + grace
        self.health.enter_graceful_shutdown()
        if self.poller is not None:
            self.poller.stop()
        self.repository.start_draining()
        # Still accepting while in-flight requests finish, so late arrivals get a clear
        # UNAVAILABLE and health checks report NOT_SERVING instead of a closed port.
        self.servicer.wait_until_idle(grace)
        remaining = max(0.0, deadline - time.monotonic())
        self.server.stop(remaining).wait(remaining + 1)
        self.servicer.stream_watch.close()
        self.repository.close()
        self.metrics.stop()


def grpc_server_options(options: ServeOptions) -> list[tuple[str, int]]:
    """grpc's channel arguments of the server."""
    arguments = [
        ("grpc.max_receive_message_length", options.max_message_bytes),
        ("grpc.max_send_message_length", options.max_message_bytes),
        # grpc's default on Linux, made explicit: the serving processes of --processes N
        # each listen on the same port and the kernel spreads new connections over them.
        ("grpc.so_reuseport", 1),
    ]
    if options.max_connection_age_seconds > 0:
        # A GOAWAY once a connection is this old: the client opens a new one for its next
        # calls (re-resolving a dns:/// name) while calls in progress, streams included,
        # finish on the old one (grpc's grace: unlimited).
        arguments.append(
            ("grpc.max_connection_age_ms", round(options.max_connection_age_seconds * 1000))
        )
    return arguments


def build_server(options: ServeOptions) -> RunningServer:
    """Bind and start the server (health NOT_SERVING); models are loaded by the caller."""
    check_ranges(options)  # again: options built in code did not pass through the parser
    # What is alive now (imported modules, torch's and grpc's registries: about 180,000
    # objects) lives as long as the process. Frozen, it is skipped by every later garbage
    # collection, which otherwise walks all of it while holding the GIL: measured 113 ms
    # per full collection before, 0.3 ms after, a stall of every request at each one.
    gc.freeze()
    # --device cuda where CUDA is not usable fails the start, before anything binds.
    device = kernels.resolve_backend(options.device)
    check_head_on_device(options.head_precision, device)
    check_compile_on_device(options.compile_programs, device)
    # Security flags are checked before anything binds: a mistake leaves nothing listening.
    credentials = server_credentials(options)
    interceptors: list[grpc.ServerInterceptor] = [ExceptionToStatusInterceptor()]
    if options.auth_tokens_file:
        # First, so a call without a valid token reaches nothing else.
        interceptors.insert(0, TokenAuthInterceptor(load_tokens(options.auth_tokens_file)))
    torch.set_num_threads(options.torch_threads)
    limits = Limits(max_candidates=options.max_candidates, max_k=options.max_k)
    metrics = Metrics()
    repository = ModelRepository(
        options.model_repo,
        limits,
        options.default_model,
        options.head_dtype,
        default_rank_with=options.default_rank_with,
        compile_programs=options.compile_programs,
        metrics=metrics,
        keep_versions=options.keep_versions,
        device=device,
        make_runner=runner_factory(
            options.max_batch_size,
            options.max_batch_delay,
            metrics.observe_batch,
            compute_threads=options.compute_thread_count,
            max_queue_s=options.max_queue_ms / 1000.0,
            compute_nice=options.compute_nice,
        ),
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(
            max_workers=options.workers,
            thread_name_prefix="rpc",
            initializer=adopt_torch_threads,
        ),
        interceptors=interceptors,
        options=grpc_server_options(options),
        # Beyond this many RPCs in progress (handled or waiting for a handler thread),
        # grpc answers RESOURCE_EXHAUSTED at once instead of queueing.
        maximum_concurrent_rpcs=options.max_in_flight,
    )
    servicer = RecommenderServicer(
        repository, metrics, options.max_explain_k, options.stream_idle_seconds
    )
    pb_grpc.add_RecommenderServicer_to_server(servicer, server)
    kserve_grpc.add_GRPCInferenceServiceServicer_to_server(
        kserve.InferenceServicer(repository, servicer), server
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, kserve.SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    address = f"{options.host}:{options.port}"
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError as exc:
        raise OSError(
            f"cannot listen on {address} ({exc}); is another server using the port? "
            "Pick another with --port"
        ) from None
    metrics_port = -1
    if options.metrics_port >= 0:
        try:
            metrics_port = metrics.serve(options.metrics_host, options.metrics_port)
        except OSError as exc:
            server.stop(0)
            raise OSError(
                f"cannot serve metrics on {options.metrics_host}:{options.metrics_port} "
                f"({exc}); pick another --metrics-port, or -1 to turn the endpoint off"
            ) from None
    running = RunningServer(
        server, port, health_servicer, repository, servicer, metrics, metrics_port
    )
    running.set_serving(False)
    server.start()
    running.poller = RepositoryPoller(repository, options.poll_seconds)
    running.poller.start()
    return running


def serve_one(
    options: ServeOptions,
    on_start: Callable[[RunningServer], None] | None = None,
    on_serving: Callable[[RunningServer, list[LoadedModel]], None] | None = None,
) -> None:
    """One serving process, in the foreground until SIGINT or SIGTERM, then a graceful
    stop (``recserve.server.serve`` runs it, or N of them under the supervisor of
    ``--processes N``, which runs it in each serving process). ``on_start`` runs once
    the server is built (signal handlers follow at once), ``on_serving`` once its models
    serve; the serving processes of --processes N report to their supervisor there."""
    running = build_server(options)
    if on_start is not None:
        on_start(running)
    stopping = threading.Event()
    # The graceful stop runs on its own thread (a signal handler must return at once);
    # the process exits only after it has finished, so no model, batch thread or C++
    # object is torn down under it by the interpreter's exit.
    stopper = threading.Thread(
        target=running.stop, args=(options.grace_seconds,), name="graceful-stop"
    )

    def finish() -> None:
        running.server.wait_for_termination()
        if stopper.is_alive() or stopping.is_set():
            stopper.join()
        log.info("stopped")

    def on_signal(signum: int, _frame: object) -> None:
        if stopping.is_set():
            return
        stopping.set()
        log.info(
            "%s received: draining for up to %gs",
            signal.Signals(signum).name,
            options.grace_seconds,
        )
        stopper.start()

    # Installed before loading, so Ctrl-C while models load also stops cleanly.
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    if hasattr(signal, "SIGHUP"):  # not on Windows
        # A scan loads in the background; the handler itself must return at once.
        signal.signal(
            signal.SIGHUP, lambda *_: reload_in_background(running.repository, "SIGHUP received")
        )
    try:
        loaded = running.repository.load_all()
        if stopping.is_set():  # Ctrl-C or SIGTERM while loading: stop quietly
            finish()
            return
        if not loaded:
            raise FileNotFoundError(
                f"no servable model in {options.model_repo}; train one with "
                f"`recserve train --model-repo {options.model_repo}`"
            )
    except (OSError, ModelNotFound):
        running.stop(0)
        raise
    if not stopping.is_set():
        running.set_serving(True)
        models = ", ".join(f"{m.name} v{m.version}" for m in loaded)
        log.info("serving %s on %s:%d", models, options.host, running.port)
        if running.metrics_port >= 0:
            log.info("metrics on http://%s:%d/metrics", options.metrics_host, running.metrics_port)
        if on_serving is not None:
            on_serving(running, loaded)
    finish()
