"""Recommendation-shaped traffic: users and items of the model's own id space, drawn with
Zipf-like popularity, built into Rank and Recommend requests, serialized once into a pool
that a generator process sends in turn."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from recserve.client import resolve_channel
from recserve.v1 import recserve_pb2 as pb
from recserve.v1 import recserve_pb2_grpc as pb_grpc


@dataclass(frozen=True)
class IdSpace:
    """The model a server answers with, and the external ids it knows."""

    model_name: str
    model_version: int
    user_ids: np.ndarray  # int64, ascending
    item_ids: np.ndarray  # int64, ascending


def fetch_id_space(
    target: str, model: str = "", timeout: float = 10.0, max_message_bytes: int = 4 << 20
) -> IdSpace:
    """Asks the server (GetModelInfo with include_ids) which users and items its model knows.

    Raises grpc.RpcError when the call fails, ValueError when the model has no items."""
    grpc_target, options = resolve_channel(target, max_message_bytes)
    with grpc.insecure_channel(grpc_target, options=options) as channel:
        stub = pb_grpc.RecommenderStub(channel)
        request = pb.GetModelInfoRequest(model=pb.ModelSpec(name=model), include_ids=True)
        info = stub.GetModelInfo(request, timeout=timeout)
    space = IdSpace(
        info.model.name,
        info.model.version,
        np.asarray(info.user_ids, dtype=np.int64),
        np.asarray(info.item_ids, dtype=np.int64),
    )
    if space.item_ids.size == 0:
        raise ValueError(f"model {space.model_name!r} lists no item ids; nothing to ask for")
    return space


class ZipfSampler:
    """Draws ids with P(popularity rank r) ~ r^-exponent (0: uniform).

    Which id holds which popularity rank is a seeded shuffle (``layout_seed``), so every
    generator process agrees on the popular ids while drawing its own stream (``rng``).
    """

    def __init__(
        self, ids: np.ndarray, exponent: float, rng: np.random.Generator, layout_seed: int = 0
    ) -> None:
        if ids.size == 0:
            raise ValueError("cannot draw from an empty id list")
        self.ids = np.random.default_rng(layout_seed).permutation(np.asarray(ids, np.int64))
        weights = np.arange(1, ids.size + 1, dtype=np.float64) ** -exponent
        self.cdf = np.cumsum(weights / weights.sum())
        self.cdf[-1] = 1.0
        self.rng = rng

    def draw(self, n: int) -> np.ndarray:
        """``n`` ids, with replacement."""
        ranks = np.searchsorted(self.cdf, self.rng.random(n), side="right")
        return self.ids[np.minimum(ranks, self.ids.size - 1)]

    def draw_distinct(self, n: int) -> np.ndarray:
        """``n`` different ids (all of them, shuffled, when ``n`` is the catalog or more).

        Popular ids come first more often; after a few rounds of drawing, the rest are
        filled uniformly from the ids not drawn yet, so this stays fast when ``n`` is
        close to the number of ids."""
        if n >= self.ids.size:
            return self.rng.permutation(self.ids)
        chosen = np.empty(0, dtype=np.int64)
        for _ in range(4):
            drawn = np.concatenate([chosen, self.draw(2 * (n - chosen.size))])
            _, first = np.unique(drawn, return_index=True)
            chosen = drawn[np.sort(first)][:n]
            if chosen.size == n:
                return chosen
        rest = np.setdiff1d(self.ids, chosen, assume_unique=True)
        extra = self.rng.choice(rest, n - chosen.size, replace=False)
        return np.concatenate([chosen, extra])


class RequestBuilder:
    """Makes the requests of one generator process."""

    def __init__(
        self,
        space: IdSpace,
        *,
        model: str = "",
        candidates: int = 100,
        history: int = 10,
        k: int = 10,
        zipf: float = 1.1,
        seed: int | None = None,
        layout_seed: int = 0,
    ) -> None:
        rng = np.random.default_rng(seed)
        # A model without user ids (none listed) gets cold-start users 1, 2, ...
        users = space.user_ids if space.user_ids.size else np.arange(1, 1001, dtype=np.int64)
        self.users = ZipfSampler(users, zipf, rng, layout_seed)
        self.items = ZipfSampler(space.item_ids, zipf, rng, layout_seed + 1)
        self.model = pb.ModelSpec(name=model)
        self.candidates = candidates
        self.history = history
        self.k = k

    def rank(self, request_id: str = "") -> pb.RankRequest:
        return pb.RankRequest(
            model=self.model,
            user_id=int(self.users.draw(1)[0]),
            candidate_item_ids=self.items.draw_distinct(self.candidates).tolist(),
            k=self.k,
            request_id=request_id,
        )

    def recommend(self, request_id: str = "") -> pb.RecommendRequest:
        recent = self.items.draw_distinct(self.history) if self.history else np.empty(0)
        return pb.RecommendRequest(
            model=self.model,
            user_id=int(self.users.draw(1)[0]),
            recent_item_ids=recent.tolist(),
            k=self.k,
            request_id=request_id,
        )


POOL_REQUESTS = 2048  # distinct requests per generator process, sent in turn
POOL_BYTES = 2 << 20  # and about this many bytes: 1000 candidates take ~1 ms to build
# RankRequest.request_id as it starts on the wire: field number, wire type 2 (bytes).
_REQUEST_ID_TAG = bytes([pb.RankRequest.DESCRIPTOR.fields_by_name["request_id"].number << 3 | 2])


def request_pool(
    make: Callable[[], Any], size: int = POOL_REQUESTS, max_bytes: int = POOL_BYTES
) -> list[bytes]:
    """The first ``size`` requests of ``make`` (e.g. ``RequestBuilder.rank``), serialized.

    Built before the load starts, so sending costs no protobuf work; a process sending
    them in turn sends the same requests, in the same order, as one that built each when
    sent, until the pool wraps around. At least one, at most about ``max_bytes``."""
    pool: list[bytes] = []
    total = 0
    while len(pool) < max(size, 1) and (not pool or total < max_bytes):
        pool.append(make().SerializeToString())
        total += len(pool[-1])
    return pool


def with_request_id(request: bytes, request_id: str) -> bytes:
    """A serialized RankRequest that has no request_id, with ``request_id`` set.

    A parser keeps the last value of a field, so appending the field sets it without a
    parse; request_id having the highest field number, the bytes are even the ones
    protobuf would write (which leaves an empty string out)."""
    if not request_id:
        return request
    value = request_id.encode()
    return request + _REQUEST_ID_TAG + _varint(len(value)) + value


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)
