"""The gRPC ranking service (``recserve.server``); start it with ``recserve serve``."""

from .app import ServeOptions, build_server, serve

__all__ = ["ServeOptions", "build_server", "serve"]
