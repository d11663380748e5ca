"""The gRPC ranking service (``recserve.server``); start it with ``recserve serve``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .options import ServeOptions

if TYPE_CHECKING:
    from .app import build_server

__all__ = ["ServeOptions", "build_server", "serve"]


def serve(options: ServeOptions) -> None:
    """Serve in the foreground until SIGINT or SIGTERM, then stop gracefully: one
    process, or with ``options.processes`` > 1 a supervisor of that many serving
    processes on one port (server/supervisor.py), which itself never imports torch."""
    if options.processes > 1:
        from .supervisor import supervise

        supervise(options)
    else:
        from .app import serve_one

        serve_one(options)


def __getattr__(name: str) -> Any:
    # Imported on first use: `recserve.server.options` and the supervisor of
    # `--processes N` must not pull in torch and the models' runtime (server/app.py).
    if name == "build_server":
        from .app import build_server

        return build_server
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
