"""Family ``din``: the second stage of a cascade, ranking a sequence retriever's items.

Its ``ranker`` program (``training/models/din.py``) scores the retrieved items from the
user's row, the user's last ``max_history`` items (the stored history merged with the
request's ``recent_item_ids``, as the sequence retriever merges them) and the retriever's
own scores, which only a cascade has. So the family answers only as a cascade's
``rank_with``, behind the retriever its manifest names; a Rank or Recommend naming it
alone is refused with a message that says so.

The fused C++ crossing does not apply: the program's work per candidate is attention
over the history, not a sum of field embeddings. The program runs once per request on
the caller's thread (timed as the ``head`` stage); the final order is the C++
``topk_scores``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ..core import kernels
from ..results import Ranking
from .artifact import DIN_FAMILY, Artifact
from .batch_plan import Prepared, stage
from .errors import InvalidRequest
from .pipeline import SCORES_BACKEND, CatalogPipeline
from .request_context import RequestContext
from .retrieval import left_padded, merge_recent
from .schema import encode_ids
from .validation import Limits, check_k, check_recent, check_user_id


class DinPipeline(CatalogPipeline):
    """Ranks a retriever's items for one user (see the module)."""

    answers_alone = False  # only a cascade has the retriever scores it reads

    def __init__(self, artifact: Artifact, limits: Limits | None = None) -> None:
        if artifact.family != DIN_FAMILY:
            raise ValueError(f"family {artifact.family!r} is not {DIN_FAMILY!r}")
        self.artifact = artifact
        self.limits = limits or Limits()
        self.schema = artifact.schema
        self.load_catalog(artifact.tables)
        self.ranker = artifact.modules["ranker"]
        self.load_history(artifact)
        # an exported ranker takes exactly max_history history items (docs/artifact.md)
        self.fixed_length = artifact.program_format == "export"
        retriever = artifact.manifest.get("retriever") or {}
        self.retriever = str(retriever.get("name", ""))
        if not self.retriever:
            raise ValueError("the manifest does not name the retriever whose items it ranks")

    def _alone(self) -> InvalidRequest:
        return InvalidRequest(
            f"model {self.artifact.name!r} ranks the items of retriever {self.retriever!r} "
            "with their scores, so it answers only in a cascade: send a Recommend with "
            f"model {self.retriever!r} and rank_with {self.artifact.name!r}"
        )

    def prepare_rank(self, *args: object, **kwargs: object) -> Prepared:  # type: ignore[override]
        raise self._alone()

    def prepare_recommend(self, *args: object, **kwargs: object) -> Prepared:  # type: ignore[override]
        raise self._alone()

    def check_retriever(self, name: str) -> None:
        if name != self.retriever:
            raise InvalidRequest(
                f"rank_with model {self.artifact.name!r} was trained on the scores of "
                f"retriever {self.retriever!r}, not {name!r}; send model {self.retriever!r}"
            )

    def prepare_rank_retrieved(
        self,
        user_id: int,
        item_ids: Sequence[int],
        retriever_scores: Sequence[float],
        k: int = 0,
        recent_item_ids: Sequence[int] = (),
        context: Mapping[str, str] | None = None,
        request_context: RequestContext | None = None,
    ) -> Prepared:
        rc = request_context
        with stage(rc, "feature"):
            check_user_id(user_id)
            check_k(k, self.limits)
            for name in context or {}:
                raise InvalidRequest(
                    f"unknown user feature {name!r}; ranker {self.artifact.name!r} takes none "
                    "(it reads user_id and recent_item_ids)"
                )
            ids = np.asarray(item_ids, dtype=np.int64)
            scores = np.asarray(retriever_scores, dtype=np.float32)
            if ids.shape != scores.shape or ids.ndim != 1:
                raise ValueError(f"{ids.shape} item ids with {scores.shape} retriever scores")
            codes = encode_ids(self.item_ids, ids)
            known = codes > 0
            rows, scores = codes[known] - 1, scores[known]
            recent = encode_ids(self.item_ids, check_recent(recent_item_ids, self.limits))
            user_row = int(encode_ids(self.user_ids, [user_id])[0]) - 1
            history = merge_recent(self.history_rows(user_row), recent[recent > 0] - 1)
        k = rows.size if k == 0 else min(k, rows.size)

        def finish(_: object) -> Ranking:
            with stage(rc, "head"):
                ranked = self.score(user_row, history[-self.max_history :], rows, scores)
            with stage(rc, "topk"):
                values, order = kernels.topk_scores(ranked, k, backend=SCORES_BACKEND)
                selected = np.where(order >= 0, rows[order], -1)
                return self.answer(selected, values, user_row, ids[~known].tolist())

        return Prepared(None, finish, rc)

    def score(
        self, user_row: int, history: np.ndarray, rows: np.ndarray, scores: np.ndarray
    ) -> np.ndarray:
        """float32 [len(rows)]: the program's scores of the items at ``rows``."""
        if rows.size == 0:
            return np.empty(0, dtype=np.float32)
        sequence = torch.from_numpy(history + 1).unsqueeze(0)  # [1, L], newest last
        if self.fixed_length:
            sequence = left_padded(sequence, self.max_history)
        with torch.inference_mode():
            out = self.ranker(
                torch.tensor([user_row + 1]),
                sequence,
                torch.from_numpy(rows + 1).unsqueeze(0),
                torch.from_numpy(scores).unsqueeze(0),
            )
        return np.ascontiguousarray(out[0].to(torch.float32).numpy())
