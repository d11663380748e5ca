"""A data set made ready for top-N training: ids encoded, split leave-one-out, and the
tables an artifact carries (seen items, histories, popularity)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from recserve.engine.schema import FeatureSchema, FeatureSpec

from ..data import InteractionData
from ..evaluation import LeaveOneOut, leave_one_out
from ..features import encode_movielens

SPLIT = "leave-one-out by time (last = test, second last = validation)"


@dataclass
class TopNData:
    """A data set prepared for top-N training: split plus the tables an artifact carries."""

    split: LeaveOneOut
    schema: FeatureSchema
    tables: dict[str, np.ndarray]  # user_ids, item_ids, item_titles, seen_*, history_*


def prepare_topn(data: InteractionData) -> TopNData:
    """Encode ids with the ranker's encoding, split leave-one-out, build serving tables."""
    encoded = encode_movielens(data)
    t = encoded.tables
    num_users, num_items = t["user_ids"].size, t["item_ids"].size
    split = leave_one_out(
        encoded.user_rows, encoded.item_rows, data.timestamp, num_users, num_items
    )
    # every interaction, time-ordered per user: what the served model knows of each user
    order = np.lexsort((np.arange(data.timestamp.size), data.timestamp, encoded.user_rows))
    history_indptr = np.zeros(num_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(encoded.user_rows, minlength=num_users), out=history_indptr[1:])
    train_items = split.train_items
    popularity = np.bincount(train_items, minlength=num_items).astype(np.float32)
    tables = {
        key: t[key] for key in ("user_ids", "item_ids", "item_titles", "seen_indptr", "seen_items")
    }
    tables["history_indptr"] = history_indptr
    tables["history_items"] = np.ascontiguousarray(encoded.item_rows[order], dtype=np.int64)
    tables["popularity"] = popularity / max(train_items.size, 1)
    schema = FeatureSchema(
        (
            FeatureSpec.id("user_id", "user", num_users),
            FeatureSpec.id("item_id", "item", num_items),
        )
    )
    return TopNData(split, schema, tables)


def start_run(data: InteractionData, config: Any) -> tuple[float, TopNData, torch.Generator]:
    """What every epoch-trained top-N model does first: threads, clock, data, seeds.

    Returns the start time, the prepared data and the generator that drives shuffling
    and negative sampling (saved in checkpoints so a resumed run draws the same)."""
    torch.set_num_threads(config.num_threads)
    started = time.perf_counter()
    prepared = prepare_topn(data)
    torch.manual_seed(config.seed)
    return started, prepared, torch.Generator().manual_seed(config.seed)
