"""`recserve evaluate`: how good a running server's answers are, measured through gRPC.

Offline metrics score a model in the trainer's process; what users get is ``Recommend``
through the wire, with the server's seen-item exclusion, cascade and defaults. This
module asks the server, one ``Recommend`` per held-out user, and scores the answers:

1. :func:`hold_out_last` splits a log: each user's last interaction (by time, ties in log
   order) is held out, for users with at least :data:`MIN_INTERACTIONS`; the rest is the
   training part. :func:`write_split` writes the training part as a CSV interaction log
   (train on it with ``recserve train --data DIR/train/<name>.toml``) and the held-out
   pairs as ``holdout.csv``.
2. :func:`evaluate_server` sends the requests (``--concurrency`` at a time) and looks for
   each user's held-out item in the answer: HR@k, NDCG@k and MRR@k, catalog coverage,
   the share of answered items that are rare (fewer than ``rare_below`` interactions in
   the training part), and the same figures for most-popular (the training part's most
   frequent items the user has not interacted with) computed here, in the same run.

The served model must not have seen the held-out interactions: train it on the split's
training part. The split is deterministic, so the same command gives the same split.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recserve.client import Client, RecserveError
from recserve.training.data import InteractionData, load_interaction_log, write_interaction_log

MIN_INTERACTIONS = 2  # a user needs one interaction left to train on
HOLDOUT_FILE = "holdout.csv"
TRAIN_FOLDER = "train"


@dataclass(frozen=True)
class HeldOut:
    """A log split for evaluation: the training part and one held-out item per user."""

    train: InteractionData
    user_ids: np.ndarray  # int64 [U], ascending
    item_ids: np.ndarray  # int64 [U], the held-out item of each user


def hold_out_last(data: InteractionData) -> HeldOut:
    """Each user's last interaction (by timestamp, then position in the log) held out,
    for users with at least :data:`MIN_INTERACTIONS` interactions."""
    order = np.lexsort((np.arange(data.user_id.size), data.timestamp, data.user_id))
    users = data.user_id[order]
    last = np.r_[users[1:] != users[:-1], True]  # the last interaction of each user
    first = np.r_[True, users[1:] != users[:-1]]
    counts = np.diff(np.r_[np.flatnonzero(first), users.size])
    held = order[last][counts >= MIN_INTERACTIONS]
    keep = np.ones(data.user_id.size, dtype=bool)
    keep[held] = False
    train = InteractionData(
        name=data.name,
        user_id=data.user_id[keep],
        item_id=data.item_id[keep],
        rating=data.rating[keep],
        timestamp=data.timestamp[keep],
        users=data.users,
        items=data.items,
    )
    by_user = np.argsort(data.user_id[held], kind="stable")
    return HeldOut(train, data.user_id[held][by_user], data.item_id[held][by_user])


def write_split(held: HeldOut, directory: str | Path) -> Path:
    """``DIR/train/`` (the training part as a CSV log; returns its schema file) and
    ``DIR/holdout.csv`` (``user_id,item_id``)."""
    target = Path(directory)
    schema = write_interaction_log(held.train, target / TRAIN_FOLDER)
    with (target / HOLDOUT_FILE).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["user_id", "item_id"])
        writer.writerows(zip(held.user_ids.tolist(), held.item_ids.tolist(), strict=True))
    return schema


def read_split(directory: str | Path) -> HeldOut:
    """The split :func:`write_split` wrote."""
    target = Path(directory)
    schemas = sorted((target / TRAIN_FOLDER).glob("*.toml")) + sorted(
        (target / TRAIN_FOLDER).glob("*.json")
    )
    if not schemas or not (target / HOLDOUT_FILE).is_file():
        raise FileNotFoundError(
            f"{target} holds no split: expected {TRAIN_FOLDER}/<name>.toml and {HOLDOUT_FILE} "
            "(write one with `recserve evaluate --make-split DIR --data ...`)"
        )
    train = load_interaction_log(schemas[0])
    pairs = np.loadtxt(target / HOLDOUT_FILE, delimiter=",", skiprows=1, dtype=np.int64, ndmin=2)
    return HeldOut(train, pairs[:, 0].copy(), pairs[:, 1].copy())


# -- scoring -------------------------------------------------------------------------------


@dataclass
class Scored:
    """The figures of one recommender over the held-out users."""

    name: str
    k: int
    ranks: list[int] = field(default_factory=list)  # held-out item's 0-based rank, k if absent
    answered: set[int] = field(default_factory=set)
    rare_answers: int = 0
    all_answers: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def add(self, items: list[int], held_out: int, rare: set[int]) -> None:
        self.ranks.append(items.index(held_out) if held_out in items else self.k)
        self.answered.update(items)
        self.rare_answers += sum(item in rare for item in items)
        self.all_answers += len(items)

    def summary(self, num_items: int) -> dict[str, Any]:
        ranks = np.asarray(self.ranks, dtype=np.float64)
        hit = ranks < self.k
        users = max(ranks.size, 1)
        return {
            "users": int(ranks.size),
            f"hr@{self.k}": float(hit.sum() / users),
            f"ndcg@{self.k}": float((1.0 / np.log2(ranks[hit] + 2)).sum() / users),
            f"mrr@{self.k}": float((1.0 / (ranks[hit] + 1)).sum() / users),
            "coverage": len(self.answered) / max(num_items, 1),
            "rare_share": self.rare_answers / max(self.all_answers, 1),
            "errors": dict(self.errors),
        }


def most_popular(train: InteractionData, k: int) -> Callable[[int], list[int]]:
    """Most-popular for one user: the training part's most frequent items the user has
    not interacted with (ties by item id)."""
    items, counts = np.unique(train.item_id, return_counts=True)
    ranking = items[np.lexsort((items, -counts))].tolist()
    seen: dict[int, set[int]] = {}
    for user, item in zip(train.user_id.tolist(), train.item_id.tolist(), strict=True):
        seen.setdefault(user, set()).add(item)

    def answer(user: int) -> list[int]:
        mine = seen.get(user, set())
        out: list[int] = []
        for item in ranking:
            if item not in mine:
                out.append(item)
                if len(out) == k:
                    break
        return out

    return answer


def rare_items(train: InteractionData, rare_below: int) -> set[int]:
    """Items with fewer than ``rare_below`` interactions in the training part (none
    counts too)."""
    items, counts = np.unique(train.item_id, return_counts=True)
    frequent = set(items[counts >= rare_below].tolist())
    return set(train.items.item_id.tolist()) - frequent


@dataclass(frozen=True)
class Request:
    """What `Recommend` is asked, apart from the user."""

    k: int = 10
    model: str = ""
    rank_with: str = ""
    retrieve_n: int = 0


def evaluate_server(
    client: Client,
    held: HeldOut,
    request: Request,
    *,
    concurrency: int = 8,
    rare_below: int = 20,
    progress: Callable[[Iterable[Any], int], Iterable[Any]] | None = None,
) -> dict[str, Any]:
    """Scores the server's `Recommend` answers and most-popular's on ``held``."""
    k = request.k
    rare = rare_items(held.train, rare_below)
    num_items = len(held.train.items)
    served = Scored("served", k)
    popular = Scored("most popular", k)
    baseline = most_popular(held.train, k)
    model_seen: set[str] = set()

    def ask(user: int) -> list[int] | str:
        try:
            answer = client.recommend(
                user, k, model=request.model, rank_with=request.rank_with,
                retrieve_n=request.retrieve_n,
            )  # fmt: skip
        except RecserveError as error:
            return error.code.name
        model_seen.add(f"{answer.model_name} v{answer.model_version}" + (
            f" ranked by {answer.ranked_by_name} v{answer.ranked_by_version}"
            if answer.ranked_by_name else ""
        ))  # fmt: skip
        return [item.item_id for item in answer.items]

    users = held.user_ids.tolist()
    with ThreadPoolExecutor(max(1, concurrency)) as pool:
        answers: Iterable[list[int] | str] = pool.map(ask, users)
        if progress is not None:
            answers = progress(answers, len(users))
        for user, item, answer in zip(users, held.item_ids.tolist(), answers, strict=True):
            if isinstance(answer, str):
                served.errors[answer] = served.errors.get(answer, 0) + 1
                served.ranks.append(k)  # an error answers nothing: a miss
            else:
                served.add(answer, item, rare)
            popular.add(baseline(user), item, rare)
    result = {
        "k": k,
        "request": {
            "model": request.model, "rank_with": request.rank_with,
            "retrieve_n": request.retrieve_n,
        },
        "served_by": sorted(model_seen),
        "rare_below": rare_below,
        "catalog_items": num_items,
        "served": served.summary(num_items),
        "most_popular": popular.summary(num_items),
    }  # fmt: skip
    for name in (f"hr@{k}", f"ndcg@{k}"):
        base = result["most_popular"][name]
        result["served"][f"{name} / most popular"] = (
            result["served"][name] / base if base > 0 else None
        )
    return result


def format_result(result: dict[str, Any]) -> str:
    k = result["k"]
    served_by = ", ".join(result["served_by"]) or "(no answer)"
    header = f"{'':14}{'HR@' + str(k):>9}{'NDCG@' + str(k):>9}{'MRR@' + str(k):>9}"
    lines = [
        f"served by {served_by}; {result['served']['users']} held-out users, k = {k}",
        f"{header}{'coverage':>10}  rare (< {result['rare_below']} interactions)",
    ]
    for key, label in (("served", "served"), ("most_popular", "most popular")):
        row = result[key]
        lines.append(
            f"{label:14}{row[f'hr@{k}']:9.4f}{row[f'ndcg@{k}']:9.4f}{row[f'mrr@{k}']:9.4f}"
            f"{row['coverage']:10.3f}  {100 * row['rare_share']:.1f}% of answered items"
        )
    served = result["served"]
    ratios = [
        f"{name} {'-' if ratio is None else f'{ratio:.2f}x'}"
        for name in (f"HR@{k}", f"NDCG@{k}")
        for ratio in [served[f"{name.lower()} / most popular"]]
    ]
    lines.append("served / most popular: " + ", ".join(ratios))
    if served["errors"]:
        errors = ", ".join(f"{code} {n}" for code, n in served["errors"].items())
        lines.append(f"errors (counted as misses): {errors}")
    return "\n".join(lines)


def write_json(result: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(json.dumps(result, indent=2, default=str) + "\n")
