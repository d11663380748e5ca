"""Answers of Rank and Recommend, shared by the pipelines and the client (no torch here)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ScoredItem:
    item_id: int
    score: float
    title: str = ""


@dataclass(frozen=True)
class Ranking:
    """Items best first, plus what the server noticed about the request."""

    items: list[ScoredItem]
    cold_start_user: bool
    unknown_item_ids: list[int] = field(default_factory=list)
