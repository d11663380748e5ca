"""Compute threads yield the CPU to the threads that take and refuse calls.

Under overload every thread of the server wants the cores. If the model compute gets
them, gRPC's threads (its socket readers and the one Python thread that takes each new
call from gRPC's core) fall behind: calls wait in gRPC's core, where admission cannot
see them, until their clients give up, and the server spends its time on answers
nobody waits for (measured: 2x the saturation rate answered 50 calls/s, the rest
DEADLINE_EXCEEDED or CANCELLED). With the compute threads at a lower scheduling
priority (a higher nice value), the cheap work of taking a call and admitting or
refusing it runs first, the excess is refused instead of timing out, and the compute
spends the cores on admitted requests (measured: 88-94% of the saturation rate answered;
docs/performance.md, "Overload"). It is opt-in (--compute-nice): the compute threads then
yield to every other busy thread and process too (docs/serving.md).

Linux sets nice per thread; elsewhere the value would apply to the whole process, so
it is left alone there.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

log = logging.getLogger("recserve.server")


def lower_this_thread(nice: int) -> None:
    """Adds ``nice`` to the calling thread's nice value (Linux; no-op for 0 or elsewhere).
    Raising a nice value needs no privilege; a failure is logged, never raised."""
    if nice <= 0 or not sys.platform.startswith("linux"):
        return
    thread_id = threading.get_native_id()
    try:
        current = os.getpriority(os.PRIO_PROCESS, thread_id)
        os.setpriority(os.PRIO_PROCESS, thread_id, min(current + nice, 19))
    except OSError as exc:
        log.warning("could not lower the priority of compute thread %d: %s", thread_id, exc)
