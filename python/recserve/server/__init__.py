"""The gRPC ranking service (``recserve.server``); start it with ``recserve serve``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import ServeOptions, build_server, serve

__all__ = ["ServeOptions", "build_server", "serve"]


def __getattr__(name: str) -> Any:
    # Imported on first use: `recserve.server.options` and the supervisor of
    # `--processes N` must not pull in torch and the models' runtime (server/app.py).
    if name in __all__:
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
