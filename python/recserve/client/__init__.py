"""Calling a recserve server: grpc, protobuf and numpy only (never torch or the C++ core).

:class:`Client` is the typed client of one server or a set of replicas; a catalog
sharded across servers is asked through :class:`ShardedCatalog`, which merges the
shards' answers exactly (:func:`merge_topk` for kernel outputs).
"""

from __future__ import annotations

from .client import (
    DEFAULT_TARGET,
    MAX_MESSAGE_BYTES,
    REPLICA_SERVICE_CONFIG,
    SERVICE_NAME,
    Answer,
    Client,
    ModelInfo,
    RecserveError,
    VersionEvent,
    channel_target,
    resolve_channel,
    target_count,
    tls_name,
)
from .sharded import ShardedCatalog, merge_topk

__all__ = [
    "DEFAULT_TARGET",
    "MAX_MESSAGE_BYTES",
    "REPLICA_SERVICE_CONFIG",
    "SERVICE_NAME",
    "Answer",
    "Client",
    "ModelInfo",
    "RecserveError",
    "ShardedCatalog",
    "VersionEvent",
    "channel_target",
    "merge_topk",
    "resolve_channel",
    "target_count",
    "tls_name",
]
