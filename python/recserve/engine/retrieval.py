"""Retrieval pipelines: top-N models that score the whole catalog for one user.

Four artifact families (docs/artifact.md):

- ``embedding`` (most-popular, BPR-MF): a stored vector per user; ``recent_item_ids``
  are excluded from the answer but do not change the user's vector.
- ``sequence`` (GRU4Rec, LSTM, SASRec): the ``encoder`` program turns the user's items, oldest
  first, into a user vector. The request's known ``recent_item_ids`` (in order, newest
  last) are merged into the user's stored history (:func:`merge_recent`: the part the
  history already ends with is not appended again), and the last ``max_history`` items
  are encoded, so a click sent in the request changes the answer at once.
- ``user_tower`` (a packaged two-tower model): the ``user_tower`` program turns the
  user's features into the user vector (the request's ``user_features`` over the stored
  ones), scored against stored item vectors.
- ``generator`` (CFGAN): the ``generator`` program maps the user's purchase vector (the
  multi-hot of their stored items plus the request's known ``recent_item_ids``) to a
  score per catalog item; a click sent in the request changes the answer at once.

Recommend is, for ``embedding``, ``sequence`` and ``user_tower``, the fused C++
``topk_inner_product`` over the item vectors, for ``generator`` ``topk_scores`` over the
generated scores, with
the user's seen items and the request's recent items excluded inside the kernel (unless
``include_seen``). Rank scores the candidates' rows, then selects with ``topk_scores``.
Cold start: a user with no vector (an unknown user id and, for ``sequence`` and
``generator``, no known recent item, for ``user_tower`` no user feature) gets the catalog by training popularity (the
``popularity`` table, the share of training interactions per item); the answer says
``cold_start_user`` whenever the user id is unknown.

Batching (recserve.engine.batch_plan): Recommend's batch work, for the families with item
vectors, is the top-k inner product, run for a batch's user vectors at once; the
``encoder``, ``user_tower`` and ``generator`` programs run per request (timed as the
``head`` stage).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..core import kernels
from ..results import Ranking
from .artifact import Artifact
from .batch_plan import InnerProductQuery, Prepared, run_inner_products, stage, timed_batch
from .errors import InvalidRequest
from .pipeline import SCORES_BACKEND, CatalogPipeline
from .request_context import RequestContext
from .schema import encode_ids
from .user_features import UserFeatures
from .validation import Limits, check_user_id

EMBEDDING_FAMILY = "embedding"
SEQUENCE_FAMILY = "sequence"
GENERATOR_FAMILY = "generator"
USER_TOWER_FAMILY = "user_tower"
RETRIEVAL_FAMILIES = (EMBEDDING_FAMILY, SEQUENCE_FAMILY, GENERATOR_FAMILY, USER_TOWER_FAMILY)


class RetrievalPipeline(CatalogPipeline):
    """Rank and Recommend for a model that gives one vector per user (see the module).

    The vector is scored against ``item_vectors`` by inner product; a family without
    item vectors (``generator``) overrides :meth:`score_rows`, and its Recommend selects
    from the user "vector" (the generated scores) per request."""

    uses_item_vectors = True
    # A program turns the user's items into their vector: timed as the head stage.
    user_program = False

    family = ""

    def __init__(self, artifact: Artifact, limits: Limits | None = None) -> None:
        if artifact.family != self.family:
            raise ValueError(f"family {artifact.family!r} is not {self.family!r}")
        self.artifact = artifact
        self.limits = limits or Limits()
        self.schema = artifact.schema
        t = artifact.tables
        self.load_catalog(t)
        self.item_vectors = (
            np.ascontiguousarray(t["item_vectors"], dtype=np.float32)
            if self.uses_item_vectors
            else None
        )
        self.popularity = np.ascontiguousarray(t["popularity"], dtype=np.float32)
        self._check_tables()

    def _check_tables(self) -> None:
        n_items = self.num_items
        vectors = self.item_vectors
        if vectors is not None and (vectors.ndim != 2 or vectors.shape[0] != n_items):
            raise ValueError(f"item_vectors {vectors.shape} do not match {n_items} items")
        if self.popularity.shape != (n_items,):
            raise ValueError("popularity table does not match the catalog")

    # -- user side -------------------------------------------------------------------

    def user_vector(self, user_row: int, recent_rows: np.ndarray) -> np.ndarray | None:
        """float32 [d], or None when the model knows nothing of the user."""
        raise NotImplementedError

    def user_row(self, user_id: int, context: Mapping[str, str]) -> int:
        """The user's table row (-1 for an unknown user id), after checking the request's
        user fields."""
        check_user_id(user_id)
        for name in context:
            if name == "user_id":
                raise InvalidRequest(f"{name!r} is the user id; send it as user_id")
            raise InvalidRequest(
                f"unknown user feature {name!r}; this model takes no user features "
                "(send user_id and, for sequence models, recent_item_ids)"
            )
        return int(encode_ids(self.user_ids, [user_id])[0]) - 1

    def encode_user(
        self,
        user_id: int,
        context: Mapping[str, str],
        recent_rows: np.ndarray | None = None,
    ) -> tuple[np.ndarray | None, int]:
        """The user's vector (None: cold start, served by popularity) and table row
        (-1 for an unknown user id)."""
        return self.encode_user_timed(user_id, context, None, recent_rows)

    def encode_user_timed(
        self,
        user_id: int,
        context: Mapping[str, str],
        request_context: RequestContext | None,
        recent_rows: np.ndarray | None = None,
    ) -> tuple[np.ndarray | None, int]:
        with stage(request_context, "feature"):
            row = self.user_row(user_id, context)
        recent = np.empty(0, dtype=np.int64) if recent_rows is None else recent_rows
        with stage(request_context, "head" if self.user_program else "feature"):
            return self.user_vector(row, recent), row

    # -- scoring ---------------------------------------------------------------------

    def score_rows(
        self, user_vector: np.ndarray | None, item_rows: np.ndarray | None
    ) -> np.ndarray:
        """Scores of one user against item rows (None = all items)."""
        if user_vector is None:
            table = self.popularity
            return table if item_rows is None else table[item_rows]
        vectors = self.item_vectors if item_rows is None else self.item_vectors[item_rows]
        return vectors @ user_vector

    device_items: kernels.DeviceItemMatrix | None = None

    def place_on(self, device: str) -> RetrievalPipeline:
        """On "cuda": the item vectors are uploaded once and the catalog scan of Recommend
        runs on the device (Rank's few candidates stay on the host)."""
        super().place_on(device)
        if device == "cuda" and self.uses_item_vectors:
            self.device_items = kernels.DeviceItemMatrix(self.item_vectors)
        return self

    def compute_batch(self, batch: Sequence[Prepared]) -> list[Any]:
        """The top-k inner products of the batch's user vectors, stacked."""
        items = self.device_items if self.device_items is not None else self.item_vectors
        with timed_batch(batch, "topk"):
            return run_inner_products(items, [p.work for p in batch])

    def prepare_recommend(
        self,
        user_id: int,
        k: int = 0,
        recent_item_ids: Sequence[int] = (),
        include_seen: bool = False,
        context: Mapping[str, str] | None = None,
        request_context: RequestContext | None = None,
    ) -> Prepared:
        rc = request_context
        k, recent_rows, unknown_ids = self.recommend_inputs(k, recent_item_ids, rc)
        vector, user_row = self.encode_user_timed(user_id, context or {}, rc, recent_rows)
        exclude = None
        if not include_seen:
            exclude = np.concatenate([self.seen_rows(user_row), recent_rows])
        work = None
        if vector is not None and self.uses_item_vectors:
            work = InnerProductQuery(vector, k, exclude)

        def finish(output: tuple[np.ndarray, np.ndarray] | None) -> Ranking:
            with stage(rc, "topk"):
                if output is not None:
                    values, rows = output
                else:
                    scores = self.popularity if vector is None else vector
                    excluded = None if exclude is None else [exclude]
                    values, rows = kernels.topk_scores(scores, k, excluded, backend=SCORES_BACKEND)
                return self.answer(rows, values, user_row, unknown_ids)

        return Prepared(work, finish, rc)


class EmbeddingPipeline(RetrievalPipeline):
    """Family ``embedding``: score(u, i) = <user_vectors[u], item_vectors[i]>."""

    family = EMBEDDING_FAMILY

    def __init__(self, artifact: Artifact, limits: Limits | None = None) -> None:
        super().__init__(artifact, limits)
        self.user_vectors = np.ascontiguousarray(artifact.tables["user_vectors"], np.float32)
        if self.user_vectors.shape != (self.num_users, self.item_vectors.shape[1]):
            raise ValueError(
                f"user_vectors {self.user_vectors.shape} do not match {self.num_users} users "
                f"and item vectors of size {self.item_vectors.shape[1]}"
            )

    def user_vector(self, user_row: int, recent_rows: np.ndarray) -> np.ndarray | None:
        return self.user_vectors[user_row] if user_row >= 0 else None


class SequencePipeline(RetrievalPipeline):
    """Family ``sequence``: the ``encoder`` program over history + recent items."""

    family = SEQUENCE_FAMILY
    user_program = True

    def __init__(self, artifact: Artifact, limits: Limits | None = None) -> None:
        super().__init__(artifact, limits)
        self.encoder = artifact.modules["encoder"]
        self.load_history(artifact)
        # an exported encoder takes exactly max_history items (docs/artifact.md)
        self.fixed_length = artifact.program_format == "export"

    def user_vector(self, user_row: int, recent_rows: np.ndarray) -> np.ndarray | None:
        items = merge_recent(self.history_rows(user_row), recent_rows)[-self.max_history :]
        if items.size == 0:
            return None
        sequence = torch.from_numpy(items + 1).unsqueeze(0)  # [1, L], newest last
        if self.fixed_length:
            sequence = left_padded(sequence, self.max_history)
        with torch.inference_mode():
            state = self.encoder(sequence)  # [1, d]
        return np.ascontiguousarray(state[0].to(torch.float32).numpy())


class GeneratorPipeline(RetrievalPipeline):
    """Family ``generator``: the ``generator`` program over the user's purchase vector
    (stored items, the ``seen`` table, plus recent items) gives a score per item."""

    family = GENERATOR_FAMILY
    uses_item_vectors = False
    user_program = True

    def __init__(self, artifact: Artifact, limits: Limits | None = None) -> None:
        super().__init__(artifact, limits)
        self.generator = artifact.modules["generator"]

    def user_vector(self, user_row: int, recent_rows: np.ndarray) -> np.ndarray | None:
        """The generated scores, float32 [I] (None: no known item, cold start)."""
        items = np.concatenate([self.seen_rows(user_row), recent_rows])
        if items.size == 0:
            return None
        purchases = torch.zeros(1, self.num_items)  # [1, I]
        purchases[0, torch.from_numpy(items)] = 1.0
        with torch.inference_mode():
            scores = self.generator(purchases)  # [1, I]
        return np.ascontiguousarray(scores[0].to(torch.float32).numpy())

    def score_rows(
        self, user_vector: np.ndarray | None, item_rows: np.ndarray | None
    ) -> np.ndarray:
        if user_vector is None:
            return super().score_rows(None, item_rows)
        return user_vector if item_rows is None else user_vector[item_rows]


class UserTowerPipeline(RetrievalPipeline):
    """Family ``user_tower``: the ``user_tower`` program turns the user's encoded features
    (the stored row, with the request's ``user_features`` over it) into the user vector,
    so a user the tables lack is still served from the features the request sends."""

    family = USER_TOWER_FAMILY
    user_program = True

    def __init__(self, artifact: Artifact, limits: Limits | None = None) -> None:
        super().__init__(artifact, limits)
        self.tower = artifact.modules["user_tower"]
        self.users = UserFeatures(self.schema, self.user_ids, artifact.tables["user_features"])
        probe = self._vector(np.zeros(len(self.users.columns), dtype=np.int64))
        if probe.shape != (self.item_vectors.shape[1],):
            raise ValueError(
                f"the user tower gives vectors of shape {list(probe.shape)}; the item vectors "
                f"have {self.item_vectors.shape[1]} dimensions"
            )

    def _vector(self, features: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            vector = self.tower(torch.from_numpy(features).unsqueeze(0))  # [1, d]
        return np.ascontiguousarray(vector.reshape(-1).to(torch.float32).numpy())

    def encode_user_timed(
        self,
        user_id: int,
        context: Mapping[str, str],
        request_context: RequestContext | None,
        recent_rows: np.ndarray | None = None,
    ) -> tuple[np.ndarray | None, int]:
        """The tower's vector, or None (popularity) for an unknown user with no features."""
        with stage(request_context, "feature"):
            features, row = self.users.encode(user_id, context)
        if row < 0 and not context:
            return None, row
        with stage(request_context, "head"):
            return self._vector(features), row


def left_padded(sequence: torch.Tensor, length: int) -> torch.Tensor:
    """int64 [1, L] items (newest last) padded with 0 on the left to [1, length]; the
    sequence programs read past left padding, so only their input's shape changes."""
    padding = length - sequence.shape[1]
    return torch.nn.functional.pad(sequence, (padding, 0)) if padding > 0 else sequence


def merge_recent(history: np.ndarray, recent: np.ndarray) -> np.ndarray:
    """``history`` followed by the part of ``recent`` it does not already end with.

    A client that sends the user's latest clicks cannot know which of them the stored
    history holds; appending them again would feed the encoder a repeated tail. So the
    longest prefix of ``recent`` that is a suffix of ``history`` is dropped: history
    [a, b, c] with recent [b, c, d] gives [a, b, c, d], with recent [b, c] or [c] just
    [a, b, c]. Found with the KMP failure function, in O(len(recent)).
    """
    n = min(history.size, recent.size)
    if n == 0:
        return np.concatenate([history, recent])
    pattern = recent.tolist()
    # failure[i]: length of the longest proper prefix of pattern[: i + 1] that is also
    # its suffix
    failure = [0] * len(pattern)
    matched = 0
    for i in range(1, len(pattern)):
        while matched and pattern[i] != pattern[matched]:
            matched = failure[matched - 1]
        if pattern[i] == pattern[matched]:
            matched += 1
        failure[i] = matched
    matched = 0  # how much of pattern the history's tail matches so far
    for value in history[-n:].tolist():
        while matched and (matched == len(pattern) or value != pattern[matched]):
            matched = failure[matched - 1]
        if value == pattern[matched]:
            matched += 1
    return np.concatenate([history, recent[matched:]])


def make_retrieval_pipeline(artifact: Artifact, limits: Limits | None = None) -> RetrievalPipeline:
    if artifact.family == EMBEDDING_FAMILY:
        return EmbeddingPipeline(artifact, limits)
    if artifact.family == SEQUENCE_FAMILY:
        return SequencePipeline(artifact, limits)
    if artifact.family == GENERATOR_FAMILY:
        return GeneratorPipeline(artifact, limits)
    if artifact.family == USER_TOWER_FAMILY:
        return UserTowerPipeline(artifact, limits)
    raise ValueError(f"family {artifact.family!r} is not a retrieval family")
