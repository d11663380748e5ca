"""The one place that turns a trained model into an artifact (program + tables)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from recserve.artifact import CROSSING_TABLES, save_artifact, torchscript_deprecation_silenced
from recserve.schema import FeatureSchema

from .features import EncodedData
from .models import DeepFM
from .models.cfgan import CFGANGenerator
from .models.gru4rec import GRU4Rec


def script_model(model: nn.Module) -> torch.jit.ScriptModule:
    """TorchScript program of the inference model, in eval mode."""
    model.eval()
    with torchscript_deprecation_silenced():
        return torch.jit.script(model)


def deepfm_crossing(
    model: DeepFM, num_user_fields: int
) -> tuple[dict[str, Any], dict[str, np.ndarray], nn.Sequential]:
    """What the fused crossing path serves ``model`` with: (manifest block, tables, head).

    The block says which parts the kernel computes (first-order sum, FM term and the
    first MLP layer, split into user and item columns of W1); the tables are the
    parameters they need, in the model's dtype; the head is the MLP after the first
    ReLU, which stays a program. Fields are the user's single-valued fields, then the
    item's single-valued fields, then the item's multi-valued fields (DeepFM's order),
    and W1's columns are field-major: field f owns columns [f d, (f + 1) d).
    """
    model.eval()
    first, head = model.split_mlp()
    emb, first_order = model.embedding, model.first_order
    d = emb.table.weight.shape[1]
    n_single = emb.single_offsets.numel()
    n_multi = emb.pool.shape[1]
    n_fields = n_single + n_multi
    if not 0 <= num_user_fields <= n_single:
        raise ValueError(f"num_user_fields={num_user_fields} is outside [0, {n_single}]")
    if first.in_features != n_fields * d:
        raise ValueError(f"first layer takes {first.in_features} inputs, expected {n_fields * d}")

    def array(t: torch.Tensor) -> np.ndarray:
        return np.ascontiguousarray(t.detach().cpu().numpy())

    multi_fields = emb.pool.argmax(dim=1) if emb.pool.numel() else emb.multi_offsets
    tables = {
        "embedding": array(emb.table.weight),  # [R, d]
        "first_order": array(first_order.table.weight[:, 0]),  # [R]
        "single_offsets": array(emb.single_offsets),  # [Fu + Fi]: table row of index 0
        "multi_offsets": array(emb.multi_offsets),  # [M]: per column of item_multi
        "multi_fields": array(multi_fields.to(torch.int64)),  # [M]: field of each column
        "w1": array(first.weight),  # [H1, F d]
        "b1": array(first.bias),  # [H1]
        "bias": array(model.bias),  # [1]
    }
    block = {
        "kind": "deepfm",
        "embedding_dim": int(d),
        "hidden": int(first.out_features),
        "user_fields": int(num_user_fields),
        "item_fields": int(n_single - num_user_fields),
        "item_multi_fields": int(n_multi),
        "w1_columns": {
            "user": [0, num_user_fields * d],
            "item": [num_user_fields * d, n_fields * d],
        },
        "module": "head",
        "tables": {key: CROSSING_TABLES[key] for key in tables},
    }
    return block, {CROSSING_TABLES[key]: t for key, t in tables.items()}, head


def export_ranker(
    model: nn.Module,
    encoded: EncodedData,
    repo: str | os.PathLike[str],
    name: str,
    *,
    family: str,
    metrics: dict[str, float],
    config: dict[str, Any],
    extra: dict[str, Any] | None = None,
    crossing: bool = True,
) -> Path:
    """Write ``model`` and the tables it is served with as a new version of ``name``.

    A DeepFM with hidden layers also gets the fused-crossing block (manifest key
    ``crossing``, its parameter tables and the ``head`` program) unless ``crossing`` is
    False; an artifact without it is served with the whole ``model`` program.
    """
    modules = {"model": script_model(model)}
    tables = dict(encoded.tables)
    extra = dict(extra or {})
    if crossing and isinstance(model, DeepFM) and len(model.mlp) > 1:
        n_user = len(encoded.schema.single_valued("user"))
        block, crossing_tables, head = deepfm_crossing(model, n_user)
        modules[block["module"]] = script_model(head)
        tables.update(crossing_tables)
        extra["crossing"] = block
    return save_artifact(
        repo,
        name,
        family=family,
        schema=encoded.schema,
        modules=modules,
        tables=tables,
        metrics=metrics,
        config=config,
        extra=extra,
    )


# -- top-N families (docs/artifact.md: "embedding", "sequence", "generator") ----------

TOPN_TABLES = ("user_ids", "item_ids", "item_titles", "seen_indptr", "seen_items", "popularity")


def export_embedding(
    user_vectors: np.ndarray,
    item_vectors: np.ndarray,
    schema: FeatureSchema,
    tables: dict[str, np.ndarray],
    repo: str | os.PathLike[str],
    name: str,
    *,
    metrics: dict[str, float],
    config: dict[str, Any],
) -> Path:
    """Family ``embedding``: score(u, i) = <user_vectors[u], item_vectors[i]> (no program)."""
    users = np.ascontiguousarray(user_vectors, dtype=np.float32)
    items = np.ascontiguousarray(item_vectors, dtype=np.float32)
    if users.ndim != 2 or items.ndim != 2 or users.shape[1] != items.shape[1]:
        raise ValueError(f"vector tables disagree: users {users.shape}, items {items.shape}")
    return save_artifact(
        repo,
        name,
        family="embedding",
        schema=schema,
        modules={},
        tables={
            **{key: tables[key] for key in TOPN_TABLES},
            "user_vectors": users,
            "item_vectors": items,
        },
        metrics=metrics,
        config=config,
    )


def export_sequence(
    model: GRU4Rec,
    schema: FeatureSchema,
    tables: dict[str, np.ndarray],
    repo: str | os.PathLike[str],
    name: str,
    *,
    max_length: int,
    metrics: dict[str, float],
    config: dict[str, Any],
) -> Path:
    """Family ``sequence``: ``encoder`` program (item rows + 1 -> user state) and item
    vectors; the user's time-ordered history is stored so a request needs no ids."""
    items = np.ascontiguousarray(model.item_vectors().detach().numpy(), dtype=np.float32)
    return save_artifact(
        repo,
        name,
        family="sequence",
        schema=schema,
        modules={"encoder": script_model(model)},
        tables={
            **{key: tables[key] for key in (*TOPN_TABLES, "history_indptr", "history_items")},
            "item_vectors": items,
        },
        metrics=metrics,
        config=config,
        extra={"max_history": int(max_length)},
    )


def export_generator(
    generator: CFGANGenerator,
    schema: FeatureSchema,
    tables: dict[str, np.ndarray],
    repo: str | os.PathLike[str],
    name: str,
    *,
    metrics: dict[str, float],
    config: dict[str, Any],
) -> Path:
    """Family ``generator``: ``generator`` program (float32 [1, I] purchase vector ->
    float32 [1, I] scores); the user's purchases are the ``seen`` table."""
    return save_artifact(
        repo,
        name,
        family="generator",
        schema=schema,
        modules={"generator": script_model(generator)},
        tables={key: tables[key] for key in TOPN_TABLES},
        metrics=metrics,
        config=config,
    )
