"""What a request carries through the pipeline besides its fields: an id for the logs,
the client's deadline, and the time spent in each stage.

Stages are the ones the server reports (metrics and trailing metadata): ``queue``
(waiting for a batch), ``feature`` (validation and user encoding), ``crossing`` (the fused
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
    """One request's id, deadline (``time.monotonic()`` seconds, None = none) and
    per-stage seconds."""

    request_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    deadline: float | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @classmethod
    def with_timeout(cls, request_id: str = "", timeout: float | None = None) -> RequestContext:
        """A context whose deadline is ``timeout`` seconds from now (None = no deadline)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if request_id:
            return cls(request_id=request_id, deadline=deadline)
        return cls(deadline=deadline)

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
