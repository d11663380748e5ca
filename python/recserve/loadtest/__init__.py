"""`recserve bench`: a load generator for recserve's own gRPC contract.

Closed loop (fixed concurrency) or open loop (fixed arrival rate, latency counted from
each request's intended send time); traffic drawn from the model's own id space with
Zipf-like popularity, serialized before the run; several generator processes that report
their own CPU per answer; percentiles, errors by status code, JSON, a plot, and
service-level objectives that set the exit status.

Example::

    from recserve.loadtest import BenchOptions, run

    status = run(BenchOptions(target="127.0.0.1:50051", rpc="rank", rate=200, duration=5))
"""

from __future__ import annotations

from .options import BenchOptions, add_bench_arguments, options_from
from .run import run

__all__ = ["BenchOptions", "add_bench_arguments", "options_from", "run"]
