"""What a request carries through the pipeline besides its fields: an id for the logs,
the client's deadline, and the time spent in each stage.

Stages are the ones the server reports (metrics and trailing metadata): ``queue``
(waiting for a handler thread, then for a batch), ``feature`` (validation and user encoding), ``crossing`` (the fused
C++ crossing kernel), ``head`` (the TorchScript program), ``topk`` (selection) and
``explain`` (field attributions, when asked for).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from .errors import DeadlineExceeded

STAGES = ("queue", "feature", "crossing", "head", "topk", "explain")


@dataclass
class RequestContext:
    """One request's id, deadline (``time.monotonic()`` seconds, None = none),
    per-stage seconds, and when the server took the call (``time.monotonic()``, before
    it waited for a handler thread; by default when the context was made)."""

    request_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    deadline: float | None = None
    timings: dict[str, float] = field(default_factory=dict)
    accepted: float = field(default_factory=time.monotonic)

    @classmethod
    def with_timeout(
        cls, request_id: str = "", timeout: float | None = None, accepted: float | None = None
    ) -> RequestContext:
        """A context whose deadline is ``timeout`` seconds from now (None = no deadline),
        for a call taken at ``accepted`` (None: now); the wait since then counts as
        ``queue`` time."""
        now = time.monotonic()
        deadline = None if timeout is None else now + timeout
        context = cls(deadline=deadline)
        if request_id:
            context.request_id = request_id
        if accepted is not None and accepted < now:
            context.accepted = accepted
            context.add_time("queue", now - accepted)
        return context

    def waited(self) -> float:
        """Seconds since the server took the call."""
        return time.monotonic() - self.accepted

    def remaining(self) -> float | None:
        """Seconds left before the deadline (None: no deadline)."""
        return None if self.deadline is None else self.deadline - time.monotonic()

    def check_deadline(self, before: str) -> None:
        """Raises DeadlineExceeded when the deadline has passed: the work is abandoned
        before stage ``before``."""
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise DeadlineExceeded(
                f"the deadline passed before the {before} stage; nothing returned"
            )

    def add_time(self, stage: str, seconds: float) -> None:
        self.timings[stage] = self.timings.get(stage, 0.0) + seconds

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Checks the deadline, then times the block as stage ``name``."""
        self.check_deadline(name)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add_time(name, time.perf_counter() - start)
