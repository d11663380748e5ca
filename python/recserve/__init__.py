"""recserve: recommender models from interaction logs to a low-latency gRPC service.

Subpackages, one audience each (docs/architecture.md):

- ``recserve.client``: calling a server (grpc, protobuf, numpy; no torch, no C++ core);
- ``recserve.core``: the C++ kernels' facades, the only importers of ``recserve._core``;
- ``recserve.engine``: artifacts, schemas and the request pipelines (numpy, torch, core);
- ``recserve.server`` and ``recserve.training``: the gRPC server and the trainers;
- ``recserve.loadtest`` and ``recserve.cli``: the load generator and the command line.

``import recserve`` loads none of them; ``recserve.Client`` and the names below load what
they need on first use, so ``from recserve import Client`` works without torch.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("recserve")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

# Public name -> the module that defines it, imported on first use.
_LAZY = {
    "Answer": "recserve.client",
    "Client": "recserve.client",
    "ModelInfo": "recserve.client",
    "RecserveError": "recserve.client",
    "ScoredItem": "recserve.results",
}

__all__ = [
    "HAS_CUDA",
    "Answer",
    "Client",
    "ModelInfo",
    "RecserveError",
    "ScoredItem",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name == "HAS_CUDA":  # loads the C++ core (and torch): only when asked for
        return importlib.import_module("recserve.core.kernels").HAS_CUDA
    raise AttributeError(f"module 'recserve' has no attribute {name!r}")
