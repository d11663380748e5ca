"""recserve: recommender models from interaction logs to a low-latency gRPC service.

The runtime library: artifact loading (``recserve.artifact``), the C++ kernels
(``recserve.kernels``), request pipelines, and the typed client (``recserve.Client``).
"""

from __future__ import annotations

from . import kernels
from ._core import __version__
from .client import Answer, Client, ModelInfo, RecserveError
from .results import ScoredItem

HAS_CUDA = kernels.HAS_CUDA

__all__ = [
    "HAS_CUDA",
    "Answer",
    "Client",
    "ModelInfo",
    "RecserveError",
    "ScoredItem",
    "__version__",
    "kernels",
]
