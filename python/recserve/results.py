"""Answers of Rank and Recommend, shared by the pipelines and the client (no torch here)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class FieldContribution:
    """How much one input field moved a logit (log-odds; positive pushes the item up)."""

    feature: str
    contribution: float


@dataclass(frozen=True)
class Explanation:
    """Why an item got its score: ``logit = baseline + Σ contributions`` (recserve.engine.explain).

    ``baseline`` is the logit with every field unknown; ``fields`` has one entry per
    input field, in the model's feature order.
    """

    baseline: float
    fields: list[FieldContribution]

    @property
    def logit(self) -> float:
        return self.baseline + sum(f.contribution for f in self.fields)


@dataclass(frozen=True)
class ScoredItem:
    item_id: int
    score: float
    title: str = ""
    explanation: Explanation | None = None  # set when the request asked for one


@dataclass(frozen=True)
class Ranking:
    """Items best first, plus what the server noticed about the request."""

    items: list[ScoredItem]
    cold_start_user: bool
    unknown_item_ids: list[int] = field(default_factory=list)
