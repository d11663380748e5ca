"""Errors of the runtime library; the server maps each to one gRPC status code."""

from __future__ import annotations


class InvalidRequest(ValueError):
    """The request itself is wrong (INVALID_ARGUMENT); the message says how to fix it."""


class ModelNotFound(LookupError):
    """No loaded model or version matches the request (NOT_FOUND)."""


class ModelUnavailable(RuntimeError):
    """No model is loaded yet, or the server is shutting down (UNAVAILABLE)."""


class DeadlineExceeded(TimeoutError):
    """The client's deadline passed before the work was done (DEADLINE_EXCEEDED)."""


class Overloaded(RuntimeError):
    """Too much work is queued or in flight; retry later (RESOURCE_EXHAUSTED)."""
